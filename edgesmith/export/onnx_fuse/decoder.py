"""Read a Llama-family decoder for fusion, or say why it cannot be fused.

The fused graph (:mod:`edgesmith.export.onnx_fuse.decoder_graph`) recomputes the
model from its weights with ONNX Runtime's fused operators, so it is only right for
modules whose forward is exactly the Llama block::

    x = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
    x = x + down_proj(silu(gate_proj(rms(x))) * up_proj(rms(x)))
    logits = lm_head(rms(x))

(Qwen3 adds an RMSNorm over each head of q and k before the rotation; Qwen2 biases on q/k/v.)

:func:`read_decoder` accepts a transformers causal LM of a family known to compute
that (:data:`FAMILIES`), checks every module it will replace is of the class whose
forward it knows (an ``nn.Linear``, the family's RMSNorm, SiLU), and returns the
weights as numpy arrays with the numbers the graph needs. Anything else (a pass's
replacement layer, a rope type whose frequencies depend on the sequence length,
weights not in fp32) raises :class:`~edgesmith.export.onnx_fuse.graph.NotFusable`
naming the module or setting, and the exporter keeps the dynamo graph.
Shapes come from the weights, so MatFormer-sliced FFNs of any width fuse as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgesmith.export.onnx_fuse.graph import NotFusable

# model_type -> the classes whose forward the fused graph reproduces (norm, decoder layer)
FAMILIES = {
    "llama": ("LlamaRMSNorm", "LlamaDecoderLayer"),
    "mistral": ("MistralRMSNorm", "MistralDecoderLayer"),
    "qwen2": ("Qwen2RMSNorm", "Qwen2DecoderLayer"),
    "qwen3": ("Qwen3RMSNorm", "Qwen3DecoderLayer"),  # + per-head RMSNorm of q and k before the rotation
}
QK_NORM = ("qwen3",)
# rope types whose cos/sin tables are fixed at init (dynamic and longrope rescale with the length)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
ACTIVATIONS = ("SiLU", "SiLUActivation")


@dataclasses.dataclass
class Layer:
    """One decoder block's weights (``nn.Linear`` layout: ``(out, in)``) and attention settings."""

    norm_in: np.ndarray
    norm_post: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray
    gate: np.ndarray
    up: np.ndarray
    down: np.ndarray
    heads: int
    kv_heads: int
    scale: float
    bias: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # q/k/v/o/gate/up/down biases
    q_norm: np.ndarray | None = None  # per-head RMSNorm weights of q and k (head_dim,), Qwen3
    k_norm: np.ndarray | None = None


@dataclasses.dataclass
class Decoder:
    """A decoder read for fusion: embeddings, blocks, final norm, head and rotary tables."""

    family: str
    hidden: int
    head_dim: int
    eps: float
    embed: np.ndarray  # (vocab, hidden)
    norm: np.ndarray
    lm_head: np.ndarray | None  # (vocab, hidden); None when tied to ``embed`` (stored once)
    cos: np.ndarray  # (positions, head_dim / 2)
    sin: np.ndarray
    layers: list[Layer]
    rope_type: str = "default"

    @property
    def tied(self) -> bool:
        """Whether the output head shares the embedding matrix."""
        return self.lm_head is None


def read_decoder(model) -> Decoder:
    """The weights and settings of a transformers Llama-family causal LM.

    Args:
        model: A transformers ``...ForCausalLM`` (the generation step's ``model``).

    Returns:
        A :class:`Decoder`.

    Raises:
        NotFusable: The model is not of a known family, or one of its modules or settings
            is not what the fused graph computes; the message names it.
    """
    import torch

    config = model.config
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise NotFusable(f"{type(model).__name__} (model_type {family!r}) is not a Llama-family decoder the "
                         f"fuser knows ({', '.join(FAMILIES)})")
    norm_class, layer_class = FAMILIES[family]
    inner = getattr(model, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if getattr(inner, name, None) is None:
            raise NotFusable(f"{type(model).__name__} has no model.{name}")
    if type(inner.embed_tokens) is not torch.nn.Embedding or inner.embed_tokens.max_norm is not None:
        raise NotFusable(f"model.embed_tokens is {type(inner.embed_tokens).__name__}, not a plain nn.Embedding")
    head = getattr(model, "lm_head", None)
    _linear(head, "lm_head")
    if head.bias is not None:
        raise NotFusable("lm_head has a bias")
    params = [p for p in model.parameters()]
    odd = next((p.dtype for p in params if p.dtype != torch.float32), None)
    if odd is not None:
        raise NotFusable(f"its weights are {str(odd).replace('torch.', '')}; the fused graph is fp32")
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        raise NotFusable(f"its activation is {config.hidden_act!r}, not SiLU")
    eps = _norm(inner.norm, norm_class, "model.norm")
    cos, sin, rope_type, head_dim = _rope(inner.rotary_emb, config)
    for i in range(len(inner.layers)):
        _refuse_sliding(config, family, i)
    layers = [_layer(block, i, norm_class, layer_class, eps, head_dim, family in QK_NORM)
              for i, block in enumerate(inner.layers)]
    embed = _np(inner.embed_tokens.weight)
    tied = head.weight.shape == inner.embed_tokens.weight.shape and \
        head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr()
    return Decoder(family=family, hidden=embed.shape[1], head_dim=head_dim, eps=eps, embed=embed,
                   norm=_np(inner.norm.weight), lm_head=None if tied else _np(head.weight), cos=cos, sin=sin,
                   layers=layers, rope_type=rope_type)


def _np(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy().copy()


def _linear(module, where: str) -> None:
    import torch

    if type(module) is not torch.nn.Linear:
        kind = "missing" if module is None else f"{type(module).__name__}"
        raise NotFusable(f"{where} is {kind}, which has no fused form (only nn.Linear)")
    _plain(module, where)


def _plain(module, where: str) -> None:
    """Refuse a module whose forward was replaced on the instance (a patch the graph would not see)."""
    if "forward" in vars(module):
        raise NotFusable(f"{where} has its forward replaced on the instance")


def _norm(module, norm_class: str, where: str) -> float:
    if type(module).__name__ != norm_class or getattr(module, "variance_epsilon", None) is None:
        raise NotFusable(f"{where} is {type(module).__name__}, not {norm_class}")
    _plain(module, where)
    return float(module.variance_epsilon)


def _rope(rotary, config) -> tuple[np.ndarray, np.ndarray, str, int]:
    """The cos/sin tables (half width, non-interleaved) the module computes, over every position."""
    import torch

    rope_type = getattr(rotary, "rope_type", "default")
    if not isinstance(rope_type, str) or rope_type not in STATIC_ROPE:
        raise NotFusable(f"rope type {rope_type!r} is not supported by the fused graph "
                         f"(static types only: {', '.join(STATIC_ROPE)})")
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions <= 0:
        raise NotFusable("its config has no max_position_embeddings to size the rotary tables")
    with torch.no_grad():
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(probe, torch.arange(positions)[None])
    cos, sin = cos[0].numpy(), sin[0].numpy()
    half = cos.shape[-1] // 2
    # transformers' rotate_half layout: the table is two copies of the half-width frequencies
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        raise NotFusable("its rotary tables are not in the rotate-half layout")
    return cos[:, :half].copy(), sin[:, :half].copy(), rope_type, cos.shape[-1]


def _refuse_sliding(config, family: str, index: int) -> None:
    """Refuse a sliding-window layer: transformers keeps its cache window-sized, which the
    whole-sequence cache of the generation step's interface does not describe."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    sliding = window is not None and (family == "mistral" or (types and types[index] == "sliding_attention"))
    if sliding:
        raise NotFusable(f"layer {index} uses sliding-window attention (window {window}); "
                         f"the fused graph keeps the whole sequence")
    return None


def _layer(block, i: int, norm_class: str, layer_class: str, eps: float, head_dim: int, qk_norm: bool) -> Layer:
    where = f"layer {i}"
    if type(block).__name__ != layer_class:
        raise NotFusable(f"{where} is {type(block).__name__}, not {layer_class}")
    _plain(block, where)
    expected = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
    extra = sorted(set(dict(block.named_children())) - expected)
    if extra:
        raise NotFusable(f"{where} has modules the Llama block does not ({', '.join(extra)})")
    attn, mlp = block.self_attn, block.mlp
    _plain(attn, f"{where}'s self_attn")
    _plain(mlp, f"{where}'s mlp")
    for norm in ("input_layernorm", "post_attention_layernorm"):
        if _norm(getattr(block, norm), norm_class, f"{where}'s {norm}") != eps:
            raise NotFusable(f"{where}'s {norm} has an epsilon other than model.norm's")
    attn_children = set(dict(attn.named_children()))
    if attn_children != {"q_proj", "k_proj", "v_proj", "o_proj", *(("q_norm", "k_norm") if qk_norm else ())}:
        raise NotFusable(f"{where}'s self_attn has modules {sorted(attn_children)}, not q/k/v/o_proj"
                         f"{' and q/k_norm' if qk_norm else ''}")
    norms = {}
    if qk_norm:
        for key in ("q_norm", "k_norm"):
            if _norm(getattr(attn, key), norm_class, f"{where}'s self_attn.{key}") != eps:
                raise NotFusable(f"{where}'s self_attn.{key} has an epsilon other than model.norm's")
            norms[key] = _np(getattr(attn, key).weight)
    mlp_children = set(dict(mlp.named_children()))
    if mlp_children != {"gate_proj", "up_proj", "down_proj", "act_fn"}:
        raise NotFusable(f"{where}'s mlp has modules {sorted(mlp_children)}, not gate/up/down_proj and act_fn")
    if type(mlp.act_fn).__name__ not in ACTIVATIONS:
        raise NotFusable(f"{where}'s mlp.act_fn is {type(mlp.act_fn).__name__}, not SiLU")
    linears = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj,
               "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
    for key, lin in linears.items():
        _linear(lin, f"{where}'s {'self_attn' if key in 'qkvo' else 'mlp'}.{key}_proj")
    if getattr(attn, "head_dim", head_dim) != head_dim:
        raise NotFusable(f"{where}'s head_dim {attn.head_dim} differs from the rotary tables' {head_dim}")
    q_out, k_out = attn.q_proj.out_features, attn.k_proj.out_features
    if q_out % head_dim or k_out % head_dim or (q_out // head_dim) % (k_out // head_dim) \
            or attn.v_proj.out_features != k_out:
        raise NotFusable(f"{where}'s q/k/v widths ({q_out}, {k_out}, {attn.v_proj.out_features}) are not "
                         f"whole groups of {head_dim}-wide heads")
    if mlp.gate_proj.out_features != mlp.up_proj.out_features:
        raise NotFusable(f"{where}'s gate_proj and up_proj widths differ")
    weights = {key: _np(lin.weight) for key, lin in linears.items()}
    bias = {key: _np(lin.bias) for key, lin in linears.items() if lin.bias is not None}
    scale = float(getattr(attn, "scaling", head_dim ** -0.5))
    return Layer(norm_in=_np(block.input_layernorm.weight), norm_post=_np(block.post_attention_layernorm.weight),
                 heads=q_out // head_dim, kv_heads=k_out // head_dim, scale=scale, bias=bias,
                 **norms, **weights)
