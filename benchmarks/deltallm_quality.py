"""DeltaLLM on SmolLM2-135M: perplexity and counted attention sparsity over theta x window, prefill and decode.

The evaluation text's test split is cut into windows of ``--seq-len`` tokens (the first ``--windows``
of them). For every ``theta`` of ``--thetas`` and every local window of ``--attn-windows``:

- prefill: each text window in one forward pass; perplexity of its next tokens (the first token is
  context only), and the sparsity counted over those passes;
- decode: a prefill of the first ``--prefix`` tokens, then every further token one at a time through
  the KV cache (the delta state carried along); perplexity of the tokens predicted by the decode
  steps, and the sparsity counted over the decode steps only.

Sparsity is the share of multiply-accumulates skipped, counted (not assumed): in the scores
(``QK^T``) and in the whole attention (``QK^T + PV``, ``PV`` counted dense). The dense model's
perplexities on the same tokens are the first row; ``theta = 0`` equals it (the exact limit).

Usage (from the repo root, after `make install`; the defaults run the whole grid: 8 windows of 256
tokens, theta 0, 0.1, 0.3, 0.5, 1 x window 16, 64):
    .venv/bin/python benchmarks/deltallm_quality.py --json deltallm_quality.json

On a machine shared with other jobs, ``--threads 1`` avoids OpenMP threads waiting on each other:
the delta attention runs many small ops per layer, which suffer most from that.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.models.hf import tokenizer_for  # noqa: E402
from edgesmith.eval.lm import token_windows  # noqa: E402
from edgesmith.optimize.deltallm import convert, counted_sparsity, counting, decode_logits, scale_by_keys, states  # noqa: E402


def _nll(logits: torch.Tensor, ids: torch.Tensor, start: int) -> float:
    """Mean negative log-likelihood of ``ids[:, start + 1:]`` given ``logits[:, start:-1]``."""
    logp = torch.log_softmax(logits[:, start:-1].double(), dim=-1)
    return -float(logp.gather(-1, ids[:, start + 1:, None]).mean())


def _measure(module, ids: torch.Tensor, prefix: int, batch: int) -> dict:
    """Prefill and decode perplexity and counted sparsity of ``module`` over the windows ``ids``."""
    prefill_nll = decode_nll = 0.0
    prefill_macs, decode_macs = [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        with counting(module), torch.no_grad():
            logits = module.model(input_ids=chunk).logits
        prefill_macs.append(counted_sparsity(module)["prefill"])
        prefill_nll += _nll(logits, chunk, 0) * len(chunk)
        logits, counted = decode_logits(module, chunk, prefix, count=True)
        decode_macs.append(counted["decode"])
        decode_nll += _nll(logits, chunk, prefix) * len(chunk)
    row = {"prefill_perplexity": math.exp(prefill_nll / len(ids)), "decode_perplexity": math.exp(decode_nll / len(ids))}
    for phase, parts in (("prefill", prefill_macs), ("decode", decode_macs)):
        tokens = sum(p["tokens"] for p in parts)  # batches differ only in their last one's size
        for key in ("scores", "attention"):
            row[f"{phase}_{key}_sparsity"] = sum(p[key] * p["tokens"] for p in parts) / max(1, tokens)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8, help="test-split text windows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per text window")
    parser.add_argument("--prefix", type=int, default=32, help="tokens prefilled before decoding the rest")
    parser.add_argument("--thetas", default="0,0.1,0.3,0.5,1", help="comma-separated firing thresholds")
    parser.add_argument("--attn-windows", default="16,64", help="comma-separated local windows (exact keys)")
    parser.add_argument("--criteria", default="key,query",
                        help="comma-separated firing tests: key (|dq| x key RMS, the pass's default), query (|dq|)")
    parser.add_argument("--key-thetas", default="", help="thresholds for the key criterion (default: --thetas)")
    parser.add_argument("--sinks", type=int, default=4, help="first keys always scored exactly (the pass's default)")
    parser.add_argument("--batch", type=int, default=8, help="text windows per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    thetas = [float(t) for t in args.thetas.split(",")]
    windows = [int(w) for w in args.attn_windows.split(",")]
    env = fingerprint()
    print(f"machine: {env['cpu']}, {env['cores_usable']} cores, {env['os']}, torch {env['libraries'].get('torch')}",
          file=sys.stderr)
    base = es.load("zoo:smollm2-135m")
    ids = torch.from_numpy(token_windows(tokenizer_for(base), eval_text("test"), args.seq_len, args.windows))
    start = time.perf_counter()
    rows = [{"theta": None, "window": None, **_measure(base.module, ids, args.prefix, args.batch),
             "seconds": time.perf_counter() - start}]
    print(f"dense: {rows[0]}", file=sys.stderr)
    for criterion in args.criteria.split(","):
        delta = convert(copy.deepcopy(base.module).eval(), 0.0, 1)
        grid = thetas
        if criterion == "key":  # key RMS from the train split, as the pass does (4 windows of 256 tokens)
            scale_by_keys(delta, base, token_windows(tokenizer_for(base), eval_text("train"), 256, 4))
            grid = [float(t) for t in args.key_thetas.split(",")] if args.key_thetas else thetas
        for window in windows:
            for theta in grid:
                for s in states(delta):
                    s.theta, s.window, s.sinks = theta, window, args.sinks
                start = time.perf_counter()
                rows.append({"criterion": criterion, "theta": theta, "window": window,
                             **_measure(delta, ids, args.prefix, args.batch), "seconds": time.perf_counter() - start})
                print(f"{criterion} theta {theta}, window {window}: {rows[-1]}", file=sys.stderr)
    dense = rows[0]
    print(f"\nSmolLM2-135M, {len(ids)} test window(s) of {args.seq_len} tokens; decode after a {args.prefix}-token "
          "prefill. Sparsity: share of multiply-accumulates skipped, counted; attention = QK^T + PV (PV dense).\n")
    print("| criterion | theta | window | prefill ppl | vs dense | prefill sparsity: scores / attention | decode ppl | vs dense "
          "| decode sparsity: scores / attention | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = ("dense", "-", "-") if r["theta"] is None else (r["criterion"], f"{r['theta']:g}", str(r["window"]))
        print(f"| {label[0]} | {label[1]} | {label[2]} | {r['prefill_perplexity']:.2f} | "
              f"{r['prefill_perplexity'] / dense['prefill_perplexity']:.3f}x | "
              f"{r['prefill_scores_sparsity']:.1%} / {r['prefill_attention_sparsity']:.1%} | "
              f"{r['decode_perplexity']:.2f} | {r['decode_perplexity'] / dense['decode_perplexity']:.3f}x | "
              f"{r['decode_scores_sparsity']:.1%} / {r['decode_attention_sparsity']:.1%} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "smollm2-135m", "windows": len(ids), "seq_len": args.seq_len, "prefix": args.prefix,
                       "machine": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
