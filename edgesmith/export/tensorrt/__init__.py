"""TensorRT exporter: a TensorRT-ready ONNX, checked op by op, and the engine where a GPU is here.

NVIDIA TensorRT builds an engine for one GPU from an ONNX graph. This exporter:

1. translates the variant to ONNX (the ``onnx`` exporter's translation) with static
   shapes, or with the dynamic axes the user gives min/opt/max shapes for (one
   optimisation profile), constants folded;
2. checks every node against TensorRT's documented ONNX operator support
   (:mod:`edgesmith.export.tensorrt.support`, a table naming the TensorRT version it
   describes); an op TensorRT would refuse fails the export by name (exit code 3)
   before anything is written;
3. where ``tensorrt`` and a CUDA GPU are present, builds ``model.engine``
   (precision, profile, timing cache) and checks parity on it (tier ``verified``).
   Elsewhere the bundle is tier ``structural``: ``model.onnx``, the exact
   ``trtexec`` line in ``build_engine.sh`` and a README; ``edgesmith build-engine
   BUNDLE`` on the target machine completes the same bundle (engine, parity,
   latency).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgesmith.errors import BadInputError, UsageError
from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.parity import ParityResult
from edgesmith.runtimes.tensorrt import ENGINE_FILE, ONNX_FILE

PRECISIONS = ("fp32", "fp16")
_SHAPES = re.compile(r"^\s*([^:,\s]+)\s*:\s*(\d+(?:x\d+)*)\s*$")


@dataclasses.dataclass
class TensorrtOptions:
    """Options of the ``tensorrt`` target.

    Attributes:
        precision: ``fp16`` (TensorRT may pick half-precision kernels; parity at the fp16 tolerance) or ``fp32``.
        min_shapes: Smallest shape of each dynamic input, trtexec's form ``name:1x16,other:1x16``. Empty
            (with opt/max) exports static shapes, the model's example shapes.
        opt_shapes: Shapes TensorRT tunes for (default: the example shapes).
        max_shapes: Largest shapes (default: the example shapes).
        opset: ONNX opset of the graph (TensorRT's table says which it takes).
        workspace_mb: Builder workspace limit, MiB.
        timing_cache: Timing cache file for engine builds (default: ``$EDGESMITH_CACHE/tensorrt/timing.cache``).
        build: Build the engine where TensorRT and a GPU are present (false: always a structural bundle).
    """

    precision: str = "fp16"
    min_shapes: str = ""
    opt_shapes: str = ""
    max_shapes: str = ""
    opset: int = 20
    workspace_mb: int = 1024
    timing_cache: str = ""
    build: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"target 'tensorrt': precision={self.precision!r} is not supported",
                             hint=f"use one of {', '.join(PRECISIONS)}")
        if self.workspace_mb < 1:
            raise UsageError(f"target 'tensorrt': workspace_mb={self.workspace_mb} must be at least 1")
        for key in ("min_shapes", "opt_shapes", "max_shapes"):
            parse_shapes(getattr(self, key), key)


def parse_shapes(text: str, key: str) -> dict[str, tuple[int, ...]]:
    """Read trtexec's ``name:1x3x224x224,other:1x16`` into name -> shape.

    Raises:
        UsageError: An item not of that form, or a name given twice.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = _SHAPES.match(item)
        if not m:
            raise UsageError(f"target 'tensorrt': {key}: cannot read {item!r}",
                             hint="write name:1x3x224x224, several separated by commas")
        if m[1] in shapes:
            raise UsageError(f"target 'tensorrt': {key} gives {m[1]!r} twice")
        shapes[m[1]] = tuple(int(d) for d in m[2].split("x"))
    return shapes


@EXPORTERS.register
class TensorrtExporter(Exporter):
    """Variant -> TensorRT-ready ``model.onnx`` (+ ``model.engine`` where TensorRT and a GPU are here)."""

    name = "tensorrt"
    runtime = "tensorrt"
    model_file = ONNX_FILE
    Options = TensorrtOptions

    @classmethod
    def describe(cls, bundle, parity) -> list:
        """What the export checked, and how to finish a structural bundle on the device."""
        info = bundle.manifest.details.get("tensorrt")
        if not info:
            return []
        support = info["support"]
        ops = ", ".join(f"{op} {n}" for op, n in sorted(support["op_counts"].items(), key=lambda kv: -kv[1]))
        lines = [f"TensorRT {support['tensorrt']} support check: {support['nodes']} nodes, all supported ({ops})"]
        if info.get("engine"):
            e = info["engine"]
            return [*lines, f"engine built: TensorRT {e['tensorrt']} on {e['gpu']}, {e['precision']}, "
                            f"{e['build_s']:.1f} s"]
        return [*lines, {"markup": f"[bold]structural[/]: {'; '.join(parity.checks)}. To finish on the target "
                                   "machine:"},
                f"  edgesmith build-engine {bundle.path}", f"  (or, with TensorRT alone: {info['trtexec']})"]

    def _export_impl(self, variant, stage: Path) -> None:
        import onnx

        from edgesmith.export.onnx import OnnxExporter, OnnxOptions
        from edgesmith.export.tensorrt.support import check_onnx, first_problem_error
        from edgesmith.runtimes.tensorrt import tensorrt_unavailable
        from edgesmith.runtimes.tensorrt.build import build_engine, trtexec_command

        o = self.options
        self.model_file = ONNX_FILE
        dynamic = bool(o.min_shapes or o.opt_shapes or o.max_shapes)
        shapes = self._profile(variant) if dynamic else {}
        onnx_exporter = OnnxExporter(OnnxOptions(opset=o.opset, dynamic=dynamic, optimize=True,
                                                fuse=False))  # ONNX Runtime contrib ops: not TensorRT's
        if variant.module is None and not dynamic:
            _require_static(variant)
        onnx_exporter._export_impl(variant, stage)
        model = onnx.load(str(stage / ONNX_FILE), load_external_data=False)
        report = check_onnx(model)
        if not report.clean:
            raise first_problem_error(report, variant.name)
        variant.notes.extend(f"tensorrt: {n}" for n in report.notes)
        command = trtexec_command(dataclasses.asdict(o), shapes)
        info = {"support": report.to_dict(), "shapes": {n: {k: list(v) for k, v in s.items()} for n, s in shapes.items()},
                "trtexec": command, "engine": None}
        reason = tensorrt_unavailable() if o.build else "the engine build was turned off (-O build=false)"
        if reason is None:
            info["engine"] = build_engine(stage / ONNX_FILE, stage / ENGINE_FILE, precision=o.precision,
                                          shapes=info["shapes"], workspace_mb=o.workspace_mb,
                                          timing_cache=o.timing_cache or None)
            self.model_file = ENGINE_FILE
        else:
            info["not_built"] = reason
            variant.notes.append(f"tensorrt: structural bundle, no engine built: {reason}; "
                                 f"run `edgesmith build-engine BUNDLE` on the target machine")
        self.details = {"tensorrt": info}
        (stage / "build_engine.sh").write_text(_SCRIPT.format(command=command))
        (stage / "README.md").write_text(_readme(variant, o, info))

    def _profile(self, variant) -> dict[str, dict[str, tuple[int, ...]]]:
        """Input -> min/opt/max shapes, each checked against the model's axes and its example shape."""
        o = self.options
        given = {k: parse_shapes(getattr(o, f"{k}_shapes"), f"{k}_shapes") for k in ("min", "opt", "max")}
        names = {s.name: s for s in variant.inputs}
        for key, shapes in given.items():
            unknown = sorted(set(shapes) - set(names))
            if unknown:
                raise UsageError(f"target 'tensorrt': {key}_shapes names {unknown[0]!r}, not an input of "
                                 f"{variant.name}", hint=f"its inputs: {', '.join(names)}")
        # a dynamic axis named the same in several inputs (batch, sequence) takes one range: an input the
        # options leave out follows the ones they give
        axes: dict[tuple[str, str], int] = {}
        for spec in variant.inputs:
            for key in ("min", "opt", "max"):
                shape = given[key].get(spec.name)
                for axis, symbol in spec.dynamic.items():
                    if shape is not None and axis < len(shape):
                        seen = axes.setdefault((symbol, key), shape[axis])
                        if seen != shape[axis]:
                            raise BadInputError(f"target 'tensorrt': axis {symbol!r} is {seen} in one input's "
                                                f"{key}_shapes and {shape[axis]} in {spec.name}'s",
                                                hint="inputs that share an axis need the same range for it")
        profile = {}
        for spec in variant.inputs:
            example = tuple(spec.shape)
            if not spec.dynamic:
                for key, shapes in given.items():
                    if spec.name in shapes and shapes[spec.name] != example:
                        raise BadInputError(f"target 'tensorrt': input {spec.name} has fixed shape "
                                            f"{'x'.join(map(str, example))}, {key}_shapes gives "
                                            f"{'x'.join(map(str, shapes[spec.name]))}")
                continue
            entry = {}
            for key in ("min", "opt", "max"):
                entry[key] = given[key].get(spec.name) or tuple(
                    axes.get((spec.dynamic[i], key), d) if i in spec.dynamic else d for i, d in enumerate(example))
            for key, shape in entry.items():
                fixed = [i for i, (a, b) in enumerate(zip(shape, example)) if i not in spec.dynamic and a != b]
                if len(shape) != len(example) or fixed:
                    raise BadInputError(f"target 'tensorrt': {key}_shapes {spec.name}:{'x'.join(map(str, shape))} "
                                        f"does not fit {spec.describe()}", hint="only the named axes may change")
            if not all(a <= b <= c for a, b, c in zip(entry["min"], entry["opt"], entry["max"])):
                shown = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in entry.items())
                raise BadInputError(f"target 'tensorrt': input {spec.name} needs min <= opt <= max on every axis "
                                    f"({shown}; opt defaults to the example shape)")
            if not all(a <= e <= c for a, e, c in zip(entry["min"], example, entry["max"])):
                raise BadInputError(f"target 'tensorrt': the profile of {spec.name} does not hold the example "
                                    f"shape {'x'.join(map(str, example))} the parity check runs",
                                    hint="widen min_shapes / max_shapes to include it")
            profile[spec.name] = entry
        return profile

    def _parity(self, bundle, variant) -> ParityResult:
        """On the engine where one was built; else ``structural``: what was checked on the graph.

        Without an engine the tier stays ``structural`` (the engine never ran), but the
        TensorRT-ready ``model.onnx`` is run on ONNX Runtime against the source model at the
        fp32 tolerance, so the result carries that graph's numbers and a wrong graph fails here.
        """
        if self.model_file == ENGINE_FILE:
            return super()._parity(bundle, variant)
        info = self.details["tensorrt"]
        support = info["support"]
        shapes = ("static shapes" if not info["shapes"] else "profile " + "; ".join(
            f"{n} {'x'.join(map(str, s['min']))}..{'x'.join(map(str, s['max']))}" for n, s in info["shapes"].items()))
        checks = [f"{support['nodes']} nodes, {len(support['op_counts'])} op types, all in TensorRT "
                  f"{support['tensorrt']}'s ONNX support table", shapes, f"precision {self.precision}"]
        graph = _graph_on_onnxruntime(bundle, variant)
        if graph is None:
            return ParityResult(tier="structural", precision=self.precision, passed=True, checks=checks)
        checks.append(f"the metrics are model.onnx's (fp32) on ONNX Runtime against the source model, at the fp32 "
                      f"tolerance; the {self.precision} engine is not built here")
        return ParityResult(tier="structural", precision="fp32", passed=graph.passed, outputs=graph.outputs,
                            tolerance=graph.tolerance, failures=graph.failures, checks=checks)

    def _extra_feeds(self, variant) -> list[tuple[dict, dict]]:
        """A second batch size only where the optimisation profile holds it."""
        extra = super()._extra_feeds(variant)
        shapes = self.details.get("tensorrt", {}).get("shapes") or {}
        return [(f, r) for f, r in extra
                if all(n in shapes and f[n].shape[0] <= shapes[n]["max"][0] for n in f)]


def _graph_on_onnxruntime(bundle, variant) -> ParityResult | None:
    """``model.onnx`` run on ONNX Runtime (CPU) against the source model, or None without ONNX Runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from edgesmith.parity import compare

    feeds, reference = bundle.golden()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(bundle.path / ONNX_FILE), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})))
    return compare(reference, got, precision="fp32", tier="structural", classify=variant.classify)


def _require_static(variant) -> None:
    """An ONNX source is copied as it is: with dynamic axes, TensorRT needs a profile for them."""
    if any(s.dynamic for s in variant.inputs):
        raise BadInputError(f"{variant.name} is an ONNX model with dynamic axes "
                            f"({', '.join(s.describe() for s in variant.inputs if s.dynamic)})",
                            hint="give TensorRT a profile: -O min_shapes=... -O opt_shapes=... -O max_shapes=...")


_SCRIPT = """#!/bin/sh
# Build this bundle's TensorRT engine with trtexec, on the machine that will run it
# (an engine is tied to its GPU kind and TensorRT version). To also record the engine,
# its parity and its latency in the bundle, run instead:  edgesmith build-engine .
set -e
cd "$(dirname "$0")"
{command}
"""


def _readme(variant, options: TensorrtOptions, info: dict) -> str:
    engine = info["engine"]
    status = (f"The engine was built here (TensorRT {engine['tensorrt']}, {engine['gpu']}) and its parity checked "
              "on it: tier **verified**." if engine else
              f"No engine was built here ({info['not_built']}): tier **structural**; only the graph was checked.")
    ins = "\n".join(f"- `{s.describe()}`" for s in variant.inputs)
    return f"""# {variant.name}: TensorRT bundle

{status}

- `model.onnx`: the TensorRT-ready graph ({info['support']['nodes']} nodes, every op in TensorRT
  {info['support']['tensorrt']}'s ONNX support table), opset {options.opset}, constants folded.
- `golden.npz`: inputs and the source model's outputs, for the parity check on the device.
- `build_engine.sh`: the `trtexec` line that builds `model.engine` from it.

Inputs:
{ins}

## On the target machine (a Jetson, a GPU server)

    edgesmith build-engine path/to/{variant.name}.tensorrt

builds `model.engine` ({options.precision}), runs the golden inputs through it (parity at the
{options.precision} tolerance, tier verified), measures its latency, and records all three in
`manifest.json`. Without edgesmith there, `sh build_engine.sh` runs:

    {info['trtexec']}

An engine runs only on the GPU kind and TensorRT version it was built with.
"""
