"""MatFormer FFN slicing of SmolLM2-135M: perplexity with importance ordering vs naive first-m slicing.

SmolLM2-135M-Instruct (the offline GGUF, de-quantized to fp32 by transformers) has 30
gated FFNs of 1536 hidden units. For each FFN ratio (1, 0.75, 0.5) the ``matformer``
pass slices every FFN twice: after ordering the hidden units by importance on
calibration text (the evaluation text's train split, ``--calib-windows`` windows of
256 tokens), and naively (the first units as they are, ``order=first``). Each model's
perplexity is measured on the whole test split of the evaluation text (Bierce's "The
Devil's Dictionary", ``edgesmith.data.datasets.eval_text("test")``: 99 entries,
32 windows of 256 tokens, each scored on its own).

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/matformer_ffn.py [--ratios 1,0.75,0.5] [--calib-windows 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.models.hf import tokenizer_for  # noqa: E402
from edgesmith.eval.lm import perplexity, token_windows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="1,0.75,0.5")
    parser.add_argument("--calib-windows", type=int, default=16, help="calibration windows of 256 tokens")
    parser.add_argument("--test-windows", type=int, default=None, help="at most this many test windows")
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    windows = token_windows(tokenizer_for(base), eval_text("test"), 256, args.test_windows)
    start = time.perf_counter()
    dense = perplexity(base, windows)
    print(f"dense: perplexity {dense['perplexity']:.2f} over {dense['tokens']} tokens "
          f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        row = {"ratio": ratio}
        for order in ("importance", "first"):
            if ratio == 1.0 and order == "first":
                row[order] = row["importance"]  # nothing is cut: both are the dense model
                continue
            spec = (f"matformer:ratio={ratio},order={order},text=devils-dictionary,"
                    f"samples={args.calib_windows},seq_len=256")
            variant = es.optimize(base, [spec])
            report = variant.passes[-1]["report"]
            row[order] = perplexity(variant, windows)["perplexity"]
            row["params"] = report["params_after"]
            print(f"ratio {ratio} {order}: perplexity {row[order]:.2f}, {report['params_after']:,} parameters",
                  file=sys.stderr)
        rows.append(row)
    print(f"\ndense SmolLM2-135M: perplexity {dense['perplexity']:.2f}, {rows[0]['params']:,} parameters\n")
    print("| FFN ratio | parameters | perplexity, importance order | perplexity, first-m (naive) | naive / importance |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['ratio']:g} | {r['params']:,} | {r['importance']:.2f} | {r['first']:.2f} | "
              f"{r['first'] / r['importance']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
