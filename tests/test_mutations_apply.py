"""Every mutant of benchmarks/mutations.py still applies to the source: a refactor that moves the
mutated line makes this fail here, instead of the mutant silently checking nothing."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
import mutations  # noqa: E402


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_the_mutant_applies(mutation):
    text = (ROOT / mutation.path).read_text()
    assert mutation.old in text, f"{mutation.path} no longer holds the line this mutant changes"
    for test in mutation.tests:
        assert (ROOT / test).is_file(), test
