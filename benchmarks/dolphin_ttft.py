"""Time to first token of SmolLM2-135M with a long context: full context vs Dolphin-compressed, in one run.

For each context length (512, 1024, 2048 tokens of the evaluation text's test split) and a short
question, three ways to the first answer token are timed side by side in interleaved rounds:

- full: the decoder prefills ``[sep] + context + question`` (KV cache built, last position's logits);
- compressed: the encoder (the decoder's first ``encoder_layers`` blocks) reads ``context + K memory
  tokens``, the projector maps the K hidden states, the decoder prefills ``K memories + question``;
- memories cached: the decoder part alone (a document compressed once, asked many times).

The time to first token does not depend on the trained weights, so an untrained pair is timed
unless ``--model DIR`` names a trained folder. The KV cache the decoder holds after the prefill is
measured from the cache object (bytes of its key and value tensors). Threads: torch's default.

Usage (from the repo root, after `make install`):
    .venv/bin/python benchmarks/dolphin_ttft.py [--lengths 512,1024,2048] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgesmith.devices.host import fingerprint  # noqa: E402
from edgesmith.data.datasets import eval_text  # noqa: E402
from edgesmith.dolphin.options import DolphinOptions  # noqa: E402
from edgesmith.dolphin.tokens import separator  # noqa: E402
from edgesmith.dolphin.folder import build, load_folder  # noqa: E402

QUESTION = "What does the dictionary say about this word, and why is it funny?"


def _cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            total += tensor.numel() * tensor.element_size() if tensor is not None else 0
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="512,1024,2048", help="Context lengths (tokens), comma-separated.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timing rounds (the median is reported).")
    parser.add_argument("--model", help="A trained Dolphin folder (default: an untrained pair with the defaults).")
    parser.add_argument("--encoder-layers", type=int, default=DolphinOptions.encoder_layers)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]

    pair = load_folder(args.model) if args.model else build(
        "zoo:smollm2-135m", DolphinOptions(encoder_layers=args.encoder_layers)).eval()
    tok = pair.decoder_tokenizer
    text_ids = tok(eval_text("test"), add_special_tokens=False)["input_ids"]
    if len(text_ids) < max(lengths):
        sys.exit(f"the test split has {len(text_ids)} tokens, fewer than {max(lengths)}")
    question = tok(QUESTION, add_special_tokens=False)["input_ids"]
    sep = separator(pair)
    k = pair.options.memory
    decoder = pair.decoder

    def full(n):
        ids = torch.tensor([[sep] + text_ids[:n] + question])
        out = decoder(input_ids=ids, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    def answer(memories):
        embeds, mask = pair.prompt(memories, [question])
        out = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    def compressed(n):
        return answer(pair.compress(torch.tensor([text_ids[:n]])))

    print(f"machine: {fingerprint()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"pair: decoder {pair.pair['decoder']['reference']} ({len(decoder.model.layers)} blocks), encoder its first "
          f"{len(pair.encoder.layers)} blocks, K={k}; question {len(question)} tokens; {args.rounds} rounds",
          flush=True)
    rows = []
    with torch.no_grad():
        for n in lengths:
            memories = pair.compress(torch.tensor([text_ids[:n]]))
            cases = {"full": lambda: full(n), "compressed": lambda: compressed(n),
                     "memories cached": lambda: answer(memories)}
            for run in cases.values():  # warm-up
                run()
            times = {name: [] for name in cases}
            caches = {}
            for _ in range(args.rounds):
                for name, run in cases.items():
                    began = time.perf_counter()
                    _, cache = run()
                    times[name].append(time.perf_counter() - began)
                    caches[name] = _cache_bytes(cache)
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            rows.append((n, med, caches))
            print(f"context {n}: full {med['full']:.1f} ms, compressed {med['compressed']:.1f} ms "
                  f"({med['full'] / med['compressed']:.2f}x), memories cached {med['memories cached']:.1f} ms "
                  f"({med['full'] / med['memories cached']:.1f}x); KV cache {caches['full'] / 2**20:.2f} MiB vs "
                  f"{caches['compressed'] / 2**20:.2f} MiB", flush=True)
    print()
    print("| context tokens | full TTFT ms | compressed TTFT ms | speed-up | memories cached ms | speed-up | "
          "KV full MiB | KV compressed MiB | KV saved |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, med, caches in rows:
        print(f"| {n} | {med['full']:.1f} | {med['compressed']:.1f} | {med['full'] / med['compressed']:.2f}x | "
              f"{med['memories cached']:.1f} | {med['full'] / med['memories cached']:.1f}x | "
              f"{caches['full'] / 2**20:.2f} | {caches['compressed'] / 2**20:.2f} | "
              f"{1 - caches['compressed'] / caches['full']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
