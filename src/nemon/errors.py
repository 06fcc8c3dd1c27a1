"""What nemon refuses is an `InputError`: a setting out of range, a shape, dtype or value that
cannot work, a model a method cannot handle. It is a ``ValueError``, so code that catches
those keeps working; the command line reports it as a usage error (exit status 2), while any
other exception is a failure of the library itself and keeps its traceback."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """nemon refused an argument, a setting, data or a model; the message names it."""
