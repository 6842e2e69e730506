"""Sentence embeddings of an encoder variant, and how well a smaller embedding keeps the neighbours.

Used for Matryoshka figures: the retrieval a user runs (the ``k`` nearest sentences by
cosine similarity) is computed with the full embedding and with a truncated one, and
``recall@k agreement`` is the share of the full embedding's ``k`` neighbours that the
truncated one also returns (1.0: the same neighbours).
"""

from __future__ import annotations

import numpy as np


def embed(variant, sentences: list[str], batch: int = 64, max_length: int = 128) -> np.ndarray:
    """Embed sentences with a variant whose output is one embedding per input (``matryoshka`` applied).

    Returns:
        float32 ``(N, dim)``.
    """
    from edgesmith.models.hf import tokenizer_for
    from edgesmith.models.variant import run_module

    tok = tokenizer_for(variant)
    names = [s.name for s in variant.inputs]
    out = []
    for start in range(0, len(sentences), batch):
        enc = tok(sentences[start:start + batch], return_tensors="np", padding=True, truncation=True,
                  max_length=max_length)
        feeds = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"], np.int64) for n in names}
        result = run_module(variant.module, variant.inputs, variant.outputs, feeds)
        out.append(result[variant.outputs[0].name])
    return np.concatenate(out).astype(np.float32)


def neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` most cosine-similar other rows, best first."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    order = np.take_along_axis(sim, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def recall_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's ``k`` reference neighbours that the candidate embedding also finds."""
    ref, cand = neighbours(reference, k), neighbours(candidate, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, cand)]))
