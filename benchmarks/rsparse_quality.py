"""R-Sparse on SmolLM2-135M at one budget: perplexity against dense, sparse-only, low-rank-only and searched rho.

Every variant skips the same share of each layer's multiply-accumulates (``--sparsity``, default
0.5) over all 210 Linear layers of the 30 decoder layers (``lm_head`` stays dense): R-Sparse with
uniform ``rho`` 0.95 (the paper's baseline), sparse-only (``rho=1``: the inactive channels are
dropped), low-rank-only (``rho=0``: a rank-r approximation of every layer), and R-Sparse with
per-layer ``rho`` from the evolutionary search. Thresholds are calibrated on the evaluation
text's train split (``--calib-windows`` windows of 256 tokens); perplexity and the achieved
sparsity (skipped / dense multiply-accumulates, counted) are measured on its test split.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/rsparse_quality.py [--sparsity 0.5] [--generations 6] [--population 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.models.hf import tokenizer_for  # noqa: E402
from edgesmith.eval.lm import perplexity, token_windows  # noqa: E402
from edgesmith.optimize.rsparse import measure_sparsity  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--calib-windows", type=int, default=16, help="calibration windows of 256 tokens")
    parser.add_argument("--test-windows", type=int, default=None, help="at most this many test windows")
    parser.add_argument("--generations", type=int, default=6, help="evolutionary search generations (0: skip)")
    parser.add_argument("--population", type=int, default=8)
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    test = token_windows(tokenizer_for(base), eval_text("test"), 256, args.test_windows)
    spec = f"rsparse:sparsity={args.sparsity},samples={args.calib_windows},seq_len=256"
    cases = [("dense", None), ("R-Sparse, uniform rho 0.95", f"{spec},rho=0.95"),
             ("sparse-only (rho 1)", f"{spec},rho=1"), ("low-rank-only (rho 0)", f"{spec},rho=0")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.generations:
            cases.append((f"R-Sparse, searched rho ({args.generations} x {args.population})",
                          f"{spec},rho=0.95,search={args.generations},population={args.population},"
                          f"rho_file={tmp}/rho.json"))
        for label, pass_spec in cases:
            start = time.perf_counter()
            variant = base if pass_spec is None else es.optimize(
                base, [pass_spec], progress=lambda d, n, t: print(f"  {d} {n}/{t}", file=sys.stderr) if n == t else None)
            built = time.perf_counter() - start
            ppl = perplexity(variant, test)["perplexity"]
            achieved = 0.0 if pass_spec is None else measure_sparsity(variant.module, variant, test)
            report = {} if pass_spec is None else variant.passes[-1]["report"]
            rows.append((label, ppl, achieved, report, built))
            print(f"{label}: perplexity {ppl:.2f}, achieved sparsity {achieved:.4f} ({built:.0f} s)", file=sys.stderr)
    dense = rows[0][1]
    print("\n| variant | test perplexity | vs dense | achieved sparsity, test split | on the calibration text "
          "| seconds to build |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, ppl, achieved, report, built in rows:
        calib = f"{report['achieved_sparsity']:.2%}" if report else "-"
        print(f"| {label} | {ppl:.2f} | {ppl / dense:.2f}x | {achieved:.2%} | {calib} | {built:.0f} |")
    for label, _, _, report, _ in rows:
        if "search" in report:
            s = report["search"]
            print(f"\n{label}: calibration loss {s['uniform_loss']:.4f} (uniform) -> {s['loss']:.4f}; best per "
                  f"generation {s['history']}; {s['scored']} candidates scored; rho mean {report['rho']['mean']}, "
                  f"min {report['rho']['min']}, max {report['rho']['max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
