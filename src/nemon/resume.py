"""What a resume compares: the settings a checkpoint recorded against the run's, a setting
newer than the file taking its default, the number of epochs free to change."""

from __future__ import annotations

from dataclasses import MISSING, fields

__all__ = ["without_epochs", "differences", "with_defaults", "defaults"]


def without_epochs(settings: dict) -> dict:
    """The settings without the number of epochs (a resume may change it), nested too."""
    return {
        k: without_epochs(v) if isinstance(v, dict) else v
        for k, v in settings.items()
        if k != "epochs"
    }


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """The names of the settings that differ (nested dicts as ``outer.inner``)."""
    changed = []
    for key in sorted(set(recorded) | set(current), key=str):
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            changed.append(f"{prefix}{key}: {_plain(a)!r} -> {_plain(b)!r}")
    return changed


def with_defaults(recorded: dict, current: dict, defaults: dict, prefix: str = ""):
    """``recorded`` with each current setting it lacks taken from ``defaults`` (nested like the
    settings), and the names of those it took."""
    filled, names = dict(recorded), []
    for key, value in current.items():
        if key not in recorded and key in defaults:
            filled[key] = defaults[key]
            names.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(recorded.get(key), dict):
            inner = defaults.get(key) if isinstance(defaults.get(key), dict) else {}
            filled[key], more = with_defaults(recorded[key], value, inner, f"{prefix}{key}.")
            names += more
    return filled, names


def defaults(settings) -> dict:
    """The default of each field of a dataclass (or its instance), as plain data."""
    values = {}
    for f in fields(settings):
        if f.default is not MISSING:
            values[f.name] = _plain(f.default)
        elif f.default_factory is not MISSING:
            values[f.name] = _plain(f.default_factory())
    return values


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
