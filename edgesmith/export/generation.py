"""Generation bundles: what an exporter adds when the variant is a decoder LM.

An exporter whose class sets ``generates`` exports a language model (``task="lm"``)
as its generation step (:func:`edgesmith.models.lm_generate.generation_variant`: one
graph with past and present keys and values), writes the tokenizer files, and records
the cache layout, chat template, end-of-sequence ids and generation defaults in the
manifest's ``generation``. Parity then covers three feeds of that graph (the example:
a chunk after a real cache; a prefill with an empty cache; one decode step after the
example) and a greedy generation of :data:`GREEDY_TOKENS` tokens through the bundle's
own runtime loop, compared token for token with transformers' ``generate`` on the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError

GREEDY_TOKENS = 8


def generation_step(exporter, variant):
    """The variant to export: its generation step where the exporter and the model allow, else None.

    A language model that is not a transformers decoder with a standard cache exports as its
    prefill graph, with a note saying why it cannot generate.
    """
    if not getattr(exporter, "generates", False) or variant.task != "lm" or variant.module is None:
        return None
    if not getattr(exporter.options, "generation", True):
        return None
    if _own_step(variant):
        if hasattr(exporter, "generation_variant"):  # Core ML's stateful step has no form for a Dolphin pair's memories
            variant.notes.append(f"{exporter.name}: a Dolphin decoder exports without generation here; "
                                 "generate with its onnx or mlx bundle")
            return None
        return variant
    from edgesmith.models.lm_generate import generation_variant

    make = getattr(exporter, "generation_variant", None) or generation_variant  # Core ML: a stateful step
    try:
        return make(variant)
    except BadInputError as exc:
        variant.notes.append(f"prefill-only bundle (it cannot generate): {exc}")
        return None


def extra_feeds(step) -> list[tuple[dict, dict, str]]:
    """The prefill (the example's new tokens with an empty cache) and one decode step after the example."""
    from edgesmith.runtimes.kv import empty_cache, step_feeds

    ids = step.example["input_ids"]
    layers = sum(1 for s in step.inputs if s.name.startswith("past_key_"))
    kv = step.example["past_key_0"]
    record = {"layers": layers, "kv_heads": kv.shape[1], "head_dim": kv.shape[3]}
    prefill = {**step_feeds(ids, 0), **empty_cache(record, ids.shape[0])}
    out = step.run()
    start = step.example["attention_mask"].shape[1]
    token = out["logits"][:, -1:].argmax(-1).astype(np.int64)
    decode = {**step_feeds(token, start), **{n: out["present" + n[4:]] for n in step.example if n.startswith("past_")}}
    return [(prefill, step.run(prefill), "prefill"), (decode, step.run(decode), "decode")]


def _own_step(variant) -> bool:
    """Whether the variant is already a generation step with its own record and greedy check (a Dolphin
    decoder: :class:`edgesmith.dolphin.generation.DolphinStep`)."""
    return all(hasattr(variant.module, hook) for hook in ("generation_record", "check_greedy"))


def is_step(variant) -> bool:
    """Whether the variant is a generation step (made by :func:`generation_step`)."""
    return type(variant.module).__name__ == "GenerationStep" and variant.task == "lm"


def write_record(source, stage: Path, step=None) -> dict:
    """Write the tokenizer files into the bundle and return the manifest's ``generation`` record.

    For a stateful step (:class:`edgesmith.models.lm_state.StatefulStep`) the record's ``cache``
    says so: ``{"state": "{kind}_cache_{layer}", "capacity", "dtype": "float16"}``, and its
    maximum context is the cache's capacity.
    """
    if _own_step(source):
        return source.module.generation_record(source, stage)
    from edgesmith.models.lm_generate import generation_record

    record = generation_record(source, stage)
    module = getattr(step, "module", None)
    if getattr(module, "state_names", None):
        record["max_context"] = module.capacity
        record["cache"] = {"state": "{kind}_cache_{layer}", "capacity": module.capacity, "dtype": "float16"}
    return record


def check_greedy(bundle, source, tokens: int = GREEDY_TOKENS) -> dict:
    """Greedy generation through the bundle's runtime loop against transformers' ``generate``.

    Returns:
        ``{"prompt_tokens", "tokens", "matched", "passed", "expected", "got"}``; ``matched``
        counts the leading tokens that agree.
    """
    if _own_step(source):
        return source.module.check_greedy(bundle, source, tokens)
    from edgesmith.models.lm_generate import PROMPT, greedy_reference
    from edgesmith.runtimes.generate import Generator, Sampling

    generator = Generator(bundle)
    if generator.tokenizer is not None:
        prompt = generator.encode(PROMPT)
    else:
        prompt = [int(t) for t in np.random.default_rng(1).integers(0, source.outputs[0].shape[-1], 8)]
    expected = greedy_reference(source, prompt, tokens)
    got = generator.generate(prompt, Sampling(max_new_tokens=tokens, ignore_eos=True)).tokens
    matched = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return {"prompt_tokens": len(prompt), "tokens": tokens, "matched": matched,
            "passed": matched == tokens == len(got), "expected": expected, "got": got}
