"""Matryoshka truncation of all-MiniLM-L6-v2: recall@10 agreement with the full 384-d embedding.

The ``matryoshka`` pass pools MiniLM's token states (mean under the mask), keeps the
first ``dim`` coordinates and re-normalises. On the 1,445 evaluation sentences of the
fixed evaluation text (``edgesmith.data.datasets.eval_sentences("eval")``: every second
sentence of Bierce's "The Devil's Dictionary"), each sentence's 10 nearest neighbours
by cosine similarity are found with the full embedding and with each truncation; the
agreement is the mean share of the full embedding's 10 neighbours the truncation also
returns. MiniLM was not trained nested, so this is the baseline a Matryoshka fine-tune
has to beat.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/matryoshka_recall.py [--dims 256,128,64]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_sentences  # noqa: E402
from edgesmith.eval.embeddings import embed, recall_agreement  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="256,128,64")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--train", action="store_true",
                        help="also fine-tune MiniLM nested (the pass's train= mode, on the other 1,446 sentences)"
                             " and measure its truncations against the original full embedding")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    sentences = eval_sentences("eval")
    base = es.load("zoo:all-minilm-l6-v2")
    full = embed(es.optimize(base, ["matryoshka:dim=384"]), sentences)
    print(f"| dim | recall@{args.k} agreement with 384-d ({len(sentences):,} sentences) | index bytes per sentence |")
    print("|---:|---:|---:|")
    print(f"| 384 | 100.0% | {384 * 4:,} |")
    dims = [int(d) for d in args.dims.split(",")]
    for dim in dims:
        got = embed(es.optimize(base, [f"matryoshka:dim={dim}"]), sentences)
        print(f"| {dim} | {recall_agreement(full, got, args.k):.1%} | {dim * 4:,} |")
    if args.train:
        start = time.perf_counter()
        nested = es.optimize(base, [f"matryoshka:dim={min(dims)},train=devils-dictionary,epochs={args.epochs}"])
        report = nested.passes[-1]["report"]["train"]
        print(f"\nafter the Matryoshka fine-tune ({report['steps']} steps on {report['sentences']:,} sentences, "
              f"nested dims {report['dims']}, loss {report['loss_first']:.4f} -> {report['loss_last']:.4f}, "
              f"{time.perf_counter() - start:.0f} s), agreement with the ORIGINAL 384-d embedding:\n")
        print(f"| dim | recall@{args.k} agreement, not nested | after the fine-tune |")
        print("|---:|---:|---:|")
        encoder = nested.module.encoder
        for dim in dims:
            plain = embed(es.optimize(base, [f"matryoshka:dim={dim}"]), sentences)
            tuned = embed(es.optimize(dataclasses.replace(base, module=encoder), [f"matryoshka:dim={dim}"]), sentences)
            print(f"| {dim} | {recall_agreement(full, plain, args.k):.1%} | {recall_agreement(full, tuned, args.k):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
