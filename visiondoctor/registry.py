"""The one plug-in mechanism: a named registry filled by the modules of one package.

Models, dataset formats, synthetic generators, doctor checks, zoo cases and tasks each keep one
`Registry`. A plug-in registers itself where it is defined (a decorator or `add` at import
time); the registry imports every module of its own package the first time it is read, so a new
plug-in is one new file and nothing else to edit (like timm's model registry, with discovery).
Discovery never crosses packages: a feature package registers its plug-ins when it is imported.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> entry. `package`: the dotted package whose modules register entries (imported on the
    first read, recursively); None when entries come only from explicit imports."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add` (registers the decorated object itself)."""
        return lambda obj: self.add(name, obj)

    def discover(self) -> None:
        """Import every module of the package once (a module that registers entries on import)."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
            importlib.import_module(info.name)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries)) or 'none'}")
        return self._entries[name]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def names(self) -> list[str]:
        self.discover()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.discover()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self.discover()
        return list(self._entries.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)
