"""SLAB on the host: LayerNorm vs folded RepBN, softmax vs simplified linear attention, and digits-vit converted.

Three parts, each timed on ONNX Runtime (default threads) in interleaved rounds so that load
from other processes hits every model alike; each table reports medians over all timed runs.

- ``norm``: a ViT-S block (384 wide, 6 heads, MLP 1536, 196 tokens) and the whole
  EfficientFormer-L1, with LayerNorm vs with RepBN folded by ``reparam`` (the RepBN
  statistics are random: this part measures speed, not accuracy; both models go through
  ``reparam``, so the convs' BatchNorms are folded alike).
- ``sla``: one attention layer (384 wide, 6 heads) on 196 to 4096 image tokens, softmax vs SLA.
- ``digits``: ``zoo:digits-vit`` through ``prepbn`` (then ``reparam``) and through ``sla``:
  test accuracy against the LayerNorm / softmax model, and the norm nodes left in the ONNX graph.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/slab.py [--parts norm,sla,digits] [--rounds 5] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.models.variant import Variant  # noqa: E402
from edgesmith.optimize.slab.prepbn import layer_norms  # noqa: E402
from edgesmith.optimize.slab.layers import ProgressiveNorm, build_sla, layout_of  # noqa: E402
from edgesmith.profiles.measure import time_runs  # noqa: E402
from edgesmith.runtimes import open_runtime  # noqa: E402
from edgesmith.specs import TensorSpec  # noqa: E402


class Attention(nn.Module):
    """Softmax multi-head attention with a fused ``[q | k | v]`` projection (the layout ``sla`` converts)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int = 384, heads: int = 6):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def wrap(name: str, module: nn.Module, shape: tuple[int, ...]) -> Variant:
    """A variant of ``module`` on one random input of ``shape``."""
    example = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    module = module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(example["x"]))
    return Variant(name=name, module=module, inputs=[TensorSpec("x", shape, "float32", {})],
                   outputs=[TensorSpec("y", tuple(out.shape), "float32", {})], example=example,
                   source={"reference": f"benchmark:{name}", "format": "benchmark", "sha256": ""})


def with_repbn(variant: Variant) -> Variant:
    """The variant with every LayerNorm replaced by RepBN of random statistics (for timing only)."""
    import copy

    module = copy.deepcopy(variant.module)
    gen = torch.Generator().manual_seed(0)
    for name, norm in layer_norms(module):
        rep = ProgressiveNorm(norm, 0.5).repbn
        with torch.no_grad():
            rep.bn.running_mean.copy_(torch.randn(rep.bn.num_features, generator=gen) * 0.1)
            rep.bn.running_var.copy_(torch.rand(rep.bn.num_features, generator=gen) + 0.5)
        module.set_submodule(name, rep)
    return variant.with_module(module.eval(), {"name": "repbn (random statistics)", "params": {}, "report": {}})


def norm_nodes(bundle) -> str:
    ops = [n.op_type for n in onnx.load(str(bundle.path / "model.onnx")).graph.node]
    return f"{ops.count('LayerNormalization')} LN, {ops.count('BatchNormalization')} BN"


def interleaved(bundles: dict, rounds: int, runs: int) -> dict:
    """Median ms of each bundle on its golden inputs, in interleaved rounds."""
    sessions = {}
    for key, bundle in bundles.items():
        runtime = open_runtime(bundle.path)
        sessions[key] = (runtime, runtime.prepare(bundle.golden()[0]))
    for runtime, feeds in sessions.values():
        time_runs(lambda: runtime.run_prepared(feeds), 3, 0)
    samples = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, (runtime, feeds) in sessions.items():
            samples[key] += time_runs(lambda: runtime.run_prepared(feeds), 0, runs)
    return {key: statistics.median(v) for key, v in samples.items()}


def part_norm(out: str, rounds: int, runs: int) -> None:
    torch.manual_seed(0)
    cases = {"ViT-S block, 196 tokens": wrap("vit-s-block", Block(), (1, 196, 384)),
             "EfficientFormer-L1, 224x224": es.load("zoo:efficientformer-l1")}
    bundles, nodes = {}, {}
    for label, variant in cases.items():
        for kind, v in (("LayerNorm", variant), ("RepBN folded", with_repbn(variant))):
            folded = es.optimize(v, ["reparam"])
            bundle, parity = es.export(folded, out, target="onnx", name=f"{folded.name}-{kind.split()[0].lower()}")
            bundles[(label, kind)], nodes[(label, kind)] = bundle, norm_nodes(bundle)
            print(f"{label} {kind}: parity {parity.summary()}, {nodes[(label, kind)]}", file=sys.stderr)
    med = interleaved(bundles, rounds, runs)
    print("\n| model | norm | ONNX norm nodes | p50 ms | vs LayerNorm |")
    print("|---|---|---|---:|---:|")
    for label in cases:
        for kind in ("LayerNorm", "RepBN folded"):
            ms = med[(label, kind)]
            print(f"| {label} | {kind} | {nodes[(label, kind)]} | {ms:.3f} | {ms / med[(label, 'LayerNorm')]:.2f}x |")


def part_sla(out: str, rounds: int, runs: int, sides: list[int]) -> None:
    bundles = {}
    for side in sides:
        n = side * side
        torch.manual_seed(0)
        softmax = Attention(384, 6)
        sla = build_sla(softmax, layout_of(softmax), (side, side), 5, True)
        for kind, module in (("softmax", softmax), ("SLA", sla)):
            bundle, parity = es.export(wrap(f"attn-{kind.lower()}-{n}", module, (1, n, 384)), out, target="onnx")
            bundles[(n, kind)] = bundle
            print(f"{n} tokens {kind}: parity {parity.summary()}", file=sys.stderr)
    med = {}
    for side in sides:  # one size at a time: the 4096-token softmax would dominate a shared round
        n = side * side
        med.update(interleaved({k: b for k, b in bundles.items() if k[0] == n}, rounds, runs if n <= 1024 else
                               max(3, runs // 4)))
    first = sides[0] ** 2
    print("\n| tokens | softmax p50 ms | SLA p50 ms | SLA vs softmax | softmax us/token | SLA us/token | "
          f"SLA ms / its ms at {first} |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for side in sides:
        n = side * side
        s, f = med[(n, "softmax")], med[(n, "SLA")]
        print(f"| {n} | {s:.3f} | {f:.3f} | {f / s:.2f}x | {1e3 * s / n:.2f} | {1e3 * f / n:.2f} | "
              f"{f / med[(first, 'SLA')]:.2f} (tokens x{n / first:.1f}) |")


def part_digits(out: str) -> None:
    base = es.load("zoo:digits-vit")
    rows = []
    for label, specs in (("prepbn", ["prepbn:train=sklearn-digits"]), ("sla", ["sla:train=sklearn-digits"])):
        start = time.perf_counter()
        converted = es.optimize(base, specs)
        seconds = time.perf_counter() - start
        report = converted.passes[-1]["report"]
        folded = es.optimize(converted, ["reparam"])
        bundle, parity = es.export(folded, out, target="onnx", name=f"digits-vit-{label}")
        acc = report["test_accuracy"]
        before, after = list(acc.values())[:2]
        rows.append((label, before, after, acc["samples"], norm_nodes(bundle), parity.summary(), seconds))
    print("\n| conversion | original test accuracy | converted | change (points) | ONNX norm nodes after reparam "
          "| parity | seconds |")
    print("|---|---:|---:|---:|---|---|---:|")
    for label, before, after, samples, nodes, parity, seconds in rows:
        print(f"| {label} | {before:.2%} | {after:.2%} | {100 * (after - before):+.1f} | {nodes} | {parity} "
              f"| {seconds:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="norm,sla,digits")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model per round")
    parser.add_argument("--sides", default="14,28,32,48,64", help="token grid sides (196 ... 4096 tokens)")
    args = parser.parse_args(argv)
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, onnxruntime "
          f"{env['libraries'].get('onnxruntime')}, torch {env['libraries'].get('torch')}", file=sys.stderr)
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="edgesmith-slab-") as out:
        if "norm" in parts:
            part_norm(out, args.rounds, args.runs)
        if "sla" in parts:
            part_sla(out, args.rounds, args.runs, [int(s) for s in args.sides.split(",")])
        if "digits" in parts:
            part_digits(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
