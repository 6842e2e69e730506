"""Host latency of every runtime against PyTorch eager, side by side in one run.

For each model, PyTorch eager and each exported target (ONNX Runtime, and MLX
where the `mlx` target is installed) are timed in interleaved rounds (eager
block, ORT block, MLX block, eager block, ...) so that load from other
processes hits all alike. The table reports the median over all timed runs of
each runner and its speed-up over eager (eager p50 / runner p50).

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/runtime_latency.py [--rounds 5] [--runs 20] [--models digits,minilm,smollm2]
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
from edgesmith.export import EXPORTERS  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402

TARGETS = [t for t in ("onnx", "mlx") if t in EXPORTERS]
RUNTIME_LABEL = {"onnx": "ONNX Runtime", "mlx": "MLX"}

# key -> (label, MODEL reference, batch timed, tokens to pad the example to or None)
CASES = {
    "digits": [("digits-cnn", "zoo:digits-cnn", 1, None), ("digits-cnn", "zoo:digits-cnn", 32, None)],
    "minilm": [("MiniLM-L6, 128 tokens", "zoo:all-minilm-l6-v2", 1, 128)],
    "smollm2": [("SmolLM2-135M prefill, 64 tokens", "zoo:smollm2-135m", 1, None)],
}


def _batch(variant, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in variant.inputs:
        arr = variant.example[spec.name]
        reps = -(-batch // arr.shape[0])
        feeds[spec.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
    return feeds


def _pad_tokens(variant, length: int) -> dict[str, np.ndarray]:
    """Re-tokenise the example to a fixed length, as a deployed encoder sees it."""
    from transformers import AutoTokenizer

    from edgesmith.models.hf import EXAMPLE_TEXT
    from edgesmith.models.offline import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True, trust_remote_code=False)
    enc = tok(EXAMPLE_TEXT, padding="max_length", max_length=length, return_tensors="np")
    return {s.name: enc[s.name].astype(np.int64) for s in variant.inputs}


def bench(variant, label, batch, rounds, runs, out_dir):
    feeds = _batch(variant, batch)
    args = [torch.from_numpy(feeds[s.name]) for s in variant.inputs]
    module = variant.module

    def eager():
        with torch.inference_mode():
            module(*args)

    runners = {"torch-eager": eager}
    parity = {}
    for target in TARGETS:
        bundle, result = es.export(variant, out_dir, target=target, force=True)
        parity[target] = result.summary()
        runtime = open_runtime(bundle.path)
        prepared = runtime.prepare(feeds)
        runners[target] = (lambda r=runtime, f=prepared: r.run_prepared(f))
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            times[name] += time_runs(fn, warmup=3, runs=runs)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": label, "batch": batch, "runs_each": len(times["torch-eager"]),
            "p50_ms": med, "speedup_over_eager": {k: med["torch-eager"] / v for k, v in med.items()},
            "parity": parity}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per runner per round")
    ap.add_argument("--models", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    env = fingerprint()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            cases = CASES[key]
            variant = es.load(cases[0][1])
            for label, _ref, batch, pad in cases:
                t0 = time.perf_counter()
                if pad:
                    variant.example = _pad_tokens(variant, pad)
                row = bench(variant, label, batch, args.rounds, args.runs, tmp)
                rows.append(row)
                # each row as soon as it is measured, so a long run that is stopped keeps what it had
                times = ", ".join(f"{k} {v:.3f} ms" for k, v in row["p50_ms"].items())
                print(f"# {label} batch {batch}: {times} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"Machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}; torch "
          f"{env['libraries'].get('torch')} ({torch.get_num_threads()} threads); "
          + ", ".join(f"{RUNTIME_LABEL[t]}" for t in TARGETS) + " with default threads\n")
    head = ["model", "batch", "PyTorch eager p50 (ms)"]
    for t in TARGETS:
        head += [f"{RUNTIME_LABEL[t]} p50 (ms)", f"{RUNTIME_LABEL[t]} speed-up"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for r in rows:
        cells = [r["model"], str(r["batch"]), f"{r['p50_ms']['torch-eager']:.3f}"]
        for t in TARGETS:
            cells += [f"{r['p50_ms'][t]:.3f}", f"{r['speedup_over_eager'][t]:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nMedians over {rows[0]['runs_each']} timed runs per runner, {args.rounds} interleaved rounds. "
          "Parity of each exported artifact:")
    for r in rows:
        for t, summary in r["parity"].items():
            print(f"- {r['model']} batch {r['batch']}, {t}: {summary}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
