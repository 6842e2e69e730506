"""A backbone behind a fixed bilinear resize, so it keeps another model's input signature."""

from __future__ import annotations

import torch
from torch import nn


class ResizeThen(nn.Module):
    """Bilinear resize of the image to ``size`` x ``size``, then the backbone.

    Used by the ``distill`` pass: a student backbone trained at 32x32 still takes
    the teacher's 8x8 images.
    """

    def __init__(self, size: int, backbone: nn.Module):
        super().__init__()
        self.size = size
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Classify ``image`` (B, C, H, W) of any size."""
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = nn.functional.interpolate(image, size=(self.size, self.size), mode="bilinear",
                                              align_corners=False)
        return self.backbone(image)
