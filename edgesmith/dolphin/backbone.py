"""The two LMs of a Dolphin pair: the causal LM inside a variant, its transformer body, the encoder
cut from it, and the identity of a pair (what a trained Dolphin file is tied to).

Dolphin (arXiv 2408.15518) pairs a small encoder LM with the main decoder. With the offline models
here the encoder is a truncated copy of the decoder: its first ``encoder_layers`` blocks, sharing the
token embeddings (see :func:`truncated_body`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import torch

from edgesmith.errors import BadInputError


def base_model(lm, side: str):
    """The transformer body of a Llama/Qwen-family causal LM (``embed_tokens``, ``layers``, ``norm``).

    Args:
        lm: A transformers causal LM.
        side: ``encoder`` or ``decoder`` (named in the error).

    Raises:
        BadInputError: Anything else (names what it is).
    """
    body = getattr(lm, "model", None)
    if body is None or not all(hasattr(body, a) for a in ("embed_tokens", "layers", "norm")) \
            or not hasattr(lm, "lm_head"):
        raise BadInputError(f"dolphin: the {side} ({type(lm).__name__}) is not a Llama/Qwen-family causal LM",
                            hint="give a Hugging Face causal LM with model.embed_tokens/layers/norm and lm_head, "
                                 "e.g. zoo:smollm2-135m")
    return body


def causal_lm(variant, side: str):
    """The transformers causal LM inside a variant (edgesmith's HF wrapper holds it as ``.model``).

    Raises:
        BadInputError: The variant is not a language model, or not a Llama/Qwen-family one.
    """
    if variant.task != "lm":
        raise BadInputError(f"dolphin: the {side} {variant.name} is not a language model (task {variant.task!r})",
                            hint="give a causal LM, e.g. zoo:smollm2-135m")
    lm = variant.module
    if not hasattr(lm, "lm_head"):  # edgesmith's HF wrapper holds the transformers model as .model
        lm = getattr(lm, "model", lm)
    base_model(lm, side)
    return lm


def truncated_body(body, layers: int, copy_blocks: bool):
    """``body`` cut to its first ``layers`` blocks, sharing the token embeddings.

    Args:
        body: The transformer body (:func:`base_model`).
        layers: Blocks to keep.
        copy_blocks: Copy the kept blocks and the final norm instead of sharing them (adapters will be
            added to them, which must not touch the decoder).

    Raises:
        BadInputError: More blocks asked for than the body has.
    """
    total = len(body.layers)
    if layers > total:
        raise BadInputError(f"dolphin: encoder_layers={layers}, but the encoder has {total} blocks",
                            hint=f"give at most {total} (0 keeps all)")
    config = copy.deepcopy(body.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    own = copy.deepcopy if copy_blocks else (lambda module: module)
    shell = copy.copy(body)  # shares embed_tokens and rotary_emb
    shell._modules = dict(body._modules)
    shell.layers = torch.nn.ModuleList(own(block) for block in body.layers[:layers])
    shell.norm = own(body.norm)
    shell.config = config
    return shell


def fingerprint(variant, lm, layers: int | None = None) -> dict[str, Any]:
    """One side's identity in a pair record: reference, weights sha256, hidden size, vocabulary (and blocks)."""
    config = lm.config
    return {"reference": str(variant.source.get("reference", variant.name)),
            "sha256": str(variant.source.get("sha256", "")),
            "hidden": int(config.hidden_size), "vocab": int(config.vocab_size),
            **({"layers": layers} if layers is not None else {})}


def describe_pair(pair: dict[str, Any]) -> str:
    """``encoder REF (N blocks, sha ...) -> decoder REF (sha ...)``."""
    def one(side):
        info = pair.get(side, {})
        layers = f"{info['layers']} blocks, " if "layers" in info else ""
        return f"{side} {info.get('reference')} ({layers}sha256 {str(info.get('sha256'))[:12]})"
    return f"{one('encoder')} -> {one('decoder')}"


def pair_digest(pair: dict[str, Any]) -> str:
    """A short stable digest of a pair record (checkpoint run records)."""
    return hashlib.sha256(json.dumps(pair, sort_keys=True).encode()).hexdigest()[:16]
