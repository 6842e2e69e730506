"""The torch side of DeltaLLM (arXiv 2507.19608): attention scores updated by query deltas outside a local window.

Per attention layer, batch row and query head, over the rotary-embedded queries ``q_t``::

    q_ref_0 = q_0                                       (the first token is exact)
    fired_t = |q_t - q_ref_{t-1}| >= theta              (per entry; the rest of the delta is zeroed)
    q_ref_t = where(fired_t, q_t, q_ref_{t-1})          (assignment: theta = 0 gives q_ref = q exactly)
    s_{t,j} = q_t . k_j                                 if t - j <  window   (exact, the local window)
    s_{t,j} = s_{t-1,j} + dq_t . k_j                    if t - j >= window   (dq_t: the fired delta)

The recursion telescopes: with ``e_t = q_t - q_ref_t`` (what has not fired), a key out of the
window scores ``q_ref_t . k_j + e_{j+window-1} . k_j``, the second term a per-key constant fixed
at the last step the key was in the window. That closed form is what runs here (two dense
score products and a mask), then scaling, the causal mask, softmax and ``P @ V`` as usual.

Cost, counted while ``DeltaState.counting`` is on (a kernel that gathers the fired entries turns
it into speed; the dense products here compute the same numbers at dense cost): the dense scores
cost ``D`` per causal (query, key) pair; delta scores cost ``D`` per pair in the window plus
``nnz(dq_t)`` (the fired entries) per pair out of it. ``P @ V`` is counted dense.

Decode with a KV cache: a call whose keys outnumber its queries continues the sequence of the
previous call. :class:`DeltaState` (a child ``deltallm`` of each attention module) keeps, per batch
row and query head, ``q_ref`` of the last token and the per-key constants of the keys that have
left the window, with the number of tokens they cover; a call without cached keys starts a new
sequence. It assumes a cache that keeps every key (transformers' ``DynamicCache``, the default):
any other length is refused rather than guessed.
"""

from __future__ import annotations

import torch
from torch import nn

from edgesmith.errors import BadInputError

NAME = "edgesmith_deltallm"  # the attention implementation registered with transformers
_UNSUPPORTED = ("softcap", "s_aux", "sinks")  # attention-function arguments that change the scores


class DeltaState(nn.Module):
    """Settings, decode state and MAC counters of one attention layer (no parameters).

    Args:
        name: The attention module's name (for messages).
        theta: Firing threshold on ``|q_t - q_ref|``.
        window: Keys less than ``window`` positions back are scored exactly.

    Attributes:
        carry: ``(q_ref (B, H, D), constants (B, H, F))`` after the last call kept, or None.
        position: Tokens ``carry`` covers.
        counting: Count multiply-accumulates into ``macs`` while true.
        macs: Per phase (``prefill``: the first call of a sequence, ``decode``: every later call),
            ``tokens``, ``scores_delta``, ``scores_dense`` and ``pv`` (dense ``P @ V``).
    """

    # Read by the generation export (models.lm_generate): a decode step needs the carry as graph
    # inputs and outputs beside the KV cache, which the generic generation step does not have.
    generation_refusal = ("pass 'deltallm' keeps a decode state (q_ref and per-key constants) that is not part of "
                          "the KV cache, so its decode step cannot be exported as a graph")
    generation_hint = ("its bundle holds the prefill graph only, as -O generation=false gives; decode with the "
                       "torch model: edgesmith.optimize.deltallm.decode_logits")

    def __init__(self, name: str, theta: float, window: int, sinks: int = 0):
        super().__init__()
        self.name, self.theta, self.window, self.sinks = name, float(theta), int(window), int(sinks)
        self.register_buffer("scale", None)  # (H, D) key RMS per query head and entry, or None
        self.carry: tuple[torch.Tensor, torch.Tensor] | None = None
        self.position = 0
        self.counting = False
        self.macs = empty_counts()
        self.collecting = False
        self.key_moments: list = [None, 0]  # sum of k^2 over keys (H, D), keys seen

    def arguments(self) -> dict:
        """What :meth:`from_arguments` rebuilds these settings from (a variant folder records it; no decode state)."""
        return {"name": self.name, "theta": self.theta, "window": self.window, "sinks": self.sinks,
                "scale": None if self.scale is None else list(self.scale.shape)}

    @classmethod
    def from_arguments(cls, args: dict) -> "DeltaState":
        """The state :meth:`arguments` describes, its ``scale`` not yet set (a variant folder loads it).

        Registers delta attention with transformers, which the rebuilt model's config then names.
        """
        install()
        state = cls(str(args["name"]), float(args["theta"]), int(args["window"]), int(args["sinks"]))
        if args.get("scale") is not None:
            state.scale = torch.zeros([int(n) for n in args["scale"]])
        return state

    def collect(self, k: torch.Tensor) -> None:
        """Add the keys ``(B, H, L, D)`` of a call to the second moment the ``key`` criterion is scaled by."""
        sums = k.detach().double().pow(2).sum(dim=(0, 2))
        self.key_moments[0] = sums if self.key_moments[0] is None else self.key_moments[0] + sums
        self.key_moments[1] += k.shape[0] * k.shape[2]

    def scale_by_keys(self) -> None:
        """Scale the firing test by the keys' RMS per entry collected so far: ``|dq_d| * rms(k_d) >= theta``."""
        if not self.key_moments[1]:
            raise RuntimeError(f"attention {self.name}: no keys were collected")
        self.scale = (self.key_moments[0] / self.key_moments[1]).sqrt().float()
        self.key_moments = [None, 0]

    def resume(self, past: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The carry of a sequence whose first ``past`` tokens are cached.

        Raises:
            BadInputError: The state does not cover exactly those tokens of ``batch`` rows.
        """
        rows = None if self.carry is None else self.carry[0].shape[0]
        if self.carry is None or self.position != past or rows != batch:
            have = "no sequence" if self.carry is None else f"{self.position} token(s) of {rows} row(s)"
            raise BadInputError(
                f"pass 'deltallm': attention {self.name} got {past} cached token(s) of {batch} row(s), but its "
                f"delta state covers {have}",
                hint="decode with a DynamicCache, started by a prefill (use_cache=True) of the same rows on this "
                     "model; caches that drop or reorder keys (sliding window, static, beam search) are not supported")
        return self.carry

    def keep(self, carry: tuple[torch.Tensor, torch.Tensor], position: int) -> None:
        """Hold ``carry`` (detached) as covering the first ``position`` tokens."""
        self.carry = (carry[0].detach(), carry[1].detach())
        self.position = position

    def count(self, fired: torch.Tensor, past: int, length: int, value_dim: int) -> None:
        """Add one call's multiply-accumulates: ``fired`` (B, H, T, D) of queries at positions ``past..length-1``."""
        batch, heads, new, dim = fired.shape
        t = torch.arange(past, length, dtype=torch.int64)
        outside = torch.clamp(t + 1 - self.window - self.sinks, min=0)
        inside = t + 1 - outside
        per_step = fired.sum(dim=(0, 1, 3)).to(torch.int64).cpu()  # nnz(dq_t) over rows and heads
        pairs = int((t + 1).sum()) * batch * heads
        counts = self.macs["prefill" if past == 0 else "decode"]
        counts["tokens"] += batch * new
        counts["scores_dense"] += pairs * dim
        counts["scores_delta"] += int(inside.sum()) * batch * heads * dim + int((outside * per_step).sum())
        counts["pv"] += pairs * value_dim

    def extra_repr(self) -> str:
        return f"theta={self.theta:g}, window={self.window}, sinks={self.sinks}"


def empty_counts() -> dict[str, dict[str, int]]:
    """Zeroed MAC counters per phase."""
    return {phase: {"tokens": 0, "scores_delta": 0, "scores_dense": 0, "pv": 0} for phase in ("prefill", "decode")}


def reference_queries(q: torch.Tensor, theta: float, start: torch.Tensor | None = None,
                      scale: torch.Tensor | None = None):
    """``q_ref_t`` for every query and which entries fired, scanning the tokens in order.

    Args:
        q: ``(B, H, T, D)`` queries.
        theta: Firing threshold.
        start: ``q_ref`` of the token before ``q[..., 0, :]`` (B, H, D); None: ``q_0`` is taken exactly.
        scale: ``(H, D)`` weights of the test, ``|dq| * scale >= theta`` (None: ``|dq| >= theta``).

    Returns:
        ``(q_ref (B, H, T, D), fired (B, H, T, D) bool)``. A Python loop, unrolled by tracing:
        fixed shapes, no data-dependent control flow.
    """
    refs, fires, ref = [], [], start
    for i in range(q.shape[-2]):
        qi = q[..., i, :]
        if ref is None:
            fired = torch.ones_like(qi, dtype=torch.bool)
            ref = qi
        else:
            change = (qi - ref).abs()
            fired = (change if scale is None else change * scale) >= theta
            ref = torch.where(fired, qi, ref)
        refs.append(ref)
        fires.append(fired)
    return torch.stack(refs, dim=-2), torch.stack(fires, dim=-2)


def delta_scores(q: torch.Tensor, k: torch.Tensor, theta: float, window: int,
                 carry: tuple[torch.Tensor, torch.Tensor] | None = None, scale: torch.Tensor | None = None,
                 sinks: int = 0):
    """Unscaled, unmasked scores of delta attention and what the next call continues from.

    Args:
        q: ``(B, H, T, D)`` queries of the newest ``T`` positions.
        k: ``(B, H, L, D)`` keys of all ``L`` positions (``L >= T``; the queries are positions ``L - T ..``).
        theta: Firing threshold.
        window: Keys less than ``window`` positions back are scored exactly.
        carry: ``(q_ref, constants)`` after the first ``L - T`` positions; None when ``L == T``.
        scale: Weights of the firing test (see :func:`reference_queries`).
        sinks: The first ``sinks`` keys of the sequence are always scored exactly.

    Returns:
        ``(scores (B, H, T, L), fired (B, H, T, D), carry)``; keys after a query are scored too
        (the causal mask is the caller's).
    """
    new, length = q.shape[-2], k.shape[-2]
    past = length - new
    q_ref, fired = reference_queries(q, theta, None if carry is None else carry[0], scale)
    scores = q @ k.transpose(-1, -2)
    # Per-key constants e_{j+window-1} . k_j: the carried ones, then those this call's residuals fix.
    known = 0 if carry is None else carry[1].shape[-1]
    fixed = max(0, length - window + 1)
    residual = q - q_ref
    constants = (residual[..., known + window - 1 - past:, :] * k[..., known:fixed, :]).sum(-1)
    if carry is not None:
        constants = torch.cat([carry[1], constants], dim=-1)
    if length > window:  # some key is out of the window for some query
        padded = torch.cat([constants, constants.new_zeros((*constants.shape[:-1], length - fixed))], dim=-1)
        t = torch.arange(past, length, device=q.device)[:, None]
        j = torch.arange(length, device=q.device)[None, :]
        outside = (t - j >= window) & (j >= sinks)
        scores = torch.where(outside, q_ref @ k.transpose(-1, -2) + padded[..., None, :], scores)
    return scores, fired, (q_ref[..., -1, :], constants)


def _expand(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, H_kv, L, D)`` -> ``(B, H_kv * groups, L, D)``: each key/value head shared by ``groups`` query heads."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def delta_attention_forward(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                            **kwargs):
    """Attention function for transformers' ``AttentionInterface`` (signature of its ``sdpa``/``eager``).

    ``module.deltallm`` (a :class:`DeltaState`) gives ``theta``/``window`` and holds the decode state.

    Returns:
        ``(output (B, T, H, D), probabilities (B, H, T, L))``.

    Raises:
        BadInputError: An argument that changes the scores (soft-capping, attention sinks), or a
            cached call the state does not continue, or a cached call being traced for export.
    """
    state: DeltaState = module.deltallm
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise BadInputError(f"pass 'deltallm': attention {state.name} uses {name!r}, which delta attention "
                                "does not implement")
    batch, heads, new, _ = query.shape
    k, v = _expand(key, heads // key.shape[1]), _expand(value, heads // value.shape[1])
    length = k.shape[-2]
    past = length - new
    tracing = _tracing()
    carry = None
    if past:
        if tracing:
            raise BadInputError(f"pass 'deltallm': attention {state.name}: a decode step with a KV cache cannot be "
                                "exported; its delta state (q_ref, per-key constants) is not a graph input",
                                hint="export the prefill (the variant itself)")
        carry = state.resume(past, batch)
    if state.collecting and not tracing:
        state.collect(k)
    scores, fired, carry = delta_scores(query, k, state.theta, state.window, carry, state.scale, state.sinks)
    scores = scores * scaling
    positions = torch.arange(length, device=query.device)
    allowed = positions[None, :] <= positions[past:, None]  # causal: key j up to query position t
    if attention_mask is not None:
        mask = attention_mask[..., :length]
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = (probs @ v).transpose(1, 2).contiguous()
    if not tracing:
        if kwargs.get("use_cache", True):
            state.keep(carry, length)
        if state.counting:
            state.count(fired, past, length, v.shape[-1])
    return out, probs


def install() -> None:
    """Register :func:`delta_attention_forward` (and the ``sdpa`` mask builder) under :data:`NAME` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, delta_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
