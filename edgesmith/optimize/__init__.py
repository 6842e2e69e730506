"""Passes: model -> compact variant.

Every pass has a typed options dataclass (its fields are the ``-p name:k=v``
keys) and implements :meth:`Pass._apply_impl`; :meth:`Pass.apply` owns the
common work (checks, timing, recording the pass on the variant).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, ClassVar

from edgesmith.options import build_options, parse_key_values
from edgesmith.registry import Registry

PASSES: Registry[type[Pass]] = Registry("pass", "edgesmith.passes")


@dataclasses.dataclass
class PassOptions:
    """Options shared by every pass (none yet); subclass per pass."""


class Pass:
    """Base class of passes.

    Subclasses set ``name`` and ``Options`` and implement ``_apply_impl``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = PassOptions

    def __init__(self, options: Any | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.options = options if options is not None else self.Options()
        self.progress = progress  # (description, completed, total), for passes that take a while

    def apply(self, variant):
        """Return a new variant with this pass applied and recorded.

        Args:
            variant: A variant with a torch module.

        Returns:
            The new variant; its ``passes`` ends with ``{"name", "params", "report", "seconds"}``.

        Raises:
            BadInputError: If the variant has no module (ONNX sources cannot be optimized).
        """
        from edgesmith.errors import BadInputError

        if variant.module is None:
            raise BadInputError(
                f"pass {self.name!r} needs a PyTorch model; {variant.name} is ONNX",
                hint="load the model from .pt2, a checkpoint, py: or zoo:",
            )
        start = time.perf_counter()
        self.outputs, self.notes = None, []
        module, report = self._apply_impl(variant)
        record = {
            "name": self.name,
            "params": dataclasses.asdict(self.options),
            "report": report,
            "seconds": round(time.perf_counter() - start, 3),
        }
        new = variant.with_module(module, record)
        if self.outputs is not None:
            new.outputs = list(self.outputs)
        new.notes += self.notes
        return new

    def _apply_impl(self, variant) -> tuple[Any, dict[str, Any]]:
        """Transform ``variant.module``; return the new module and a report dict.

        A pass that changes what the model returns sets ``self.outputs`` (the new output
        signature); warnings for the user go to ``self.notes``. Neither touches ``variant``.
        """
        raise NotImplementedError


def parse_pass_spec(spec: str, defaults: dict[str, str] | None = None) -> Pass:
    """Build a pass from ``NAME[:key=value,...]``.

    Args:
        spec: The pass and its options.
        defaults: Values for options the spec does not set, used only by passes that
            have such an option (``edgesmith optimize --data`` fills ``distill``'s ``data``).

    Raises:
        UsageError: For an unknown pass, an unknown key (listing the known ones)
            or a value of the wrong type.
    """
    name, _, rest = spec.partition(":")
    cls = PASSES.get(name.strip())
    owner = f"pass {name.strip()!r}"
    values = parse_key_values(filter(None, (p.strip() for p in rest.split(","))), owner)
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    values = {**{k: v for k, v in (defaults or {}).items() if k in fields}, **values}
    return cls(build_options(cls.Options, values, owner))


def apply_passes(variant, specs: list[str], defaults: dict[str, str] | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
    """Apply passes given as ``NAME[:k=v,...]`` strings, in order (``defaults`` as in :func:`parse_pass_spec`)."""
    for spec in specs:
        step = parse_pass_spec(spec, defaults)
        step.progress = progress
        variant = step.apply(variant)
    return variant


def _register_builtins() -> None:
    from edgesmith.optimize import deltallm, distill, matformer, matryoshka, reparam, rsparse  # noqa: F401
    from edgesmith.optimize.slab import prepbn, sla  # noqa: F401


_register_builtins()
