"""Host latency of zoo image backbones before and after the ``reparam`` pass, eager and ONNX Runtime.

For each backbone (224x224, batch 1, 1000 classes, random init) four runners
are timed in interleaved rounds (eager, eager+reparam, ORT, ORT+reparam,
eager, ...) so that load from other processes hits all alike: the eager
module, the GraphModule ``reparam`` returns (BatchNorm, LayerScale and RepVGG
branches folded on the ``torch.export`` graph; RepVGG, Ding et al. 2021), and
the ONNX Runtime bundles exported from each. The table reports the median over
all timed runs of each runner, its speed-up over eager (eager p50 / runner
p50) and the speed-up reparam gives within each runtime (before p50 / after
p50), followed by the parity of every bundle and the folds reparam made.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/backbone_latency.py [--rounds 5] [--runs 20] [--models efficientformer-l1,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402

# key -> label; each is loaded as zoo:KEY with the zoo defaults (224x224, batch 1, 1000 classes)
MODELS = {
    "efficientformer-l1": "EfficientFormer-L1",
    "efficientformer-v2-s0": "EfficientFormerV2-S0",
    "lsnet-t": "LSNet-T",
}
RUNNERS = ("eager", "eager+reparam", "ort", "ort+reparam")
LABEL = {"eager": "PyTorch eager", "eager+reparam": "eager + reparam",
         "ort": "ONNX Runtime", "ort+reparam": "ORT + reparam"}


def _eager(module, feeds, inputs):
    args = [torch.from_numpy(feeds[s.name]) for s in inputs]

    def run():
        with torch.inference_mode():
            module(*args)

    return run


def _ort(variant, name, out_dir):
    """Export to ONNX and return a timed callable plus the bundle's parity result."""
    bundle, result = es.export(variant, out_dir, target="onnx", name=name, force=True)
    runtime = open_runtime(bundle.path)
    prepared = runtime.prepare(variant.example)
    return (lambda: runtime.run_prepared(prepared)), result


def bench(key, rounds, runs, out_dir):
    variant = es.load(f"zoo:{key}")
    folded = es.optimize(variant, ["reparam"])
    report = folded.passes[-1]["report"]
    feeds = variant.example
    ort_plain, parity_plain = _ort(variant, key, out_dir)
    ort_folded, parity_folded = _ort(folded, f"{key}-reparam", out_dir)
    runners = {
        "eager": _eager(variant.module, feeds, variant.inputs),
        "eager+reparam": _eager(folded.module, feeds, folded.inputs),
        "ort": ort_plain,
        "ort+reparam": ort_folded,
    }
    times = {k: [] for k in runners}
    round_p50 = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            samples = time_runs(fn, warmup=3, runs=runs)
            times[name] += samples
            round_p50[name].append(statistics.median(samples))
    med = {k: statistics.median(v) for k, v in times.items()}
    parity = {}
    for name, result in (("ort", parity_plain), ("ort+reparam", parity_folded)):
        worst = result.worst
        parity[name] = {"max_abs": worst.max_abs if worst else 0.0, "tier": result.tier,
                        "passed": result.passed, "summary": result.summary()}
    return {
        "model": MODELS[key], "reference": f"zoo:{key}", "batch": feeds[variant.inputs[0].name].shape[0],
        "runs_each": len(times["eager"]), "p50_ms": med,
        "round_p50_ms": round_p50,
        "speedup_over_eager": {k: med["eager"] / v for k, v in med.items()},
        "reparam_speedup": {"eager": med["eager"] / med["eager+reparam"], "ort": med["ort"] / med["ort+reparam"]},
        "parity": parity,
        "reparam": {"folded": report["folded"], "by_fold": report["by_fold"],
                    "max_abs": report.get("max_abs"), "seconds": folded.passes[-1]["seconds"]},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per runner per round")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {','.join(MODELS)}")
    env = fingerprint()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            t0 = time.perf_counter()
            row = bench(key, args.rounds, args.runs, tmp)
            rows.append(row)
            # each row as soon as it is measured, so a long run that is stopped keeps what it had
            times = ", ".join(f"{k} {v:.3f} ms" for k, v in row["p50_ms"].items())
            print(f"# {row['model']} batch {row['batch']}: {times} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    print(f"Machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}; torch "
          f"{env['libraries'].get('torch')} ({torch.get_num_threads()} intra-op, "
          f"{torch.get_num_interop_threads()} inter-op threads); onnxruntime "
          f"{env['libraries'].get('onnxruntime')} with default threads\n")
    head = ["model", f"{LABEL['eager']} p50 (ms)"]
    for r in RUNNERS[1:]:
        head += [f"{LABEL[r]} p50 (ms)", f"{LABEL[r]} speed-up"]
    head += ["reparam speed-up, eager", "reparam speed-up, ORT"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for row in rows:
        cells = [row["model"], f"{row['p50_ms']['eager']:.3f}"]
        for r in RUNNERS[1:]:
            cells += [f"{row['p50_ms'][r]:.3f}", f"{row['speedup_over_eager'][r]:.2f}x"]
        cells += [f"{row['reparam_speedup']['eager']:.2f}x", f"{row['reparam_speedup']['ort']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nMedians over {rows[0]['runs_each']} timed runs per runner, {args.rounds} interleaved rounds "
          f"of {args.runs}. Speed-up = eager p50 / runner p50; reparam speed-up = before p50 / after p50.")
    print("\nParity of each exported bundle (against the variant it was exported from) and reparam's folds:")
    for row in rows:
        for r, p in row["parity"].items():
            print(f"- {row['model']}, {LABEL[r]}: max_abs {p['max_abs']:.3g}, tier {p['tier']} ({p['summary']})")
        rep = row["reparam"]
        by_fold = ", ".join(f"{k} {v}" for k, v in rep["by_fold"].items())
        print(f"- {row['model']}, reparam: {rep['folded']} folds ({by_fold}); "
              f"max_abs vs unfolded {rep['max_abs']:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": args.rounds, "runs": args.runs, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
