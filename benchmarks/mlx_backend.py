"""Where MLX's CPU time goes: the exporter's bundles vs mlx-lm vs a bare matmul, per BLAS.

SmolLM2-135M, 64-token prefill (``zoo:smollm2-135m``, offline). Timed side by side in interleaved
rounds, each MLX runner in a worker process (``mlx_backend_worker.py``):

- the edgesmith ``.mlxfn`` bundle, shapeless (the default) and ``-O shapeless=false``;
- mlx-lm's own Llama model on the same weights (written here as safetensors + config). mlx-lm is
  a peer, never imported by edgesmith: it runs from its own venv, which this script creates
  (``benchmarks/.venvs/mlx-lm``, ``mlx[cpu]`` pinned to the version edgesmith has);
- a bare MLX matmul of the model's GEMMs (every ``Linear`` and the LM head, ``x @ w.T``);
- PyTorch eager, the plain baseline (in this process).

Each MLX runner runs with the ``mlx[cpu]`` wheel as installed, then again with OpenBLAS in
``LD_PRELOAD`` (default threads, and one thread). The Linux wheel links a bundled reference BLAS;
the preloaded library's ``cblas_sgemm`` takes its place. Each worker reports which file its
``cblas_sgemm`` binds to, so the table says what actually ran.

Usage (from the repo root, after ``make install``; needs network once for the mlx-lm venv, and a
system OpenBLAS for the preloaded columns, e.g. ``apt-get install libopenblas0-pthread``):
    .venv/bin/python benchmarks/mlx_backend.py [--rounds 3] [--runs 3] [--blas libopenblas.so.0]
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mlx_backend_worker.py"
PEER_VENV = HERE / ".venvs" / "mlx-lm"
MLX_LM_VERSION = "0.32.2"  # the mlx-lm measured; its requirement admits the pinned mlx

RUNNERS = {  # name -> (label, worker: "es" (edgesmith venv) or "peer" (mlx-lm venv))
    "shapeless": ("edgesmith `.mlxfn`, shapeless (default)", "es"),
    "fixed": ("edgesmith `.mlxfn`, `-O shapeless=false`", "es"),
    "mlx-lm": (f"mlx-lm {MLX_LM_VERSION} Llama, same weights", "peer"),
    "matmul": ("bare MLX matmul of the model's GEMMs", "es"),
}


def _peer_python() -> Path:
    """The mlx-lm venv's python, creating the venv (same mlx as edgesmith's) if needed."""
    mlx = metadata.version("mlx")
    python = PEER_VENV / "bin" / "python"
    check = "import importlib.metadata as m; print(m.version('mlx'), m.version('mlx-lm'))"
    if python.exists():
        got = subprocess.run([python, "-c", check], capture_output=True, text=True).stdout.split()
        if got == [mlx, MLX_LM_VERSION]:
            return python
    print(f"# creating {PEER_VENV.relative_to(HERE.parent)} (mlx-lm {MLX_LM_VERSION}, mlx[cpu] {mlx})",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", f"mlx-lm=={MLX_LM_VERSION}", f"mlx[cpu]=={mlx}"],
                   check=True)
    return python


def _write_mlx_lm_model(variant, out: Path) -> None:
    """The variant's Llama weights and config, as mlx-lm loads a converted model."""
    from safetensors.numpy import save_file

    hf = variant.module.model  # the transformers LlamaForCausalLM inside edgesmith's wrapper
    out.mkdir(parents=True)
    weights = {k: v.detach().float().contiguous().numpy() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    save_file(weights, str(out / "model.safetensors"))
    config = hf.config.to_dict()
    config.pop("quantization_config", None)  # the GGUF weights are dequantised to fp32 by now
    # transformers 5 keeps rope_theta under rope_parameters; mlx-lm reads it at the top level
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = rope
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _gemms(config, tokens: int) -> list[list[int]]:
    """[M, K, N, count] of every Linear in one forward pass, and the LM head."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return [[tokens, h, q, layers], [tokens, h, kv, 2 * layers], [tokens, q, h, layers],
            [tokens, h, i, 2 * layers], [tokens, i, h, layers], [tokens, h, config.vocab_size, 1]]


class Worker:
    """One worker process; requests and answers are JSON lines."""

    def __init__(self, python, env_extra: dict[str, str]):
        env = {**os.environ, **env_extra}
        self.proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died on {req}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per runner per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each block")
    ap.add_argument("--blas", default=ctypes.util.find_library("openblas") or "",
                    help="BLAS to LD_PRELOAD for the second set of columns ('' to skip); "
                         "default: the system OpenBLAS")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    env = fingerprint()
    backends = {"default": {}}
    if args.blas:
        backends["openblas"] = {"LD_PRELOAD": args.blas}
        backends["openblas-1t"] = {"LD_PRELOAD": args.blas, "OPENBLAS_NUM_THREADS": "1"}
    peer = _peer_python()
    variant = es.load("zoo:smollm2-135m")
    feeds = {k: np.ascontiguousarray(v) for k, v in variant.example.items()}
    # the example prompt is padded to 64 tokens; every runner attends to all 64 (mlx-lm's model takes no mask)
    feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
    tokens = feeds["input_ids"].shape[1]
    module = variant.module
    targs = [torch.from_numpy(feeds[s.name]) for s in variant.inputs]

    def eager():
        with torch.inference_mode():
            return module(*targs)

    reference = eager()
    reference = (reference[0] if isinstance(reference, (tuple, list)) else reference).numpy()
    results = {"environment": env, "backends": backends, "tokens": tokens, "parity": {}, "info": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "feeds.npz", **feeds)
        bundles = {}
        for name, shapeless in (("shapeless", "true"), ("fixed", "false")):
            bundle, parity = es.export(variant, tmp, target="mlx", name=f"smollm2-{name}",
                                       options={"shapeless": shapeless}, force=True)
            dyn = {s.name: s.dynamic for s in bundle.manifest.inputs}
            print(f"# export {name}: {parity.summary()}; dynamic axes {dyn}", file=sys.stderr)
            bundles[name] = str(bundle.path)
            results["parity"][f"export {name}"] = parity.summary()
        _write_mlx_lm_model(variant, tmp / "mlx-lm")
        workers = {}
        for backend, extra in backends.items():
            es_worker, peer_worker = Worker(sys.executable, extra), Worker(peer, extra)
            for name in bundles:
                es_worker.ask(op="load", name=name, kind="bundle", path=bundles[name], feeds=str(tmp / "feeds.npz"))
            es_worker.ask(op="load", name="matmul", kind="matmul", gemms=_gemms(module.model.config, tokens))
            peer_worker.ask(op="load", name="mlx-lm", kind="mlx-lm", path=str(tmp / "mlx-lm"),
                            feeds=str(tmp / "feeds.npz"))
            results["info"][backend] = {"es": es_worker.ask(op="info"), "peer": peer_worker.ask(op="info")}
            print(f"# {backend}: {results['info'][backend]}", file=sys.stderr)
            for name, (_label, side) in RUNNERS.items():
                worker = es_worker if side == "es" else peer_worker
                workers[backend, name] = worker
                if name != "matmul":  # the first call, kept for parity against eager
                    worker.ask(op="output", name=name, path=str(tmp / "out.npy"))
                    results["parity"][f"{name} {backend}"] = _max_abs(np.load(tmp / "out.npy"), reference)
        threads = torch.get_num_threads()
        times = {"torch-eager": [], "torch-eager-1t": []} | {(b, n): [] for b in backends for n in RUNNERS}
        for r in range(args.rounds):
            for backend in backends:
                # eager is cheap: a block of it beside each backend's, so it sees the same load
                times["torch-eager"] += time_runs(eager, warmup=args.warmup, runs=args.runs)
                # one thread too: with two, eager slows down ~30x whenever another process holds a core
                torch.set_num_threads(1)
                times["torch-eager-1t"] += time_runs(eager, warmup=args.warmup, runs=args.runs)
                torch.set_num_threads(threads)
                for name in RUNNERS:
                    answer = workers[backend, name].ask(op="time", name=name, warmup=args.warmup, runs=args.runs)
                    times[backend, name] += answer["times_ms"]
            print(f"# round {r + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        for worker in set(workers.values()):
            worker.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    eager_ms = med["torch-eager"]
    _print_table(med, backends, eager_ms, results, args, env, time.perf_counter() - start)
    if args.json:
        results["p50_ms"] = {k if isinstance(k, str) else "/".join(k): v for k, v in med.items()}
        results["times_ms"] = {k if isinstance(k, str) else "/".join(k): v for k, v in times.items()}
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print_table(med, backends, eager_ms, results, args, env, seconds) -> None:
    heads = {"default": "`mlx[cpu]` as installed", "openblas": "OpenBLAS preloaded",
             "openblas-1t": "OpenBLAS preloaded, 1 thread"}
    print(f"Machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}; torch "
          f"{env['libraries'].get('torch')} ({torch.get_num_threads()} threads), mlx {metadata.version('mlx')}")
    for b in backends:
        info = results["info"][b]
        print(f"- {heads[b]}: cblas_sgemm -> {info['es']['cblas_sgemm']} (edgesmith venv), "
              f"{info['peer']['cblas_sgemm']} (mlx-lm venv)")
    print()
    head = ["runner"] + [f"{heads[b]} p50 (ms)" for b in backends] + [f"eager / {b}" for b in backends]
    if "openblas" in backends:
        head.append("default / OpenBLAS")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for name, (label, _side) in RUNNERS.items():
        cells = [label] + [f"{med[b, name]:.1f}" for b in backends]
        cells += [f"{eager_ms / med[b, name]:.3f}x" for b in backends]
        if "openblas" in backends:
            cells.append(f"{med['default', name] / med['openblas', name]:.1f}x")
        print("| " + " | ".join(cells) + " |")
    pad = [""] * (len(head) - 2)
    print("| " + " | ".join(["PyTorch eager (plain baseline)", f"{eager_ms:.1f}"] + pad) + " |")
    print("| " + " | ".join(["PyTorch eager, 1 thread", f"{med['torch-eager-1t']:.1f}"] + pad) + " |")
    print()
    for b in backends:
        m = {n: med[b, n] for n in RUNNERS}
        print(f"- {heads[b]}: shapeless / fixed {m['shapeless'] / m['fixed']:.2f}, shapeless / mlx-lm "
              f"{m['shapeless'] / m['mlx-lm']:.2f}, matmul / shapeless {m['matmul'] / m['shapeless']:.2f}")
    print(f"\nMedians over {args.rounds * args.runs} timed runs per MLX runner ({args.rounds} interleaved rounds of "
          f"{args.runs}, {args.warmup} warm-up per block; eager: a block before each backend's, "
          f"{args.rounds * args.runs * len(backends)} runs). Whole run {seconds / 60:.1f} min. "
          "Logits max_abs vs PyTorch eager:")
    for k, v in results["parity"].items():
        print(f"- {k}: {v if isinstance(v, str) else f'{v:.3g}'}")


if __name__ == "__main__":
    sys.exit(main())
