"""A small, loud name -> object registry used for spaces, strategies and criteria, and the
lazy-export helper of the packages."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from compsearch.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; registering a name twice or asking for an unknown one raises.

    Args:
        kind: what is registered (``"space"``, ``"strategy"``, ...), used in messages.
        lazy: built-in names registered by an optional module on import (name -> module
            path): :meth:`get` imports the module on first use of the name, and
            :meth:`names` lists the name without importing it.
    """

    def __init__(self, kind: str, *, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is already registered; choose another name "
                    f"or unregister the existing one first"
                )
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-in reloading)."""
        self.get(name)
        del self._items[name]

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` (importing its module first for a lazy
        name); unknown names raise listing the known ones."""
        if isinstance(name, str) and name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])  # registers the name
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {self.names()}"
            ) from None

    def names(self) -> list[str]:
        """Registered names (lazy ones included), sorted."""
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) resolving ``name`` from ``exports[name]``, a module path
    relative to ``package`` (``".types"``) or absolute, on first access; keeps imports light."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return __getattr__
