"""How far the host latency prediction is from the measured host latency, over the zoo and MiniLM.

Each zoo model (its defaults: backbones 224x224 batch 1 with 1000 classes, random
init; MiniLM and SmolLM2 with their golden token inputs) is exported to ONNX, the
host calibration is measured once, fresh (not the cache), and then for every bundle
the ONNX Runtime latency is measured (median of the timed runs) and predicted from
the graph's per-op FLOPs and bytes (``edgesmith.profiles.predict``). The error is
(predicted - measured) / measured; the summary line gives the median absolute error
(issue 5 asks for <= 25%) and the share of measurements inside the predicted band.

The prediction never sees these models' timings: the calibration suite is one-op
graphs, so this is an out-of-sample check.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/prediction_error.py [--runs 50] [--models lsnet-t,digits-cnn,...]
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
from edgesmith.devices.catalog import get_device  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.models.zoo import ZOO  # noqa: E402
from edgesmith.profiles.calibrate import run_calibration  # noqa: E402
from edgesmith.profiles.measure import profile_bundle  # noqa: E402
from edgesmith.profiles.predict import predict_bundle  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: the whole zoo)")
    args = parser.parse_args(argv)
    names = [n.removeprefix("zoo:") for n in (args.models.split(",") if args.models else ZOO.names())]
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, "
          f"onnxruntime {env['libraries'].get('onnxruntime')}; runs {args.runs}, warmup {args.warmup}",
          file=sys.stderr)
    start = time.perf_counter()
    calibration = run_calibration()
    print(f"calibration ({time.perf_counter() - start:.1f} s): GEMM {calibration.peak_gflops:.0f} GFLOP/s, "
          f"{calibration.bandwidth_gbs:.1f} GB/s, suite median error {calibration.spread:.0%}", file=sys.stderr)
    host = get_device("host")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-bench-") as tmp:
        for name in names:
            print(f"{name}: export", file=sys.stderr)
            bundle, _ = es.export(es.load(f"zoo:{name}"), tmp, target="onnx", force=True)
            measured = profile_bundle(bundle.path, warmup=args.warmup, runs=args.runs, layers=False)
            prediction, _ = predict_bundle(bundle.path, host, calibration)
            p50 = measured.latency_ms.p50
            rows.append((name, measured.batch, prediction.flops / 1e9, p50, prediction.latency_ms,
                         prediction.low_ms, prediction.high_ms, (prediction.latency_ms - p50) / p50))
            print(f"  measured {p50:.3f} ms, predicted {prediction.latency_ms:.3f} ms "
                  f"({rows[-1][-1]:+.1%})", file=sys.stderr)
    print("| model | batch | GFLOP | measured p50 ms | predicted ms | band ms | error |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, gflop, p50, pred, low, high, err in rows:
        print(f"| {name} | {batch} | {gflop:.3f} | {p50:.3f} | {pred:.3f} | {low:.3f}-{high:.3f} | {err:+.1%} |")
    errors = [abs(r[-1]) for r in rows]
    inside = sum(low <= p50 <= high for _, _, _, p50, _, low, high, _ in rows)
    print(f"\nmedian absolute error {statistics.median(errors):.1%} over {len(rows)} models "
          f"(max {max(errors):.1%}); measured inside the band: {inside}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
