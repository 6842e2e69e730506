"""ONNX Runtime vs PyTorch eager latency, side by side in one run.

For each model the two runners are timed in interleaved rounds (ORT block,
eager block, ORT block, ...) so that load from other processes hits both
alike; the table reports the median over all timed runs of each and the ratio.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/runtime_latency.py [--rounds 10] [--runs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402

# (label, MODEL reference, load kwargs, batch to time)
CASES = [
    ("digits-cnn (batch 1)", "zoo:digits-cnn", {}, 1),
    ("digits-cnn (batch 32)", "zoo:digits-cnn", {}, 32),
    ("MiniLM-L6 (batch 1, 128 tokens)", "zoo:all-minilm-l6-v2", {}, 1),
]


def _feeds(variant, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in variant.inputs:
        arr = variant.example[spec.name]
        reps = -(-batch // arr.shape[0])
        feeds[spec.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
    return feeds


def _pad_minilm(variant, length: int = 128):
    """Re-tokenise the MiniLM example to a fixed length, as a deployed encoder would see it."""
    from transformers import AutoTokenizer

    from edgesmith.models.hf import EXAMPLE_TEXT
    from edgesmith.models.offline import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    enc = tok(EXAMPLE_TEXT, padding="max_length", max_length=length, return_tensors="np")
    return {s.name: enc[s.name].astype(np.int64) for s in variant.inputs}


def bench(label, ref, batch, rounds, runs, out_dir):
    variant = es.load(ref)
    if "minilm" in ref:
        variant.example = _pad_minilm(variant)
    bundle, _ = es.export(variant, out_dir, target="onnx", force=True)
    ort = open_runtime(bundle.path)
    feeds = ort.prepare(_feeds(variant, batch))
    args = [torch.from_numpy(feeds[s.name]) for s in variant.inputs]
    module = variant.module

    def eager():
        with torch.inference_mode():
            module(*args)

    def onnxruntime():
        ort.run_prepared(feeds)

    times = {"onnxruntime": [], "torch-eager": []}
    for _ in range(rounds):
        times["onnxruntime"] += time_runs(onnxruntime, warmup=3, runs=runs)
        times["torch-eager"] += time_runs(eager, warmup=3, runs=runs)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": label, "batch": batch, "runs_each": len(times["onnxruntime"]),
        "onnxruntime_p50_ms": med["onnxruntime"], "torch_eager_p50_ms": med["torch-eager"],
        "speedup_ort_over_eager": med["torch-eager"] / med["onnxruntime"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per model")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per runner per round")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    env = fingerprint()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, ref, _kw, batch in CASES:
            t0 = time.perf_counter()
            rows.append(bench(label, ref, batch, args.rounds, args.runs, tmp))
            print(f"# {label}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"Machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}; "
          f"torch {env['libraries'].get('torch')} ({torch.get_num_threads()} threads), "
          f"onnxruntime {env['libraries'].get('onnxruntime')} (default threads)\n")
    print("| model | batch | ONNX Runtime p50 (ms) | PyTorch eager p50 (ms) | eager / ORT |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['onnxruntime_p50_ms']:.3f} | {r['torch_eager_p50_ms']:.3f} "
              f"| {r['speedup_ort_over_eager']:.2f}x |")
    print(f"\nMedians over {rows[0]['runs_each']} timed runs each, {args.rounds} interleaved rounds.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
