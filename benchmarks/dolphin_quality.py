"""Continuation perplexity of SmolLM2-135M with no context, Dolphin-compressed context and the full context.

Held-out documents: the evaluation text's test split (never trained on) cut into windows of
``context + continuation`` decoder tokens (256 + 64 with the defaults). Each window's continuation
is scored four ways (``edgesmith.dolphin.train.continuation_perplexity``): ``none``
(``[sep] + continuation``), ``other`` (the memory of another window's context: what the trained
memory tokens give without the document), ``compressed`` (K memories of its own context) and
``full`` (``[sep] + context + continuation``). ``gap closed`` = (none - compressed) / (none - full)
in mean negative log-likelihood; the goal is at least half.

Trains the pair first (the defaults of ``edgesmith dolphin train``, on the train split) unless
``--model DIR`` already holds one; the untrained pair (projector's lens fitted, as training starts) is scored too.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/dolphin_quality.py --model out/dolphin [--lora 8] [--steps 160]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.dolphin.options import DolphinOptions  # noqa: E402
from edgesmith.dolphin.folder import WEIGHTS, build, load_folder, train_folder  # noqa: E402
from edgesmith.dolphin.train import continuation_perplexity, training_windows  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Dolphin folder: evaluated if trained, else trained first.")
    parser.add_argument("--decoder", default="zoo:smollm2-135m")
    for field in dataclasses.fields(DolphinOptions):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args()
    options = DolphinOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DolphinOptions)})
    print(f"machine: {fingerprint()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    folder = Path(args.model)
    rows = []
    if not (folder / WEIGHTS).exists():
        untrained = build(args.decoder, options).eval()
        width = options.context + options.continuation
        train_windows = training_windows(untrained, eval_text("train"), width)
        untrained.fit_lens(torch.from_numpy(train_windows[:16, :options.context]))  # as training starts
        windows = training_windows(untrained, eval_text("test"), width)
        rows.append(("untrained (lens fitted)", continuation_perplexity(untrained, windows, options.context)))
        del untrained
        began = time.perf_counter()
        last = [0.0]

        def progress(description, step, steps):
            if time.perf_counter() - last[0] > 30 or step == steps:
                last[0] = time.perf_counter()
                print(f"  step {step}/{steps}: {description} ({time.perf_counter() - began:.0f} s)", flush=True)

        record = train_folder(args.decoder, folder, options, progress=progress)
        print(f"trained: {record['training']}", flush=True)
    pair = load_folder(folder)
    o = pair.options
    print(f"pair options: {dataclasses.asdict(o)}", flush=True)
    windows = training_windows(pair, eval_text("test"), o.context + o.continuation)
    rows.append(("trained", continuation_perplexity(pair, windows, o.context)))
    print()
    print(f"{windows.shape[0]} held-out windows of {o.context} + {o.continuation} tokens "
          f"({windows.shape[0] * o.continuation} scored tokens), K={o.memory}")
    print()
    print("| pair | none | other document's memory | compressed (K) | full | gap closed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['none']:.2f} | {r['other']:.2f} | {r['compressed']:.2f} | {r['full']:.2f} | "
              f"{r['gap_closed']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
