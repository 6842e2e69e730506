"""Language-model profiles: time to first token (TTFT) and decode tokens/s, measured here or predicted.

A generation bundle (a manifest with a ``generation`` record) is profiled, besides its one-step
latency, the way it is used: a prompt of ``L`` tokens (the prefill, which gives the first token)
and then a fixed number of decode steps, one token each.

**Measured** (the host): :class:`edgesmith.runtimes.generate.Generator`, torch-free, greedy with
``ignore_eos`` (every run decodes the same number of steps), on fixed pseudo-random token ids (no
tokenizer needed; the ids do not change the work). TTFT and decode ms/token are the medians of the
timed runs; decode tokens/s is 1000 / that median.

**Predicted** (any device, the host included, where it sits beside the measurement with its error):
a roofline of the whole step on the device's figures (:func:`edgesmith.profiles.predict.device_figures`:
data-sheet peak for the graph's precision and memory bandwidth, derated; the calibration's own on the
host), plus the dispatch the device's kind pays per node and per run:

    TTFT(L)      = max(F_prefill(L) / peak, (W_prefill(L) + KV(L)) / bandwidth) + overheads
    decode(L, N) = max(F_decode(c) / peak, (W_decode + KV(c) + KV(1)) / bandwidth) + overheads,
                   c = L + (N - 1) / 2, the mean context of the N decode steps

where ``W`` is the weight bytes a step reads (an embedding lookup reads only its rows), ``KV(n)``
the bytes of ``n`` positions of the cache over all layers (keys and values), ``F`` the step's
FLOPs. A decode step of a small-batch LM is memory-bound: its floor is the weights and the cache
read once per token over the bandwidth (``bound_ms``, kept apart from the overheads).

``F`` and ``W`` come from the graph's per-op costs (:func:`edgesmith.profiles.cost.graph_costs`) at a
few small lengths: a transformer step's FLOPs are a polynomial of degree two in its positions (the
projections grow with the new tokens, attention with new x total), so three lengths give the
polynomial exactly and any prompt length is predicted without running the graph at that length.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesmith.devices.catalog import Device
from edgesmith.errors import UsageError
from edgesmith.profiles.roofline import Calibration

#: Lengths at which the graph's costs are read to fit the degree-two polynomials.
FIT_LENGTHS = (2, 4, 8)
#: The prompt length profiled when none is asked for (shortened to fit a bundle's context).
DEFAULT_PROMPT = 128


@dataclass(frozen=True)
class LMSettings:
    """What an LM profile runs.

    Attributes:
        prompt_lengths: Prompt lengths, in tokens, at which TTFT and decode are profiled (None:
            :data:`DEFAULT_PROMPT`, or as much of it as the bundle's context holds with the decode steps).
        decode_tokens: Decode steps after the first token (each one token).
        runs: Timed generations per prompt length (medians are reported).
        warmup: Untimed generations per prompt length first.
    """

    prompt_lengths: tuple[int, ...] | None = None
    decode_tokens: int = 32
    runs: int = 5
    warmup: int = 1

    def check(self, record: dict[str, Any] | None = None, name: str = "") -> None:
        """Raise :class:`UsageError` for a value out of range, or lengths the bundle cannot hold.

        Args:
            record: The bundle's ``generation`` record (its ``max_context``), if any.
            name: The bundle's name, for the message.
        """
        if self.prompt_lengths is not None and (not self.prompt_lengths or min(self.prompt_lengths) < 1):
            raise UsageError(f"prompt lengths must be at least 1 token, got {list(self.prompt_lengths)}",
                             hint="e.g. --prompt-lengths 128,512")
        if self.decode_tokens < 1:
            raise UsageError(f"decode tokens must be at least 1, got {self.decode_tokens}")
        if self.runs < 1:
            raise UsageError(f"generation runs must be at least 1, got {self.runs}")
        limit = (record or {}).get("max_context")
        longest = max(self.prompt_lengths or (DEFAULT_PROMPT,))
        if limit and self.prompt_lengths is None and self.decode_tokens < limit:
            return  # the default length is shortened to fit (for_bundle)
        if limit and longest + self.decode_tokens > limit:
            raise UsageError(f"a {longest}-token prompt and {self.decode_tokens} decode steps need "
                             f"{longest + self.decode_tokens} positions; {name} holds at most {limit} "
                             "(its maximum context)",
                             hint="lower --prompt-lengths or --decode-tokens")


    def for_bundle(self, record: dict[str, Any], name: str = "") -> "LMSettings":
        """These settings with the prompt lengths a bundle is profiled at, checked against its context.

        Raises:
            UsageError: A value out of range, or lengths the bundle cannot hold (both numbers named).
        """
        self.check(record, name)
        if self.prompt_lengths is not None:
            return self
        limit = record.get("max_context")
        length = min(DEFAULT_PROMPT, limit - self.decode_tokens) if limit else DEFAULT_PROMPT
        return dataclasses.replace(self, prompt_lengths=(length,))


# ---------------------------------------------------------------- measured


def measure_lm(bundle, settings: LMSettings, threads: int = 0) -> dict[str, Any]:
    """TTFT and decode speed of a generation bundle here, per prompt length (medians of the runs).

    Args:
        bundle: The bundle folder (verified on opening) or an open bundle.
        settings: Prompt lengths, decode steps, runs.
        threads: Runtime threads (0: the runtime's default).

    Returns:
        The entry's ``lm`` record, ``mode`` ``measured`` (``emulated`` where the runtime is a stand-in
        whose times are no latency: the Core ML evaluator off macOS): one row per prompt length with
        ``ttft_ms``, ``decode_ms_per_token``, ``tokens_per_s`` and the samples they summarise.

    Raises:
        BadInputError: Not a generation bundle.
        UsageError: Lengths the bundle cannot hold (both numbers named).
    """
    from edgesmith.runtimes.generate import Generator, Sampling

    generator = Generator(bundle, threads=threads)
    settings = settings.for_bundle(generator.record, generator.bundle.path.name)
    vocab = _vocab(generator)
    sampling = Sampling(max_new_tokens=settings.decode_tokens + 1, ignore_eos=True)
    rng = np.random.default_rng(0)
    rows = []
    for length in settings.prompt_lengths:
        ids = rng.integers(0, vocab, length).tolist()
        for _ in range(settings.warmup):
            generator.generate(ids, sampling)
        ttft, decode = [], []
        for _ in range(settings.runs):
            g = generator.generate(ids, sampling)
            ttft.append(1e3 * g.ttft_s)
            decode.append(g.ms_per_token)
        per_token = statistics.median(decode)
        rows.append({"prompt_tokens": length, "ttft_ms": statistics.median(ttft), "decode_ms_per_token": per_token,
                     "tokens_per_s": 1e3 / per_token if per_token else None,
                     "ttft_samples_ms": ttft, "decode_samples_ms": decode})
    # a stand-in runtime (the Core ML evaluator off macOS) computes the right tokens, not the target's speed
    mode = "emulated" if getattr(generator.runtime, "timing", "measured") == "emulated" else "measured"
    return {"mode": mode, "decode_tokens": settings.decode_tokens, "runs": settings.runs,
            "warmup": settings.warmup, "threads": threads, "rows": rows,
            "method": "edgesmith.runtimes.generate.Generator, greedy with ignore_eos, "
                      f"{settings.decode_tokens} decode steps after the first token; medians of "
                      f"{settings.runs} runs per prompt length"}


def _vocab(generator) -> int:
    """The vocabulary size: the logits' last dimension (the tokenizer's may differ by padding)."""
    for spec in generator.bundle.manifest.outputs:
        if spec.name == "logits" and spec.shape and isinstance(spec.shape[-1], int):
            return int(spec.shape[-1])
    return generator.tokenizer.get_vocab_size() if generator.tokenizer is not None else 2


# ---------------------------------------------------------------- costs and prediction


@dataclass(frozen=True)
class StepCosts:
    """A generation graph's costs as polynomials in its positions (degree two, coefficients low first).

    Attributes:
        prefill_flops: FLOPs of a prefill of ``L`` tokens, in ``L``.
        prefill_weight_bytes: Weight bytes that prefill reads, in ``L``.
        decode_flops: FLOPs of one decode step after ``c`` cached positions, in ``c``.
        decode_weight_bytes: Weight bytes a decode step reads.
        kv_bytes_per_position: Cache bytes of one position over all layers, keys and values.
        nodes: Nodes a runtime runs per step (after folding and fusion), for the per-node overhead.
        precision: The precision most of the FLOPs are in (``fp32``...).
    """

    prefill_flops: tuple[float, float, float]
    prefill_weight_bytes: tuple[float, float, float]
    decode_flops: tuple[float, float, float]
    decode_weight_bytes: float
    kv_bytes_per_position: float
    nodes: int
    precision: str


def step_costs(bundle) -> StepCosts:
    """Read a generation bundle's graph costs at :data:`FIT_LENGTHS` and fit them (see the module docstring).

    Args:
        bundle: A generation bundle (folder or open); an mlx or coreml one borrows its onnx
            sibling's graph (:func:`edgesmith.profiles.predict.bundle_graph`).

    Raises:
        BadInputError: Not a generation bundle.
        UsageError: No ONNX graph to read.
    """
    from edgesmith.bundle import Bundle
    from edgesmith.profiles.cost import graph_costs
    from edgesmith.profiles.predict import bundle_graph, fused_nodes
    from edgesmith.runtimes.generate import generation_record
    from edgesmith.runtimes.kv import empty_cache, step_feeds

    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    record = generation_record(bundle)
    path, _ = bundle_graph(bundle)
    # the graph's own feeds (a Core ML bundle borrows its onnx sibling's graph, whose cache is fp32 tensors);
    # the bytes per cached position are the bundle's own (Core ML keeps its cache as fp16 state)
    graph_record = record if path.parent == bundle.path else (Bundle.open(path.parent).manifest.generation or record)
    dtype = np.dtype(record.get("cache", {}).get("dtype", "float32"))
    kv_per_position = 2.0 * record["layers"] * record["kv_heads"] * record["head_dim"] * dtype.itemsize

    def cost(new: int, past: int) -> tuple[float, float, int, dict[str, float]]:
        feeds = {**step_feeds(np.zeros((1, new), np.int64), past), **empty_cache(graph_record, length=past)}
        graph = graph_costs(path, feeds)
        skip = graph.folded | fused_nodes(graph.costs, graph.producers, graph.consumers)
        counted = [c for c in graph.costs if c.node not in skip]
        by_precision: dict[str, float] = {}
        for c in counted:
            by_precision[c.precision] = by_precision.get(c.precision, 0.0) + c.flops
        return (sum(c.flops for c in counted), sum(c.weight_bytes for c in counted), len(counted), by_precision)

    prefill = [cost(n, 0) for n in FIT_LENGTHS]
    decode = [cost(1, n) for n in FIT_LENGTHS]
    by_precision = prefill[-1][3]
    return StepCosts(
        prefill_flops=_fit([p[0] for p in prefill]), prefill_weight_bytes=_fit([p[1] for p in prefill]),
        decode_flops=_fit([d[0] for d in decode]), decode_weight_bytes=decode[-1][1],
        kv_bytes_per_position=kv_per_position, nodes=decode[-1][2],
        precision=max(by_precision, key=by_precision.get) if by_precision else "fp32")


def _fit(values: list[float]) -> tuple[float, float, float]:
    """Coefficients (low first) of the degree-two polynomial through ``values`` at :data:`FIT_LENGTHS`."""
    coef = np.polyfit(np.asarray(FIT_LENGTHS, float), np.asarray(values, float), 2)[::-1]
    return tuple(float(c) for c in coef)


def _at(poly: tuple[float, float, float], x: float) -> float:
    return poly[0] + poly[1] * x + poly[2] * x * x


def predict_lm(costs: StepCosts, device: Device, calibration: Calibration, settings: LMSettings) -> dict[str, Any]:
    """TTFT and decode speed of a generation graph on a device, per prompt length (see the module docstring).

    Args:
        costs: The graph's costs (:func:`step_costs`).
        device: ``host`` or a catalog device.
        calibration: The host's calibration (the host's figures; the per-node overhead on a CPU).
        settings: Prompt lengths and decode steps.

    Returns:
        The prediction: ``rows`` (per prompt length: ``ttft_ms``, ``decode_ms_per_token``,
        ``tokens_per_s``, their bands, the bounds and what binds them), the figures used and notes.

    Raises:
        UsageError: The device lacks a figure (a peak for the precision, a bandwidth).
    """
    from edgesmith.profiles.predict import MIN_BAND, TRANSFER_BAND, device_figures

    peak, bandwidth, op_us, run_us, used, notes = device_figures(device, costs.precision, calibration)
    overhead_ms = (costs.nodes * op_us + run_us) / 1e3
    u = max(calibration.spread, MIN_BAND) + (0.0 if device.name == "host" else TRANSFER_BAND[device.kind])
    rows = []
    for length in settings.prompt_lengths:
        context = length + (settings.decode_tokens - 1) / 2
        prefill = _bound(_at(costs.prefill_flops, length),
                         _at(costs.prefill_weight_bytes, length) + costs.kv_bytes_per_position * length,
                         peak, bandwidth)
        decode_bytes = costs.decode_weight_bytes + costs.kv_bytes_per_position * (context + 1)
        decode = _bound(_at(costs.decode_flops, context), decode_bytes, peak, bandwidth)
        ttft, per_token = prefill[0] + overhead_ms, decode[0] + overhead_ms
        rows.append({"prompt_tokens": length, "ttft_ms": ttft, "ttft_low_ms": ttft / (1 + u),
                     "ttft_high_ms": ttft * (1 + u), "ttft_bound_ms": prefill[0], "ttft_bound": prefill[1],
                     "prefill_flops": _at(costs.prefill_flops, length),
                     "decode_ms_per_token": per_token, "decode_bound_ms": decode[0], "decode_bound": decode[1],
                     "decode_bytes": decode_bytes, "decode_context": context,
                     "tokens_per_s": 1e3 / per_token, "tokens_per_s_low": 1e3 / (per_token * (1 + u)),
                     "tokens_per_s_high": 1e3 * (1 + u) / per_token})
    notes = [*notes, f"whole-step roofline plus {costs.nodes} nodes x {op_us:g} us and {run_us:g} us per run; "
                     f"decode reads {costs.decode_weight_bytes / 1e6:.1f} MB of weights and "
                     f"{costs.kv_bytes_per_position / 1e3:.1f} kB of cache per cached position per token"]
    return {"device": device.name, "precision": used, "decode_tokens": settings.decode_tokens, "rows": rows,
            "weight_bytes": costs.decode_weight_bytes, "kv_bytes_per_position": costs.kv_bytes_per_position,
            "nodes": costs.nodes, "overhead_ms": overhead_ms,
            "figures": {"peak_gflops": peak, "bandwidth_gbs": bandwidth, "op_overhead_us": op_us,
                        "run_overhead_us": run_us}, "notes": notes}


def _bound(flops: float, nbytes: float, peak_gflops: float, bandwidth_gbs: float) -> tuple[float, str]:
    """(ms, ``compute`` or ``memory``): the roofline of a whole step and which side binds it."""
    compute, memory = flops / (peak_gflops * 1e6), nbytes / (bandwidth_gbs * 1e6)
    return (compute, "compute") if compute >= memory else (memory, "memory")


def with_errors(measured: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
    """The measured record with the same device's prediction beside it, its errors per row.

    ``ttft_error`` and ``decode_error`` are (predicted - measured) / measured.
    """
    if measured.get("mode") != "measured":  # an emulated time is no latency to score a prediction against
        return {**measured, "prediction": prediction}
    by_length = {r["prompt_tokens"]: r for r in measured["rows"]}
    for row in prediction["rows"]:
        m = by_length.get(row["prompt_tokens"])
        if m:
            row["ttft_error"] = (row["ttft_ms"] - m["ttft_ms"]) / m["ttft_ms"] if m["ttft_ms"] else None
            ms = m["decode_ms_per_token"]
            row["decode_error"] = (row["decode_ms_per_token"] - ms) / ms if ms else None
    return {**measured, "prediction": prediction}


def predicted_record(prediction: dict[str, Any]) -> dict[str, Any]:
    """The ``lm`` record of a ``predicted`` entry: the prediction's figures as its rows."""
    keys = ("prompt_tokens", "ttft_ms", "decode_ms_per_token", "tokens_per_s")
    return {"mode": "predicted", "decode_tokens": prediction["decode_tokens"],
            "rows": [{k: r[k] for k in keys} for r in prediction["rows"]], "prediction": prediction}
