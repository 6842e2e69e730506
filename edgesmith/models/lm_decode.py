"""The decode step of a causal LM as its own variant: one new token with a KV cache in, logits and the cache out.

A language-model variant (``task="lm"``) computes logits for a whole prompt: that is
the *prefill*. Generating then runs the *decode step* once per token, reading the
keys and values of everything before it. :func:`decode_step_variant` wraps a Hugging
Face decoder (Llama/Qwen2 family, behind edgesmith's wrapper) as a module with plain
tensor inputs and outputs, so it exports (ONNX at least) and profiles like any
variant::

    inputs:  input_ids (B, 1), attention_mask (B, P + 1), past_key_<l>, past_value_<l> (B, kv_heads, P, head_dim)
    outputs: logits (B, 1, vocab), present_key_<l>, present_value_<l> (B, kv_heads, P + 1, head_dim)

The past length is a dynamic axis (``past``; the mask and the presents are ``past+1``
long). The example past is real: the keys and values of a prefill of the given
prompt (random caches make parity meaningless: attention over noise).
"""

from __future__ import annotations

import numpy as np
import torch

from edgesmith.errors import BadInputError


def _decoder(variant):
    model = getattr(variant.module, "model", None)
    config = getattr(model, "config", None)
    if variant.task != "lm" or config is None or not hasattr(config, "num_key_value_heads"):
        raise BadInputError(f"{variant.name} is not a Hugging Face decoder LM with a KV cache "
                            f"(task {variant.task!r})", hint="load a Llama/Qwen2-family checkpoint or GGUF")
    return model, config


def decode_step_variant(variant, prompt_ids: np.ndarray):
    """The decode step of ``variant`` after the prompt ``prompt_ids`` (int64 ``(B, P)``).

    Returns:
        A :class:`~edgesmith.models.variant.Variant` named ``<name>-decode`` whose example is
        the next token after the prompt with the prompt's real KV cache; the past length is a dynamic axis.

    Raises:
        BadInputError: The variant is not a decoder LM with a KV cache.
    """
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    model, config = _decoder(variant)
    layers = config.num_hidden_layers
    step = _DecodeStep(model, layers).eval()
    batch, past = prompt_ids.shape
    with torch.no_grad():
        prefill = model(input_ids=torch.from_numpy(prompt_ids), use_cache=True)
    cache = prefill.past_key_values
    example = {"input_ids": prefill.logits[:, -1:].argmax(-1).numpy().astype(np.int64),
               "attention_mask": np.ones((batch, past + 1), np.int64)}
    inputs = [TensorSpec("input_ids", (batch, 1), "int64"),
              TensorSpec("attention_mask", (batch, past + 1), "int64", {1: "past+1"})]
    outputs = []
    for i in range(layers):
        for kind, tensor in (("key", cache.layers[i].keys), ("value", cache.layers[i].values)):
            example[f"past_{kind}_{i}"] = tensor.numpy()
            inputs.append(TensorSpec(f"past_{kind}_{i}", tuple(tensor.shape), "float32", {2: "past"}))
            shape = (*tensor.shape[:2], past + 1, tensor.shape[3])
            outputs.append(TensorSpec(f"present_{kind}_{i}", shape, "float32", {2: "past+1"}))
    vocab = prefill.logits.shape[-1]
    return Variant(name=f"{variant.name}-decode", module=step, inputs=inputs,
                   outputs=[TensorSpec("logits", (batch, 1, vocab), "float32"), *outputs], example=example,
                   source=dict(variant.source), task="generic", passes=list(variant.passes),
                   notes=list(variant.notes))


class _DecodeStep(torch.nn.Module):
    """Plain tensors in and out around a transformers decoder and its ``DynamicCache``."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, input_ids, attention_mask, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        present = out.past_key_values
        flat = []
        for i in range(self.layers):
            flat += [present.layers[i].keys, present.layers[i].values]
        return (out.logits, *flat)
