"""Matryoshka truncation of all-MiniLM-L6-v2: recall@10 agreement with the full 384-d embedding.

The ``matryoshka`` pass pools MiniLM's token states (mean under the mask), keeps the
first ``dim`` coordinates and re-normalises. On the 1,445 evaluation sentences of the
fixed evaluation text (``edgesmith.models.datasets.eval_sentences("eval")``: every second
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
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.models.datasets import eval_sentences  # noqa: E402
from edgesmith.models.embed_eval import embed, recall_agreement  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="256,128,64")
    parser.add_argument("--k", type=int, default=10)
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
    for dim in [int(d) for d in args.dims.split(",")]:
        got = embed(es.optimize(base, [f"matryoshka:dim={dim}"]), sentences)
        print(f"| {dim} | {recall_agreement(full, got, args.k):.1%} | {dim * 4:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
