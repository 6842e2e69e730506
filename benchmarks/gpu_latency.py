"""GPU latency of digits-cnn, MiniLM and LSNet-T, measured, against the GPU's predicted latency.

Runs only where an NVIDIA GPU with a CUDA build of torch is present. For each model
the variant is exported to onnx (the graph the prediction reads), torch and, where
TensorRT is installed, tensorrt (engine built here, fp16 and fp32). Each bundle is then
measured side by side on the GPU in one run: PyTorch eager, PyTorch under
``torch.compile``, the TensorRT engines; the prediction for the catalog device the
GPU is (``edgesmith.profiles.measure.gpu_here``) is printed beside them with its error
against each measurement. Batch and shapes are each model's golden inputs (digits-cnn
batch 4 of 8x8, MiniLM 2 x 17 tokens, LSNet-T 1 x 3 x 224 x 224).

Usage (from the repo root, on the GPU machine):
    .venv/bin/python benchmarks/gpu_latency.py [--runs 200] [--models digits-cnn,all-minilm-l6-v2,lsnet-t]
Exit code 5 where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgesmith import api as es  # noqa: E402
from edgesmith.profiles.measure import gpu_here  # noqa: E402
from edgesmith.runtimes.tensorrt.cuda import gpus  # noqa: E402
from edgesmith.runtimes.tensorrt import tensorrt_unavailable  # noqa: E402

MODELS = ("digits-cnn", "all-minilm-l6-v2", "lsnet-t")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per bundle")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", dest="json_out", help="also write the rows here")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile (its max-autotune tuning takes minutes per backbone)")
    args = parser.parse_args(argv)
    import torch

    if not gpus() or not torch.cuda.is_available():
        print("no NVIDIA GPU with a CUDA build of torch here: nothing to measure", file=sys.stderr)
        return 5
    device = gpu_here()
    name = device.name if device else "cuda:0"
    trt = tensorrt_unavailable()
    print(f"GPU: {gpus()[0]} (catalog device: {name}); torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"TensorRT: {trt or 'yes'}; runs {args.runs}, warmup {args.warmup}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-gpu-") as tmp:
        for model in args.models.split(","):
            variant = es.load(f"zoo:{model}")
            es.export(variant, tmp, target="onnx")
            bundles = {"torch eager": es.export(variant, tmp, target="torch")[0].path}
            if trt is None:
                for precision in ("fp32", "fp16"):
                    bundles[f"TensorRT {precision}"] = es.export(variant, tmp, target="tensorrt",
                                                                 name=f"{variant.name}-{precision}",
                                                                 options={"precision": precision})[0].path
            row = {"model": model, "gpu": gpus()[0], "device": name}
            compiled = [] if args.no_compile else [("torch.compile", bundles["torch eager"])]
            for label, path in [*bundles.items(), *compiled]:
                doc = es.profile([path], device=name, runs=args.runs, warmup=args.warmup, layers=False,
                                 compiled=label == "torch.compile")
                entry = doc["entries"][0]
                row[label] = entry["latency_ms"]["p50"]
                if entry.get("prediction"):
                    row["predicted"] = entry["prediction"]["latency_ms"]
                    row["band"] = [entry["prediction"]["low_ms"], entry["prediction"]["high_ms"]]
                    row[f"error vs {label}"] = entry["prediction"]["error"]
                print(f"{model}: {label} p50 {row[label]:.4f} ms (predicted {row.get('predicted')})", file=sys.stderr)
            rows.append(row)
    labels = [k for k in rows[0] if k in ("torch eager", "torch.compile") or k.startswith("TensorRT")]
    print(f"| model | {' | '.join(f'{lb} p50 (ms)' for lb in labels)} | predicted on {name} (band) | "
          f"{' | '.join(f'error vs {lb}' for lb in labels)} |")
    print("|---|" + "---:|" * (2 * len(labels) + 1))
    for r in rows:
        pred = f"{r['predicted']:.4f} ({r['band'][0]:.4f}-{r['band'][1]:.4f})" if "predicted" in r else "-"
        errors = [f"{r[f'error vs {lb}']:+.0%}" if r.get(f"error vs {lb}") is not None else "-" for lb in labels]
        print(f"| {r['model']} | {' | '.join(f'{r[lb]:.4f}' for lb in labels)} | {pred} | {' | '.join(errors)} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
