"""Module classes a pass puts into a model, by registered name, so a variant folder can rebuild them.

A variant folder (:mod:`edgesmith.models.variant_folder`) holds no code: where a pass replaced a
module of a transformers model (MatFormer's narrower ``Linear``, R-Sparse's ``RSparseLinear``) or
added one (DeltaLLM's per-attention state), the folder names the module's registered class
(``torch.Linear``, ``rsparse.Linear``, ``deltallm.State``) and the JSON arguments that build an
empty module of the right shape; the weights then come from the safetensors file. The passes
register their classes here, in the models layer they import from, so loading needs nothing above it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edgesmith.errors import BadInputError
from edgesmith.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModuleKind:
    """How one module class is saved in a variant folder and rebuilt from it.

    Attributes:
        cls: The class (matched exactly: a subclass is a different kind).
        describe: Module -> JSON-able arguments (shapes, settings) that ``build`` takes.
        build: Arguments -> a module of that shape and those settings; its tensors are loaded after.
    """

    cls: type
    describe: Callable[[Any], dict[str, Any]]
    build: Callable[[dict[str, Any]], Any]


# Each entry is a function returning the ModuleKind, so the class (and torch) is imported only when used.
MODULE_KINDS: Registry[Callable[[], ModuleKind]] = Registry("module class", "edgesmith.module_kinds")


@MODULE_KINDS.register("torch.Linear")
def _linear() -> ModuleKind:
    from torch import nn

    return ModuleKind(
        nn.Linear,
        lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
        lambda a: nn.Linear(int(a["in_features"]), int(a["out_features"]), bias=bool(a["bias"])),
    )


def kind_name(module) -> str | None:
    """The registered name of ``module``'s class, or None if no entry has exactly that class."""
    for name in MODULE_KINDS.names():
        if MODULE_KINDS.get(name)().cls is type(module):
            return name
    return None


def describe_module(module) -> dict[str, Any] | None:
    """``{"class": name, "args": {...}}`` for a module of a registered class, else None."""
    name = kind_name(module)
    if name is None:
        return None
    return {"class": name, "args": MODULE_KINDS.get(name)().describe(module)}


def build_module(record: dict[str, Any], where: str):
    """A module rebuilt from :func:`describe_module`'s record.

    Args:
        record: ``{"class", "args"}``.
        where: What names the record, for messages (the folder and the module path).

    Raises:
        BadInputError: The class is not registered (no installed pass makes it), or its arguments do not fit.
    """
    name = str(record.get("class"))
    if name not in MODULE_KINDS:
        raise BadInputError(
            f"{where} names module class {name!r}, which nothing installed here registers "
            f"(known: {', '.join(MODULE_KINDS.names())})",
            hint="install the edgesmith version or plugin whose pass wrote it; folders never carry code")
    try:
        return MODULE_KINDS.get(name)().build(dict(record.get("args") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{where}: cannot build module class {name!r} from {record.get('args')!r}: {exc}",
                            hint="the folder's edgesmith.json was edited or damaged; save the variant again") from None
