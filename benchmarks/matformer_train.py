"""MatFormer nested fine-tune of SmolLM2-135M: perplexity of the 0.5 and full widths before and after.

The ``matformer`` pass orders every FFN's units by importance, then (``train=``) fine-tunes
the full-width model with the nested loss at FFN granularities 0.5 and 1 on the evaluation
text's train split, and keeps full width (``ratio=1``). A second ``matformer`` pass slices
the nested model to 0.5 (``order=auto`` keeps the trained order). Both, and the untrained
importance-ordered slices, are scored on the whole test split (windows of 256 tokens).

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/matformer_train.py [--steps 80] [--batch 4] [--seq-len 128] [--lr 1e-4]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training and calibration window")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--test-windows", type=int, default=None, help="at most this many test windows")
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    windows = token_windows(tokenizer_for(base), eval_text("test"), 256, args.test_windows)
    calib = f"text=devils-dictionary,samples=16,seq_len={args.seq_len}"
    ppl = {}

    def score(label, variant):
        start = time.perf_counter()
        ppl[label] = perplexity(variant, windows)["perplexity"]
        print(f"{label}: perplexity {ppl[label]:.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    for ratio in (1.0, 0.5):
        score(f"untrained {ratio:g}", es.optimize(base, [f"matformer:ratio={ratio},order=importance,{calib}"]))
    with tempfile.TemporaryDirectory() as ckpt:
        bar = {"last": 0.0}

        def progress(description, done, total):
            if time.perf_counter() - bar["last"] > 30 or done == total:
                bar["last"] = time.perf_counter()
                print(f"  {description} {done}/{total}", file=sys.stderr)

        spec = (f"matformer:ratio=1,order=importance,{calib},train=devils-dictionary,granularities=0.5/1,"
                f"steps={args.steps},batch={args.batch},lr={args.lr},checkpoint={ckpt}")
        nested = es.optimize(base, [spec], progress=progress)
    train = nested.passes[-1]["report"]["train"]
    print(f"trained: { {k: v for k, v in train.items() if k != 'granularities'} }", file=sys.stderr)
    score("nested 1", nested)
    score("nested 0.5", es.optimize(nested, ["matformer:ratio=0.5"]))

    print(f"\nnested fine-tune: {train['steps']} steps x {train['batch']} windows of {args.seq_len} tokens at "
          f"granularities 0.5 and 1, {train['trained_parameters']:,} FFN parameters trained, {train['seconds']:.0f} s; "
          f"loss (0.5 / 1) {train['loss_first']} -> {train['loss_last']}\n")
    print("| FFN ratio | perplexity, importance order only | after the nested fine-tune | after / before |")
    print("|---:|---:|---:|---:|")
    for ratio in ("1", "0.5"):
        before, after = ppl[f"untrained {ratio}"], ppl[f"nested {ratio}"]
        print(f"| {ratio} | {before:.2f} | {after:.2f} | {after / before:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
