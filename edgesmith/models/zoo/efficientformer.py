"""EfficientFormer L1/L3/L7 and EfficientFormerV2 S0/S1/S2/L image classifiers.

- V1: Li et al., 2022, "EfficientFormer: Vision Transformers at MobileNet Speed" (arXiv 2206.01191,
  NeurIPS 2022). A conv stem, four stages of "4D" blocks (3x3 average pooling as token mixer, conv
  MLP), and at the end of the last stage "3D" blocks (LayerNorm, multi-head attention with a
  learned relative-position bias, linear MLP).
- V2: Li et al., 2023, "Rethinking Vision Transformers for MobileNet Size and Speed" (arXiv
  2212.08059, ICCV 2023). Every block is a conv FFN with a depthwise 3x3 in the middle; the last
  blocks of stages 3 and 4 add 4D attention (talking heads, a depthwise "local value" branch,
  keys and queries at stride 2 in stage 3), and stage 4 is entered through attention.

Written from the papers and checked against the authors' code (github.com/snap-research/
EfficientFormer): names differ, but with the same weights the outputs are identical. Residual
branches are scaled by a learned per-channel LayerScale (initialised to 1e-5). Conv and BN are
separate modules so the ``reparam`` pass can fold them. Drop path and dropout are left out.

The attention bias is a table over (|dy|, |dx|) offsets sized for ``image_size``; at another
feature-map size it is resized bilinearly (bicubic does not convert to Core ML), so a model runs
at any input size. Shapes are only read as Python ints: ``torch.export`` keeps the batch dynamic.

Like the authors' models, ours carry a distillation head; eval output is the mean of both heads.
The papers' figures (``backbones.yaml``) count parameters as :func:`paper_param_count` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgesmith.errors import UsageError

CONFIGS: dict[str, dict] = {
    # attn_blocks: how many of the last blocks of the last stage (V1) or of each of the last two
    # stages (V2) carry attention. mlp_ratios (V2): one digit per block, the FFN expansion.
    "l1": {"version": 1, "widths": [48, 96, 224, 448], "depths": [3, 2, 6, 4], "attn_blocks": 1},
    "l3": {"version": 1, "widths": [64, 128, 320, 512], "depths": [4, 4, 12, 6], "attn_blocks": 4},
    "l7": {"version": 1, "widths": [96, 192, 384, 768], "depths": [6, 6, 18, 8], "attn_blocks": 8},
    "v2_s0": {"version": 2, "widths": [32, 48, 96, 176], "depths": [2, 2, 6, 4], "attn_blocks": 2,
              "mlp_ratios": ["44", "44", "433344", "4334"]},
    "v2_s1": {"version": 2, "widths": [32, 48, 120, 224], "depths": [3, 3, 9, 6], "attn_blocks": 2,
              "mlp_ratios": ["444", "444", "443333444", "443344"]},
    "v2_s2": {"version": 2, "widths": [32, 64, 144, 288], "depths": [4, 4, 12, 8], "attn_blocks": 4,
              "mlp_ratios": ["4444", "4444", "443333334444", "44333344"]},
    "v2_l": {"version": 2, "widths": [40, 80, 192, 384], "depths": [5, 5, 15, 10], "attn_blocks": 6,
             "mlp_ratios": ["44444", "44444", "444433333334444", "4443333444"]},
}

LAYER_SCALE_INIT = 1e-5
HEADS, KEY_DIM, VALUE_RATIO = 8, 32, 4  # every attention; V2's downsampler uses KEY_DIM // 2


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # The conv keeps its bias, as upstream: parameter counts match and reparam folds it anyway.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups), nn.BatchNorm2d(cout))


def _layer_scale(dim: int, spatial: bool) -> nn.Parameter:
    return nn.Parameter(torch.full((dim, 1, 1) if spatial else (dim,), LAYER_SCALE_INIT))


def offset_index(height: int, width: int, step: int = 1, device=None) -> torch.Tensor:
    """Bias-table row ``|dy| * width + |dx|`` of every (query, key) pair.

    Args:
        height: Rows of the key grid.
        width: Columns of the key grid.
        step: Queries sit on every ``step``-th key row and column.
        device: Where to build the index.

    Returns:
        Long tensor ``(ceil(height / step) * ceil(width / step), height * width)``.
    """
    def axis(n: int) -> torch.Tensor:
        return (torch.arange(0, n, step, device=device)[:, None] - torch.arange(n, device=device)).abs()

    dy, dx = axis(height), axis(width)
    index = dy[:, None, :, None] * width + dx[None, :, None, :]  # (query y, query x, key y, key x)
    return index.reshape(dy.shape[0] * dx.shape[0], height * width)


class RelativePositionBias(nn.Module):
    """A learned per-head attention bias indexed by the (|dy|, |dx|) offset of query and key.

    Args:
        num_heads: Attention heads; each has its own table.
        size: Side of the key grid the table is sized for (the build resolution).
        query_step: Queries sit on every ``query_step``-th key position (2 for a downsampler).
    """

    def __init__(self, num_heads: int, size: int, query_step: int = 1):
        super().__init__()
        self.size, self.query_step = size, query_step
        self.table = nn.Parameter(torch.zeros(num_heads, size * size))
        # A parameter indexed by a constant buffer: exporters can fold it into one constant.
        self.register_buffer("index", offset_index(size, size, query_step), persistent=False)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Return the bias ``(heads, queries, height * width)`` for a ``height x width`` key grid."""
        if (height, width) == (self.size, self.size):
            return self.table[:, self.index]
        # Another size: stretch the offset table; align_corners keeps offset 0 and the largest.
        grid = self.table.reshape(1, -1, self.size, self.size)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
        index = offset_index(height, width, self.query_step, device=grid.device)
        return grid.reshape(grid.shape[1], height * width)[:, index]


def _conv_mlp(dim: int, hidden: int, mid_conv: bool) -> nn.Sequential:
    # 1x1 conv-BN, GELU, [depthwise 3x3 conv-BN, GELU (V2)], 1x1 conv-BN.
    mid = [_conv_bn(hidden, hidden, 3, groups=hidden), nn.GELU()] if mid_conv else []
    return nn.Sequential(_conv_bn(dim, hidden), nn.GELU(), *mid, _conv_bn(hidden, dim))


class _PoolBlock(nn.Module):
    """V1 4D block: ``x += s1 * (avgpool3x3(x) - x)``; ``x += s2 * mlp(x)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = _conv_mlp(dim, 4 * dim, mid_conv=False)
        self.scale1, self.scale2 = _layer_scale(dim, True), _layer_scale(dim, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Padding left out of the average (as PoolFormer), so borders are not pulled towards zero.
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        x = x + self.scale1 * (pooled - x)
        return x + self.scale2 * self.mlp(x)


class _TokenAttention(nn.Module):
    """V1 multi-head self-attention on tokens ``(B, N, dim)`` with a relative-position bias."""

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.value_dim = VALUE_RATIO * KEY_DIM
        # Per-head [q | k | v] columns, as upstream, so the authors' weights load after renaming.
        self.qkv = nn.Linear(dim, HEADS * (2 * KEY_DIM + self.value_dim))
        self.proj = nn.Linear(HEADS * self.value_dim, dim)
        self.bias = RelativePositionBias(HEADS, resolution)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, n, _ = x.shape
        qkv = self.qkv(x).reshape(batch, n, HEADS, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([KEY_DIM, KEY_DIM, self.value_dim], dim=-1)
        attn = (q @ k.transpose(-2, -1)) * KEY_DIM**-0.5 + self.bias(height, width)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, n, -1))


class _TokenBlock(nn.Module):
    """V1 3D block: pre-LayerNorm attention and linear MLP, both LayerScaled."""

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _TokenAttention(dim, resolution)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.scale1, self.scale2 = _layer_scale(dim, False), _layer_scale(dim, False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.scale1 * self.attn(self.norm1(x), height, width)
        return x + self.scale2 * self.mlp(self.norm2(x))


def _heads_last(x: torch.Tensor, per_head: int) -> torch.Tensor:
    # (B, heads * per_head, H, W) -> (B, heads, per_head, H * W)
    return x.reshape(x.shape[0], HEADS, per_head, x.shape[2] * x.shape[3])


class _Attention2d(nn.Module):
    """V2 attention on a feature map: talking heads and a local value branch.

    With ``stride`` 2 a depthwise stride-2 conv quarters the tokens first and the result is
    upsampled back (bilinear); stage 3 does this.
    """

    def __init__(self, dim: int, resolution: int, stride: int):
        super().__init__()
        value = HEADS * VALUE_RATIO * KEY_DIM
        self.down = _conv_bn(dim, dim, 3, 2, groups=dim) if stride == 2 else None
        self.q, self.k = _conv_bn(dim, HEADS * KEY_DIM), _conv_bn(dim, HEADS * KEY_DIM)
        self.v = _conv_bn(dim, value)
        self.v_local = _conv_bn(value, value, 3, groups=value)
        # "Talking heads": 1x1 convs mixing the heads' attention maps before and after softmax.
        self.talk1, self.talk2 = nn.Conv2d(HEADS, HEADS, 1), nn.Conv2d(HEADS, HEADS, 1)
        self.proj = nn.Sequential(nn.GELU(), _conv_bn(value, dim))
        self.bias = RelativePositionBias(HEADS, math.ceil(resolution / stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        if self.down is not None:
            x = self.down(x)
        q = _heads_last(self.q(x), KEY_DIM).transpose(-2, -1)
        k = _heads_last(self.k(x), KEY_DIM)
        v = self.v(x)
        v_local = self.v_local(v)
        attn = (q @ k) * KEY_DIM**-0.5 + self.bias(x.shape[2], x.shape[3])
        attn = self.talk2(self.talk1(attn).softmax(dim=-1))
        out = attn @ _heads_last(v, -1).transpose(-2, -1)
        out = out.transpose(-2, -1).reshape(v_local.shape) + v_local
        if self.down is not None:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return self.proj(out)


class _AttentionDownsample(nn.Module):
    """V2's entry to stage 4: a stride-2 3x3 conv-BN plus attention from half-resolution queries.

    A query is a depthwise stride-2 conv plus a stride-2 subsample ("local-global" query).
    """

    def __init__(self, dim: int, out_dim: int, resolution: int):
        super().__init__()
        self.conv = _conv_bn(dim, out_dim, 3, 2)
        self.key_dim = KEY_DIM // 2
        value = HEADS * VALUE_RATIO * self.key_dim
        self.q_local = nn.Conv2d(dim, dim, 3, 2, 1, groups=dim)
        self.q = _conv_bn(dim, HEADS * self.key_dim)
        self.k = _conv_bn(dim, HEADS * self.key_dim)
        self.v = _conv_bn(dim, value)
        self.v_local = _conv_bn(value, value, 3, 2, groups=value)
        self.proj = nn.Sequential(nn.GELU(), _conv_bn(value, out_dim))
        self.bias = RelativePositionBias(HEADS, resolution, query_step=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv(x)
        # A 1x1 average pool with stride 2 is the subsample: an op every converter has.
        q = _heads_last(self.q(self.q_local(x) + F.avg_pool2d(x, 1, 2)), self.key_dim).transpose(-2, -1)
        k = _heads_last(self.k(x), self.key_dim)
        v = self.v(x)
        v_local = self.v_local(v)
        attn = ((q @ k) * self.key_dim**-0.5 + self.bias(x.shape[2], x.shape[3])).softmax(dim=-1)
        out = attn @ _heads_last(v, -1).transpose(-2, -1)
        return shortcut + self.proj(out.transpose(-2, -1).reshape(v_local.shape) + v_local)


class _FfnBlock(nn.Module):
    """V2 block: ``x += s1 * attention(x)`` where it has attention, then ``x += s2 * mlp(x)``."""

    def __init__(self, dim: int, mlp_ratio: int, attention: nn.Module | None):
        super().__init__()
        self.attn = attention
        self.scale1 = _layer_scale(dim, True) if attention is not None else None
        self.mlp = _conv_mlp(dim, mlp_ratio * dim, mid_conv=True)
        self.scale2 = _layer_scale(dim, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.scale1 * self.attn(x)
        return x + self.scale2 * self.mlp(x)


class _DistilledHead(nn.Module):
    """Classifier and distillation classifier on pooled features; the output is their mean."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head, self.head_dist = nn.Linear(dim, num_classes), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.head(x) + self.head_dist(x)) / 2


def _stem(cin: int, cout: int, act: type[nn.Module]) -> nn.Sequential:
    # Two stride-2 3x3 conv-BN-activation layers: the input at 1/4 resolution.
    return nn.Sequential(_conv_bn(cin, cout // 2, 3, 2), act(), _conv_bn(cout // 2, cout, 3, 2), act())


class EfficientFormerV1(nn.Module):
    """EfficientFormer: pooling blocks, then attention blocks at the end of stage 4.

    Args:
        widths: Channels of the four stages.
        depths: Blocks per stage.
        attn_blocks: How many of stage 4's last blocks are attention blocks (at most ``depths[3]``).
        num_classes: Output classes.
        image_size: Build resolution (sizes the attention bias).
        in_chans: Input channels.
    """

    def __init__(self, widths: list[int], depths: list[int], attn_blocks: int, num_classes: int,
                 image_size: int, in_chans: int):
        super().__init__()
        self.stem = _stem(in_chans, widths[0], nn.ReLU)
        stages = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            down = [_conv_bn(widths[i - 1], dim, 3, 2)] if i else []
            pools = depth - attn_blocks if i == 3 else depth
            stages.append(nn.Sequential(*down, *(_PoolBlock(dim) for _ in range(pools))))
        self.stages = nn.Sequential(*stages)
        tokens = math.ceil(image_size / 32)
        self.attn_blocks = nn.ModuleList(_TokenBlock(widths[3], tokens) for _ in range(attn_blocks))
        self.norm = nn.LayerNorm(widths[3])
        self.head = _DistilledHead(widths[3], num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        x = self.stages(self.stem(image))
        height, width = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        for block in self.attn_blocks:
            x = block(x, height, width)
        return self.head(self.norm(x).mean(dim=1))


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2: FFN blocks, with 4D attention in the last blocks of stages 3 and 4.

    Args:
        widths: Channels of the four stages.
        depths: Blocks per stage.
        attn_blocks: How many of the last blocks of stages 3 and 4 carry attention.
        mlp_ratios: FFN expansion per block, a string of digits per stage.
        num_classes: Output classes.
        image_size: Build resolution (sizes the attention biases).
        in_chans: Input channels.
    """

    def __init__(self, widths: list[int], depths: list[int], attn_blocks: int, mlp_ratios: list[str],
                 num_classes: int, image_size: int, in_chans: int):
        super().__init__()
        self.stem = _stem(in_chans, widths[0], nn.GELU)
        stages = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            resolution = math.ceil(image_size / 2 ** (i + 2))
            if i == 3:
                layers = [_AttentionDownsample(widths[2], dim, math.ceil(image_size / 16))]
            else:
                layers = [_conv_bn(widths[i - 1], dim, 3, 2)] if i else []
            for j in range(depth):
                has_attn = i >= 2 and j >= depth - attn_blocks
                attention = _Attention2d(dim, resolution, 2 if i == 2 else 1) if has_attn else None
                layers.append(_FfnBlock(dim, int(mlp_ratios[i][j]), attention))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(widths[3])
        self.head = _DistilledHead(widths[3], num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        x = self.norm(self.stages(self.stem(image)))
        return self.head(x.mean(dim=(2, 3)))


def paper_param_count(model: nn.Module) -> int:
    """Parameters as the papers count them: conv, linear and LayerNorm weights and biases.

    The authors' profiler counts only those layers: BatchNorm is folded into the conv before
    it for inference, and LayerScale vectors and attention-bias tables are not counted. The
    distillation head is included.

    Args:
        model: A model from :func:`build`.

    Returns:
        The count, comparable with the paper's figure in ``backbones.yaml``.
    """
    layers = (nn.Conv2d, nn.Linear, nn.LayerNorm)
    return sum(p.numel() for m in model.modules() if isinstance(m, layers) for p in m.parameters())


def _init_weights(module: nn.Module) -> None:
    # Linear layers as upstream (truncated normal, std 0.02, zero bias); convs keep torch's
    # default, BN starts as identity, attention biases at zero, LayerScale at 1e-5.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def _stage_list(value: list[int] | None, what: str, default: list[int]) -> list[int]:
    if value is None:
        return list(default)
    if len(value) != 4 or any(int(v) != v or v < 1 for v in value):
        raise UsageError(f"EfficientFormer {what} must be four positive integers, got {value!r}")
    return [int(v) for v in value]


def build(name: str, *, num_classes: int = 1000, image_size: int = 224, in_chans: int = 3,
          widths: list[int] | None = None, depths: list[int] | None = None) -> nn.Module:
    """Build an EfficientFormer with random weights, in eval mode.

    Args:
        name: A key of :data:`CONFIGS`: ``l1``, ``l3``, ``l7``, ``v2_s0``, ``v2_s1``, ``v2_s2``, ``v2_l``.
        num_classes: Output classes.
        image_size: Side of the square input the attention biases are sized for, a multiple of
            32; other input sizes run too (the biases are resized).
        in_chans: Input channels.
        widths: Override the four stage widths.
        depths: Override the four stage depths. Attention blocks are capped by the depth; a V2
            stage whose depth changes gets FFN expansion 4 throughout.

    Returns:
        The model: ``forward(image (B, in_chans, H, W) float32) -> logits (B, num_classes)``.

    Raises:
        UsageError: Unknown name, or a bad size, width or depth.
    """
    if name not in CONFIGS:
        raise UsageError(f"unknown EfficientFormer model {name!r}", hint=f"use one of {', '.join(CONFIGS)}")
    if image_size < 32 or image_size % 32:
        raise UsageError(f"EfficientFormer image_size must be a positive multiple of 32, got {image_size}")
    if num_classes < 1 or in_chans < 1:
        raise UsageError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    cfg = CONFIGS[name]
    widths = _stage_list(widths, "widths", cfg["widths"])
    depths = _stage_list(depths, "depths", cfg["depths"])
    if cfg["version"] == 1:
        attn_blocks = min(cfg["attn_blocks"], depths[3])
        model = EfficientFormerV1(widths, depths, attn_blocks, num_classes, image_size, in_chans)
    else:
        ratios = [r if len(r) == d else "4" * d for r, d in zip(cfg["mlp_ratios"], depths)]
        model = EfficientFormerV2(widths, depths, cfg["attn_blocks"], ratios, num_classes, image_size, in_chans)
    model.apply(_init_weights)
    return model.eval()
