"""Encoder fusion: BERT-family graphs rewritten onto ONNX Runtime's fused contrib operators.

ONNX Runtime's transformers optimizer (``onnxruntime.transformers.optimizer``) fuses a
BERT encoder into ``Attention``, ``SkipLayerNormalization`` and ``BiasGelu``, but only
when the graph has the pattern it matches. Two things in the dynamo export break it:

- transformers' default ``sdpa`` attention decomposes into a scaled-q/scaled-k product
  and a ``Softmax`` guarded by ``IsNaN``/``Where`` (rows with every key masked), which
  no pattern matches. The ``eager`` implementation computes the same function as
  ``MatMul -> Mul(scale) -> Add(mask) -> Softmax -> MatMul``, which does match: the
  export switches to it (:func:`eager_attention`) while the graph is captured.
- transformers 5 builds the additive mask as ``Where(bool_mask, 0, min_float)``, the
  boolean mask gathered from ``attention_mask`` through ``GatherND`` and ``And``. The
  optimizer expects the classic ``(1 - mask) * min_float`` chain on the 2-D input, so
  that subgraph is rewritten to it (:func:`_rewrite_mask`) before the optimizer runs.

The optimizer runs at ``opt_level=0`` (its own pattern fusions only, no ONNX Runtime
session optimizations baked in), so the graph stays portable: every fused operator has a
CPU kernel, and ONNX Runtime still applies its session optimizations when it loads the
bundle. One of its fusions is undone: ``SkipLayerNormalization`` is written back as
``Sum -> LayerNormalization`` (:func:`_split_skip_norms`), which ONNX Runtime's CPU provider
runs about three times faster. The raw 2-D mask is kept (``AttentionMaskFormat.AttentionMask``),
never reduced to a sequence length, so left padding and holes keep their meaning. The fused graph is
checked against the unfused one on ONNX Runtime (the example, and the example with left
padding) before it replaces it; where that or any step fails the unfused graph stays and
the reason is the bundle's note (:class:`NotFusable`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgesmith.export.onnx_fuse.graph import NotFusable, count_nodes

FP32_ATOL = 1e-4  # parity.TOLERANCES["fp32"]: max_abs <= atol * max(1, max|reference|)


def transformer_config(module):
    """The transformers config (``num_attention_heads``, ``hidden_size``) of the model inside ``module``.

    Raises:
        NotFusable: No transformers model with those fields is inside ``module``.
    """
    import torch

    candidates = module.modules() if isinstance(module, torch.nn.Module) else []
    for sub in candidates:
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "num_attention_heads") and hasattr(config, "hidden_size"):
            return config
    raise NotFusable("no transformers encoder (config with num_attention_heads, hidden_size) inside the module")


@contextlib.contextmanager
def eager_attention(module):
    """Switch the transformers models inside ``module`` to ``eager`` attention, restoring them after.

    ``eager`` and ``sdpa`` compute the same attention; only ``eager`` exports to the
    pattern the optimizer fuses (module docstring). Models without the switch are left alone.
    """
    import torch

    switched = []
    subs = module.modules() if isinstance(module, torch.nn.Module) else []
    for sub in subs:
        config = getattr(sub, "config", None)
        setter = getattr(sub, "set_attn_implementation", None)
        current = getattr(config, "_attn_implementation", None)
        if setter is None or current in (None, "eager") or any(sub is s for s, _ in switched):
            continue
        try:
            setter("eager")
        except (ValueError, ImportError, AttributeError):
            continue  # an architecture without an eager path keeps its own
        switched.append((sub, current))
    try:
        yield [c for _, c in switched]
    finally:
        for sub, current in reversed(switched):
            sub.set_attn_implementation(current)


def fuse_encoder(path: Path, variant, mask_input: str = "attention_mask") -> dict:
    """Fuse the encoder graph at ``path`` in place; return the manifest's record of what happened.

    Args:
        path: The exported ``model.onnx`` (weights inside it, not external data).
        variant: The exported variant (its module gives the heads and hidden size, its
            example the check feeds).
        mask_input: Name of the graph's 2-D padding mask input.

    Returns:
        ``{"applied": True, "fusions": {op: count}, "nodes": {"before": n, "after": m},
        "mask": ..., "skip_norms": ...}`` (``fusions``: what the optimizer fused, before
        :func:`_split_skip_norms`); the graph at ``path`` is the fused one.

    Raises:
        NotFusable: Nothing fused, or the fused graph computes something else; ``path`` is untouched.
    """
    import onnx

    config = transformer_config(variant.module)
    model = onnx.load(str(path))
    before = count_nodes(model)
    original = model.SerializeToString()
    rewired = _rewrite_mask(model, mask_input)
    fused, stats = _optimize(model, config)
    if not stats.get("Attention"):
        raise NotFusable(f"ONNX Runtime's optimizer fused no Attention ({_stats_text(stats) or 'nothing'}); "
                         "the unfused graph is kept")
    split = _split_skip_norms(fused)
    _check_same(original, fused.SerializeToString(), variant.example, mask_input)
    onnx.save(fused, str(path))
    return {"applied": True, "fusions": stats, "nodes": {"before": before, "after": count_nodes(fused)},
            "mask": f"Where mask rewritten to (1 - {mask_input}) * min for {rewired} attention blocks"
            if rewired else "no Where mask found", "optimizer": "onnxruntime.transformers, model_type=bert, "
            "opt_level=0, raw 2-D attention mask",
            "skip_norms": f"{split} SkipLayerNormalization written as Sum + LayerNormalization (faster on "
            "ONNX Runtime's CPU provider)" if split else "none split"}


def _stats_text(stats: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items())


def _optimize(model, config):
    """ONNX Runtime's transformers optimizer (pattern fusions only) on ``model``; (model, fused op counts)."""
    import logging

    try:
        from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise NotFusable(f"ONNX Runtime's transformers optimizer is unavailable ({exc})") from None
    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask  # keep the 2-D mask: left padding, holes
    options.enable_gelu_approximation = False  # exact GELU: fp32 parity
    quiet = [logging.getLogger(n) for n in ("onnx_model", "fusion_base", "onnx_model_bert", "fusion_utils")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)  # it logs every fusion at INFO
    try:
        optimized = optimize_model(model, model_type="bert", num_heads=int(config.num_attention_heads),
                                   hidden_size=int(config.hidden_size), optimization_options=options, opt_level=0)
    except Exception as exc:  # the optimizer raises whatever its pattern code trips on
        raise NotFusable(f"ONNX Runtime's optimizer failed: {type(exc).__name__}: {exc}") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return optimized.model, stats


def _split_skip_norms(model) -> int:
    """Write each ``SkipLayerNormalization`` as ``Sum(input, bias, skip) -> LayerNormalization``.

    The same function, computed faster on ONNX Runtime's CPU provider: its
    SkipLayerNormalization kernel is a scalar loop per row (a division per element), its
    ``LayerNormalization`` kernel is vectorized. Profiled on all-MiniLM-L6-v2 (2 threads,
    1 x 128 tokens), the 12 fused nodes took about 3.5 ms a run, the 12 pairs about 1.0 ms,
    more than the whole difference between exact and tanh GELU. ``Sum`` rather than two
    ``Add`` nodes: ONNX Runtime's session optimizer fuses ``Add -> Add -> LayerNormalization``
    back into SkipLayerNormalization when it loads the graph; it does not match ``Sum``.

    A node is left alone where its mean or inverse-deviation output is used, where it has no
    gamma, or where the default-domain opset predates ``LayerNormalization`` (17).

    Returns:
        How many nodes were rewritten.
    """
    from onnx import helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 17:
        return 0
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    nodes, split = [], 0
    for node in model.graph.node:
        inputs = list(node.input) + [""] * (5 - len(node.input))
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if (node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or not inputs[2]
                or any(o in used for o in outputs[1:3] if o)):
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = inputs[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        base = node.name or outputs[0]
        total = outputs[3] or f"{outputs[0]}_sum"  # output 3 is input + skip + bias where a later node reads it
        nodes.append(helper.make_node("Sum", [x, bias, skip] if bias else [x, skip], [total], name=f"{base}_sum"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []),
                                      [outputs[0]], name=f"{base}_norm", axis=-1, epsilon=eps, stash_type=1))
        split += 1
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return split


def _constant(model, name: str, producers: dict):
    """The value of ``name`` if it is an initializer or a ``Constant`` node's output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute:
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    return None


def _ancestors_inputs(name: str, producers: dict, graph_inputs: set) -> set:
    """The graph inputs ``name`` depends on."""
    seen, stack, found = set(), [name], set()
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        if cur in graph_inputs:
            found.add(cur)
        node = producers.get(cur)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return found


def _rewrite_mask(model, mask_input: str) -> int:
    """Replace ``Where(bool_mask, 0, neg)`` additive masks by ``(1 - float(mask[:, None, None, :])) * neg``.

    Only a ``Where`` whose condition derives from ``mask_input`` (and the inputs' shapes), whose
    true branch is zero and whose false branch is a scalar below -1e4, and whose every
    consumer is an ``Add`` (the scores plus the mask) is rewritten. Whether the two
    compute the same mask is not assumed: :func:`_check_same` compares the graphs.

    Returns:
        How many ``Add`` nodes now take the rewritten mask.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    if mask_input not in graph_inputs:
        return 0
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rewired = 0
    for where in [n for n in graph.node if n.op_type == "Where"]:
        zero = _constant(model, where.input[1], producers)
        neg = _constant(model, where.input[2], producers)
        users = consumers.get(where.output[0], [])
        if (zero is None or neg is None or neg.size != 1 or np.any(zero != 0) or float(neg.reshape(-1)[0]) > -1e4
                or not users or any(u.op_type != "Add" for u in users)
                or mask_input not in _ancestors_inputs(where.input[0], producers, graph_inputs)):
            continue
        tag = f"edgesmith_mask_{rewired}"
        dtype = neg.dtype
        graph.initializer.extend([
            numpy_helper.from_array(np.array([1], np.int64), f"{tag}_axis1"),
            numpy_helper.from_array(np.array([2], np.int64), f"{tag}_axis2"),
            numpy_helper.from_array(np.array(1, dtype), f"{tag}_one"),
            numpy_helper.from_array(np.array(neg.reshape(-1)[0], dtype), f"{tag}_neg"),
        ])
        to = helper.np_dtype_to_tensor_dtype(dtype) if hasattr(helper, "np_dtype_to_tensor_dtype") else TensorProto.FLOAT
        chain = [
            helper.make_node("Unsqueeze", [mask_input, f"{tag}_axis1"], [f"{tag}_u1"], name=f"{tag}_u1"),
            helper.make_node("Unsqueeze", [f"{tag}_u1", f"{tag}_axis2"], [f"{tag}_u2"], name=f"{tag}_u2"),
            helper.make_node("Cast", [f"{tag}_u2"], [f"{tag}_float"], name=f"{tag}_cast", to=int(to)),
            helper.make_node("Sub", [f"{tag}_one", f"{tag}_float"], [f"{tag}_inv"], name=f"{tag}_sub"),
            helper.make_node("Mul", [f"{tag}_inv", f"{tag}_neg"], [f"{tag}_add"], name=f"{tag}_mul"),
        ]
        index = min(i for i, n in enumerate(graph.node) if n in users)
        for offset, node in enumerate(chain):
            graph.node.insert(index + offset, node)
        for user in users:
            for k, name in enumerate(user.input):
                if name == where.output[0]:
                    user.input[k] = f"{tag}_add"
                else:
                    _scale_as_div(model, producers.get(name), producers, f"{tag}_{rewired}")
            rewired += 1
    if rewired:
        _drop_dead(model)
    return rewired


def _scale_as_div(model, node, producers: dict, tag: str) -> None:
    """Turn the scores' scale ``Mul(MatMul, c)`` into ``Div(MatMul, 1 / c)``.

    The optimizer finds the scores and the mask as the first ``Div``/``Mul`` parent of
    their ``Add``; with both a ``Mul`` it takes the scale for the mask. A ``Div`` scale
    is its classic BERT pattern.
    """
    from onnx import numpy_helper

    if node is None or node.op_type != "Mul":
        return
    for k in (0, 1):
        value = _constant(model, node.input[k], producers)
        other = producers.get(node.input[1 - k])
        if value is not None and value.size == 1 and float(value.reshape(-1)[0]) != 0 and other is not None \
                and other.op_type == "MatMul":
            inverse = np.array(1.0 / value.reshape(-1)[0].astype(np.float64), value.dtype).reshape(value.shape)
            model.graph.initializer.append(numpy_helper.from_array(inverse, f"{tag}_inverse_scale"))
            node.op_type = "Div"
            node.input[:] = [node.input[1 - k], f"{tag}_inverse_scale"]
            return


def _drop_dead(model) -> None:
    """Remove nodes none of whose outputs is used (the old mask subgraph)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _check_same(original: bytes, fused: bytes, example: dict, mask_input: str) -> None:
    """Compare the fused graph with the original on ONNX Runtime's CPU provider (fp32 tolerance).

    Feeds: the example, and where it has a mask a left-padded copy (the first two
    positions of row 0 masked), which a sequence-length mask index would get wrong.
    """
    import onnxruntime as ort

    feeds = [dict(example)]
    if mask_input in example and example[mask_input].shape[-1] > 2:
        left = {k: np.array(v) for k, v in example.items()}
        left[mask_input][0, :] = 1
        left[mask_input][0, :2] = 0
        feeds.append(left)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ref = ort.InferenceSession(original, opts, providers=["CPUExecutionProvider"])
        new = ort.InferenceSession(fused, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an invalid fused graph: keep the original
        raise NotFusable(f"the fused graph does not load on ONNX Runtime's CPU provider: {exc}") from None
    names = {i.name for i in ref.get_inputs()}
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in names}
        for a, b, out in zip(ref.run(None, feed), new.run(None, feed), ref.get_outputs()):
            limit = FP32_ATOL * max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            if not diff <= limit:
                raise NotFusable(f"the fused graph differs from the unfused one on {out.name} (max_abs {diff:.3g} "
                                 f"> {limit:.3g}); the unfused graph is kept")
