"""all-MiniLM-L6-v2 on ONNX Runtime: edgesmith's fused encoder bundle vs Optimum's exports, side by side.

Four graphs of the same offline checkpoint (``edgesmith.models.offline.minilm_dir()``):

- edgesmith fused: ``edgesmith export ... --target onnx`` (default ``fuse=true``: eager
  attention at export, the mask rewritten, ONNX Runtime's transformers optimizer at
  ``opt_level=0``: ``Attention``, ``BiasGelu``, its ``SkipLayerNormalization`` written back as
  ``Sum`` + ``LayerNormalization``, which ONNX Runtime's CPU provider runs faster);
- edgesmith unfused: the same with ``-O fuse=false`` (the dynamo graph);
- Optimum plain: ``optimum-cli export onnx --task feature-extraction``;
- Optimum O3: the same with ``--optimize O3`` (its fusions plus the tanh GELU approximation).

Optimum runs in its own virtual environment (``build/peers/optimum`` by default, created
on first use with the project's pinned CPU torch from constraints.txt, then
``optimum-onnx[onnxruntime]`` from the package index); edgesmith never imports it. All
four graphs are timed in this process with the same ONNX Runtime build and the same
session options (CPU provider, ``--threads`` intra-op threads, default graph
optimizations), batch 1 x ``--seq`` tokens (all real tokens), interleaved run by run in
an order that rotates, so load from other processes hits all alike. The table gives each
graph's median over all timed runs and its ratio to Optimum O3 and Optimum plain, the
node counts, and each graph's max_abs against transformers on the timed feed.

Usage (from the repo root, after `make install`; loads MiniLM, so one at a time):
    .venv/bin/python benchmarks/encoder_fused.py [--rounds 10] [--runs 20] [--threads 2] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ("edgesmith fused", "edgesmith unfused", "Optimum plain", "Optimum O3")


def _pinned(dist: str) -> str:
    """``dist==version`` as constraints.txt pins it (torch: the CPU build on the local disk)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == dist:
            return line.strip()
    raise SystemExit(f"constraints.txt pins no {dist}")


def ensure_peer(peer: Path) -> Path:
    """The Optimum venv's python, creating the venv on first use."""
    python = peer / "bin" / "python"
    if not (peer / "bin" / "optimum-cli").exists():
        print(f"creating the Optimum venv at {peer} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(peer)], check=True)
        # torch first, pinned as the Makefile pins it, so nothing pulls a CUDA build
        subprocess.run([str(python), "-m", "pip", "install", "-q", _pinned("torch")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "optimum-onnx[onnxruntime]",
                        _pinned("onnxruntime")], check=True)
    return python


def optimum_export(peer: Path, checkpoint: Path, out: Path, optimize: str | None) -> Path:
    """``optimum-cli export onnx`` of the checkpoint into ``out``; the graph it writes."""
    cmd = [str(peer / "bin" / "optimum-cli"), "export", "onnx", "-m", str(checkpoint), "--task",
           "feature-extraction", str(out)]
    if optimize:
        cmd[-1:-1] = ["--optimize", optimize]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"optimum-cli failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    graphs = sorted(out.glob("*.onnx"), key=lambda p: ("optimized" not in p.name, p.name))
    if not graphs:
        raise SystemExit(f"optimum-cli wrote no .onnx into {out}")
    return graphs[0]


def peer_versions(python: Path) -> dict:
    code = ("import json\nfrom importlib import metadata as m\nprint(json.dumps({d: m.version(d) for d in "
            "('optimum', 'optimum-onnx', 'transformers', 'torch', 'onnx', 'onnxruntime')}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


def node_counts(path: Path) -> tuple[int, str]:
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    fused = Counter(n.op_type for n in nodes if n.domain == "com.microsoft")
    return len(nodes), ", ".join(f"{k} {v}" for k, v in sorted(fused.items())) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per graph per round (rounds x runs in all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--peer", type=Path, default=ROOT / "build" / "peers" / "optimum")
    ap.add_argument("--out", type=Path, default=None, help="keep the graphs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--reuse", action="store_true", help="time the graphs already in --out (no re-export)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="another BERT checkpoint folder (default: the offline all-MiniLM-L6-v2)")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from edgesmith import api
    from edgesmith.devices.host import fingerprint
    from edgesmith.models.offline import minilm_dir
    from edgesmith.profiles.measure import time_runs

    python = ensure_peer(args.peer.resolve())
    checkpoint = args.checkpoint or minilm_dir()
    work = args.out or Path(tempfile.mkdtemp(prefix="encoder_fused_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the zoo entry is the offline checkpoint above
    variant = api.load(str(checkpoint)) if args.checkpoint else api.load("zoo:all-minilm-l6-v2")
    paths, records = {}, {}
    for label, options in (("edgesmith fused", {}), ("edgesmith unfused", {"fuse": "false"})):
        folder = work / label.replace(" ", "_") / "minilm.onnx"
        if not (args.reuse and (folder / "manifest.json").is_file()):
            api.export(variant, folder.parent, target="onnx", options=options, force=True, name="minilm")
        paths[label] = folder / "model.onnx"
        manifest = json.loads((folder / "manifest.json").read_text())
        records[label] = {"parity": manifest["parity"], "fuse": manifest["details"].get("fuse")}
    for label, folder, level in (("Optimum plain", "optimum_plain", None), ("Optimum O3", "optimum_o3", "O3")):
        reuse = args.reuse and (work / folder / "model.onnx").is_file()
        paths[label] = work / folder / "model.onnx" if reuse else optimum_export(args.peer, checkpoint, work / folder,
                                                                                level)
    print(f"exports: {time.perf_counter() - t0:.0f} s", flush=True)

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 29000, (1, args.seq)).astype(np.int64),
            "attention_mask": np.ones((1, args.seq), np.int64), "token_type_ids": np.zeros((1, args.seq), np.int64)}
    feed["input_ids"][0, 0], feed["input_ids"][0, -1] = 101, 102  # [CLS] ... [SEP]
    with torch.no_grad():
        ref = variant.module.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    sessions, max_abs = {}, {}
    for label in RUNNERS:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(paths[label]), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in feed.items() if k in names}
        out = sess.run(["last_hidden_state"], feeds)[0]
        max_abs[label] = float(np.max(np.abs(out - ref)))
        sessions[label] = (sess, feeds)

    samples: dict[str, list[float]] = {label: [] for label in RUNNERS}
    for label in RUNNERS:  # warm-up
        sess, feeds = sessions[label]
        time_runs(lambda s=sess, f=feeds: s.run(None, f), warmup=3, runs=0)
    for r in range(args.rounds * args.runs):  # one run each, in rotating order: load drifts hit all alike
        order = RUNNERS[r % len(RUNNERS):] + RUNNERS[:r % len(RUNNERS)]
        for label in order:
            sess, feeds = sessions[label]
            samples[label] += time_runs(lambda s=sess, f=feeds: s.run(None, f), warmup=0, runs=1)
    median = {label: statistics.median(v) for label, v in samples.items()}

    print(f"\nhost: {json.dumps(fingerprint(args.threads), default=str)}")
    print(f"onnxruntime {ort.__version__} (this process, all four graphs); peer: {peer_versions(python)}")
    print(f"batch 1 x {args.seq} tokens, {args.threads} threads, {args.rounds} rounds x {args.runs} runs, "
          "interleaved run by run\n")
    print("| graph | nodes | fused ops | median ms | vs Optimum O3 | vs Optimum plain | max_abs vs transformers |")
    print("|---|---:|---|---:|---:|---:|---:|")
    rows = []
    for label in RUNNERS:
        nodes, fused = node_counts(paths[label])
        ratio_o3, ratio_plain = median[label] / median["Optimum O3"], median[label] / median["Optimum plain"]
        rows.append({"graph": label, "nodes": nodes, "fused_ops": fused, "median_ms": median[label],
                     "vs_o3": ratio_o3, "vs_plain": ratio_plain, "max_abs": max_abs[label]})
        print(f"| {label} | {nodes} | {fused} | {median[label]:.2f} | {ratio_o3:.2f}x | {ratio_plain:.2f}x | "
              f"{max_abs[label]:.2e} |")
    for label, rec in records.items():
        parity = rec["parity"] or {}
        print(f"\n{label}: parity {parity.get('passed')} ({parity.get('tier')}, {parity.get('precision')}); "
              f"fuse record: {json.dumps(rec['fuse'])}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "records": records, "host": fingerprint(args.threads),
                                         "peer": peer_versions(python)}, indent=1, default=str))


if __name__ == "__main__":
    main()
