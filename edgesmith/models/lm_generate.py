"""A causal LM as one generation graph: tokens and a KV cache in, logits and the grown cache out.

A language-model variant (``task="lm"``) computes logits for a whole prompt. Generating
needs more: a step that reads the keys and values of everything before it and returns
them with the new tokens' appended. :func:`generation_variant` wraps a Hugging Face
decoder (any transformers causal LM whose cache is a ``DynamicCache`` of per-layer keys
and values: Llama, Qwen2, Mistral, Phi-3, Gemma 1-3, GPT-2, OPT, GPT-NeoX, Falcon, Bloom
and the like, behind edgesmith's wrapper) as a module with plain tensors in and out, so
it exports and profiles like any variant::

    inputs:  input_ids (B, S), attention_mask (B, P + S), position_ids (B, S),
             past_key_<l>, past_value_<l> (B, kv_heads, P, head_dim)
    outputs: logits (B, S, vocab), present_key_<l>, present_value_<l> (B, kv_heads, P + S, head_dim)

One graph serves both phases: the prefill is the step with an empty past (P = 0, S =
the prompt), each decode step has S = 1. Two graphs (prefill, decode) would hold the
weights twice or need shared external data for no gain: the exported graph is the
same computation. The example is a chunk after a real prefix (P >= 2, S >= 2, so
torch.export keeps both axes dynamic); parity adds the prefill and a one-token step.

Sliding-window layers (Mistral, Gemma 2/3, Qwen2 with ``use_sliding_window``) keep every
position in the graph's cache: transformers' own sliding cache drops old positions, which
would give each layer its own past length; the window is applied by the attention mask
instead, so the logits are the same and the cache grows like a full layer's. Caches that
hold something other than keys and values (the convolution and recurrent states of hybrid
linear-attention models, Mamba's state, shared or indexed layers) are refused by name, and
the exporter falls back to the prefill graph.

:func:`generation_record` is what the bundle's manifest says about generation: the
cache layout, the tokenizer files, the chat template, end-of-sequence ids and the
source's generation defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgesmith.errors import BadInputError

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def _decoder(variant):
    """The transformers causal LM inside a variant, and its config."""
    model = getattr(variant.module, "model", None)
    config = getattr(model, "config", None)
    if variant.task != "lm" or config is None or not hasattr(model, "generation_config"):
        raise BadInputError(f"{variant.name} is not a Hugging Face decoder LM with a KV cache "
                            f"(task {variant.task!r})",
                            hint="load a transformers causal LM (a checkpoint folder, a GGUF, or py:factory)")
    return model, config


def cache_shape(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a transformers decoder config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


_PREFILL_ONLY = ("its bundle holds the prefill graph only (logits for a whole prompt, what -O generation=false "
                 "gives); generate with the source model in transformers")
_PLAIN_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def check_cache(model, name: str) -> int | None:
    """Refuse a decoder whose state between steps is not per-layer keys and values.

    Returns:
        The window of its sliding-window layers (which the graph's cache keeps whole), or None.

    Raises:
        BadInputError: Naming the model's class or its cache layers' classes, and what to do.
    """
    import inspect

    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    if "past_key_values" not in params:
        state = [p for p in params if "cache" in p or "state" in p]
        raise BadInputError(f"{name}: {type(model).__name__} takes no past_key_values"
                            f"{f' (it carries {state[0]} instead)' if state else ''}, so it has no KV cache "
                            "for a generation bundle", hint=_PREFILL_ONLY)
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config transformers' cache cannot read: the prefill's cache is checked
        layers = []
    other = sorted({type(x).__name__ for x in layers} - set(_PLAIN_LAYERS))
    if other:
        raise BadInputError(f"{name}: its cache (DynamicCache of {', '.join(other)} layers) holds more than keys "
                            "and values per layer, which a generation bundle's past_key/past_value inputs cannot "
                            "carry", hint=_PREFILL_ONLY)
    windows = [int(x.sliding_window) for x in layers if hasattr(x, "sliding_window")]
    return min(windows) if windows else None


def _plain_cache():
    """An empty cache of full layers: every position kept, whatever windows the config has (see the docstring)."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_layout(model, name: str) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the cache a short prefill of ``model`` really returns.

    Read from the tensors, not the config: configs name these differently (``n_head``,
    ``num_kv_heads``, ``multi_query``) or not at all.
    """
    check_cache(model, name)
    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 2), dtype=torch.long), past_key_values=_plain_cache(), use_cache=True)
    cache = _layers_of(out.past_key_values, name)
    return len(cache), cache[0][0].shape[1], cache[0][0].shape[3]


def _prompt_ids(variant, batch: int, length: int) -> np.ndarray:
    """Token ids of a real prompt where the variant has a tokenizer, else seeded random ids."""
    try:
        from edgesmith.models.hf import tokenizer_for

        ids = tokenizer_for(variant)(PROMPT)["input_ids"]
        if len(ids) >= length:
            return np.tile(np.asarray(ids[:length], np.int64), (batch, 1))
    except BadInputError:
        pass
    vocab = variant.outputs[0].shape[-1]
    return np.random.default_rng(0).integers(0, vocab, (batch, length)).astype(np.int64)


def generation_variant(variant, past: int = 8, chunk: int = 4):
    """The generation step of ``variant`` (one graph for prefill and decode).

    Args:
        variant: A decoder LM variant (``task="lm"``) wrapping a transformers causal LM.
        past: Cached positions in the example (the keys and values of a real prefix).
        chunk: New tokens in the example.

    Returns:
        A :class:`~edgesmith.models.variant.Variant` with the same name and task ``lm``.

    Raises:
        BadInputError: The variant is not a transformers decoder LM, or its cache is not a
            ``DynamicCache`` of per-layer keys and values (see :func:`check_cache`).
    """
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    model, config = _decoder(variant)
    for module in model.modules():  # a pass whose layers keep decode state outside the KV cache says so
        reason = getattr(module, "generation_refusal", None)
        if reason:
            raise BadInputError(f"{variant.name}: {reason}", hint=getattr(module, "generation_hint", None))
    check_cache(model, variant.name)
    ids = _prompt_ids(variant, 1, past + chunk)
    with torch.no_grad():
        prefill = model(input_ids=torch.from_numpy(ids[:, :past]), past_key_values=_plain_cache(), use_cache=True)
    cache = _layers_of(prefill.past_key_values, variant.name)
    example = {"input_ids": ids[:, past:],
               "attention_mask": np.ones((1, past + chunk), np.int64),
               "position_ids": np.arange(past, past + chunk, dtype=np.int64)[None]}
    inputs = [TensorSpec("input_ids", (1, chunk), "int64", {0: "batch", 1: "sequence"}),
              TensorSpec("attention_mask", (1, past + chunk), "int64", {0: "batch", 1: "total"}),
              TensorSpec("position_ids", (1, chunk), "int64", {0: "batch", 1: "sequence"})]
    outputs = [TensorSpec("logits", (1, chunk, variant.outputs[0].shape[-1]), "float32",
                          {0: "batch", 1: "sequence"})]
    for i, (key, value) in enumerate(cache):
        for kind, tensor in (("key", key), ("value", value)):
            example[f"past_{kind}_{i}"] = tensor.numpy()
            inputs.append(TensorSpec(f"past_{kind}_{i}", tuple(tensor.shape), "float32", {0: "batch", 2: "past"}))
            outputs.append(TensorSpec(f"present_{kind}_{i}", (*tensor.shape[:2], past + chunk, tensor.shape[3]),
                                      "float32", {0: "batch", 2: "total"}))
    step = GenerationStep(model, len(cache)).eval()
    return Variant(name=variant.name, module=step, inputs=inputs, outputs=outputs, example=example,
                   source=dict(variant.source), task="lm", passes=list(variant.passes), notes=list(variant.notes))


def _layers_of(cache, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a transformers cache; refuse caches that are something else.

    One shape for every layer's keys and values (the manifest's ``kv_heads`` and ``head_dim``):
    a cache whose layers share keys (no tensors in some layers) or whose keys and values differ
    in width (multi-head latent attention) is refused by name.
    """
    layers = getattr(cache, "layers", None)
    kinds = ", ".join(sorted({type(x).__name__ for x in layers or []}))
    if not layers or not all(getattr(x, "keys", None) is not None for x in layers) or \
            {type(x).__name__ for x in layers} - set(_PLAIN_LAYERS):
        what = f"{type(cache).__name__} of {kinds} layers" if kinds else type(cache).__name__
        raise BadInputError(f"{name}: its KV cache ({what}) is not keys and values for every layer",
                            hint=f"only decoders with a plain DynamicCache export as generation bundles; {_PREFILL_ONLY}")
    shapes = {(x.keys.shape[1], x.keys.shape[3], x.values.shape[1], x.values.shape[3]) for x in layers}
    first = layers[0]
    if len(shapes) > 1 or first.keys.shape[1::2] != first.values.shape[1::2]:
        what = (f"layers of {len(shapes)} different shapes" if len(shapes) > 1 else
                f"keys {tuple(first.keys.shape)} and values {tuple(first.values.shape)} of different shapes")
        raise BadInputError(f"{name}: its KV cache ({type(cache).__name__}) has {what}; a generation bundle takes "
                            "one (kv_heads, head_dim) for every layer's keys and values", hint=_PREFILL_ONLY)
    return [(x.keys, x.values) for x in layers]


class GenerationStep(torch.nn.Module):
    """Plain tensors in and out around a transformers decoder and its ``DynamicCache``."""

    def __init__(self, model, layers: int):
        import inspect

        super().__init__()
        self.model = model
        self.layers = layers
        # models with ALiBi or positions counted from the mask (Bloom) take no position_ids:
        # the graph keeps the input (one interface for the runtime loop) and the model ignores it
        self.positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = _plain_cache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        extra = {"position_ids": position_ids} if self.positions else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         **extra)
        flat = []
        for key, value in _layers_of(out.past_key_values, "the model"):
            flat += [key, value]
        return (out.logits, *flat)


def greedy_reference(variant, prompt_ids: list[int], tokens: int) -> list[int]:
    """The source model's greedy continuation: ``tokens`` argmax steps with its own cache.

    What transformers' greedy ``generate`` computes, except that an end-of-sequence token
    is taken like any other (``generate`` with ``min_new_tokens`` would forbid it instead,
    while the bundle's loop with ``ignore_eos`` keeps it).
    """
    model, _ = _decoder(variant)
    ids = torch.tensor([prompt_ids])
    out: list[int] = []
    cache = None
    with torch.no_grad():
        for _ in range(tokens):
            step = model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            out.append(int(step.logits[0, -1].argmax()))
            ids = torch.tensor([[out[-1]]])
    return out


TOKENIZER_DIR = "tokenizer"


def generation_record(variant, stage: Path) -> dict:
    """Write the tokenizer files into ``stage/tokenizer`` and return the manifest's ``generation`` record.

    A variant without a tokenizer (a ``py:`` factory, a checkpoint folder without
    tokenizer files) still gets a bundle: it generates from token ids.

    Returns:
        ``{"layers", "kv_heads", "head_dim", "max_context", "eos_token_ids", "bos_token_id",
        "pad_token_id", "defaults", "chat_template", "tokenizer", "sliding_window", "cache"}``
        (``sliding_window``: the window of its windowed layers, informative: the cache keeps
        every position and the graph's mask applies the window).
    """
    model, config = _decoder(variant)
    layers, kv_heads, head_dim = cache_layout(model, variant.name)
    gen = model.generation_config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    eos = gen.eos_token_id if gen.eos_token_id is not None else getattr(text, "eos_token_id", None)
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    defaults = {k: getattr(gen, k) for k in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                                              "max_new_tokens") if getattr(gen, k, None) is not None}
    record = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
              "max_context": int(getattr(text, "max_position_embeddings", 0) or 0) or None,
              "eos_token_ids": eos_ids, "bos_token_id": _int(gen.bos_token_id), "pad_token_id": _int(gen.pad_token_id),
              "defaults": defaults, "chat_template": None, "tokenizer": None,
              "sliding_window": check_cache(model, variant.name),
              "cache": {"past": "past_{kind}_{layer}", "present": "present_{kind}_{layer}", "dtype": "float32"}}
    try:
        from edgesmith.models.hf import tokenizer_for

        tok = tokenizer_for(variant)
    except BadInputError:
        return record
    folder = stage / TOKENIZER_DIR
    tok.save_pretrained(str(folder))
    for extra in folder.iterdir():  # the runtime reads tokenizer.json (the tokenizers library's format) only
        if extra.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            extra.unlink()
    if not (folder / "tokenizer.json").is_file():
        raise BadInputError(f"{variant.name}: its tokenizer ({type(tok).__name__}) has no fast (tokenizer.json) form",
                            hint="save the checkpoint's tokenizer in the fast form (tokenizer.json, "
                                 "transformers' PreTrainedTokenizerFast)")
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    record["chat_template"] = template
    record["tokenizer"] = f"{TOKENIZER_DIR}/tokenizer.json"
    record["special_tokens"] = {k: v for k, v in (("bos", tok.bos_token), ("eos", tok.eos_token)) if v}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():  # the template lives in the manifest; keep the file small and self-consistent
        data = json.loads(config_file.read_text(encoding="utf-8"))
        data.pop("chat_template", None)
        config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")
    if not eos_ids and tok.eos_token_id is not None:
        record["eos_token_ids"] = [int(tok.eos_token_id)]
    return record


def _int(value) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)
