"""DeltaLLM (``deltallm``): temporal sparsity in the attention scores of a language model.

DeltaLLM (arXiv 2507.19608) notes that consecutive queries of a decoder change little. Each
attention layer keeps a reference query ``q_ref`` per batch row and query head; a query entry
"fires" (updates ``q_ref``) only when it moved by ``theta`` or more. Keys within the last
``window`` positions are scored exactly; older keys get their score from the previous step's
plus the fired delta, ``s_{t,j} = s_{t-1,j} + dq_t . k_j``, which costs ``nnz(dq_t)`` instead
of ``D`` multiply-accumulates (:mod:`edgesmith.optimize.deltallm.attention`)::

    before:  S = Q K^T / sqrt(D)                 -> causal softmax -> P V
    after:   S[t, j] = q_t . k_j / sqrt(D)                          t - j <  window
             S[t, j] = (q_ref_t . k_j + c_j) / sqrt(D)              t - j >= window   -> causal softmax -> P V

``c_j = (q - q_ref)_{j+window-1} . k_j`` is fixed when key ``j`` leaves the window. Exact limits:
``theta = 0`` and ``window`` at least the sequence length are dense attention.

The pass registers one attention function with transformers' ``AttentionInterface`` and switches
the model copy's ``config._attn_implementation`` to it; each recognised attention module gets a
``deltallm`` child holding ``theta``, ``window`` and its decode state. Recognised: Llama-family
attention (Llama, Qwen2, Mistral...: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` Linears, rotary
embeddings applied before an attention function chosen through ``ALL_ATTENTION_FUNCTIONS``); any
other attention module is refused by name. The achieved sparsity is counted on calibration text
(prefill), for the scores (``QK^T``) and for the whole attention (``QK^T + PV``, ``PV`` dense).

Limits: the token scan is a Python loop, so an export fixes the sequence length (the exporter
falls back to static shapes with a note); left padding takes part in the scan, so a left-padded
row scores differently from the same row unpadded (right padding does not); decode needs a cache
that keeps every key (``DynamicCache``, the default).

Defaults (``benchmarks/deltallm_quality.py`` measures the trade-off; BENCHMARKS.md): ``criterion=key``
scales the firing test by the keys' RMS per entry, so ``theta`` is in score units and entries fire
where a change moves scores (at the same sparsity it loses less than the plain ``|dq| >= theta``);
``theta=1.0``; ``window=32``; ``sinks=4``, the first keys always exact (a departure from the paper:
the sink keys most heads weight heavily made the largest errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import sys
from typing import Any

import numpy as np

from edgesmith.errors import UsageError
from edgesmith.models.modules import MODULE_KINDS, ModuleKind
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)


@dataclasses.dataclass
class DeltallmOptions:
    """Options of the ``deltallm`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    theta: float = option(1.0, "Firing threshold on ``|q_t - q_ref|`` per query entry (0: dense attention).")
    window: int = option(32, "Keys less than this many positions back are scored exactly (at least 1).")
    sinks: int = option(4, "The first keys of a sequence, always scored exactly (the attention sinks most heads put "
                           "much of their weight on, where a small score error moves every probability).")
    text: str = option("devils-dictionary", "Text the achieved sparsity is counted on: ``devils-dictionary`` (the "
                                            "evaluation text's train split), a UTF-8 file, or an ``.npz`` of "
                                            "``input_ids`` windows.")
    seq_len: int = option(256, "Tokens per counting window (sparsity grows with it: the first ``window`` keys are "
                               "exact).")
    samples: int = option(4, "Counting windows, spread evenly over the text.")
    criterion: str = option("key", "The firing test: ``key`` (``|dq_d| * rms(k_d) >= theta``, the RMS of the layer's "
                                   "keys per query head and entry over the counting text, so ``theta`` is in score "
                                   "units and an entry fires where the keys would turn its change into a score "
                                   "change) or ``query`` (``|dq_d| >= theta``, the paper's plain delta threshold).")

    def __post_init__(self):
        if not self.theta >= 0.0:  # also refuses NaN
            raise UsageError(f"pass 'deltallm': theta={self.theta} must be at least 0",
                             hint="theta is the change a query entry needs to fire, e.g. theta=0.3; 0 is dense")
        if self.sinks < 0:
            raise UsageError(f"pass 'deltallm': sinks={self.sinks} must be at least 0")
        if self.window < 1:
            raise UsageError(f"pass 'deltallm': window={self.window} must be at least 1",
                             hint="window is how many recent keys are scored exactly, e.g. window=32")
        for key in ("seq_len", "samples"):
            if getattr(self, key) < 1:
                raise UsageError(f"pass 'deltallm': {key}={getattr(self, key)} must be at least 1")
        if self.criterion not in ("key", "query"):
            raise UsageError(f"pass 'deltallm': criterion={self.criterion!r} is not key or query",
                             hint="key: |dq| x key RMS >= theta; query: |dq| >= theta")


def is_llama_attention(module) -> bool:
    """Whether ``module`` is attention the pass can swap: Llama-family projections, rotary embeddings
    given to its forward, and the attention function looked up in ``ALL_ATTENTION_FUNCTIONS``."""
    from torch import nn

    if not all(isinstance(getattr(module, p, None), nn.Linear) for p in _PROJECTIONS):
        return False
    if not all(hasattr(module, a) for a in ("head_dim", "num_key_value_groups", "scaling", "layer_idx")):
        return False
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "_attn_implementation") or not getattr(module, "is_causal", False):
        return False
    if "position_embeddings" not in inspect.signature(type(module).forward).parameters:
        return False
    return getattr(sys.modules.get(type(module).__module__), "ALL_ATTENTION_FUNCTIONS", None) is not None


def attention_modules(module) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``(recognised, refused)``: the outermost attention-like submodules (``nn.MultiheadAttention``, a class
    named ``*Attention*``/``*Attn*``, or one with a q/k/v projection) split by :func:`is_llama_attention`."""
    from torch import nn

    recognised, refused, seen = [], [], []
    for name, m in module.named_modules():
        if not name or any(name.startswith(f"{s}.") for s in seen):  # the model itself is not one of its attentions
            continue
        if not (isinstance(m, nn.MultiheadAttention) or _ATTENTION_NAME.search(type(m).__name__)
                or any(hasattr(m, p) for p in _PROJECTIONS[:3])):
            continue
        seen.append(name)
        (recognised if is_llama_attention(m) else refused).append((name, m))
    return recognised, refused


@PASSES.register
class Deltallm(Pass):
    """Swap Llama-family attention for DeltaLLM delta attention; count the sparsity it achieves on text.

    The report's ``score_sparsity`` is the share of the ``QK^T`` multiply-accumulates skipped and
    ``attention_sparsity`` that of ``QK^T + PV`` (``PV`` dense), both counted over prefills of the
    counting windows (``counted_on``, ``counting_tokens``, ``seq_len``).
    """

    name = "deltallm"
    Options = DeltallmOptions
    tasks = ("lm",)
    task_hint = "deltallm changes causal self-attention; load a Hugging Face decoder LM"
    copies_module = True

    def _apply_impl(self, variant, module):
        from edgesmith.models.inspect import module_kinds
        from edgesmith.eval.lm import spread_windows
        from edgesmith.training.loop import feeds_from

        o = self.options
        recognised, refused = attention_modules(variant.module)
        if refused:
            name, m = refused[0]
            raise self.refuse(
                f"attention module {name} ({type(m).__name__}) is not Llama-family attention "
                "(q_proj/k_proj/v_proj/o_proj with rotary embeddings)",
                hint="deltallm converts Llama, Qwen2 and Mistral-style attention of transformers")
        if not recognised:
            raise self.refuse(f"{variant.name} has no attention module (it has: {module_kinds(variant.module)})")
        windows = feeds_from(variant, o.text, self.owner, o.seq_len, None, "counting")["input_ids"]
        windows = spread_windows(windows, o.samples)
        module = convert(module.eval(), o.theta, o.window, o.sinks)
        if o.criterion == "key":
            scale_by_keys(module, variant, windows)
        if self.progress:
            self.progress("deltallm: counting sparsity", 0, len(windows))
        counted = measure_sparsity(module, variant, windows)["prefill"]
        if self.progress:
            self.progress("deltallm: counting sparsity", len(windows), len(windows))
        return module, {"attention_layers": len(recognised), "theta": o.theta, "window": o.window,
                        "sinks": o.sinks, "criterion": o.criterion,
                        "counted_on": "prefill", "counting_tokens": int(windows.size), "seq_len": int(windows.shape[1]),
                        "score_sparsity": counted["scores"], "attention_sparsity": counted["attention"]}


def convert(module, theta: float, window: int, sinks: int = 0):
    """Give every recognised attention of ``module`` (changed in place) delta attention; returns ``module``."""
    from edgesmith.optimize.deltallm.attention import NAME, DeltaState, install

    install()
    recognised, _ = attention_modules(module)
    for name, attn in recognised:
        attn.add_module("deltallm", DeltaState(name, theta, window, sinks))
        attn.config._attn_implementation = NAME
    return module


def scale_by_keys(module, variant, windows: np.ndarray) -> None:
    """Give every delta attention of ``module`` the ``key`` criterion: collect its keys' RMS over prefills of
    ``windows`` (scored densely meanwhile: ``theta`` 0), then scale its firing test by it."""
    from edgesmith.eval.lm import run_windows

    layers = states(module)
    thetas = [s.theta for s in layers]
    for s in layers:
        s.collecting, s.theta, s.scale = True, 0.0, None
    try:
        run_windows(module, variant, windows)
    finally:
        for s, theta in zip(layers, thetas):
            s.collecting, s.theta = False, theta
    for s in layers:
        s.scale_by_keys()


def states(module) -> list:
    """The :class:`~edgesmith.optimize.deltallm.attention.DeltaState` of every converted attention."""
    from edgesmith.optimize.deltallm.attention import DeltaState

    return [m for m in module.modules() if isinstance(m, DeltaState)]


def counted_sparsity(module) -> dict[str, dict[str, float]]:
    """Per phase (``prefill``, ``decode``): tokens counted, and the share of multiply-accumulates delta
    attention skips in the scores (``scores``: ``QK^T``) and in the whole attention (``attention``:
    ``QK^T + PV``, ``PV`` dense), from the counters of :func:`states` (0 where nothing was counted)."""
    from edgesmith.optimize.deltallm.attention import empty_counts

    total, layers = empty_counts(), states(module)
    for s in layers:
        for phase, counts in s.macs.items():
            for key, value in counts.items():
                total[phase][key] += value
    out = {}
    for phase, c in total.items():
        dense = c["scores_dense"]
        out[phase] = {"tokens": c["tokens"] // max(1, len(layers)),
                      "scores": round(1.0 - c["scores_delta"] / dense, 4) if dense else 0.0,
                      "attention": round(1.0 - (c["scores_delta"] + c["pv"]) / (dense + c["pv"]), 4) if dense else 0.0}
    return out


@contextlib.contextmanager
def counting(module):
    """Count the multiply-accumulates of ``module``'s delta attention inside the block (counters reset on entry);
    read them with :func:`counted_sparsity`."""
    from edgesmith.optimize.deltallm.attention import empty_counts

    for s in states(module):
        s.counting, s.macs = True, empty_counts()
    try:
        yield module
    finally:
        for s in states(module):
            s.counting = False


def measure_sparsity(module, variant, windows: np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`counted_sparsity` of prefills of ``windows`` (int64 ``(N, T)``, one at a time)."""
    from edgesmith.eval.lm import run_windows

    with counting(module):
        run_windows(module, variant, windows)
    return counted_sparsity(module)


def decode_logits(module, ids, prefix: int, count: bool = False):
    """Logits of ``ids`` (int64 ``(B, T)`` tensor) from a prefill of ``prefix`` tokens, then one token at a time
    through the KV cache. ``module`` is edgesmith's wrapper of a transformers causal LM.

    Returns:
        ``(logits (B, T, vocab), counted)``: :func:`counted_sparsity` with ``count``, else None.

    Raises:
        UsageError: ``prefix`` is not in ``[1, T]``.
    """
    import torch

    if not 1 <= prefix <= ids.shape[1]:
        raise UsageError(f"decode prefix={prefix} must be in [1, {ids.shape[1]}]")
    lm = module.model
    with counting(module) if count else contextlib.nullcontext(), torch.no_grad():
        out = lm(input_ids=ids[:, :prefix], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(prefix, ids.shape[1]):
            out = lm(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
    return torch.cat(logits, dim=1), counted_sparsity(module) if count else None


@MODULE_KINDS.register("deltallm.State")
def _saved_state() -> ModuleKind:
    """DeltaLLM's per-attention state as a variant folder names it (:mod:`edgesmith.models.modules`)."""
    from edgesmith.optimize.deltallm.attention import DeltaState

    return ModuleKind(DeltaState, DeltaState.arguments, DeltaState.from_arguments)
