"""Batch-1 decode latency per token of SmolLM2-135M: R-Sparse decode kernel against dense, in one run.

Variants, timed side by side in interleaved rounds (each round decodes the same tokens with
every variant, so machine noise falls on all of them alike):

- dense: the model as loaded (``nn.Linear`` weights output-major, torch's own matrix-vector);
- dense, W input-major: the same weights stored transposed (what the kernel's layout would give a
  dense matrix-vector, to separate the layout's effect from the sparsity's);
- R-Sparse, torch: the ``rsparse`` variant through its masked dense matmul (dense cost, the
  reference numbers);
- R-Sparse, kernel: the same variant, each single-token linear through
  ``torch.ops.edgesmith.rsparse_matvec`` (reads only the active rows and the low-rank factors).

Each decode step is one forward of one token with the KV cache (teacher-forced on the evaluation
text's test split, so every variant does identical work); the figure is the median step time
over ``--tokens`` steps after a ``--prompt``-token prefill, and the table gives the median of
``--rounds`` rounds. The achieved sparsity of the decoded tokens is counted in an extra pass that
is not timed. Threads: torch's default (every core).

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/rsparse_decode.py [--sparsity 0.5] [--rounds 7] [--tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.kernels import require_rsparse_matvec  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.models.hf import tokenizer_for  # noqa: E402
from edgesmith.eval.lm import token_windows  # noqa: E402
from edgesmith.optimize.rsparse.layers import RSparseLinear  # noqa: E402


def _set_kernel(model, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, RSparseLinear):
            m.kernel = on


def _input_major(model):
    """A copy of the dense model whose Linear weights live transposed in memory (same values)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.data_ptr() != out.get_input_embeddings().weight.data_ptr():
            m.weight = torch.nn.Parameter(m.weight.detach().t().contiguous().t(), requires_grad=False)
    return out


@torch.no_grad()
def decode_steps(model, ids: torch.Tensor, prompt: int) -> list[float]:
    """Seconds per decode step: prefill ``prompt`` tokens, then one token at a time through the cache."""
    out = model(ids[:, :prompt], use_cache=True)
    cache, times = out.past_key_values, []
    for t in range(prompt, ids.shape[1]):
        start = time.perf_counter()
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - start)
        cache = out.past_key_values
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--rho", type=float, default=0.95)
    parser.add_argument("--calib-windows", type=int, default=16, help="calibration windows of 256 tokens")
    parser.add_argument("--prompt", type=int, default=16, help="tokens prefilled before decoding")
    parser.add_argument("--tokens", type=int, default=48, help="decode steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    require_rsparse_matvec()
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    sparse = es.optimize(base, [f"rsparse:sparsity={args.sparsity},rho={args.rho},samples={args.calib_windows}"])
    dense_model, sparse_model = base.module.model.eval(), sparse.module.model.eval()
    window = token_windows(tokenizer_for(base), eval_text("test"), args.prompt + args.tokens, 1)
    ids = torch.from_numpy(window[:1]).long()

    # achieved sparsity of the decoded tokens (counted, not timed)
    layers = [m for m in sparse_model.modules() if isinstance(m, RSparseLinear)]
    for m in layers:
        m.counting, m.macs = True, [0, 0]
    with torch.no_grad():
        cache = sparse_model(ids[:, :args.prompt], use_cache=True).past_key_values
        for m in layers:
            m.macs = [0, 0]
        for t in range(args.prompt, ids.shape[1]):
            cache = sparse_model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).past_key_values
    for m in layers:
        m.counting = False
    achieved = 1 - sum(m.macs[0] for m in layers) / sum(m.macs[1] for m in layers)
    print(f"achieved sparsity over the {args.tokens} decoded tokens: {achieved:.2%}", file=sys.stderr)

    input_major = _input_major(dense_model)
    variants = {"dense": (dense_model, None), "dense, W input-major": (input_major, None),
                "R-Sparse, torch (masked dense matmul)": (sparse_model, False),
                "R-Sparse, kernel": (sparse_model, True)}
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds + 1):  # round 0 warms up and is not kept
        for label, (model, kernel) in variants.items():
            if kernel is not None:
                _set_kernel(model, kernel)
            step = statistics.median(decode_steps(model, ids, args.prompt)) * 1e3
            if r:
                per_round[label].append(step)
        if r:
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in per_round.items()), file=sys.stderr)
    dense = statistics.median(per_round["dense"])
    print(f"\n| variant | decode ms/token (median of {args.rounds} rounds) | min-max over rounds | vs dense |")
    print("|---|---:|---:|---:|")
    for label, values in per_round.items():
        med = statistics.median(values)
        print(f"| {label} | {med:.2f} | {min(values):.2f}-{max(values):.2f} | {med / dense:.2f}x |")
    weights = sum(m.weight.numel() for m in dense_model.modules() if isinstance(m, torch.nn.Linear))
    linears = sum(m.in_features * m.out_features for m in layers)
    print(f"\nLinear weights read per dense step: {weights * 4 / 2**20:.0f} MiB (of which lm_head "
          f"{(weights - linears) * 4 / 2**20:.0f} MiB, dense in both); R-Sparse layers at {achieved:.1%} sparsity "
          f"read about {linears * (1 - achieved) * 4 / 2**20:.0f} MiB of their {linears * 4 / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
