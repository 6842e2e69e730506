"""The torch layer of R-Sparse (Zhang et al., 2025, arXiv 2504.19449): sparse input channels plus a low-rank rest.

A linear layer ``y = W x + b`` with ``W = U S V^T`` (offline SVD) computes::

    scale_i = ||W[:, i]||                      (how much input channel i can move the output)
    m       = 1[|x_i * scale_i| > t]           (the active channels of this token)
    y       = W (x * m) + b + ((x * (1 - m)) V_r S_r) U_r^T

The active channels go through the exact weights; the many small ones share a rank-``r``
approximation (:meth:`RSparseLinear.fit_low_rank` replaces the SVD's factors by the rank-``r`` map
fitted to the inactive inputs). With ``c`` channels active on average out of ``d_in`` the layer costs
``c * d_out + r * (d_in + d_out)`` multiply-accumulates instead of ``d_in * d_out``: a kernel
that reads only the active columns of ``W`` turns that into speed (a masked dense matmul,
as here in torch, computes the same numbers at dense cost): for one token (batch-1 decode) the
layer calls ``torch.ops.edgesmith.rsparse_matvec`` (:mod:`edgesmith.kernels`) where it was built,
and keeps ``W`` input-channel-major in memory so that each active channel is one contiguous row.
Exact limits: ``t = 0`` keeps every non-zero channel (dense); ``r = min(d_in, d_out)`` makes the
low-rank part exact (dense).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgesmith.kernels import rsparse_matvec


class RSparseLinear(nn.Module):
    """R-Sparse replacement of one ``nn.Linear``.

    Args:
        linear: The dense layer (its weight and bias are taken over).
        threshold: ``t``; channels with ``|x_i * scale_i| > t`` are active.
        rank: ``r`` of the low-rank part (0: none; the inactive channels are dropped).

    Attributes:
        macs: Running count of (used, dense) multiply-accumulates over the tokens seen while
            ``counting`` is on, so the achieved sparsity is measured, not assumed.
    """

    def __init__(self, linear: nn.Linear, threshold: float, rank: int):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # (d_out, d_in) as a view of a (d_in, d_out) row-major tensor: weight.t() is what the kernel reads
        self.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.register_buffer("scale", w.double().norm(dim=0).to(w.dtype))
        self.register_buffer("threshold", torch.tensor(0.0, dtype=w.dtype))
        self.register_buffer("down", torch.zeros(self.in_features, 0, dtype=w.dtype))
        self.register_buffer("up", torch.zeros(self.out_features, 0, dtype=w.dtype))
        self.rank = 0
        # Computed in float64, kept in the weight's dtype while the layer is being tuned (freeze drops it).
        self._svd = tuple(t.to(w.dtype) for t in torch.linalg.svd(w.double(), full_matrices=False))
        self.configure(threshold, rank)
        self.counting = False
        self.macs = [0, 0]
        self.kernel = True  # use the decode kernel for single tokens where it was built

    def configure(self, threshold: float, rank: int) -> None:
        """Set ``t`` and ``r`` (a search tries many): the low-rank factors are slices of the SVD."""
        if self._svd is None:
            raise RuntimeError("this R-Sparse layer was frozen: its SVD is gone")
        u, s, vh = self._svd
        self.rank = int(max(0, min(rank, self.in_features, self.out_features)))
        self.threshold.fill_(threshold)
        # x (1 - m) -> (..., r) -> (..., d_out): down = V_r S_r, up = U_r
        self.down = (vh[:self.rank].T * s[:self.rank]).contiguous()
        self.up = u[:, :self.rank].contiguous()

    def fit_low_rank(self, second_moment) -> None:
        """Refit the rank-``r`` part to the inputs it actually sees (the inactive channels).

        With ``C = E[x_in x_in^T]`` over the inactive part ``x_in = x * (1 - m)`` of calibration tokens,
        the rank-``r`` map ``A`` minimising ``E ||W x_in - A x_in||^2`` is ``U_r U_r^T W`` where ``U_r`` are
        the top-``r`` left singular vectors of ``W C^(1/2)`` (any square root: a Cholesky factor here).
        The plain SVD (``C = I``) spends the rank on the directions of ``W`` that the large, active
        channels use; this one on what the small channels add up to. ``down = W^T U_r``, ``up = U_r``.
        """
        if not self.rank:
            return
        w = self.weight.detach().double()
        c = second_moment.double()
        c = c + torch.eye(c.shape[0], dtype=c.dtype) * (1e-6 * float(c.diagonal().mean()) + 1e-12)
        factor = torch.linalg.cholesky(c)
        u = torch.linalg.svd(w @ factor, full_matrices=False)[0][:, :self.rank]
        self.down = (w.T @ u).to(self.weight.dtype).contiguous()
        self.up = u.to(self.weight.dtype).contiguous()

    def freeze(self) -> None:
        """Drop the SVD (the model keeps only the factors in use)."""
        self._svd = None

    def arguments(self) -> dict:
        """What :meth:`from_arguments` rebuilds this layer's shape from (a variant folder records it)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "rank": self.rank}

    @classmethod
    def from_arguments(cls, args: dict) -> "RSparseLinear":
        """A frozen layer of the shape :meth:`arguments` gave, its tensors not yet set (a variant folder loads them).

        Built on the meta device, so the SVD costs nothing; the weight keeps its input-channel-major layout.
        """
        dense = nn.Linear(int(args["in_features"]), int(args["out_features"]), bias=bool(args["bias"]), device="meta")
        layer = cls(dense, 0.0, int(args["rank"]))
        layer.freeze()
        return layer.to_empty(device="cpu")

    def _decode(self, x):
        """One token through the compiled kernel, or None where it does not apply."""
        if (not self.kernel or x.numel() != self.in_features or x.dtype != torch.float32 or x.requires_grad
                or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()):
            return None
        op = rsparse_matvec()
        if op is None or not self.weight.t().is_contiguous():
            return None
        y = op(x.reshape(-1).contiguous(), self.weight.t(), self.scale, float(self.threshold), self.down, self.up,
               self.bias)
        if self.counting:
            self._count(int(((x * self.scale).abs() > self.threshold).sum()), 1)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _count(self, active: int, tokens: int) -> None:
        self.macs[0] += active * self.out_features + tokens * self.rank * (self.in_features + self.out_features)
        self.macs[1] += tokens * self.in_features * self.out_features

    def forward(self, x):
        y = self._decode(x)
        if y is not None:
            return y
        active = (x * self.scale).abs() > self.threshold
        y = F.linear(torch.where(active, x, torch.zeros_like(x)), self.weight, self.bias)
        if self.rank:
            y = y + (torch.where(active, torch.zeros_like(x), x) @ self.down) @ self.up.T
        if self.counting:
            self._count(int(active.sum()), active.numel() // self.in_features)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"threshold={float(self.threshold):.4g}")
