"""Greedy generation of SmolLM2-135M, side by side: edgesmith's ONNX bundle, onnxruntime-genai, the memory floor.

Issue 24, acceptance 3: decode ms/token and time to first token (TTFT) at a 128-token prompt,
64 greedy new tokens (end-of-sequence ignored, so every run does the same work), batch 1,
``--threads`` intra-op threads, on this machine, in one run:

- edgesmith's fp32 generation bundle (``edgesmith export zoo:smollm2-135m --target onnx``, the
  exporter's default graph as it is when this runs), driven by
  ``edgesmith.runtimes.generate.Generator``, with IO binding (the KV cache stays in ONNX
  Runtime's buffers, the default) and without (``binding=False``: numpy feeds every step); and the
  same for ``-O fuse=false`` where the onnx exporter has that option;
- onnxruntime-genai's fp32 CPU build of the same weights: its model builder
  (``python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p fp32 -e cpu``) reads a
  Hugging Face folder written here from ``zoo:smollm2-135m`` (GGUF dequantised to fp32,
  ``save_pretrained``: safetensors + tokenizer), and ``og.Generator`` runs it. genai is a peer,
  never imported by edgesmith: it runs in its own venv, made here (``build/peers/genai``; torch
  pinned to the CPU build edgesmith's venv has, so pip never pulls a CUDA build), in a worker
  process (``lm_generate_peer.py``);
- the memory floor: the fp32 weight bytes (each tensor once; the tied embedding is read once, as
  the LM head) over this machine's read bandwidth, measured with numpy (``--threads`` threads each
  summing its share of a 1 GiB array, best of several passes).

Every runner is a worker process holding its model, asked in turn: after one warm-up run each,
``--reps`` rounds, each round running every row once, in an order rotated from round to round
(so load on this shared machine falls on all rows alike). A row's figure is the median over
rounds of its runs' mean decode step (ms/token, the 63 steps after the first token) and TTFT.
The same 128 prompt ids (the evaluation text's test split) go to every runner; the greedy tokens
of each edgesmith row are compared with genai's.

Usage (from the repo root, after ``make install``; the first run needs PyPI for the peer's venv,
exporting takes a few minutes and about 4 GB of memory):
    .venv/bin/python benchmarks/lm_generate.py [--quick] [--threads 2] [--reps 5] [--reuse] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / "build" / "lm_generate"
PEER_VENV = ROOT / "build" / "peers" / "genai"
PEER = HERE / "lm_generate_peer.py"
GENAI_VERSION = "0.18.0"  # the onnxruntime-genai measured; it requires the onnxruntime edgesmith pins
MODEL = "zoo:smollm2-135m"


def _peer_python() -> Path:
    """The genai venv's python, creating the venv if it is missing or holds other versions."""
    torch_version = metadata.version("torch")  # e.g. 2.13.0+cpu: the local CPU wheel, never a CUDA one
    ort_version = metadata.version("onnxruntime")
    python = PEER_VENV / "bin" / "python"
    check = ("import importlib.metadata as m, torch; "
             "print(m.version('onnxruntime-genai'), m.version('onnxruntime'), torch.__version__, torch.version.cuda)")
    want = [GENAI_VERSION, ort_version, torch_version, "None"]
    if python.exists():
        got = subprocess.run([python, "-c", check], capture_output=True, text=True).stdout.split()
        if got == want:
            return python
    print(f"# creating {PEER_VENV.relative_to(ROOT)} (onnxruntime-genai {GENAI_VERSION}, torch {torch_version})",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", PEER_VENV], check=True)
    pip = [python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt"]
    # torch first and alone, exactly the version edgesmith runs (as the Makefile installs it)
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    # what the model builder imports, at the versions edgesmith is tested with
    subprocess.run([*pip, f"onnxruntime-genai=={GENAI_VERSION}", f"onnxruntime=={ort_version}",
                    "transformers", "onnx", "onnx-ir", "safetensors", "tqdm"], check=True)
    got = subprocess.run([python, "-c", check], capture_output=True, text=True, check=True).stdout.split()
    if got != want:
        raise SystemExit(f"the genai venv holds {got}, expected {want}")
    return python


def _prepare(args, peer_python: Path) -> dict:
    """Export the bundles, write the HF folder, build genai's model; return paths, prompt and sizes.

    With ``--reuse``, what an earlier run left in ``build/lm_generate`` is used as it is, and the
    model is loaded only if something is missing (delete one bundle's folder to export it again).
    """
    from edgesmith.export import get_exporter

    WORK.mkdir(parents=True, exist_ok=True)
    loaded: dict = {}

    def source():
        """The variant, loaded once, on first need (about a minute, 1.5 GB)."""
        if not loaded:
            from edgesmith import api as es
            from edgesmith.data.datasets import eval_text
            from edgesmith.models.hf import tokenizer_for

            t0 = time.perf_counter()
            variant = es.load(MODEL)
            print(f"# loaded {MODEL} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            hf = variant.module.model  # the transformers LlamaForCausalLM inside edgesmith's wrapper
            tokenizer = tokenizer_for(variant)
            eos = hf.generation_config.eos_token_id
            loaded.update(variant=variant, hf=hf, tokenizer=tokenizer, facts={
                "prompt": tokenizer(eval_text("test"))["input_ids"][:1024],
                "weight_bytes": sum(p.numel() * p.element_size() for p in hf.parameters()),  # tied tensors once
                "eos": eos if isinstance(eos, list) else [eos]})
            (WORK / "source.json").write_text(json.dumps(loaded["facts"]))
        return loaded

    # edgesmith: the exporter's default graph, and the unfused one where that option exists
    fields = {f.name for f in __import__("dataclasses").fields(get_exporter("onnx").Options)}
    configs = {"default": {}, **({"unfused": {"fuse": "false"}} if "fuse" in fields else {})}
    bundles, made = {}, []
    for key, options in configs.items():
        out = WORK / f"onnx-{key}"
        bundle = out / "smollm2-135m.onnx"
        if not (args.reuse and (bundle / "manifest.json").exists()):
            from edgesmith import api as es

            t0 = time.perf_counter()
            _, parity = es.export(source()["variant"], out, target="onnx", options=options, force=True)
            print(f"# exported {key} ({options or 'defaults'}) in {time.perf_counter() - t0:.0f} s: "
                  f"{getattr(parity, 'tier', '?')}", file=sys.stderr)
            made.append(key)
        bundles[key] = bundle

    # genai: a Hugging Face folder of the same fp32 weights, then its model builder
    folder, built = WORK / "hf-fp32", WORK / "genai-fp32"
    if not (args.reuse and (built / "genai_config.json").exists()):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(built, ignore_errors=True)
        _save_hf_folder(source()["hf"], folder)
        source()["tokenizer"].save_pretrained(folder)
        t0 = time.perf_counter()
        subprocess.run([peer_python, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", built,
                        "-p", "fp32", "-e", "cpu", "-c", WORK / "genai-cache"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"# genai model builder: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        made.append("genai")
    facts = source()["facts"] if loaded or not (WORK / "source.json").exists() else \
        json.loads((WORK / "source.json").read_text())
    loaded.clear()  # the torch model is not needed any more: free its memory before timing
    gc.collect()
    if len(facts["prompt"]) < args.prompt:
        raise SystemExit(f"the evaluation text gives {len(facts['prompt'])} tokens, fewer than --prompt {args.prompt}")
    return {"bundles": bundles, "genai": built, "made": made, **facts, "prompt": facts["prompt"][: args.prompt]}


def _save_hf_folder(hf, folder: Path) -> None:
    """The model's fp32 weights (safetensors), config and generation config, as a Hugging Face folder.

    Written by hand: transformers refuses ``save_pretrained`` on a model loaded from a GGUF
    (it counts as quantised), though its weights are plain fp32 tensors by now.
    """
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # tied: stored once, as transformers saves it
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    config["architectures"] = config.get("architectures") or [type(hf).__name__]  # the builder picks by it
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    hf.generation_config.save_pretrained(folder)


def _genai_config(built: Path, threads: int) -> None:
    """genai's config with ``threads`` intra-op threads (and one inter-op), as edgesmith's sessions run."""
    path = built / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    path.write_text(json.dumps(config, indent=4))


def read_bandwidth(threads: int, gib: float = 1.0, passes: int = 7) -> float:
    """Bytes per second read by ``threads`` threads reducing their shares of a ``gib`` GiB float32 array.

    numpy's reductions release the GIL, so the threads read in parallel. Two reductions (``sum``
    and ``max``: whichever the CPU does faster, so the arithmetic is least in the way), the best
    pass of each, the faster of the two: the pass least disturbed by other work on the machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(int(gib * 2**30) // 4, np.float32)  # written once: every page is mapped before timing
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for reduce in (np.sum, np.max):
            for _ in range(passes):
                start = time.perf_counter()
                list(pool.map(reduce, parts))
                best = min(best, time.perf_counter() - start)
    return data.nbytes / best


class Worker:
    """One runner process; requests and answers are JSON lines."""

    def __init__(self, command: list, env: dict | None = None):
        self.proc = subprocess.Popen([str(c) for c in command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.proc.args} died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(bundle: str, threads: int) -> int:
    """Worker mode: greedy generations from a bundle through edgesmith's torch-free Generator."""
    from edgesmith.runtimes.generate import Generator, Sampling

    generator = Generator(bundle, threads=threads)
    print(json.dumps({"ready": True, "vocab": None}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        generator.binding = request["binding"]  # the stepper is chosen per generation from this
        out = generator.generate(request["ids"], Sampling(max_new_tokens=request["new"], ignore_eos=True))
        print(json.dumps({"tokens": out.tokens, "ttft_ms": 1000 * out.ttft_s, "ms_per_token": out.ms_per_token,
                          "steps": out.decode_steps}), flush=True)
    return 0


def _nodes(model_onnx: Path) -> int:
    """Nodes in an ONNX graph (its weights left unread)."""
    import onnx

    return len(onnx.load(str(model_onnx), load_external_data=False).graph.node)


def _agree(a: list[int], b: list[int]) -> str:
    """``yes`` or where the token lists first differ."""
    if a == b:
        return "yes"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"no (first difference at new token {first} of {min(len(a), len(b))})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every runner (and of the "
                                                             "bandwidth measurement)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens per run (greedy, end-of-sequence ignored)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (at least 3)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 16 new tokens, a 0.25 GiB bandwidth array")
    ap.add_argument("--reuse", action="store_true", help="reuse the bundles and genai model of an earlier run "
                                                          "(default: export again, to time the exporter's graph now)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # worker mode (a bundle path)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.threads)
    if args.quick:
        args.reps, args.new = 3, 16
    if args.reps < 3:
        ap.error("--reps must be at least 3 (the figures are medians over interleaved rounds)")

    peer_python = _peer_python()
    prep = _prepare(args, peer_python)
    prompt, new = prep["prompt"], args.new
    bandwidth = read_bandwidth(args.threads, 0.25 if args.quick else 1.0)
    floor_ms = 1000 * prep["weight_bytes"] / bandwidth

    # one process per row: the numpy-feeds loop allocates every step's cache in ONNX Runtime's arena, which
    # would then serve the IO-binding loop too if the two shared a session
    workers = {f"{key}-{mode}": Worker([sys.executable, __file__, "--serve", path, "--threads", args.threads])
               for key, path in prep["bundles"].items() for mode in ("bound", "numpy")}
    _genai_config(prep["genai"], args.threads)
    workers["genai"] = Worker([peer_python, PEER, "--serve", prep["genai"]])
    genai_version = workers["genai"].info.get("version", GENAI_VERSION)

    names = {"default": "edgesmith fp32 ONNX bundle (exporter default)",
             "unfused": "edgesmith fp32 ONNX bundle (`-O fuse=false`)"}
    nodes = {key: _nodes(path / "model.onnx") for key, path in prep["bundles"].items()}
    nodes["genai"] = _nodes(prep["genai"] / "model.onnx")
    rows = []  # (key, label, worker, request extras)
    for key in prep["bundles"]:
        rows.append((f"{key}-bound", f"{names[key]}, IO binding", workers[f"{key}-bound"], {"binding": True}))
        rows.append((f"{key}-numpy", f"{names[key]}, numpy feeds (`binding=False`)", workers[f"{key}-numpy"],
                     {"binding": False}))
    rows.append(("genai", f"onnxruntime-genai {genai_version} fp32 CPU (model builder), `og.Generator`",
                 workers["genai"], {}))
    runs: dict[str, list[dict]] = {key: [] for key, *_ in rows}
    load_before = os.getloadavg()[0]
    for key, _, worker, extra in rows:  # warm-up: first runs allocate and fill caches
        worker.ask(ids=prompt, new=new, **extra)
    for rep in range(args.reps):
        order = rows[rep % len(rows):] + rows[: rep % len(rows)]
        for key, _, worker, extra in order:
            runs[key].append(worker.ask(ids=prompt, new=new, **extra))
        print(f"# round {rep + 1}/{args.reps}: " + ", ".join(f"{k} {runs[k][-1]['ms_per_token']:.2f}"
                                                           for k, *_ in rows), file=sys.stderr)
    for worker in workers.values():
        worker.close()

    genai = runs["genai"]
    summary = {}
    for key, label, *_ in rows:
        ms = [r["ms_per_token"] for r in runs[key]]
        ttft = [r["ttft_ms"] for r in runs[key]]
        summary[key] = {"label": label, "nodes": nodes[key.split("-")[0]], "ms_per_token": statistics.median(ms),
                        "ms_min": min(ms), "ms_max": max(ms),
                        "ttft_ms": statistics.median(ttft), "tokens": runs[key][0]["tokens"],
                        "steps": runs[key][0]["steps"],
                        "tokens_stable": all(r["tokens"] == runs[key][0]["tokens"] for r in runs[key])}
    ref_ms, ref_ttft = summary["genai"]["ms_per_token"], summary["genai"]["ttft_ms"]
    eos_hit = sorted({t for s in summary.values() for t in s["tokens"] if t in prep["eos"]})

    from edgesmith.devices.host import fingerprint

    host = fingerprint(args.threads)
    load = (load_before, os.getloadavg()[0])
    lines = [f"{host['cpu']}, {host['cores_usable']} usable cores, {host['os']}, onnxruntime "
             f"{metadata.version('onnxruntime')}, onnxruntime-genai {genai_version}, {args.threads} threads; "
             f"{len(prompt)}-token prompt, {new} greedy tokens (ignore_eos), {args.reps} interleaved rounds after a "
             f"warm-up, medians; 1-min load average {load[0]:.1f} before timing, {load[1]:.1f} after",
             "",
             "| runner | graph nodes | decode ms/token (median) | min-max | TTFT ms (median) | decode vs genai "
             "| TTFT vs genai | decode vs floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, s in summary.items():
        lines.append(f"| {s['label']} | {s['nodes']} | {s['ms_per_token']:.2f} | {s['ms_min']:.2f}-{s['ms_max']:.2f} | "
                     f"{s['ttft_ms']:.1f} | {s['ms_per_token'] / ref_ms:.2f}x | {s['ttft_ms'] / ref_ttft:.2f}x | "
                     f"{s['ms_per_token'] / floor_ms:.2f}x |")
    lines.append(f"| memory floor: {prep['weight_bytes'] / 1e6:.0f} MB fp32 weights / {bandwidth / 1e9:.1f} GB/s "
                 f"read | | {floor_ms:.2f} | | | {floor_ms / ref_ms:.2f}x | | 1.00x |")
    lines.append("")
    for key, s in summary.items():
        if key != "genai":
            lines.append(f"- greedy tokens, {s['label']} vs genai: {_agree(s['tokens'], genai[0]['tokens'])}")
    unstable = [s["label"] for s in summary.values() if not s["tokens_stable"]]
    lines.append(f"- tokens the same in every round: {'yes' if not unstable else 'no: ' + '; '.join(unstable)}")
    lines.append(f"- exported or built in this run: {', '.join(prep['made']) or 'none (--reuse)'}")
    lines.append("- an end-of-sequence token among the greedy tokens: " + (
        f"yes ({eos_hit}: edgesmith decodes past it, genai's min_length keeps it out, so the tokens part there)"
        if eos_hit else "no (ignore_eos changed nothing)"))
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "host": host, "threads": args.threads, "prompt_tokens": len(prompt), "new_tokens": new,
            "reps": args.reps, "bandwidth_bytes_per_s": bandwidth, "weight_bytes": prep["weight_bytes"],
            "floor_ms_per_token": floor_ms, "load_average": load, "rows": summary,
            "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
