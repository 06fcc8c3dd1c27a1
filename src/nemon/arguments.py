"""Modules that remember the arguments they were built with, so that a model file can rebuild them
(`nemon.modelfile`)."""

from __future__ import annotations

import functools
import inspect

__all__ = ["RecordsArguments", "init_arguments"]


class RecordsArguments:
    """Mixin: after construction, ``init_arguments(module)`` is the mapping of the arguments
    (defaults filled in) that the outermost ``__init__`` was called with. Subclasses are
    recorded too; nested ``super().__init__`` calls record nothing."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)


def _recording(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording(self, *args, **kwargs):
        depth = self.__dict__.get("_init_depth", 0)
        self.__dict__["_init_depth"] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__["_init_depth"] = depth
        if depth == 0:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = list(value)
                else:
                    recorded[name] = value
            self.__dict__["_init_arguments"] = recorded

    return recording


def init_arguments(module) -> dict:
    """The arguments ``module`` was built with (a copy); empty for a module that records none."""
    return dict(module.__dict__.get("_init_arguments", {}))
