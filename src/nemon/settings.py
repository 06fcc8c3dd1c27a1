"""Settings described once: a dataclass's ``Attributes:`` docstring section is the help of each
field, for the API reference and the command line alike (`field_help`)."""

from __future__ import annotations

import inspect
import re

__all__ = ["field_help"]


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
