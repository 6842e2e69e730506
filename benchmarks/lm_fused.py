"""SmolLM2-135M's ONNX generation bundle, fused for ONNX Runtime vs the dynamo graph, side by side.

Issue 24 ("graphs fused for ONNX Runtime"): the ``onnx`` exporter writes a decoder's
generation step with ONNX Runtime's contrib operators (``GroupQueryAttention``,
``SkipSimplifiedLayerNormalization``, fused QKV and gate/up MatMuls; ``-O fuse=true``,
the default) instead of the dynamo exporter's decomposed graph (``-O fuse=false``).
This exports both bundles of ``zoo:smollm2-135m`` and measures, in one run, at
``--threads`` intra-op threads, batch 1:

- TTFT: the prefill of a ``--prompt``-token prompt (the evaluation text's test split) and
  the first token;
- decode ms/token: the mean of the ``--new - 1`` greedy steps after the first token
  (end-of-sequence ignored, so every run does the same work);
- the graphs' node counts, and whether both bundles generate the same tokens.

Each bundle is loaded once by the torch-free :class:`~edgesmith.runtimes.generate.Generator`
(what ``api.generate`` builds per call, with IO binding), warmed up once, then asked in
``--reps`` rounds, the order alternating from round to round so load on a shared machine
falls on both alike; a figure is the median over rounds.

Usage (from the repo root; exporting takes a few minutes and about 4 GB of memory):
    .venv/bin/python benchmarks/lm_fused.py [--threads 2] [--reps 5] [--reuse] [--json out.json]
    (``--fused B1 --unfused B2`` measures bundles exported elsewhere, without loading the model)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "lm_fused"
MODEL = "zoo:smollm2-135m"
CONFIGS = {"fused": {}, "unfused": {"fuse": "false"}}  # the exporter's default, and the dynamo graph


def _bundles(args) -> dict[str, Path]:
    """Both bundles: given (``--fused``/``--unfused``), reused (``--reuse``), or exported here."""
    bundles = {key: getattr(args, key) or WORK / key / "smollm2-135m.onnx" for key in CONFIGS}
    missing = {key: path for key, path in bundles.items()
               if not ((args.reuse or getattr(args, key)) and (path / "manifest.json").exists())}
    if not missing:
        return bundles
    from edgesmith import api as es

    t0 = time.perf_counter()
    variant = es.load(MODEL)
    print(f"# loaded {MODEL} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for key, path in missing.items():
        t0 = time.perf_counter()
        _, parity = es.export(variant, path.parent, target="onnx", options=CONFIGS[key] or None, force=True)
        print(f"# exported {key} in {time.perf_counter() - t0:.0f} s: parity {parity.tier}, "
              f"greedy {parity.generation['matched']}/{parity.generation['tokens']}", file=sys.stderr)
    return bundles


def _nodes(bundle: Path) -> int:
    import onnx

    return len(onnx.load(str(bundle / "model.onnx"), load_external_data=False).graph.node)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of each session")
    parser.add_argument("--reps", type=int, default=5, help="measured rounds (each runs both bundles once)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="greedy new tokens per run")
    parser.add_argument("--reuse", action="store_true", help="reuse the bundles of an earlier run")
    parser.add_argument("--fused", type=Path, help="a fused SmolLM2 bundle to measure instead of exporting one")
    parser.add_argument("--unfused", type=Path, help="the same for the unfused (-O fuse=false) bundle")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    bundles = _bundles(args)
    from edgesmith.data.datasets import eval_text
    from edgesmith.runtimes.generate import Generator, Sampling

    sampling = Sampling(max_new_tokens=args.new, ignore_eos=True)
    generators = {key: Generator(path, threads=args.threads) for key, path in bundles.items()}
    prompt = generators["fused"].encode(eval_text("test"))[: args.prompt]  # the bundle's own tokenizer
    if len(prompt) < args.prompt:
        raise SystemExit(f"the evaluation text gives {len(prompt)} tokens, fewer than --prompt {args.prompt}")
    tokens = {key: g.generate(prompt, sampling).tokens for key, g in generators.items()}  # warm-up
    runs: dict[str, list] = {key: [] for key in bundles}
    for rep in range(args.reps):
        for key in (list(bundles) if rep % 2 == 0 else list(bundles)[::-1]):
            out = generators[key].generate(prompt, sampling)
            runs[key].append((out.ttft_s * 1e3, out.ms_per_token))
    rows = {}
    for key, samples in runs.items():
        manifest = json.loads((bundles[key] / "manifest.json").read_text())
        record = manifest.get("details", {}).get("fuse", {})
        rows[key] = {"nodes": _nodes(bundles[key]), "applied": bool(record.get("applied")),
                     "ttft_ms": statistics.median(t for t, _ in samples),
                     "decode_ms_per_token": statistics.median(d for _, d in samples),
                     "ttft_samples_ms": [round(t, 2) for t, _ in samples],
                     "decode_samples_ms": [round(d, 3) for _, d in samples],
                     "contrib_ops": record.get("contrib_ops", [])}
    same = tokens["fused"] == tokens["unfused"]
    base = rows["unfused"]
    print(f"SmolLM2-135M fp32, ONNX Runtime CPU, {args.threads} threads, prompt {args.prompt} tokens, "
          f"{args.new} greedy tokens, median of {args.reps} rounds (alternating order)")
    print(f"{'bundle':<10}{'nodes':>8}{'TTFT ms':>10}{'x unfused':>11}{'decode ms/tok':>15}{'x unfused':>11}"
          f"{'tok/s':>8}")
    for key, row in rows.items():
        ttft, decode = row["ttft_ms"], row["decode_ms_per_token"]
        print(f"{key:<10}{row['nodes']:>8}{ttft:>10.1f}{ttft / base['ttft_ms']:>10.2f}x{decode:>15.2f}"
              f"{decode / base['decode_ms_per_token']:>10.2f}x{1e3 / decode:>8.1f}")
    print(f"same greedy tokens: {same}; fused graph's contrib ops: {', '.join(rows['fused']['contrib_ops'])}")
    if args.json:
        doc = {"model": MODEL, "threads": args.threads, "prompt": args.prompt, "new": args.new,
               "reps": args.reps, "same_tokens": same, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
