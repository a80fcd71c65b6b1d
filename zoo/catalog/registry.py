"""Decorator registries with lowercase unique names and helpful lookup errors.

Backbones, datasets and tasks are registered by domain packages; the core looks them up
by name and never imports a domain directly (see :func:`zoo.catalog.domains.load_domains`).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from zoo.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name != name.lower() or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits, '_', '-' or '.'")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            return self.add(name, item)

        return decorator

    def get(self, name: str) -> T:
        _load_domains()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[name]

    def names(self, pattern: str = "*") -> list[str]:
        _load_domains()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        _load_domains()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _load_domains() -> None:
    from zoo.catalog.domains import load_domains

    load_domains()
