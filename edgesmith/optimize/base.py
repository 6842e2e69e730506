"""The pass registry, the base class every pass derives from, and what the API hands a pass.

:meth:`Pass.apply` owns the work every pass shares (the checks, the copy of the module, timing,
recording the pass on the variant); a pass declares what it needs as class attributes and
implements only :meth:`Pass._apply_impl`. A pass never imports the layers above it (api, export,
profiles): what it needs from them, such as a latency probe, comes in a :class:`PassContext`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, ClassVar

from edgesmith.errors import BadInputError, UsageError
from edgesmith.registry import Registry

PASSES: Registry[type[Pass]] = Registry("pass", "edgesmith.passes")

# variant.task -> how a refusal names it
_TASK_NAMES = {"lm": "a language model", "classifier": "a classifier", "encoder": "an encoder",
               "generic": "a generic model"}

Probe = Callable[[Any], "tuple[float, str]"]


@dataclasses.dataclass
class PassOptions:
    """Options shared by every pass (none yet); subclass per pass."""


@dataclasses.dataclass(frozen=True)
class PassContext:
    """Services of the layers above the passes, built by :func:`edgesmith.api.optimize`.

    Attributes:
        latency_probe: ``latency_probe(variant, device, runs) -> probe``, where ``probe(module)`` returns
            ``(p50 ms, mode)`` of ``module`` (``variant``'s signature) exported and profiled on ``device``
            (``mode``: ``measured`` or ``predicted``). None where nobody can export or profile.
    """

    latency_probe: Callable[[Any, str, int], Probe] | None = None

    def probe(self, owner: str, variant, device: str, runs: int = 30) -> Probe:
        """The latency probe of ``variant`` on ``device``.

        Args:
            owner: Who asks, for the message (``pass 'matformer'``).
            variant: The variant whose signature the probed modules share.
            device: ``host`` (measured) or a catalog device (predicted).
            runs: Timed runs per measurement.

        Raises:
            UsageError: This context has no latency probe (the pass ran outside :func:`edgesmith.api.optimize`).
        """
        if self.latency_probe is None:
            raise UsageError(f"{owner}: a latency budget needs a latency probe, which this call did not provide",
                             hint="apply the pass through edgesmith.api.optimize (or edgesmith optimize)")
        return self.latency_probe(variant, device, runs)


class Pass:
    """Base class of passes: ``apply`` checks, copies and records; ``_apply_impl`` transforms.

    Subclasses set ``name`` (the registry key: ``@PASSES.register`` reads it) and ``Options``,
    declare what ``apply`` checks and prepares (``tasks``, ``task_hint``, ``copies_module``),
    and implement ``_apply_impl``.

    Attributes:
        name: The pass's name (``-p NAME``), its registry key.
        Options: The options dataclass; its fields are the ``-p name:k=v`` keys.
        tasks: The ``variant.task`` values the pass accepts (empty: any).
        task_hint: What to do instead, shown when ``tasks`` refuses a variant.
        copies_module: ``_apply_impl`` receives a deep copy of the module, which it may change in place.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = PassOptions
    tasks: ClassVar[tuple[str, ...]] = ()
    task_hint: ClassVar[str] = ""
    copies_module: ClassVar[bool] = False

    def __init__(self, options: Any | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.options = options if options is not None else self.Options()
        self.progress = progress  # (description, completed, total), for passes that take a while
        self.context = PassContext()

    @property
    def owner(self) -> str:
        """The pass as its messages name it: ``pass 'sla'``."""
        return f"pass {self.name!r}"

    def refuse(self, message: str, hint: str | None = None) -> BadInputError:
        """The error for a model this pass cannot take: ``pass 'NAME': message``."""
        return BadInputError(f"{self.owner}: {message}", hint=hint)

    def apply(self, variant, context: PassContext | None = None):
        """Return a new variant with this pass applied and recorded.

        Args:
            variant: A variant with a torch module.
            context: What the API provides to passes (a latency probe); None: nothing.

        Returns:
            The new variant; its ``passes`` ends with ``{"name", "params", "report", "seconds"}``.

        Raises:
            BadInputError: If the variant has no module (ONNX sources cannot be optimized), or
                its task is not one of ``tasks``.
        """
        if variant.module is None:
            raise BadInputError(
                f"pass {self.name!r} needs a PyTorch model; {variant.name} is ONNX",
                hint="load the model from .pt2, a checkpoint, py: or zoo:",
            )
        if self.tasks and variant.task not in self.tasks:
            wanted = " or ".join(_TASK_NAMES.get(t, f"a {t} model") for t in self.tasks)
            raise self.refuse(f"{variant.name} is not {wanted} (task {variant.task!r})", hint=self.task_hint or None)
        start = time.perf_counter()
        self.outputs, self.notes = None, []
        self.context = context if context is not None else PassContext()
        module = copy.deepcopy(variant.module) if self.copies_module else variant.module
        module, report = self._apply_impl(variant, module)
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

    def _apply_impl(self, variant, module) -> tuple[Any, dict[str, Any]]:
        """Transform the module; return the new module and a report dict.

        Args:
            variant: The variant the pass applies to (its ``module`` is the original: a teacher, a reference).
            module: A deep copy of ``variant.module`` to change when ``copies_module``, else
                ``variant.module`` itself, which the pass must not change.

        A pass that changes what the model returns sets ``self.outputs`` (the new output
        signature); warnings for the user go to ``self.notes``. Neither touches ``variant``.
        """
        raise NotImplementedError
