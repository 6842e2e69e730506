"""``digits-vit``: a two-block Vision Transformer for the scikit-learn 8x8 digits.

The zoo's transformer classifier, small enough to train in a minute on a CPU, on which the
SLAB passes (``prepbn``, ``sla``) are measured. 2x2 patches embed each image into 16 tokens on a
4x4 grid; learned position embeddings; two pre-norm blocks (LayerNorm, 4-head softmax attention
with a fused ``[q | k | v]`` projection, LayerNorm, GELU MLP); a final LayerNorm, the mean over
tokens, a linear head. Trained offline by ``scripts/train_digits_vit.py`` on the same split as
``digits-cnn``.

Input ``image``: float32 ``(B, 1, 8, 8)``, pixel values divided by 16 into ``[0, 1]``.
Output: logits ``(B, 10)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).parent / "weights" / "digits_vit.safetensors"
CARD_PATH = Path(__file__).parent / "weights" / "digits_vit.json"


class Attention(nn.Module):
    """Multi-head softmax self-attention over ``(B, N, C)`` tokens, written out (it exports everywhere)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """Patch embedding, position embeddings, ``depth`` blocks, final norm, mean over tokens, head."""

    grid = (4, 4)  # the token grid of an 8x8 image in 2x2 patches

    def __init__(self, dim: int = 48, depth: int = 2, heads: int = 4, hidden: int = 96, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def build(pretrained: bool = True) -> DigitsViT:
    """Build the model in eval mode, with the committed weights unless ``pretrained`` is false."""
    model = DigitsViT()
    if pretrained:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()
