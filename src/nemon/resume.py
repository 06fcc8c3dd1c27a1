"""What a resume compares: the settings a checkpoint recorded, rebuilt as an instance of the
run's own settings dataclass, against the run's instance, field by field. A training setting
newer than the file takes its default; the number of epochs is free to change."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields, is_dataclass, replace

__all__ = ["compare_settings"]

#: a resume may extend or shorten a run (`nemon.fit`)
FREE = ("epochs",)


def compare_settings(recorded, current, may_default=()) -> tuple[list[str], list[str]]:
    """``(changed, defaulted)``: the settings that differ between ``recorded`` (plain data from
    a checkpoint) and ``current`` (a dataclass instance, or plain data), as ``name: old ->
    new``, and the names of those ``recorded`` lacks that took their defaults (only names in
    ``may_default``; any other missing field is a change)."""
    if not is_dataclass(current):
        return (
            []
            if _plain(recorded) == _plain(current)
            else [f"{_plain(recorded)!r} -> {_plain(current)!r}"]
        ), []
    recorded = recorded if isinstance(recorded, dict) else {}
    names = {f.name for f in fields(current)}
    changed = [
        f"{k}: {_plain(v)!r} -> (no such setting)" for k, v in recorded.items() if k not in names
    ]
    values, defaulted = {}, []
    for f in fields(current):
        if f.name in recorded:
            values[f.name] = recorded[f.name]
        elif f.name in may_default:
            values[f.name] = f.default if f.default is not MISSING else f.default_factory()
            defaulted.append(f.name)
        else:
            changed.append(f"{f.name}: (not recorded) -> {_plain(getattr(current, f.name))!r}")
    try:
        then = replace(current, **values)  # the same class: its own checks and conversions
    except (TypeError, ValueError) as exc:
        return changed + [f"recorded settings refused ({exc})"], defaulted
    changed += [
        f"{f.name}: {_plain(getattr(then, f.name))!r} -> {_plain(getattr(current, f.name))!r}"
        for f in fields(current)
        if f.name not in FREE
        and f.name in values
        and _plain(getattr(then, f.name)) != _plain(getattr(current, f.name))
    ]
    return changed, defaulted


def _plain(value):
    """Plain data as checkpoints store it: lists for tuples, dicts for dataclasses, nested."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
