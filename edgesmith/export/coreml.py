"""Core ML exporter: coremltools from ``torch.export``, ML Program format (``model.mlpackage``).

The variant is captured with ``torch.export`` (dynamic batch and sequence axes
where the model allows them) and converted by coremltools (Apple, "coremltools:
Core ML model conversion", ML Program / MIL format) with flexible shapes
(``ct.RangeDim``, bounded where torch.export bounds the axis). If coremltools
rejects the flexible program, the model is converted with fixed shapes and the
bundle's signature loses its dynamic axes; if the ``torch.export`` path fails
altogether, a ``torch.jit.trace`` of the model is tried. Each fallback leaves a
note in the manifest. Parity runs on the ``coreml`` runtime: Core ML itself on
macOS (tier ``verified``), the numpy ML-program evaluator elsewhere (``emulated``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, UsageError, require
from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.quiet import quiet

PRECISIONS = ("fp16", "fp32")
COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}
_TARGET_NAME = re.compile(r"^(iOS|macOS|tvOS|watchOS)\d+(_\d+)?$")
_UNSUPPORTED = (re.compile(r"Unsupported fx node .*?, kind (\S+)"),
                re.compile(r"convert function for op '([^']+)' not implemented"))


@dataclasses.dataclass
class CoremlOptions:
    """Options of the ``coreml`` target.

    Attributes:
        precision: Compute precision of the ML program, ``fp16`` or ``fp32`` (also the parity tolerance row).
        compute_units: Where Core ML may run it: ``all``, ``cpu_only``, ``cpu_and_gpu`` or ``cpu_and_ne``
            (recorded in the bundle; the macOS runtime loads the model with it).
        min_target: Minimum deployment target, as coremltools names it (``iOS17``, ``macOS14``...);
            ML Programs need iOS15 / macOS12 or later.
        max_dim: Upper bound of a dynamic axis that torch.export leaves unbounded (an ML Program's
            flexible shapes need one); axes torch bounds (a transformer's positions) keep torch's bound.
        generation: Export a decoder LM as a generation bundle: a stateful model whose KV cache
            Core ML keeps between predictions (``make_state``; iOS 18 / macOS 15, so the deployment
            target is raised to iOS18 for it); false exports the prefill graph only.
        context: Positions the stateful KV cache holds (prompt and new tokens), capped at the
            model's maximum context; the cache is allocated whole (fp16, Core ML's state type).
    """

    precision: str = "fp16"
    compute_units: str = "all"
    min_target: str = "iOS17"
    max_dim: int = 1024
    generation: bool = True
    context: int = 2048

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"target 'coreml': precision={self.precision!r} is not supported",
                             hint=f"use one of {', '.join(PRECISIONS)}")
        if self.compute_units not in COMPUTE_UNITS:
            raise UsageError(f"target 'coreml': compute_units={self.compute_units!r} is not known",
                             hint=f"use one of {', '.join(COMPUTE_UNITS)}")
        if not _TARGET_NAME.match(self.min_target):
            raise UsageError(f"target 'coreml': min_target={self.min_target!r} is not a deployment target",
                             hint="write it as coremltools does: iOS17, macOS14, tvOS17, watchOS10")
        if self.max_dim < 2:
            raise UsageError(f"target 'coreml': max_dim={self.max_dim} must be at least 2")
        if self.context < 2:
            raise UsageError(f"target 'coreml': context={self.context} must be at least 2 positions")



def _eval_mode(module):
    """Put a module in eval mode; return a function restoring each submodule's flag."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
    except NotImplementedError:  # a torch.export program's module has no modes: it is traced for inference
        return lambda: None
    return lambda: [m.train(t) for m, t in flags]


class _Failed(Exception):
    """One conversion attempt failed (the next one is tried).

    Args:
        reason: What failed, ``op 'name' ...`` where coremltools named an op it cannot convert.
        capture: torch.export could not capture the model (no conversion was tried).
    """

    def __init__(self, reason: str, capture: bool = False):
        super().__init__(reason)
        self.capture = capture
        self.names_op = reason.startswith("op ")


@EXPORTERS.register
class CoremlExporter(Exporter):
    """Variant -> ``model.mlpackage`` (ML Program), checked on Core ML or its numpy evaluator."""

    name = "coreml"
    runtime = "coreml"
    model_file = "model.mlpackage"
    Options = CoremlOptions
    generates = True

    def generation_variant(self, variant):
        """A decoder LM's stateful generation step (:func:`edgesmith.models.lm_state.stateful_variant`)."""
        from edgesmith.models.lm_state import stateful_variant
        from edgesmith.runtimes.kv import state_feeds

        return stateful_variant(variant, self.options.context, state_feeds)

    def _export_impl(self, variant, stage: Path) -> None:
        if variant.module is None:
            raise BadInputError(f"{variant.name} is an ONNX model; the coreml target converts PyTorch models",
                                hint="export from the PyTorch model (coremltools has no ONNX frontend)")
        with quiet("coremltools", "torch.export", "torch._dynamo", stdout=True, stderr=True):
            ct = require("coremltools", "coreml")
            target = self._target(ct)
            if _states(variant) and target.value < ct.target.iOS18.value:  # states came with iOS 18
                target = ct.target.iOS18
                self.written_options["min_target"] = "iOS18"
                variant.notes.append(f"coreml: min_target raised from {self.options.min_target} to iOS18 "
                                     "(a stateful KV cache needs iOS 18 / macOS 15)")
            restore = _eval_mode(variant.module)
            try:
                mlmodel = self._convert(ct, variant, target)
            finally:
                restore()
            mlmodel.save(str(stage / self.model_file))

    def _parity(self, bundle, variant):
        """The golden feeds (a stateful step's: a prefill from an empty cache), then for a stateful
        step one decode step after that prefill with the state the runtime kept, against the
        source module's same two steps."""
        result = super()._parity(bundle, variant)
        if not _states(variant):
            return result
        from edgesmith.parity import compare
        from edgesmith.runtimes import open_runtime
        from edgesmith.runtimes.kv import state_feeds

        ids = variant.example["input_ids"]
        variant.module.reset()
        token = variant.run()["logits"][:, -1:].argmax(-1).astype(np.int64)
        reference = variant.run(state_feeds(token, ids.shape[1]))
        runtime = open_runtime(bundle)
        stepper = runtime.kv_stepper(bundle.manifest.generation)
        stepper.step(ids, 0)
        got = {"logits": stepper.step(token, ids.shape[1])[None, None]}
        more = compare(reference, got, precision=bundle.manifest.precision, tier=runtime.tier, classify=True)
        result.failures += [f"{f} (decode)" for f in more.failures]
        result.outputs += [dataclasses.replace(o, name=f"{o.name}@decode") for o in more.outputs]
        result.passed = not result.failures
        return result

    def _target(self, ct):
        target = getattr(ct.target, self.options.min_target, None)
        if target is None:
            known = ", ".join(t.name for t in ct.target)
            raise UsageError(f"target 'coreml': coremltools {ct.__version__} has no min_target "
                             f"{self.options.min_target!r}", hint=f"use one of {known}")
        if target.value < ct.target.iOS15.value:
            raise UsageError(f"target 'coreml': min_target={self.options.min_target} is too old for an ML Program",
                             hint="use iOS15 / macOS12 or later")
        return target

    def _convert(self, ct, variant, target):
        """torch.export with flexible shapes, then fixed shapes, then torch.jit.trace; the first that converts."""
        failures: list[_Failed] = []
        if any(s.dynamic for s in variant.inputs):
            try:
                return self._from_export(ct, variant, target)
            except _Failed as exc:
                failures.append(exc)
            if not failures[-1].capture:
                variant.notes.append(f"coreml: flexible shapes failed ({failures[-1]}); converted with fixed shapes")
            _fix_shapes(variant)
        if _states(variant):  # fixed shapes or a trace would not make a generation step
            raise BadInputError(f"Core ML cannot convert the generation step of {variant.name}: {failures[-1]}",
                                hint="export with -O generation=false for the prefill graph only")
        if not any(f.capture for f in failures):
            try:
                return self._from_export(ct, variant, target)
            except _Failed as exc:
                failures.append(exc)
        try:
            model = self._from_trace(ct, variant, target)
        except _Failed as exc:
            failures.append(exc)
        else:
            variant.notes.append(f"coreml: converted from torch.jit.trace (torch.export path failed: {failures[-1]})")
            return model
        reason = next((f for f in failures if f.names_op), failures[0])
        raise BadInputError(f"Core ML cannot convert {variant.name}: {reason}",
                            hint="replace the op named above, or register a coremltools conversion for it")

    def _common(self, ct, variant) -> dict:
        outputs = [ct.TensorType(name=s.name, dtype=np.float32) if s.dtype.startswith("float")
                   else ct.TensorType(name=s.name) for s in variant.outputs]
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(shape), dtype=np.float16), name=name)
                  for name, shape in _states(variant).items()]
        return dict(
            outputs=outputs, convert_to="mlprogram", skip_model_load=True, **({"states": states} if states else {}),
            compute_precision=ct.transform.FP16ComputePrecision(op_selector=_in_fp16)
            if self.options.precision == "fp16" else ct.precision.FLOAT32,
            compute_units=ct.ComputeUnit[COMPUTE_UNITS[self.options.compute_units]],
        )

    def _from_export(self, ct, variant, target):
        from edgesmith.models.program import export_program, output_dynamic_axes
        from edgesmith.specs import TensorSpec

        try:
            program = export_program(variant)
        except BadInputError as exc:
            raise _Failed(exc.message, capture=True) from exc
        axes = output_dynamic_axes(program, variant.inputs)
        variant.outputs = [TensorSpec(s.name, s.shape, s.dtype, a) for s, a in zip(variant.outputs, axes)]
        bounds = _axis_bounds(program, variant.inputs)
        inputs = [ct.TensorType(name=s.name, dtype=_input_dtype(s.dtype), shape=ct.Shape(
            [ct.RangeDim(1, bounds.get((s.name, i), max(self.options.max_dim, d)), default=d) if i in s.dynamic else d
             for i, d in enumerate(s.shape)])) for s in variant.inputs]
        try:
            program = _drop_aliases(program.run_decompositions(_decompositions()))
            return ct.convert(program, inputs=inputs, minimum_deployment_target=target, **self._common(ct, variant))
        except Exception as exc:  # coremltools raises many types, several of them bare
            raise _Failed(_reason(exc)) from exc

    def _from_trace(self, ct, variant, target):
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(variant.example[s.name])) for s in variant.inputs)
        try:
            traced = torch.jit.trace(variant.module, args, check_trace=False, strict=False)
            inputs = [ct.TensorType(name=s.name, shape=s.shape, dtype=_input_dtype(s.dtype)) for s in variant.inputs]
            return ct.convert(traced, inputs=inputs, minimum_deployment_target=target, **self._common(ct, variant))
        except Exception as exc:
            raise _Failed(_reason(exc)) from exc


# a norm's statistics: squares and their mean overflow fp16 (65504) once activations pass ~256, which
# language models' residual streams do (SmolLM2's reach 650); Core ML computes these in fp32
_NORM_STATISTICS = ("pow", "reduce_mean", "reduce_sum_square", "rsqrt", "sqrt")


def _in_fp16(op) -> bool:
    """Whether an op of an fp16 program computes in fp16: all but a norm's statistics (and the
    epsilon added to their mean), which stay in fp32 so that large activations do not overflow."""
    if op.op_type in _NORM_STATISTICS:
        return False
    if op.op_type == "add":
        producers = {getattr(getattr(v, "op", None), "op_type", None) for v in op.inputs.values()}
        return "reduce_mean" not in producers
    return True


def _states(variant) -> dict[str, tuple[int, ...]]:
    """A stateful step's buffers that become Core ML states (its KV cache), name -> shape."""
    names = getattr(variant.module, "state_names", None) or []
    return {n: tuple(getattr(variant.module, n).shape) for n in names}


def _fix_shapes(variant) -> None:
    """Drop every dynamic axis from the (exporter's private copy of the) variant's signature."""
    from edgesmith.specs import TensorSpec

    variant.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.inputs]
    variant.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.outputs]


def _input_dtype(dtype: str):
    """Core ML multi-arrays hold fp32, fp16 or int32: other integers (and bools) go in as int32."""
    return {"float16": np.float16, "float32": np.float32, "float64": np.float32}.get(dtype, np.int32)


def _axis_bounds(program, inputs) -> dict[tuple[str, int], int]:
    """Upper bounds torch.export found for dynamic axes (e.g. a transformer's position limit)."""
    import torch

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    bounds = {}
    for spec, ph in zip(inputs, program.graph_signature.user_inputs):
        val = placeholders[ph].meta.get("val")
        for axis in spec.dynamic:
            dim = val.shape[axis] if val is not None else None
            if isinstance(dim, torch.SymInt):
                vr = program.range_constraints.get(dim.node.expr)
                upper = getattr(vr, "upper", None)
                if getattr(upper, "is_Integer", False):  # a number, not torch's int_oo
                    bounds[(spec.name, axis)] = int(upper)
    return bounds


def _drop_aliases(program):
    """Remove ``aten.alias`` nodes (views that copy nothing; coremltools has no conversion for them)."""
    import torch

    graph = program.graph_module.graph
    aliases = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.alias.default]
    for node in aliases:
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    if aliases:
        program.graph_module.recompile()
    return program


@functools.cache
def _decompositions():
    """torch's default decompositions, minus the ops coremltools converts itself (it lacks some, e.g. new_ones)."""
    from torch.export import default_decompositions

    table = default_decompositions()
    try:
        from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
        from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind
    except ImportError:  # another coremltools layout: decompose only what torch must
        return {}
    for op in list(table.keys()):
        if sanitize_op_kind(op.name()) in _TORCH_OPS_REGISTRY:
            table.pop(op)
    return table


def _reason(exc: BaseException) -> str:
    """``op 'name' is not supported by coremltools`` where the error names an op, else its first line."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    for pattern in _UNSUPPORTED:
        m = pattern.search(text)
        if m:
            return f"op {m[1]!r} is not supported by coremltools"
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
