"""The feeds of a generation step: token ids, mask, positions and the KV cache (numpy only).

A generation bundle's graph (see :mod:`edgesmith.runtimes.generate`) takes
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_{key,value}_<layer>``;
every runtime's stepper and the exporters' parity feeds build them here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def empty_cache(record: dict[str, Any], batch: int = 1, length: int = 0) -> dict[str, np.ndarray]:
    """The ``past_*`` feeds of a prefill: every layer's keys and values with no position yet
    (``length`` zeroed positions instead: a preallocated buffer, or a past of that length to cost)."""
    shape = (batch, record["kv_heads"], length, record["head_dim"])
    dtype = np.dtype(record.get("cache", {}).get("dtype", "float32"))
    return {f"past_{kind}_{i}": np.zeros(shape, dtype) for i in range(record["layers"]) for kind in ("key", "value")}


def step_feeds(ids: np.ndarray, start: int) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` of a step at ``start`` cached positions."""
    length = ids.shape[1]
    return {"input_ids": ids, "attention_mask": np.ones((ids.shape[0], start + length), np.int64),
            "position_ids": np.arange(start, start + length, dtype=np.int64)[None].repeat(ids.shape[0], 0)}


# additive mask value of a stateful step: fp16's most negative finite number (no overflow in fp16)
MASKED = float(np.finfo(np.float16).min)


def causal_mask(start: int, length: int) -> np.ndarray:
    """The additive ``(1, 1, length, start + length)`` causal mask of a step at ``start`` cached positions."""
    keys = np.arange(start + length)[None]
    queries = np.arange(start, start + length)[:, None]
    return np.where(keys <= queries, 0.0, MASKED).astype(np.float32)[None, None]


def state_feeds(ids: np.ndarray, start: int) -> dict[str, np.ndarray]:
    """``input_ids``, ``position_ids`` and ``causal_mask`` of a stateful step (batch 1) at ``start``."""
    length = ids.shape[1]
    return {"input_ids": ids, "position_ids": np.arange(start, start + length, dtype=np.int64)[None],
            "causal_mask": causal_mask(start, length)}
