"""Mix'n'Match search for SmolLM2-135M under a host latency budget, and the chosen model measured.

The dense model is exported to ONNX and measured on the host; the budget is a share of
its p50 (``--budget-share``, default 0.85). The ``matformer`` pass orders FFN units by
importance and searches per-layer widths (levels 0.25/0.5/0.75/1) for the lowest
calibration loss within the budget, measuring its anchors and its choice on the host.
The chosen model is then exported again and timed side by side with the dense one
(interleaved rounds), and its perplexity is taken on the test split.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/matformer_search.py [--budget-share 0.85] [--headroom 0.05] [--rounds 5] [--runs 20]
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
from edgesmith.eval.lm import perplexity, token_windows  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402


def side_by_side(bundles: dict[str, str], rounds: int, runs: int) -> dict[str, float]:
    """Median latency (ms) of each bundle on its example inputs, timed in interleaved rounds."""
    from edgesmith.bundle import Bundle

    sessions = {}
    for label, path in bundles.items():
        sessions[label] = (open_runtime(path), Bundle.open(path).golden()[0])
    for runtime, feeds in sessions.values():
        for _ in range(5):
            runtime.run(feeds)
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, (runtime, feeds) in sessions.items():
            for _ in range(runs):
                start = time.perf_counter()
                runtime.run(feeds)
                times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-share", type=float, default=0.85, help="budget = this share of dense p50")
    parser.add_argument("--headroom", type=float, default=0.05,
                        help="the search's profiled choice must land this share under the budget")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    with tempfile.TemporaryDirectory() as out:
        dense_bundle, _ = es.export(base, out, target="onnx", name="dense")
        dense_ms = side_by_side({"dense": str(dense_bundle.path)}, 2, args.runs)["dense"]
        budget = round(args.budget_share * dense_ms, 1)
        print(f"dense p50 {dense_ms:.2f} ms -> budget_ms={budget}", file=sys.stderr)
        start = time.perf_counter()
        chosen = es.optimize(base, [f"matformer:budget_ms={budget},headroom={args.headroom},text=devils-dictionary,seq_len=128,samples=16"],
                             progress=lambda d, n, t: print(f"  {d} {n}/{t}", file=sys.stderr) if n == t else None)
        seconds = time.perf_counter() - start
        search = chosen.passes[-1]["report"]["search"]
        bundle, parity = es.export(chosen, out, target="onnx", name="chosen")
        measured = side_by_side({"dense": str(dense_bundle.path), "chosen": str(bundle.path)}, args.rounds, args.runs)
    windows = token_windows(tokenizer_for(base), eval_text("test"), 256)
    ppl_dense = perplexity(base, windows)["perplexity"]
    ppl_chosen = perplexity(chosen, windows)["perplexity"]

    print(f"\nsearch: {search['budget']}, anchors (full / smallest) {search['anchors_ms']} ms measured, "
          f"{search['evaluated']} candidates scored, {seconds:.0f} s; parity of the chosen export: "
          f"{'PASS' if parity.passed else 'FAIL'}\n")
    print("| candidate on the front | parameters | latency ms | calibration loss | within budget |")
    print("|---|---:|---:|---:|---|")
    for row in search["front"]:
        print(f"| {row['how']} | {row['params']:,} | {row['latency_ms']:.2f} ({row['latency_mode']}) | "
              f"{row['loss']:.4f} | {'yes' if row['within_budget'] else 'no'} |")
    c = search["chosen"]
    print(f"\nchosen: {c['how']}, widths {'/'.join(map(str, c['widths']))}\n")
    print("| model | parameters | p50 ms, side by side | vs budget | perplexity (test split) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| dense | {chosen.passes[-1]['report']['params_before']:,} | {measured['dense']:.2f} | "
          f"{measured['dense'] / budget:.2f}x | {ppl_dense:.2f} |")
    print(f"| Mix'n'Match | {c['params']:,} | {measured['chosen']:.2f} | {measured['chosen'] / budget:.2f}x | "
          f"{ppl_chosen:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
