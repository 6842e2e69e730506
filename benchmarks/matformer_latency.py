"""ONNX Runtime prefill and per-token decode latency of SmolLM2-135M at FFN ratios 1, 0.75 and 0.5.

Each width (the ``matformer`` pass, importance order calibrated on the evaluation
text's train split) is exported once to ONNX as a generation bundle: one graph for
the prefill and the decode steps (``edgesmith.models.lm_generate``), which passes
parity on ONNX Runtime at export (logits, both phases, and a greedy generation against
transformers). Two feeds of that graph are timed: the prefill (a 128-token prompt from
the test split, empty cache) and a decode step (one new token, the greedy one, after
the prompt's real KV cache of 128 positions, as the prefill returned it). All sessions
are then timed side by side in interleaved rounds (``--rounds`` rounds of ``--runs``
runs each, after a warm-up), so machine noise falls on every width alike; the table
gives the median and the ratio to the dense model.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/matformer_latency.py [--rounds 5] [--runs 20] [--prompt 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.models.hf import tokenizer_for  # noqa: E402
from edgesmith.eval.lm import token_windows  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402
from edgesmith.runtimes.kv import empty_cache, step_feeds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="1,0.75,0.5")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill) = past length (decode)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per bundle per round")
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, onnxruntime "
          f"{env['libraries'].get('onnxruntime')}", file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    prompt = token_windows(tokenizer_for(base), eval_text("test"), args.prompt, 1)
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="edgesmith-matformer-") as tmp:
        for ratio in [float(r) for r in args.ratios.split(",")]:
            variant = base if ratio == 1.0 else es.optimize(
                base, [f"matformer:ratio={ratio},text=devils-dictionary,samples=16,seq_len=256"])
            name = f"ffn{ratio:g}"
            start = time.perf_counter()
            bundle, parity = es.export(variant, tmp, target="onnx", name=name)
            record = bundle.manifest.generation
            if not record:
                raise SystemExit(f"{name}: the export is not a generation bundle: {variant.notes}")
            print(f"{name}: exported in {time.perf_counter() - start:.0f} s; parity {parity.summary()}",
                  file=sys.stderr)
            runtime = open_runtime(bundle.path)
            prefill = {**step_feeds(prompt, 0), **empty_cache(record)}
            out = runtime.run(prefill)
            token = out["logits"][:, -1:].argmax(-1).astype(prompt.dtype)
            decode = {**step_feeds(token, prompt.shape[1]),
                      **{past: out["present" + past[4:]] for past in empty_cache(record)}}
            for kind, feeds in (("prefill", prefill), ("decode", decode)):
                sessions[(ratio, kind)] = (runtime, runtime.prepare(feeds))
        samples = {key: [] for key in sessions}
        for key, (runtime, feeds) in sessions.items():
            time_runs(lambda: runtime.run_prepared(feeds), 5, 0)
        for r in range(args.rounds):
            for key, (runtime, feeds) in sessions.items():
                samples[key] += time_runs(lambda: runtime.run_prepared(feeds), 0, args.runs)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    ratios = sorted({k[0] for k in sessions}, reverse=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n| FFN ratio | prefill {args.prompt} tokens p50 (ms) | prefill vs dense | decode step p50 (ms), "
          f"past {args.prompt} | decode vs dense |")
    print("|---:|---:|---:|---:|---:|")
    for ratio in ratios:
        print(f"| {ratio:g} | {med[(ratio, 'prefill')]:.1f} | {med[(ratio, 'prefill')] / med[(1.0, 'prefill')]:.2f}x | "
              f"{med[(ratio, 'decode')]:.2f} | {med[(ratio, 'decode')] / med[(1.0, 'decode')]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
