"""MLX exporter: the variant as an exported MLX function (``model.mlxfn``).

MLX (``ml-explore/mlx``) is Apple's array framework for Apple silicon (unified
memory, Metal GPU), with a CPU backend on Linux (``mlx[cpu]``). There is no
converter from PyTorch, so this target translates the graph itself:

1. ``torch.export`` captures the variant with its dynamic axes
   (:func:`~edgesmith.models.program.export_program`).
2. ``run_decompositions`` lowers it to core ATen, keeping whole every op that has
   a translation (``linear``, ``conv2d``, ``layer_norm``,
   ``scaled_dot_product_attention``...; see :mod:`edgesmith.export.mlx.graph`).
3. Each node is replaced by MLX operations from the op table
   (:mod:`edgesmith.export.mlx.context`; the translations are in ``ops``,
   ``shapes`` and ``layers``); an op without a translation is refused
   before anything is written, naming the op, the node and its module.
4. ``mx.export_function`` records the function into ``model.mlxfn``, with the
   weights embedded as constants (one self-contained file, fp32).

Shapes: by default the function is exported *shapeless*, so the bundle keeps
the variant's dynamic axes (batch, sequence). MLX infers shapes again on every
call of a shapeless function, which only some primitives can do; the
translation builds every size-dependent value from shape-agnostic operations,
and where that is impossible it says so and this exporter exports fixed shapes
instead (the example's shapes, the dynamic axes dropped, a note in the
manifest). Because some MLX primitives keep their traced shape silently, and
MLX can crash on shapes a shapeless function does not really support, the
function is first run at two other shapes (every dynamic axis one longer, and
every dynamic axis 1 long) in a child process and compared with PyTorch; only
then is it accepted. Parity then runs on the MLX runtime (tier ``verified``).

Language models (``generates``; ``-O generation=false`` turns it off) export as
their generation step (:mod:`edgesmith.export.generation`): one function for the
prefill (an empty past) and every decode step, whose cache grows by a token each
step. It is exported shapeless, like any variant, not per shape: ``.mlxfn`` files
hold one traced graph each, so fixed shapes would need a function per cache length
(or per length bucket, with the cache padded and masked: more work per step and
a maximum context baked into the file), while a shapeless function follows the
past and sequence axes at no cost. What makes the step shape-agnostic: the cache
positions are a dynamic size used as a value (``past + arange(sequence)``), which
becomes a run-time scalar read from the past's axis, and the mask and the grown
cache are ``past + sequence`` long, a sum of axes built by concatenating the pieces
(:mod:`edgesmith.export.mlx.context`). The shapeless check runs where the step
runs: the prefill at P = 0, one decode step (S = 1) and one more batch row.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, require
from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.export.generation import extra_feeds, is_step
from edgesmith.quiet import quiet


@dataclasses.dataclass
class MlxOptions:
    """Options of the ``mlx`` target.

    Attributes:
        shapeless: Export a shape-agnostic function that keeps the variant's dynamic axes;
            where the model cannot be exported that way, fixed shapes are exported with a
            note saying why. False always exports the example's fixed shapes.
        generation: Export a decoder LM as a generation bundle (one graph with its KV cache,
            the tokenizer, the chat template); false keeps the prefill-only graph.
    """

    shapeless: bool = True
    generation: bool = True



@EXPORTERS.register
class MlxExporter(Exporter):
    """Variant -> ``model.mlxfn``, verified on MLX."""

    name = "mlx"
    runtime = "mlx"
    model_file = "model.mlxfn"
    Options = MlxOptions
    generates = True

    def _export_impl(self, variant, stage: Path) -> None:
        require("mlx.core", "mlx")
        if variant.module is None:
            raise BadInputError(f"{variant.name} is an ONNX model; the mlx target needs a PyTorch model")
        from edgesmith.export.mlx.graph import MlxGraph, decompose
        from edgesmith.models.program import export_program, output_dynamic_axes
        from edgesmith.specs import TensorSpec

        program = export_program(variant)
        with quiet("torch.export"):
            program = decompose(program)
        graph = MlxGraph(program, [s.dynamic for s in variant.inputs])
        path = stage / self.model_file
        self.details["mlx"] = {"shapeless": True, "shapeless_asked": self.options.shapeless}
        if self.options.shapeless and any(s.dynamic for s in variant.inputs):
            problem = self._export_shapeless(graph, variant, path)
            if problem is None:
                axes = output_dynamic_axes(program, variant.inputs)
                # the variant's own names win: a sum of axes (a cache's past + sequence) has no input axis's name
                variant.outputs = [TensorSpec(s.name, s.shape, s.dtype, {**a, **s.dynamic})
                                   for s, a in zip(variant.outputs, axes)]
                return
            variant.notes.append(f"mlx: exported with fixed shapes, {problem}")
        # what the file holds, whatever was asked (a fallback, or no dynamic axis to keep)
        self.details["mlx"]["shapeless"] = False
        self.written_options["shapeless"] = False
        variant.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.inputs]
        variant.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.outputs]
        _save(graph.function(shapeless=False), path, variant, variant.example, shapeless=False)

    def _export_shapeless(self, graph, variant, path: Path) -> str | None:
        """Export shapeless and check it at other shapes; returns why it cannot be used, or None.

        The check runs in a child process: MLX can crash (segfault) on shapes a
        shapeless function does not really support, and that must end in a
        fixed-shape export, not in a dead exporter.
        """
        from edgesmith.export.mlx.graph import NeedsStatic
        from edgesmith.parity import compare

        try:
            _save(graph.function(shapeless=True), path, variant, trace_feeds(variant), shapeless=True)
        except NeedsStatic as exc:
            return f"the graph is not shape-agnostic: {exc}"
        checks = check_feeds(variant, graph.program)
        names = [s.name for s in variant.inputs]
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, feeds in enumerate(checks):
                np.savez(Path(tmp) / f"in{i}.npz", **feeds)
                files += [str(Path(tmp) / f"in{i}.npz"), str(Path(tmp) / f"out{i}.npz")]
            proc = subprocess.run([sys.executable, "-c", _RUN_CHILD, str(path), json.dumps(names), *files],
                                  capture_output=True, text=True)
            for i, feeds in enumerate(checks):
                shape = "x".join(str(d) for d in feeds[names[0]].shape)
                out = Path(tmp) / f"out{i}.npz"
                if not out.exists():
                    lines = proc.stderr.strip().splitlines()
                    why = (f"crashed with signal {-proc.returncode}" if proc.returncode < 0
                           else lines[-1][:200] if lines else f"exit code {proc.returncode}")
                    return f"MLX failed running the shapeless function at {shape} ({why})"
                try:
                    reference = variant.run(feeds)
                except Exception:  # noqa: BLE001 - the source model itself rejects this shape: nothing to check
                    continue
                with np.load(out) as data:
                    got = {s.name: data[f"arr_{j}"] for j, s in enumerate(variant.outputs)}
                wrong = [f"{n} has shape {got[n].shape}, expected {r.shape}" for n, r in reference.items()
                         if got[n].shape != r.shape]
                if wrong:
                    return f"the shapeless function was wrong at {shape}: {'; '.join(wrong)}"
                result = compare(reference, got, precision=self.precision, tier="verified", classify=variant.classify)
                if not result.passed:
                    return f"the shapeless function was wrong at {shape}: {'; '.join(result.failures)}"
        return None


# Runs an exported function on input files in a fresh process:
# python -c _RUN_CHILD MODEL JSON_INPUT_NAMES IN.npz OUT.npz [IN.npz OUT.npz ...]
_RUN_CHILD = """
import json
import sys
import mlx.core as mx
import numpy as np
fn = mx.import_function(sys.argv[1])
names = json.loads(sys.argv[2])
for src, dst in zip(sys.argv[3::2], sys.argv[4::2]):
    with np.load(src) as data:
        out = fn(*[mx.array(data[n]) for n in names])
    mx.eval(out)
    np.savez(dst, *[np.array(o) for o in out])
"""


def trace_feeds(variant) -> dict[str, np.ndarray]:
    """The example with every dynamic axis at least 2 long, to trace a shapeless function.

    At 2 or more, a dynamic size is never mistaken for a static size-1 axis.
    """
    return _resized(variant, {n: max(2, size) for n, size in _axis_lengths(variant).items()})


def check_feeds(variant, program) -> list[dict[str, np.ndarray]]:
    """Inputs to check a shapeless function at: every dynamic axis one longer, and at its smallest.

    The smallest is 1, or the lower bound torch.export put on the axis when that is
    above 2 (torch's ranges start at 2 by default, which is not a property of the model).
    A generation step's axes are tied (the mask is ``past + sequence`` long), so it is
    checked where it runs instead: the prefill (an empty past), one decode step, and the
    example at one more batch row.
    """
    if is_step(variant):
        batch = {k: np.concatenate([v, v[:1]], axis=0) for k, v in variant.example.items()}
        return [feeds for feeds, _, _ in extra_feeds(variant)] + [batch]
    lengths = _axis_lengths(variant)
    lowest = {}
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec, name in zip(variant.inputs, program.graph_signature.user_inputs):
        shape = placeholders[name].meta["val"].shape
        for axis, dim in spec.dynamic.items():
            bound = program.range_constraints.get(getattr(shape[axis], "node", None) and shape[axis].node.expr)
            lower = int(bound.lower) if bound is not None else 1
            lowest[dim] = max(lowest.get(dim, 1), lower if lower > 2 else 1)
    return [_resized(variant, {n: size + 1 for n, size in lengths.items()}), _resized(variant, lowest)]


def _axis_lengths(variant) -> dict[str, int]:
    """Dynamic axis name -> its length in the example."""
    lengths = {}
    for spec in variant.inputs:
        for axis, name in spec.dynamic.items():
            lengths.setdefault(name, variant.example[spec.name].shape[axis])
    return lengths


def _resized(variant, lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """The example with each dynamic axis resized to ``lengths[name]``.

    Entries are repeated from the start of the axis to lengthen it, and cut from its end to shorten it.
    """
    feeds = {}
    for spec in variant.inputs:
        arr = variant.example[spec.name]
        for axis, name in spec.dynamic.items():
            want = lengths[name]
            arr = arr[(slice(None),) * axis + (slice(0, want),)]
            while arr.shape[axis] < want:
                arr = np.concatenate([arr, arr[(slice(None),) * axis + (slice(0, want - arr.shape[axis]),)]],
                                     axis=axis)
        feeds[spec.name] = np.ascontiguousarray(arr)
    return feeds


def _save(fn, path: Path, variant, example: dict[str, np.ndarray], shapeless: bool) -> None:
    """Trace ``fn`` on the example and write it, with the signature as metadata."""
    mx = require("mlx.core", "mlx")
    args = [mx.array(example[s.name]) for s in variant.inputs]
    metadata = json.dumps({"inputs": [s.name for s in variant.inputs], "outputs": [s.name for s in variant.outputs],
                           "shapeless": shapeless})
    mx.export_function(str(path), fn, *args, shapeless=shapeless, metadata=metadata)
