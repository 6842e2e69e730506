"""One registry class for passes, exporters and runtimes.

A class registers under its own ``name`` (``@PASSES.register``), so each key is written
once. Built-ins are imported explicitly by the package that owns the registry;
third-party plugins come from an entry-point group. A plugin that fails to
import is remembered with its error and shown when someone asks for it, never
silently dropped.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from edgesmith.errors import BadInputError, UsageError

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

    def register(self, target: str | T) -> Any:
        """Register an object; the key is written once.

        Used bare on a class that names itself (``@PASSES.register`` above ``class Sla(Pass)``
        with ``name = "sla"``), it registers the class under its ``name``. Given a string
        (``ZOO.register("digits-cnn")(entry)``), it returns a decorator registering an object
        under that key.

        Args:
            target: A class with a ``name`` attribute, or the key for the object to come.

        Returns:
            The class unchanged; or, for a key, the decorator, which returns the object unchanged.

        Raises:
            ValueError: If the key is already registered, or a class has no ``name``
                (programming errors).
        """
        if isinstance(target, str):
            return lambda obj: self._add(target, obj)
        name = getattr(target, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} {target!r} has no name to register under")
        return self._add(name, target)

    def _add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        return obj

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
            self._add(ep.name, obj)  # an entry point's name is its key

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


F = TypeVar("F", bound=Callable)


class OpTable(Generic[F]):
    """Op name -> the function that translates or evaluates it, for one target; filled by decorator.

    Every translator and evaluator keeps one (MLX's translations, the Core ML evaluator, the HLS
    lowering, TensorRT's support checks). The op modules register into it
    (``@OPS.op("aten.add.Tensor")``) and the table imports none of them: whoever runs the table
    imports the op modules, so no op module and its table lean on each other.

    Args:
        target: Who runs the functions, for messages (``"MLX"``, ``"the Core ML evaluator"``).
        what: What one function is to the target (``"translation"``).
        key: What the names are (``"op"``; TensorRT's checks are keyed by ``"rule"``).
        hint: What to do about a name the table lacks (the lookup error's hint).
    """

    def __init__(self, target: str, what: str, key: str = "op", hint: str = ""):
        self.target = target
        self.what = what
        self.key = key
        self.hint = hint
        self._fns: dict[str, F] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def op(self, *names: str, **info: Any) -> Callable[[F], F]:
        """Decorator registering a function under one or more names.

        Args:
            names: The op names (``aten.add.Tensor``, ``softmax``).
            info: What the runner needs to know about the function besides calling it (MLX's
                ``sizes``, the Core ML evaluator's ``variadic``), read back with :meth:`info`.

        Returns:
            The decorator, which returns the function unchanged.

        Raises:
            ValueError: If a name is already registered (a programming error).
        """

        def register(fn: F) -> F:
            for name in names:
                if name in self._fns:
                    raise ValueError(f"{self.target} {self.what} for {self.key} {name!r} is registered twice")
                self._fns[name] = fn
                self._info[name] = dict(info)
            return fn

        return register

    def get(self, name: str) -> F:
        """Return the function registered for ``name``.

        Raises:
            BadInputError: If there is none, naming the op and the target (exit code 3).
        """
        if name not in self._fns:
            raise BadInputError(f"{self.target} has no {self.what} for {self.key} {name!r}", hint=self.hint)
        return self._fns[name]

    def info(self, name: str) -> dict[str, Any]:
        """The keywords ``name`` was registered with (empty when none; see :meth:`op`)."""
        self.get(name)
        return dict(self._info[name])

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __iter__(self) -> Iterator[str]:
        return iter(self._fns)

    def __len__(self) -> int:
        return len(self._fns)
