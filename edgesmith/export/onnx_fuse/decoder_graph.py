"""The fused generation step of a Llama-family decoder, written with ONNX Runtime's contrib operators.

Same inputs and outputs as the dynamo exporter's graph of
:class:`~edgesmith.models.lm_generate.GenerationStep` (``input_ids``, ``attention_mask``,
``position_ids``, ``past_{key,value}_<l>`` -> ``logits``, ``present_{key,value}_<l>``),
built from the weights instead of traced. Before (dynamo, per layer): RMSNorm as
Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul, three q/k/v MatMuls, RoPE as Slice/Neg/Concat/Mul/Add,
the cache as Concat, a mask built from the attention mask with IsNaN/Where, repeat-kv
Expand/Reshape, MatMul/Softmax/MatMul, gate/up/down MatMuls with Sigmoid/Mul. After::

    h, _, _, residual = SkipSimplifiedLayerNormalization(mlp_out_prev, residual, input_layernorm)
    qkv = MatMul(h, [Wq; Wk; Wv]^T) (+ bias)
    attn, present_key, present_value = GroupQueryAttention(qkv, past_key, past_value, seqlens_k,
        total_sequence_length, cos_cache, sin_cache, position_ids; do_rotary=1)
    h, _, _, residual = SkipSimplifiedLayerNormalization(MatMul(attn, Wo^T), residual, post_attention_layernorm)
    gate, up = Split(MatMul(h, [Wgate; Wup]^T))
    mlp_out = MatMul(QuickGelu(gate, alpha=1) * up, Wdown^T)      # QuickGelu with alpha 1 is SiLU

``seqlens_k`` (per row: attended positions - 1) and ``total_sequence_length`` come from
``attention_mask`` inside the graph, once for all layers. GroupQueryAttention reads the
mask as a count of valid positions from the left: exactly transformers' computation for
masks of ones (the generation loop's) and right padding; a left-padded batch is not
what it computes. A tied output head is a ``Gemm`` with ``transB`` on the embedding
matrix, so the matrix is stored once and never transposed into a second copy.
"""

from __future__ import annotations

import numpy as np

from edgesmith.export.onnx_fuse.decoder import Decoder, Layer
from edgesmith.export.onnx_fuse.graph import MS, GraphBuilder

# what the fused step does not take that the dynamo graph does (the manifest's record says it)
LIMITS = ("attention_mask counts valid positions from the left: masks of ones and right padding only",
          "batch > 1 with a cached past takes one new token per step (ONNX Runtime's GroupQueryAttention)")


def _dims(spec) -> list:
    return [spec.dynamic.get(i, size) for i, size in enumerate(spec.shape)]


def build_step(decoder: Decoder, inputs, outputs, opset: int, name: str = "generation_step"):
    """The fused ``ModelProto`` of a generation step.

    Args:
        decoder: The model read by :func:`~edgesmith.export.onnx_fuse.decoder.read_decoder`.
        inputs: The step's input :class:`~edgesmith.specs.TensorSpec` (names, dtypes, dynamic axes kept).
        outputs: Its output specs, ``logits`` first, then ``present_{key,value}_<l>`` per layer.
        opset: Opset of the default domain.
        name: Graph name.

    Returns:
        ``(model, op_counts)``.
    """
    g = GraphBuilder(name, opset)
    for spec in inputs:
        g.input(spec.name, spec.dtype, _dims(spec))
    for spec in outputs:
        g.output(spec.name, spec.dtype, _dims(spec))
    embed = g.weight("model.embed_tokens.weight", decoder.embed)
    x = g.op("Gather", [embed, "input_ids"], name="embed_tokens")
    seqlens, total = _lengths(g)
    cos = g.weight("rotary.cos_cache", decoder.cos)
    sin = g.weight("rotary.sin_cache", decoder.sin)
    residual, pending = x, None
    for i, layer in enumerate(decoder.layers):
        scope = f"model.layers.{i}"
        norm_in = g.weight(f"{scope}.input_layernorm.weight", layer.norm_in)
        if pending is None:
            h = _rms(g, x, norm_in, decoder.eps, f"{scope}/input_layernorm")
        else:
            h, residual = _skip_norm(g, pending, residual, norm_in, decoder.eps, f"{scope}/input_layernorm")
        attn = _attention(g, layer, h, i, seqlens, total, cos, sin, scope, decoder.eps)
        norm_post = g.weight(f"{scope}.post_attention_layernorm.weight", layer.norm_post)
        h, residual = _skip_norm(g, attn, residual, norm_post, decoder.eps, f"{scope}/post_attention_layernorm")
        pending = _mlp(g, layer, h, scope)
    norm = g.weight("model.norm.weight", decoder.norm)
    h, _ = _skip_norm(g, pending, residual, norm, decoder.eps, "model/norm")
    _head(g, decoder, h, embed, outputs[0].name)
    return g.model(), g.op_counts()


def _lengths(g: GraphBuilder) -> tuple[str, str]:
    """GroupQueryAttention's ``seqlens_k`` (int32, per row: valid positions - 1) and total length (int32 scalar)."""
    valid = g.op("ReduceSum", ["attention_mask", g.const([1])], name="mask/valid", keepdims=0)
    last = g.op("Sub", [valid, g.const(1)], name="mask/last")
    seqlens = g.op("Cast", [last], name="mask/seqlens_k", to=6)  # int32
    width = g.op("Shape", ["attention_mask"], name="mask/shape")
    total = g.op("Gather", [width, g.const(1)], name="mask/total", axis=0)
    return seqlens, g.op("Cast", [total], name="mask/total_sequence_length", to=6)


def _rms(g: GraphBuilder, x: str, weight: str, eps: float, name: str) -> str:
    """``rms(x) * weight`` as ``SkipSimplifiedLayerNormalization(x, x)`` with epsilon ``4 eps``.

    rms(2x) with 4 eps is rms(x) with eps, exactly (scaling by 2 and 4 only moves exponents).
    The default domain's ``SimplifiedLayerNormalization`` is an ONNX Runtime schema the ONNX
    checker does not know, so a graph using it fails ``onnx.checker``; the contrib op does not.
    """
    return g.op("SkipSimplifiedLayerNormalization", [x, x, weight], [f"{name}/out"], domain=MS, name=name,
                epsilon=4 * eps)


def _skip_norm(g: GraphBuilder, x: str, residual: str, weight: str, eps: float, name: str) -> tuple[str, str]:
    """``rms(x + residual) * weight`` and the sum, the next block's residual."""
    out = g.op("SkipSimplifiedLayerNormalization", [x, residual, weight], [f"{name}/out", "", "", f"{name}/sum"],
               domain=MS, name=name, epsilon=eps)
    return out[0], out[3]


def _linear(g: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
    """``x @ weight^T (+ bias)``, the weight stored transposed (``(in, out)``) for MatMul."""
    y = g.op("MatMul", [x, g.weight(f"{name}.weight", weight.T)], name=name)
    if bias is not None:
        y = g.op("Add", [y, g.weight(f"{name}.bias", bias)], name=f"{name}/bias")
    return y


def _stack(layer: Layer, keys: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """The weights (and biases) of several projections of one input, as one wider projection."""
    weight = np.concatenate([getattr(layer, k) for k in keys], axis=0)
    if not any(k in layer.bias for k in keys):
        return weight, None
    bias = [layer.bias.get(k, np.zeros(getattr(layer, k).shape[0], np.float32)) for k in keys]
    return weight, np.concatenate(bias)


def _attention(g: GraphBuilder, layer: Layer, h: str, i: int, seqlens: str, total: str, cos: str, sin: str,
               scope: str, eps: float) -> str:
    weight, bias = _stack(layer, ("q", "k", "v"))
    qkv = _linear(g, h, weight, bias, f"{scope}.self_attn.qkv_proj")
    width = layer.q.shape[0] // layer.heads
    query, rotary = [qkv, "", ""], [cos, sin, "position_ids"]
    if layer.q_norm is not None or width % 16:
        query = g.op("Split", [qkv, g.const([layer.q.shape[0], layer.k.shape[0], layer.v.shape[0]])], 3,
                     name=f"{scope}/self_attn/split", axis=-1)
        heads = (layer.heads, layer.kv_heads)
        if layer.q_norm is not None:  # Qwen3: RMSNorm over each head of q and k, before the rotation
            norms = (layer.q_norm, layer.k_norm)
            query[:2] = [_head_norm(g, x, w, width, eps, f"{scope}.self_attn.{key}")
                         for x, w, key in zip(query[:2], norms, ("q_norm", "k_norm"))]
        if width % 16:  # GroupQueryAttention rotates only heads a multiple of 16 wide: RotaryEmbedding first
            query[:2] = [g.op("RotaryEmbedding", [x, "position_ids", cos, sin], domain=MS,
                              name=f"{scope}/self_attn/rotary", num_heads=n, rotary_embedding_dim=width, interleaved=0)
                         for x, n in zip(query[:2], heads)]
            rotary = []
    attn = g.op("GroupQueryAttention", [*query, f"past_key_{i}", f"past_value_{i}", seqlens, total, *rotary],
                [f"{scope}/attn", f"present_key_{i}", f"present_value_{i}"], domain=MS, name=f"{scope}/self_attn",
                num_heads=layer.heads, kv_num_heads=layer.kv_heads, scale=layer.scale, do_rotary=int(bool(rotary)),
                rotary_interleaved=0)
    return _linear(g, attn[0], layer.o, layer.bias.get("o"), f"{scope}.self_attn.o_proj")


def _head_norm(g: GraphBuilder, x: str, weight: np.ndarray, width: int, eps: float, name: str) -> str:
    """RMSNorm over each ``width``-wide head of ``x`` (B, S, heads * width)."""
    rows = g.op("Shape", [x], name=f"{name}/shape")
    heads = g.op("Reshape", [x, g.const([0, -1, width])], name=f"{name}/heads")  # (B, S * heads, width)
    normed = _rms(g, heads, g.weight(f"{name}.weight", weight), eps, name)
    return g.op("Reshape", [normed, rows], name=f"{name}/flat")


def _mlp(g: GraphBuilder, layer: Layer, h: str, scope: str) -> str:
    weight, bias = _stack(layer, ("gate", "up"))
    width = layer.gate.shape[0]
    both = _linear(g, h, weight, bias, f"{scope}.mlp.gate_up_proj")
    gate, up = g.op("Split", [both, g.const([width, width])], 2, name=f"{scope}/mlp/split", axis=-1)
    act = g.op("QuickGelu", [gate], domain=MS, name=f"{scope}/mlp/silu", alpha=1.0)
    gated = g.op("Mul", [act, up], name=f"{scope}/mlp/gated")
    return _linear(g, gated, layer.down, layer.bias.get("down"), f"{scope}.mlp.down_proj")


def _head(g: GraphBuilder, decoder: Decoder, h: str, embed: str, logits: str) -> None:
    if not decoder.tied:
        g.op("MatMul", [h, g.weight("lm_head.weight", decoder.lm_head.T)], [logits], name="lm_head")
        return
    # tied: Gemm reads the (vocab, hidden) embedding transposed in place; a MatMul would need a
    # transposed copy, which ONNX Runtime's constant folding would make at load (the matrix twice in memory)
    flat = g.op("Reshape", [h, g.const([-1, decoder.hidden])], name="lm_head/flatten")
    scores = g.op("Gemm", [flat, embed], name="lm_head", transB=1)
    rows = g.op("Shape", ["input_ids"], name="lm_head/rows")
    shape = g.op("Concat", [rows, g.const([decoder.embed.shape[0]])], name="lm_head/shape", axis=0)
    g.op("Reshape", [scores, shape], [logits], name="lm_head/unflatten")
