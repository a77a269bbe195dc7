"""Name -> component lookups: the allow-list of everything a config can build.

Configs name components (`optimizer: adam`); only names registered here can be built, so a config
can never reach an arbitrary importable object the way a free-form `_target_` could.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories, filled by the `register` decorator at import time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            found = self._plugin(name)
            if found is not None:
                return found
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"Unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """The registered names and those installed plugins add (gradtrain.plugins)."""
        from gradtrain import plugins

        return sorted({*self._entries, *plugins.names(self.kind)})

    def _plugin(self, name: str) -> T | None:
        """The factory of the installed plugin `<kind>.<name>`, or None: only entry points of
        installed distributions are looked up, never an arbitrary import."""
        from gradtrain import plugins

        found = plugins.component(self.kind, name)
        return cast(T, found.build) if found is not None else None
