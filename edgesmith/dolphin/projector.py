"""The projector of a Dolphin pair: encoder hidden states -> vectors in the decoder's embedding space.

The paper (arXiv 2408.15518) uses one Linear. Here that Linear (the "lens") can be fitted by least
squares before training, to map the encoder's hidden state at a context token to the decoder's
embedding of that token, so the decoder reads token-like vectors from the first step; ``mlp`` adds
a GELU MLP beside it that starts at zero.
"""

from __future__ import annotations

import torch


class Projector(torch.nn.Module):
    """``lens(h)`` (one Linear), plus ``up(gelu(down(h)))`` for ``mlp`` (its last layer zero at the start).

    Args:
        enc_dim: Features read per slot (the encoder's hidden size, twice that for ``readout=tail``).
        dec_dim: The decoder's hidden size.
        kind: ``linear`` or ``mlp``.
        generator: Seeds the initial weights.
    """

    def __init__(self, enc_dim: int, dec_dim: int, kind: str, generator):
        super().__init__()
        self.lens = torch.nn.Linear(enc_dim, dec_dim)
        with torch.no_grad():
            self.lens.weight.normal_(0.0, 1.0 / enc_dim ** 0.5, generator=generator)
            self.lens.bias.zero_()
        self.mlp = None
        if kind == "mlp":
            self.mlp = torch.nn.Sequential(torch.nn.Linear(enc_dim, dec_dim), torch.nn.GELU(),
                                           torch.nn.Linear(dec_dim, dec_dim))
            with torch.no_grad():
                self.mlp[0].weight.normal_(0.0, 1.0 / enc_dim ** 0.5, generator=generator)
                self.mlp[0].bias.zero_()
                self.mlp[2].weight.zero_()
                self.mlp[2].bias.zero_()

    def forward(self, hidden):
        out = self.lens(hidden)
        return out if self.mlp is None else out + self.mlp(hidden)

    @torch.no_grad()
    def fit_lens(self, hidden, target, ridge: float = 1e-3) -> float:
        """Fit the lens (ridge least squares) so the last ``hidden.shape[1]`` inputs map ``hidden`` to ``target``.

        The other inputs (the memory-token half with ``readout=tail``) start at zero, so each slot
        starts as the lens of its tail token.

        Args:
            hidden: ``(N, encoder hidden)`` encoder states at context positions.
            target: ``(N, decoder hidden)`` the decoder's embeddings of those tokens.
            ridge: Ridge strength, relative to the mean of the Gram matrix's diagonal.

        Returns:
            The fit's relative residual.
        """
        dim = hidden.shape[1]
        x = torch.cat([hidden, torch.ones(len(hidden), 1)], 1).double()
        gram = x.T @ x
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        solution = torch.linalg.solve(gram, x.T @ target.double())
        lens = self.lens
        lens.weight.zero_()  # readout=tail: the memory-token half starts at zero, each slot holds its tail token
        lens.weight[:, -dim:] = solution[:-1].T.float()
        lens.bias.copy_(solution[-1].float())
        residual = x @ solution - target.double()
        return float(residual.norm() / target.double().norm())
