"""Graphs fused for ONNX Runtime: what the ``onnx`` exporter writes instead of the dynamo graph.

The dynamo exporter decomposes attention, norms and activations into dozens of
elementwise nodes each; ONNX Runtime runs its own fused operators (``com.microsoft``
contrib ops) much faster, and its transformers optimizer does not match the dynamo
exporter's patterns. So edgesmith writes the fused graph itself, from the module's
weights, where it knows the module computes exactly what the fused graph does, and
refuses (:class:`NotFusable`, its message the bundle's note) everywhere else.

- :func:`fuse_step`: a decoder LM's generation step (Llama, Mistral, Qwen2, Qwen3 families):
  ``GroupQueryAttention`` with rotary embedding and the KV cache,
  ``SkipSimplifiedLayerNormalization``, one QKV and one gate/up MatMul per layer
  (:mod:`.decoder`, :mod:`.decoder_graph`).
- :func:`.encoder.fuse_encoder`: a BERT-family encoder (the ``encoder`` task): exported with
  eager attention, its mask rewritten to the pattern ONNX Runtime's transformers optimizer
  matches, then fused by it (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``; the
  skip norms then written as ``Sum`` + ``LayerNormalization``, faster on ONNX Runtime's CPU
  provider) and checked against the unfused graph (:mod:`.encoder`).
"""

from __future__ import annotations

from pathlib import Path

from edgesmith.export.onnx_fuse.graph import MS, NotFusable, count_nodes

__all__ = ["NotFusable", "batch_feeds", "count_nodes", "fuse_step"]


def fuse_step(path: Path, step, opset: int, external_data: bool) -> dict:
    """Replace the dynamo graph of a generation step at ``path`` with the fused one.

    Args:
        path: The ``model.onnx`` the dynamo exporter wrote (its node count is the record's before).
        step: The generation-step variant (:func:`edgesmith.export.generation.is_step`);
            ``step.module.model`` is the transformers causal LM.
        opset: Opset of the default domain.
        external_data: Store the weights in ``model.onnx.data`` next to ``path``.

    Returns:
        The manifest's ``fuse`` record: ``applied``, ``fuser``, ``family``, ``nodes_before``,
        ``nodes``, ``ops`` (count per operator), ``contrib_ops``, ``tied_embeddings``, ``rope_type``,
        ``limits``.

    Raises:
        NotFusable: The model has a part the fused graph does not compute (the message says which);
            ``path`` is untouched.
    """
    import onnx

    from edgesmith.export.onnx_fuse.decoder import read_decoder
    from edgesmith.export.onnx_fuse.decoder_graph import LIMITS, build_step

    model = getattr(step.module, "model", None)
    if model is None or not hasattr(model, "config"):
        raise NotFusable(f"{step.name} does not wrap a transformers causal LM")
    decoder = read_decoder(model)
    fused, ops = build_step(decoder, step.inputs, step.outputs, opset, name=step.name)
    before = count_nodes(onnx.load(str(path), load_external_data=False))
    data = path.with_name(path.name + ".data")
    if data.exists():  # the dynamo graph's external weights: the fused graph writes its own or none
        data.unlink()
    onnx.save(fused, str(path), save_as_external_data=external_data, location=data.name)
    return {"applied": True, "fuser": "edgesmith decoder (onnx_fuse.decoder_graph)", "family": decoder.family,
            "nodes_before": before, "nodes": count_nodes(fused), "ops": ops,
            "contrib_ops": sorted({op.split(".")[-1] for op in ops if op.startswith(f"{MS}.")}),
            "tied_embeddings": decoder.tied, "rope_type": decoder.rope_type, "limits": LIMITS}


def batch_feeds(step) -> list[tuple[dict, dict, str]]:
    """Parity feeds of two rows the fused step takes, in place of the example doubled: a prefill
    of two prompts and a one-token decode of two rows after the example's cache.

    GroupQueryAttention refuses several new tokens per row after a cached past when the batch
    holds more than one row, so the example (a chunk after a past) is checked at batch 1 only.
    """
    import numpy as np

    from edgesmith.runtimes.kv import step_feeds

    ids = step.example["input_ids"]
    past = [n for n in step.example if n.startswith("past_")]
    prompts = np.concatenate([ids, ids[:, ::-1]], axis=0)
    prefill = {**step_feeds(prompts, 0), **{n: np.repeat(step.example[n][:, :, :0], 2, axis=0) for n in past}}
    out = step.run()
    start = step.example["attention_mask"].shape[1]
    token = out["logits"][:, -1:].argmax(-1).astype(np.int64)
    vocab = out["logits"].shape[-1]
    tokens = np.concatenate([token, (token + 1) % vocab], axis=0)
    decode = {**step_feeds(tokens, start), **{n: np.repeat(out["present" + n[4:]], 2, axis=0) for n in past}}
    return [(prefill, step.run(prefill), "prefill batch 2"), (decode, step.run(decode), "decode batch 2")]
