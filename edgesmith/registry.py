"""One registry class for passes, exporters and runtimes.

Built-ins are imported explicitly by the package that owns the registry;
third-party plugins come from an entry-point group. A plugin that fails to
import is remembered with its error and shown when someone asks for it, never
silently dropped.
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from edgesmith.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table filled by decorator; registering a name twice raises.

    Args:
        kind: What the registry holds, for messages (``"pass"``, ``"target"``).
        entry_point_group: The entry-point group plugins register under.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._broken: dict[str, str] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``.

        Args:
            name: The key; must be unused.

        Returns:
            The decorator, which returns the object unchanged.

        Raises:
            ValueError: If the name is already registered (a programming error).
        """

        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self.entry_point_group:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must be visible, not fatal
                self._broken[ep.name] = f"{type(exc).__name__}: {exc}"
                continue
            self.register(ep.name)(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UsageError: If no such name, listing the known ones; or if a plugin of
                that name failed to import, with its error.
        """
        self._load_plugins()
        if name in self._items:
            return self._items[name]
        if name in self._broken:
            raise UsageError(
                f"{self.kind} plugin {name!r} failed to import: {self._broken[name]}",
                hint="fix or reinstall the plugin package",
            )
        raise UsageError(
            f"unknown {self.kind} {name!r}", hint=f"choose one of: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        self._load_plugins()
        return sorted(self._items)

    def broken(self) -> dict[str, str]:
        """Return plugins that failed to import, name -> error."""
        self._load_plugins()
        return dict(self._broken)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
