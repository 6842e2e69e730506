"""The torch modules of SLAB's passes (Guo et al., 2024, arXiv 2405.11582): RepBN and simplified linear attention.

Imported when ``prepbn`` or ``sla`` runs (and by models that hold the converted layers), not
when the pass registry loads. The passes' docstrings (:mod:`edgesmith.optimize.slab.prepbn`,
:mod:`edgesmith.optimize.slab.sla`) give the math.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F


class RepBN(nn.Module):
    """``BN(x) + alpha * x`` over the last axis of ``(..., C)`` tokens."""

    def __init__(self, channels: int, eps: float = 1e-5, alpha: float = 1.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=eps)
        self.alpha = nn.Parameter(torch.full((1,), float(alpha)))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return (self.bn(flat) + self.alpha * flat).reshape(x.shape)


class ProgressiveNorm(nn.Module):
    """``lam * LN(x) + (1 - lam) * RepBN(x)``; the training loop sets ``lam``. RepBN starts from LN's weights."""

    def __init__(self, norm: nn.LayerNorm, alpha: float):
        super().__init__()
        self.ln = norm
        self.repbn = RepBN(norm.normalized_shape[0], norm.eps, alpha)
        if norm.elementwise_affine:
            with torch.no_grad():
                self.repbn.bn.weight.copy_(norm.weight)
                if norm.bias is not None:
                    self.repbn.bn.bias.copy_(norm.bias)
        self.register_buffer("lam", torch.ones(()))

    def forward(self, x):
        return self.lam * self.ln(x) + (1 - self.lam) * self.repbn(x)


class SimplifiedLinearAttention(nn.Module):
    """SLA over tokens ``(B, N, C)``; ``forward(x, height=None, width=None)`` like the attention it replaces.

    Args:
        dim: Token width ``C``.
        heads, key_dim, value_dim: Heads and per-head widths of Q/K and V.
        proj: The output projection (``heads * value_dim -> dim``), taken over.
        grid: ``(height, width)`` of image tokens (a 2-D convolution and ``P`` of that many tokens);
            ``None``: a sequence (1-D convolution, no ``P``) unless ``forward`` is given a grid.
        kernel: Width of the depthwise convolution on V.
    """

    def __init__(self, dim: int, heads: int, key_dim: int, value_dim: int, proj: nn.Module,
                 grid: tuple[int, int] | None, kernel: int = 5, two_d: bool = True):
        super().__init__()
        self.heads, self.key_dim, self.value_dim, self.grid = heads, key_dim, value_dim, grid
        self.q = nn.Linear(dim, heads * key_dim)
        self.k = nn.Linear(dim, heads * key_dim)
        self.v = nn.Linear(dim, heads * value_dim)
        self.proj = proj
        conv = nn.Conv2d if two_d else nn.Conv1d
        self.dwc = conv(value_dim, value_dim, kernel, padding=kernel // 2, groups=value_dim)
        nn.init.zeros_(self.dwc.weight)
        nn.init.zeros_(self.dwc.bias)
        tokens = grid[0] * grid[1] if grid else 0
        self.pos = nn.Parameter(torch.zeros(1, tokens, heads * key_dim)) if tokens else None

    def forward(self, x, height: int | None = None, width: int | None = None):
        b, n, _ = x.shape
        h, dk, dv = self.heads, self.key_dim, self.value_dim
        k = self.k(x)
        if self.pos is not None:
            k = k + self.pos
        q = F.relu(self.q(x)).reshape(b, n, h, dk).transpose(1, 2)  # (B, H, N, dk)
        k = F.relu(k).reshape(b, n, h, dk).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, dv).transpose(1, 2)  # (B, H, N, dv)
        kv = k.transpose(-2, -1) @ v  # (B, H, dk, dv): the only N-sized reduction
        z = 1.0 / (q @ k.sum(dim=2).unsqueeze(-1) + 1e-6)  # (B, H, N, 1)
        out = (q @ kv) * z
        maps = v.reshape(b * h, n, dv).transpose(1, 2)  # (B*H, dv, N)
        if isinstance(self.dwc, nn.Conv2d):
            gh, gw = (height, width) if height is not None else self.grid
            local = self.dwc(maps.reshape(b * h, dv, gh, gw)).reshape(b * h, dv, n)
        else:
            local = self.dwc(maps)
        out = out + local.transpose(1, 2).reshape(b, h, n, dv)
        return self.proj(out.transpose(1, 2).reshape(b, n, h * dv))


@dataclasses.dataclass
class Layout:
    """How a recognised attention module stores its projections."""

    heads: int
    key_dim: int
    value_dim: int
    per_head: bool  # columns grouped per head [q k v][q k v]...; else [q...][k...][v...]

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v rows (head-major) of a fused qkv weight or bias."""
        h, dk, dv = self.heads, self.key_dim, self.value_dim
        rest = t.shape[1:]
        if self.per_head:
            q, k, v = t.reshape(h, 2 * dk + dv, *rest).split([dk, dk, dv], dim=1)
            return q.reshape(h * dk, *rest), k.reshape(h * dk, *rest), v.reshape(h * dv, *rest)
        return t.split([h * dk, h * dk, h * dv], dim=0)


def layout_of(module: nn.Module) -> Layout | None:
    """The :class:`Layout` of an attention module the pass recognises, else None."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return None
    if type(module).__name__ == "_TokenAttention":  # EfficientFormer V1
        from edgesmith.models.zoo.efficientformer import HEADS, KEY_DIM

        return Layout(HEADS, KEY_DIM, module.value_dim, per_head=True)
    heads = getattr(module, "heads", None) or getattr(module, "num_heads", None)
    if isinstance(heads, int) and qkv.out_features == 3 * proj.in_features and proj.in_features % heads == 0:
        d = proj.in_features // heads
        return Layout(heads, d, d, per_head=False)
    return None


def attentions(module: nn.Module) -> list[tuple[str, nn.Module, Layout]]:
    """``[(name, module, layout)]`` of the attention modules ``sla`` converts."""
    found = []
    for name, m in module.named_modules():
        layout = layout_of(m)
        if layout is not None:
            found.append((name, m, layout))
    return found


def build_sla(attn: nn.Module, layout: Layout, grid, kernel: int, two_d: bool) -> SimplifiedLinearAttention:
    """SLA initialised from ``attn``'s projections (its ``proj`` copied)."""
    import copy

    qkv = attn.qkv
    sla = SimplifiedLinearAttention(qkv.in_features, layout.heads, layout.key_dim, layout.value_dim,
                                    copy.deepcopy(attn.proj), grid, kernel, two_d)
    with torch.no_grad():
        for target, w in zip((sla.q, sla.k, sla.v), layout.split(qkv.weight)):
            target.weight.copy_(w)
        biases = layout.split(qkv.bias) if qkv.bias is not None else (None, None, None)
        for target, b in zip((sla.q, sla.k, sla.v), biases):
            if b is None:
                target.bias.zero_()
            else:
                target.bias.copy_(b)
    return sla.to(qkv.weight.dtype)
