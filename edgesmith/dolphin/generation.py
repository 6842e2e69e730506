"""The decoder side of a Dolphin pair as a generation step: memories and prompt in the prefill, then cached steps.

A Dolphin answer is the decoder continuing ``[P_1 .. P_K] + prompt``, where the ``K`` memory
vectors take the placeholder positions (:mod:`edgesmith.dolphin.model`). As a generation bundle
that is the generic step (:mod:`edgesmith.models.lm_generate`) with one more input::

    inputs:  memories (B, M, D), input_ids (B, S), attention_mask (B, P + S), position_ids (B, S),
             past_key_<l>, past_value_<l> (B, kv_heads, P, head_dim)
    outputs: logits (B, M + S, vocab), present_key_<l>, present_value_<l> (B, kv_heads, P + M + S, head_dim)

The ``M`` memories go before the step's tokens: the prefill gives all ``K`` of them with the
prompt (``M = K``, ``P = 0``), every decode step gives none (``M = 0``). ``attention_mask`` and
``position_ids`` are those of the step's tokens as if the memories were already cached (the
graph prepends ``M`` ones to the mask and shifts the positions by ``M``), so the runtime loop
(:mod:`edgesmith.runtimes.generate`) builds the same feeds as for any generation bundle, adds
``memories`` (empty after the prefill) and counts ``K`` more cached positions after the prefill.
The manifest's ``generation.memories`` says so, and names the encoder bundle and the tokenizer of
the context.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import torch

from edgesmith.dolphin.tokens import check_ids

CONTEXT_TOKENIZER_DIR = "context_tokenizer"


class DolphinStep(torch.nn.Module):
    """Memories + prompt ids + a KV cache -> logits and the grown cache, around a Dolphin pair's decoder."""

    def __init__(self, dolphin, encoder_bundle: str = ""):
        super().__init__()
        self.dolphin = dolphin
        self.encoder_bundle = encoder_bundle  # recorded in the manifest: where the memories come from

    def forward(self, memories, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        from edgesmith.models.lm_generate import _layers_of

        decoder = self.dolphin.decoder
        slots = memories.shape[1]
        embeds = torch.cat([memories.to(decoder.dtype), decoder.get_input_embeddings()(input_ids)], 1)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], slots), attention_mask], 1)
        # the memories take the step's first positions; its tokens move up by as many
        slot_positions = position_ids[:, :1] + torch.arange(slots, dtype=position_ids.dtype)[None]
        positions = torch.cat([slot_positions, position_ids + slots], 1)
        cache = DynamicCache()  # full layers: every position kept, as the generic step's cache
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        flat = []
        for key, value in _layers_of(out.past_key_values, "the Dolphin decoder"):
            flat += [key, value]
        return (out.logits, *flat)

    # -- hooks of edgesmith.export.generation: this module is its own generation step ---------------

    def generation_record(self, variant, stage: Path) -> dict:
        """The manifest's ``generation`` record; writes the tokenizers (prompt, and context where it differs)."""
        from edgesmith.models.lm_generate import TOKENIZER_DIR, generation_record

        dolphin = self.dolphin
        shim = types.SimpleNamespace(module=types.SimpleNamespace(model=dolphin.decoder), task="lm",
                                     name=variant.name, source={}, outputs=variant.outputs)
        record = generation_record(shim, stage)  # cache layout, EOS ids and defaults (no tokenizer yet)
        record["memories"] = {"input": "memories", "slots": dolphin.options.memory,
                              "dim": int(dolphin.decoder.config.hidden_size), "window": dolphin.window,
                              "encoder_bundle": self.encoder_bundle, "context_tokenizer": None}
        prompt = _save_tokenizer(dolphin.decoder_tokenizer, stage / TOKENIZER_DIR)
        if prompt:
            tok = dolphin.decoder_tokenizer
            record["tokenizer"] = prompt
            record["chat_template"] = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else None
            record["special_tokens"] = {k: v for k, v in (("bos", tok.bos_token), ("eos", tok.eos_token)) if v}
            if not record["eos_token_ids"] and tok.eos_token_id is not None:
                record["eos_token_ids"] = [int(tok.eos_token_id)]
        if dolphin.encoder_tokenizer is dolphin.decoder_tokenizer:
            record["memories"]["context_tokenizer"] = prompt
        else:
            record["memories"]["context_tokenizer"] = _save_tokenizer(dolphin.encoder_tokenizer,
                                                                      stage / CONTEXT_TOKENIZER_DIR)
        return record

    def check_greedy(self, bundle, variant, tokens: int) -> dict:
        """Greedy generation through the bundle's runtime loop against the decoder's own cached greedy steps."""
        from edgesmith.runtimes.generate import Generator, Sampling

        memories = variant.example["memories"]
        prompt = [int(t) for t in variant.example["input_ids"][0]]
        expected = greedy_reference(self.dolphin, torch.from_numpy(memories), prompt, tokens)
        got = Generator(bundle).generate(prompt, Sampling(max_new_tokens=tokens, ignore_eos=True),
                                         memories=memories).tokens
        matched = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        return {"prompt_tokens": len(prompt), "memories": memories.shape[1], "tokens": tokens, "matched": matched,
                "passed": matched == tokens == len(got), "expected": expected, "got": got}


@torch.no_grad()
def greedy_reference(dolphin, memories, prompt: list[int], tokens: int) -> list[int]:
    """``tokens`` greedy tokens after ``[memories] + prompt`` with transformers' own cache (no early stop)."""
    decoder = dolphin.decoder
    ids = torch.tensor([prompt])
    check_ids(ids, decoder.config.vocab_size, "prompt", "decoder")
    embeds = torch.cat([memories.to(decoder.dtype), decoder.get_input_embeddings()(ids)], 1)
    out = decoder(inputs_embeds=embeds, use_cache=True)
    got = []
    for _ in range(tokens):
        got.append(int(out.logits[0, -1].argmax()))
        out = decoder(input_ids=torch.tensor([[got[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return got


def step_variant(dolphin, memories: np.ndarray, prompt: np.ndarray, name: str, source: dict, encoder_bundle: str):
    """The decoder side as a generation-step variant (the example: every axis above 1, for tracing).

    The example gives the memories after a cached prefix (a feed the loop never makes, but the
    same computation): torch.export keeps an axis dynamic only where the example's size is at
    least 2, and the prefill (``P = 0``) and decode steps (``M = 0``) are what parity's greedy
    generation runs.
    """
    from edgesmith.models.lm_generate import cache_shape
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    step = DolphinStep(dolphin, encoder_bundle).eval()
    layers, kv_heads, head_dim = cache_shape(dolphin.decoder.config)
    prompt = prompt if prompt.shape[1] >= 4 else np.concatenate([prompt] * 4, 1)
    head, tail = prompt[:, :2], prompt[:, 2:]
    k, dim = memories.shape[1:]
    empty = {f"past_{kind}_{i}": np.zeros((1, kv_heads, 0, head_dim), np.float32)
             for i in range(layers) for kind in ("key", "value")}
    feeds = {"memories": memories, "input_ids": head, "attention_mask": np.ones((1, 2), np.int64),
             "position_ids": np.arange(2, dtype=np.int64)[None]}
    with torch.no_grad():
        out = step(*(torch.from_numpy(v) for v in {**feeds, **empty}.values()))
    past = k + 2
    example = {"memories": memories, "input_ids": tail, "attention_mask": np.ones((1, past + tail.shape[1]), np.int64),
               "position_ids": np.arange(past, past + tail.shape[1], dtype=np.int64)[None]}
    vocab = dolphin.decoder.config.vocab_size
    inputs = [TensorSpec("memories", (1, k, dim), "float32", {0: "batch", 1: "memory"}),
              TensorSpec("input_ids", tail.shape, "int64", {0: "batch", 1: "sequence"}),
              TensorSpec("attention_mask", example["attention_mask"].shape, "int64", {0: "batch", 1: "total"}),
              TensorSpec("position_ids", tail.shape, "int64", {0: "batch", 1: "sequence"})]
    outputs = [TensorSpec("logits", (1, k + tail.shape[1], vocab), "float32", {0: "batch", 1: "positions"})]
    for i in range(layers):
        for j, kind in enumerate(("key", "value")):
            tensor = out[1 + 2 * i + j].numpy()
            example[f"past_{kind}_{i}"] = tensor
            inputs.append(TensorSpec(f"past_{kind}_{i}", tensor.shape, "float32", {0: "batch", 2: "past"}))
            outputs.append(TensorSpec(f"present_{kind}_{i}", (1, kv_heads, past + k + tail.shape[1], head_dim),
                                      "float32", {0: "batch", 2: "grown"}))
    return Variant(name=name, module=step, inputs=inputs, outputs=outputs, example=example, source=dict(source),
                   task="lm")


def _save_tokenizer(tok, folder: Path) -> str | None:
    """Save a fast tokenizer's ``tokenizer.json`` into ``folder``; its path in the bundle, or None without one."""
    if tok is None or not hasattr(tok, "save_pretrained"):
        return None
    tok.save_pretrained(str(folder))
    for extra in folder.iterdir():  # the runtime reads tokenizer.json (the tokenizers library's format) only
        if extra.name != "tokenizer.json":
            extra.unlink()
    if not (folder / "tokenizer.json").is_file():
        folder.rmdir()
        return None
    return f"{folder.name}/tokenizer.json"
