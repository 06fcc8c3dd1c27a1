"""--help states every option's purpose and its default."""

import argparse

from nemon.app.cli import build_parser


def test_every_option_has_help_and_defaults_are_stated():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"nemon {name}: {action.option_strings or action.dest} has no help"
    attack = commands.choices["attack"].format_help()
    assert "PGD steps (default: 20)" in attack
    assert "(default: cpu)" in attack
    verify = commands.choices["verify"].format_help()
    assert "(default 60)" in verify and "(default: None)" not in verify
