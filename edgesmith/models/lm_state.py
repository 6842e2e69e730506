"""A causal LM whose KV cache lives in the model as state (Core ML's stateful models, iOS 18).

Core ML keeps buffers between predictions (``MLModel.make_state()``; in MIL ``read_state``
and ``write_state``), so a generation step need not pass its cache in and out: the step
writes the new positions' keys and values into a preallocated buffer and attends over the
filled part. :func:`stateful_variant` wraps a transformers decoder so that
``torch.export`` records exactly that (the buffers as mutated buffers, which coremltools
converts to states)::

    inputs:  input_ids (1, S), position_ids (1, S), causal_mask (1, 1, S, P + S)
    state:   key_cache_<l>, value_cache_<l> (1, kv_heads, capacity + 1, head_dim)
    outputs: logits (1, S, vocab)

The step's start is read from the shapes (``P = mask length - S``), never from a value,
so the write is a slice with symbolic bounds (``slice_update`` in MIL) and the attention
reads ``cache[..., :P + S]``. The mask is additive (0 where a query may look, the fp16
minimum where not: finite, so an fp16 program adds it without overflow; built by
:func:`edgesmith.runtimes.kv.state_feeds` for the export and the runtime alike), given whole to the
model, which takes a 4-D mask as it is. The buffers are one position longer than the
``capacity`` (torch.export would otherwise specialise the slice that reads the whole buffer).

Batch is 1 (a state has one fixed shape), and Core ML states are fp16: the cache is stored
in half precision even where the program computes in fp32. Sliding-window layers are
served by capping the capacity at the window (the mask, shared by every layer, then never
needs to drop a position).
"""

from __future__ import annotations

import functools

import torch

from edgesmith.models.lm_generate import _decoder, _prompt_ids, cache_layout, check_cache


@functools.cache  # the classes are made once, not on every forward
def _cache_classes():
    from transformers.cache_utils import Cache, CacheLayerMixin

    class StateLayer(CacheLayerMixin):
        """One layer's keys and values in the owner's buffers, written at ``[P, P + S)``."""

        is_sliding = False
        is_compileable = True

        def __init__(self, owner, index: int):
            super().__init__()
            self.owner, self.index = owner, index
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states) -> None:
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            keys = getattr(self.owner, f"key_cache_{self.index}")
            values = getattr(self.owner, f"value_cache_{self.index}")
            end = self.owner.total
            begin = end - key_states.shape[2]
            keys[:, :, begin:end] = key_states
            values[:, :, begin:end] = value_states
            return keys[:, :, :end], values[:, :, :end]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.owner.total, 0

        def get_seq_length(self) -> int:
            return self.owner.total - self.owner.query_length

        def get_max_length(self) -> int:
            return self.owner.capacity

        def get_max_cache_shape(self) -> int:
            return self.owner.capacity

    class StateCache(Cache):
        def __init__(self, owner, layers: int):
            super().__init__(layers=[StateLayer(owner, i) for i in range(layers)])

    return StateCache


class StatefulStep(torch.nn.Module):
    """A transformers decoder with its KV cache as module buffers (see the module docstring).

    Args:
        model: The transformers causal LM.
        layers, kv_heads, head_dim: Its cache layout.
        capacity: Positions the cache holds (prompt and generated tokens together).
    """

    def __init__(self, model, layers: int, kv_heads: int, head_dim: int, capacity: int):
        super().__init__()
        self.model = model
        self.layers = layers
        self.capacity = capacity
        for i in range(layers):
            for kind in ("key", "value"):
                self.register_buffer(f"{kind}_cache_{i}", torch.zeros(1, kv_heads, capacity + 1, head_dim),
                                     persistent=False)
        self.total = self.query_length = 0

    @property
    def axis_ranges(self) -> dict[str, tuple[int, int]]:
        """Bounds of the dynamic axes for torch.export: a step fits the cache."""
        return {"sequence": (1, self.capacity), "total": (1, self.capacity)}

    @property
    def state_names(self) -> list[str]:
        return [f"{kind}_cache_{i}" for i in range(self.layers) for kind in ("key", "value")]

    def reset(self) -> None:
        """Zero the cache (what a new Core ML state is)."""
        for name in self.state_names:
            getattr(self, name).zero_()

    def forward(self, input_ids, position_ids, causal_mask):
        self.total, self.query_length = causal_mask.shape[-1], input_ids.shape[1]
        cache = _cache_classes()(self, self.layers)
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=causal_mask,
                         past_key_values=cache, use_cache=True)
        return out.logits


def stateful_variant(variant, capacity: int, feeds, prompt: int = 6):
    """The stateful generation step of ``variant`` (Core ML), its example a prefill of ``prompt`` tokens.

    Args:
        variant: A decoder LM variant (``task="lm"``) wrapping a transformers causal LM.
        capacity: Positions the cache holds; capped at the model's maximum context and at
            its sliding window (see the module docstring).
        feeds: ``feeds(ids, start)`` -> a step's inputs (:func:`edgesmith.runtimes.kv.state_feeds`,
            handed in so that the example's mask is the one the runtime builds).
        prompt: Tokens in the example.

    Returns:
        A :class:`~edgesmith.models.variant.Variant` (task ``lm``) whose module is a :class:`StatefulStep`.

    Raises:
        BadInputError: The variant is not a transformers decoder LM with a per-layer KV cache.
    """
    from edgesmith.models.variant import Variant
    from edgesmith.specs import TensorSpec

    model, config = _decoder(variant)
    window = check_cache(model, variant.name)
    layers, kv_heads, head_dim = cache_layout(model, variant.name)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = [capacity, int(getattr(text, "max_position_embeddings", 0) or capacity), window or capacity]
    capacity = min(limits)
    prompt = min(prompt, capacity)
    ids = _prompt_ids(variant, 1, prompt)
    example = feeds(ids, 0)
    vocab = variant.outputs[0].shape[-1]
    inputs = [TensorSpec("input_ids", (1, prompt), "int64", {1: "sequence"}),
              TensorSpec("position_ids", (1, prompt), "int64", {1: "sequence"}),
              TensorSpec("causal_mask", (1, 1, prompt, prompt), "float32", {2: "sequence", 3: "total"})]
    outputs = [TensorSpec("logits", (1, prompt, vocab), "float32", {1: "sequence"})]
    step = StatefulStep(model, layers, kv_heads, head_dim, capacity).eval()
    notes = list(variant.notes)
    if window and window == capacity:
        notes.append(f"coreml: the KV cache holds {capacity} positions, the model's sliding window "
                     "(a stateful cache serves windowed layers up to their window)")
    return Variant(name=variant.name, module=step, inputs=inputs, outputs=outputs, example=example,
                   source=dict(variant.source), task="lm", passes=list(variant.passes), notes=notes)
