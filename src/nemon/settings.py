"""Settings described once, as dataclass fields: the allowed values in each field's metadata
(`setting`, checked by `check_fields`) and its help in the class's ``Attributes:`` docstring
section (`field_help`), for the API reference, the validation and the command line alike."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, Field, field, fields

from .validation import Range, check_choice

__all__ = ["field_help", "setting", "check_fields", "field_named"]


def field_help(cls) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of ``cls``'s docstring (each
    description on one line)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if "Attributes:" not in doc:
        return {}
    section = doc.split("Attributes:", 1)[1]
    found: dict[str, list[str]] = {}
    name = None
    for line in section.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            found[name] = [entry.group(2).strip()]
        elif name and line.startswith("        "):
            found[name].append(line.strip())
        elif line.strip() and not line.startswith(" "):
            break  # the next section
    return {k: " ".join(v) for k, v in found.items()}


def setting(default=MISSING, *, range: Range | None = None, choices=None, **kw):
    """A dataclass field with its allowed values in its metadata: ``range`` (a numeric
    `Range`, each element of a tuple) or ``choices``; its help is the class's ``Attributes:``
    entry. `check_fields` validates an instance against them, and the command line derives
    its options from them."""
    meta = {"range": range, "choices": choices}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None}, **kw)


def check_fields(instance) -> None:
    """Raise `InputError` naming the first field of ``instance`` outside its ``range`` or
    ``choices`` (None passes: an unset optional setting)."""
    for f in fields(instance):
        value = getattr(instance, f.name)
        if value is None:
            continue
        if "choices" in f.metadata:
            check_choice(f.name, value, f.metadata["choices"])
        if "range" in f.metadata:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                f.metadata["range"].check(f.name, v)


def field_named(cls, name: str) -> Field:
    """The field ``name`` of the dataclass ``cls``."""
    return next(f for f in fields(cls) if f.name == name)
