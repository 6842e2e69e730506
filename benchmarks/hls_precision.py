"""Automatic HLS precision against hls4ml's default ``ap_fixed<16,6>``, on the digits models.

For each model (zoo:digits-cnn, zoo:digits-mlp) and each precision (``auto``,
calibrated on the digits train split; ``ap_fixed<16,6>`` for every tensor), the
model is exported to the ``hls`` target (Vitis backend, io_parallel, reuse factor
1, ZCU104 part, 5 ns), and the bundle's compiled C simulation runs the whole
digits test split (360 images, unseen in training and calibration). Reported:
top-1 agreement with PyTorch, accuracy against the labels (PyTorch's beside it),
output SNR, and the predicted DSP / LUT / latency (edgesmith.profiles.fpga,
no synthesis). The ratio column is auto's predicted DSPs over the default's.

Usage (from the repo root, after `make install`; needs g++):
    .venv/bin/python benchmarks/hls_precision.py [--models digits-cnn,digits-mlp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.bundle import Bundle  # noqa: E402
from edgesmith.errors import ParityError  # noqa: E402
from edgesmith.data.datasets import digits_split  # noqa: E402

PRECISIONS = ("auto", "ap_fixed<16,6>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-cnn,digits-mlp")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    _, x_test, _, y_test = digits_split()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for model in args.models.split(","):
            variant = es.load(f"zoo:{model}")
            reference = variant.run({"image": x_test})["logits"]
            for precision in PRECISIONS:
                start = time.perf_counter()
                name = f"{model}-{precision.replace('<', '').replace('>', '').replace(',', '-')}"
                try:
                    es.export(variant, out, target="hls", name=name, options={"precision": precision},
                              keep_failed=True)
                except ParityError as exc:  # the default precision may miss parity: measure it anyway
                    print(f"{model} {precision}: {exc}", file=sys.stderr)
                seconds = time.perf_counter() - start
                bundle = os.path.join(out, f"{name}.hls")
                logits = es.run(bundle, {"image": x_test})["logits"]
                info = Bundle.open(bundle).manifest.details["hls"]
                est = info["estimates"]
                noise = float(np.sum((reference - logits) ** 2))
                rows.append({
                    "model": model, "precision": precision,
                    "agreement": float(np.mean(reference.argmax(1) == logits.argmax(1))),
                    "accuracy": float(np.mean(logits.argmax(1) == y_test)),
                    "torch_accuracy": float(np.mean(reference.argmax(1) == y_test)),
                    "snr_db": 10 * math.log10(float(np.sum(reference ** 2)) / noise) if noise else float("inf"),
                    "dsp": est["total"]["dsp"], "lut": est["total"]["lut"],
                    "latency_cycles": est["latency_cycles"], "export_s": seconds,
                })
                print(f"{model} {precision}: {rows[-1]}", file=sys.stderr, flush=True)
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _table(rows: list[dict]) -> str:
    lines = ["| model | precision | top-1 agreement | accuracy (torch) | SNR | DSP (predicted) | DSP ratio "
             "auto/default | LUT (predicted) | latency cycles | export s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    default = {r["model"]: r for r in rows if r["precision"] != "auto"}
    for r in rows:
        base = default.get(r["model"])
        ratio = f"{r['dsp'] / base['dsp']:.2f}" if r["precision"] == "auto" and base and base["dsp"] else ""
        lines.append(f"| {r['model']} | `{r['precision']}` | {r['agreement']:.2%} | {r['accuracy']:.2%} "
                     f"({r['torch_accuracy']:.2%}) | {r['snr_db']:.1f} dB | {r['dsp']:,} | {ratio} | {r['lut']:,} | "
                     f"{r['latency_cycles']:,} | {r['export_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
