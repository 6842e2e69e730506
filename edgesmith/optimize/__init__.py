"""Passes: model -> compact variant.

Every pass has a typed options dataclass (its fields are the ``-p name:k=v``
keys) and implements :meth:`~edgesmith.optimize.base.Pass._apply_impl`;
:meth:`~edgesmith.optimize.base.Pass.apply` owns the common work (checks, the
module copy, timing, recording the pass on the variant). This module builds passes
from their text specs and registers the built-ins; the passes import only
:mod:`edgesmith.optimize.base`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgesmith.optimize.base import PASSES, Pass, PassContext
from edgesmith.options import build_options, parse_key_values


def parse_pass_spec(spec: str, defaults: dict[str, Any] | None = None) -> Pass:
    """Build a pass from ``NAME[:key=value,...]``.

    Args:
        spec: The pass and its options.
        defaults: Values for options the spec does not set, used only by passes that
            have such an option (``edgesmith optimize --data`` fills ``distill``'s ``data``):
            text, or values of the option's own type, taken as they are.

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


def apply_passes(variant, specs: list[str], defaults: dict[str, Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 context: PassContext | None = None):
    """Apply passes given as ``NAME[:k=v,...]`` strings, in order.

    Args:
        variant: The variant to transform.
        specs: Pass specs.
        defaults: As in :func:`parse_pass_spec`.
        progress: ``(description, completed, total)`` callback of long passes.
        context: What the API provides to passes (a latency probe).
    """
    for spec in specs:
        step = parse_pass_spec(spec, defaults)
        step.progress = progress
        variant = step.apply(variant, context)
    return variant


def _register_builtins() -> None:
    from edgesmith.optimize import deltallm, distill, matformer, matryoshka, reparam, rsparse  # noqa: F401
    from edgesmith.optimize.slab import prepbn, sla  # noqa: F401


_register_builtins()
