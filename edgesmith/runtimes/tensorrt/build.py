"""Building a TensorRT engine from a bundle's TensorRT-ready ONNX, here or on the target machine.

Used by the ``tensorrt`` exporter where TensorRT and a GPU are present, and by
``edgesmith build-engine BUNDLE`` (:func:`complete_bundle`), which turns a
``structural`` bundle into a ``verified`` one on the machine that will run it:
it builds ``model.engine`` with the options recorded at export (precision,
optimisation profile, workspace), runs the golden inputs through it (parity),
measures its latency on the GPU (with the caller's measuring function), and rewrites
the bundle atomically. numpy and TensorRT only: a Jetson needs neither torch nor the
exporters for this.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from edgesmith.errors import BadInputError, OutputExistsError, ParityError, RuntimeUnavailableError, UsageError, require
from edgesmith.runtimes.tensorrt import ENGINE_FILE, ONNX_FILE


def trtexec_command(options: dict[str, Any], shapes: dict[str, dict[str, list[int]]]) -> str:
    """The ``trtexec`` line that builds the same engine from ``model.onnx`` (run inside the bundle).

    Args:
        options: The exporter's options (``precision``, ``workspace_mb``).
        shapes: Input -> ``{"min", "opt", "max"}`` for dynamic inputs (empty for a static graph).
    """
    parts = ["trtexec", f"--onnx={ONNX_FILE}", f"--saveEngine={ENGINE_FILE}"]
    if options.get("precision") == "fp16":
        parts.append("--fp16")
    for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
        if shapes:
            parts.append(flag + "=" + ",".join(f"{n}:{'x'.join(map(str, s[key]))}" for n, s in shapes.items()))
    parts += [f"--memPoolSize=workspace:{int(options.get('workspace_mb', 1024))}M",
              "--timingCacheFile=timing.cache"]
    return " ".join(parts)


def default_timing_cache() -> Path:
    """Where engine builds keep their timing cache by default (``$EDGESMITH_CACHE/tensorrt/``)."""
    from edgesmith.runtimes.base import cache_dir

    return cache_dir("tensorrt", "timing.cache")


def build_engine(onnx_path: Path, engine_path: Path, *, precision: str, shapes: dict[str, dict[str, list[int]]],
                 workspace_mb: int = 1024, timing_cache: str | Path | None = None) -> dict[str, Any]:
    """Parse an ONNX file with TensorRT's parser and build a serialised engine.

    Args:
        onnx_path: The TensorRT-ready ONNX.
        engine_path: Where to write the engine.
        precision: ``fp32`` or ``fp16`` (fp16 lets TensorRT choose half-precision kernels).
        shapes: Input -> ``{"min", "opt", "max"}`` for each dynamic input (one optimisation profile).
        workspace_mb: Workspace memory limit for the builder.
        timing_cache: Timing cache file, read if it exists and written back (None: the default).

    Returns:
        What was built: TensorRT version, GPU, compute capability, build seconds, timing cache path.

    Raises:
        RuntimeUnavailableError: No TensorRT or no GPU here.
        BadInputError: TensorRT's parser or builder refused the graph (its messages, with the node).
    """
    from edgesmith.runtimes.tensorrt.cuda import compute_capability, gpus, require_driver
    from edgesmith.runtimes.tensorrt import tensorrt_unavailable

    reason = tensorrt_unavailable()
    if reason:
        raise RuntimeUnavailableError(reason, hint="build the engine on the machine that will run it (TensorRT and "
                                                   "an NVIDIA GPU): `edgesmith build-engine BUNDLE` there, or the "
                                                   "bundle's build_engine.sh (trtexec)")
    require_driver()
    trt = require("tensorrt", "tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode TensorRT 10 has
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        text = "; ".join(_parser_error(e) for e in errors) or "no message"
        raise BadInputError(f"TensorRT {trt.__version__}'s ONNX parser refused {onnx_path.name}: {text}",
                            hint="replace the op it names, or export to another target")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BadInputError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name}",
                            hint="see TensorRT's messages above; a larger -O workspace_mb=... may help")
    seconds = time.perf_counter() - start
    engine_path.write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, cache_path)
    return {"tensorrt": trt.__version__, "gpu": gpus()[0], "compute_capability": compute_capability(0),
            "precision": precision, "build_s": round(seconds, 2), "timing_cache": str(cache_path)}


def _parser_error(error) -> str:
    """One parser error: the node and op where TensorRT says, then its description."""
    where = []
    for attr, label in (("node_name", "node"), ("node_operator", "op")):
        fn = getattr(error, attr, None)
        value = fn() if callable(fn) else None
        if value:
            where.append(f"{label} {value!r}")
    return (", ".join(where) + ": " if where else "") + str(error.desc())


def complete_bundle(bundle_path: str | Path, *, force: bool = False, timing_cache: str | Path | None = None,
                    measure: Callable[[Path], Any] | None = None,
                    step: Callable[[str], None] | None = None) -> tuple[Any, Any, Any]:
    """``edgesmith build-engine``: add the engine to a tensorrt bundle, check parity, measure it, in place.

    The bundle is copied to a staging directory, completed there, and renamed over the
    original only when the engine passes parity: a failure leaves the bundle as it was.

    Args:
        bundle_path: A ``tensorrt`` bundle.
        force: Rebuild an engine the bundle already has.
        timing_cache: Timing cache file (default: ``$EDGESMITH_CACHE/tensorrt/timing.cache``).
        measure: Measures the staged bundle on the GPU and returns a ``Profile`` (the caller's: the
            runtimes do not import the profilers); None measures nothing.
        step: Called with a description of each step.

    Returns:
        ``(bundle, parity, profile)``: the completed :class:`~edgesmith.bundle.Bundle`, its
        :class:`~edgesmith.parity.ParityResult` (tier ``verified``) and what ``measure`` returned.

    Raises:
        UsageError: Not a tensorrt bundle.
        OutputExistsError: It has an engine already and ``force`` is false.
        RuntimeUnavailableError: No TensorRT or no GPU here (exit code 5).
        ParityError: The engine's outputs are out of the bundle's tolerance (the bundle is unchanged).
    """
    from edgesmith.bundle import MANIFEST, Bundle, finalize_manifest, staged_bundle, write_manifest
    from edgesmith.runtimes import check_bundle

    step = step or (lambda _s: None)
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    if m.target != "tensorrt":
        raise UsageError(f"{bundle.path.name} is a {m.target} bundle; build-engine completes tensorrt bundles",
                         hint=f"export one with: edgesmith export {m.source.get('reference', 'MODEL')} -t tensorrt")
    if m.model_file == ENGINE_FILE and not force:
        raise OutputExistsError(f"{bundle.path.name} already has an engine", hint="pass --force to rebuild it")
    info = dict(m.details.get("tensorrt") or {})
    with staged_bundle(bundle.path, force=True) as stage:
        for entry in bundle.path.iterdir():
            if entry.name in (ENGINE_FILE, MANIFEST):
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, stage / entry.name)
        step(f"building the TensorRT engine of {bundle.path.name}")
        info["engine"] = build_engine(stage / ONNX_FILE, stage / ENGINE_FILE, precision=m.precision,
                                      shapes=info.get("shapes") or {}, timing_cache=timing_cache,
                                      workspace_mb=int(m.options.get("workspace_mb", 1024)))
        m.model_file = ENGINE_FILE
        m.details = {**m.details, "tensorrt": info}
        staged = finalize_manifest(stage, m)
        step("checking parity on the engine")
        parity = check_bundle(staged)
        m.parity = parity.to_dict()
        if not parity.passed:
            raise ParityError(f"the TensorRT engine of {bundle.path.name} failed parity: "
                              f"{'; '.join(parity.failures)} (the bundle is unchanged)", parity)
        profile = None
        if measure is not None:
            step("measuring the engine's latency on the GPU")
            profile = measure(staged.path)
            info["engine"]["latency_ms"] = {"p50": profile.latency_ms.p50, "p90": profile.latency_ms.p90,
                                            "runs": profile.runs, "device": profile.device}
        write_manifest(stage, m)
    done = Bundle.open(bundle.path)
    if profile is not None:
        profile.bundle = str(done.path)
    return done, parity, profile
