"""The runtime base class, the runtimes' registry and the input checks every runtime shares.

Nothing here imports torch or the exporters: only numpy and the bundle reader.
:meth:`Runtime.run` owns input checks; subclasses implement ``_load_impl`` and
``_run_impl``. The built-in runtimes register into :data:`RUNTIMES` from their
own modules; :mod:`edgesmith.runtimes` imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgesmith.bundle import Bundle
from edgesmith.errors import BadInputError
from edgesmith.registry import Registry

RUNTIMES: Registry[type["Runtime"]] = Registry("runtime", "edgesmith.runtimes")


class Runtime:
    """Base class of runtimes.

    Args:
        bundle: A verified bundle.
        threads: Intra-op threads (0 = the runtime's default).
        accelerator: Where to run, one of ``accelerators`` (None: the first).
        compiled: Compile the model first (runtimes with ``compiles``: torch's ``torch.compile``).

    Attributes:
        accelerators: Where the runtime can run: ``cpu`` (the host) and/or ``cuda`` (an NVIDIA GPU).
        compiles: Whether ``compiled`` means anything to it.
        tier: Parity tier of its results (may be set per instance in ``_load_impl``).
        timing: ``measured`` when its timings are the target's latency; ``emulated`` when a
            stand-in computes the outputs, so its timings are not a latency (profiles record it).
    """

    name: ClassVar[str] = ""
    accelerators: ClassVar[tuple[str, ...]] = ("cpu",)
    compiles: ClassVar[bool] = False
    tier: str = "verified"
    timing: str = "measured"

    def __init__(self, bundle: Bundle, threads: int = 0, accelerator: str | None = None, compiled: bool = False):
        from edgesmith.errors import RuntimeUnavailableError, UsageError

        self.bundle = bundle
        self.threads = threads
        self.accelerator = accelerator or self.accelerators[0]
        if self.accelerator not in self.accelerators:
            where = {"cpu": "on the host CPU", "cuda": "on a CUDA GPU"}.get(self.accelerator, f"on {self.accelerator}")
            raise RuntimeUnavailableError(f"the {self.name} runtime cannot run {bundle.path.name} {where}",
                                          hint=f"it runs on: {', '.join(self.accelerators)}")
        if compiled and not self.compiles:
            raise UsageError(f"the {self.name} runtime has nothing to compile ({bundle.path.name})",
                             hint="compiling applies to torch bundles (torch.compile)")
        self.compiled = compiled
        self._load_impl()

    @classmethod
    def available(cls) -> None:
        """Raise :class:`~edgesmith.errors.RuntimeUnavailableError` if the runtime cannot run here."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the inputs and run the model (see :meth:`prepare`)."""
        return self.run_prepared(self.prepare(feeds))

    def run_prepared(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on inputs already checked by :meth:`prepare` (what profiling times)."""
        return self._run_impl(feeds)

    def prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check inputs against the manifest and convert them to its dtypes.

        Args:
            feeds: Input name -> array, matching the manifest's inputs.

        Returns:
            Input name -> contiguous array of the manifest's dtype.

        Raises:
            BadInputError: A missing or unexpected input, a wrong rank or fixed dimension, or a
                dtype that does not cast safely to the manifest's (see :func:`cast_input`).
        """
        specs = self.bundle.manifest.inputs
        expected = [s.name for s in specs]
        unknown = sorted(set(feeds) - set(expected))
        missing = [n for n in expected if n not in feeds]
        if missing or unknown:
            raise BadInputError(
                f"inputs do not match {self.bundle.path.name}: missing {missing}, unexpected {unknown}",
                hint=f"the bundle takes: {', '.join(expected)}",
            )
        checked = {}
        for s in specs:
            arr = np.asarray(feeds[s.name])
            if arr.ndim != len(s.shape):
                raise BadInputError(f"input {s.name} has rank {arr.ndim}, the bundle expects {s.describe()}")
            fixed = [i for i in range(arr.ndim) if i not in s.dynamic and arr.shape[i] != s.shape[i]]
            if fixed:
                raise BadInputError(
                    f"input {s.name} has shape {arr.shape}, the bundle expects {s.describe()}",
                    hint="only the named (dynamic) axes may change",
                )
            checked[s.name] = np.ascontiguousarray(cast_input(arr, s.name, s.dtype))
        return checked

    def node_times(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """Per-node times from the runtime's own profiler (empty where it has none).

        Returns:
            Dicts with ``node``, ``op_type``, ``scope`` (source module or ""), ``mean_ms``.
        """
        return []

    def _load_impl(self) -> None:
        raise NotImplementedError

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class InputCastNote(UserWarning):
    """An input was given in another dtype than the bundle's and was cast (allowed, but said)."""


CAST_RULE = ("an input may be cast only to a dtype of the same kind or a wider kind (bool -> int -> float, "
             "never complex -> real, float -> int or number -> bool), with every value kept in range")


def cast_input(arr: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """Convert one input to the bundle's dtype if that is safe, else refuse it.

    The rule (:data:`CAST_RULE`) is numpy's ``same_kind`` casting plus a value check: a
    narrower integer must hold every value and a narrower float must keep every finite value
    finite. Complex to real, float to integer, numbers to bool and anything non-numeric
    (strings, objects) are refused. Every cast that is done is said in an
    :class:`InputCastNote` warning (the CLI prints it as a note).

    Args:
        arr: The array given.
        name: The input's name (for the messages).
        dtype: The manifest's dtype.

    Returns:
        ``arr`` itself when the dtype matches, else the cast copy.

    Raises:
        BadInputError: Naming the input, both dtypes and the rule.
    """
    import warnings

    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    hint = f"convert it yourself first if that is what you mean, e.g. x.astype('{target}')"
    if arr.dtype.kind not in "biufc" or not np.can_cast(arr.dtype, target, casting="same_kind"):
        raise BadInputError(f"input {name} is {arr.dtype} but the bundle takes {target}: refused, {CAST_RULE}",
                            hint=hint)
    with np.errstate(all="ignore"):
        cast = arr.astype(target)
    if not np.can_cast(arr.dtype, target, casting="safe") and arr.size:
        if target.kind in "iu":
            info = np.iinfo(target)
            lost = bool(arr.min() < info.min or arr.max() > info.max)
        elif target.kind in "fc":
            lost = bool((np.isfinite(arr) & ~np.isfinite(cast)).any())
        else:
            lost = False
        if lost:
            raise BadInputError(f"input {name} is {arr.dtype} with values that do not fit {target}, the dtype "
                                f"the bundle takes: refused, {CAST_RULE}", hint=hint)
    warnings.warn(InputCastNote(f"input {name} was given as {arr.dtype} and cast to {target}, the dtype the "
                                "bundle takes"), stacklevel=3)
    return cast


def cache_dir(*parts: str) -> Path:
    """edgesmith's cache folder (``$EDGESMITH_CACHE``, default ``~/.cache/edgesmith``), or a path inside it."""
    import os

    return Path(os.environ.get("EDGESMITH_CACHE") or Path.home() / ".cache" / "edgesmith", *parts)
