"""onnxruntime-genai side of ``lm_generate.py``: greedy generation with ``og.Generator``, timed.

Runs in the peer's own venv (made by ``lm_generate.py``), never imports edgesmith. Requests and
answers are JSON lines on stdin/stdout, so the parent interleaves this runner with edgesmith's:

    {"ids": [...], "new": 64}  ->  {"tokens": [...], "ttft_ms": ..., "ms_per_token": ..., "steps": ...}

The loop is genai's own: ``append_tokens`` runs the prompt (the prefill), the first
``generate_next_token`` picks the first token from its logits (time to first token), each later
call runs one decode step on the previous token and picks the next. End-of-sequence tokens do
not end a run: ``min_length`` is the full length, so genai's own logits processor keeps them out
(the closest genai has to ``ignore_eos``; the tokens differ from edgesmith's only where an
end-of-sequence token would have been the greedy choice, which the parent reports), and every
run decodes the same number of tokens as edgesmith's.

Usage (by ``lm_generate.py``): PEER_PYTHON lm_generate_peer.py --serve MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def generate(model, og, ids: list[int], new: int) -> dict:
    """One greedy generation of ``new`` tokens after ``ids``, with its timings."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new, min_length=len(ids) + new)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.asarray(ids, np.int32))
    generator.generate_next_token()
    tokens = [int(generator.get_next_tokens()[0])]
    first = time.perf_counter()
    while len(tokens) < new and not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    end = time.perf_counter()
    steps = len(tokens) - 1
    return {"tokens": tokens, "ttft_ms": 1000 * (first - start), "steps": steps,
            "ms_per_token": 1000 * (end - first) / steps if steps else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", required=True, help="the model builder's output folder (genai_config.json)")
    args = ap.parse_args(argv)
    import onnxruntime_genai as og

    config = og.Config(args.serve)
    config.clear_providers()  # the CPU execution provider, as edgesmith's bundle runs
    model = og.Model(config)
    print(json.dumps({"ready": True, "version": og.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(generate(model, og, request["ids"], request["new"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
