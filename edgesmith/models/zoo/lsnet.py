"""LSNet T/S/B: Wang et al., 2025, "LSNet: See Large, Focus Small" (arXiv 2503.23135, CVPR 2025).

An LS convolution looks at a large neighbourhood to decide *how* to mix and then mixes only a
small one: large-kernel perception (LKP: 1x1, depthwise 7x7, 1x1, 1x1 conv, GroupNorm) predicts
a 3x3 kernel for every pixel, and small-kernel aggregation (SKA) applies it, one kernel shared
by each group of channels. Blocks alternate a RepVGG-style depthwise conv with squeeze-excite
and an LS convolution (stages 1-3) or multi-head self-attention (stage 4); every block ends in
a residual FFN. Layout: a stride-8 stem, then four stages at 1/8, 1/16, 1/32 and 1/64 of the input.

Written from the paper and checked against the authors' training-time structure (reference
code: github.com/jameslahm/lsnet), so parameter names differ but counts match. The upstream
SKA is a GPU-only Triton kernel; :func:`small_kernel_aggregate` computes the same sum from
padding, slicing and broadcasting, which every exporter (ONNX, Core ML, MLX) understands.

Counts: ``backbones.yaml`` holds the paper's rounded figures. They leave out the distillation head
(the ``*_distill`` models add a second BN + Linear classifier: the authors' T log shows
11,409,832 parameters without it, exactly this module's count, and 11,795,600 with it). They
fit what the authors' ``flops.py`` measures after folding BN into the convs: folded, T/S/B
have 11.37/16.10/23.25 M parameters (this training-time module 11.41/16.15/23.31 M; only the
folded B rounds to 23.2), and an fvcore-style count gives about 0.32/0.54/1.25 GMACs, with
SKA counted as a depthwise 3x3 conv.
:func:`~edgesmith.models.complexity.count_macs` sees only convs, linears and matmuls: it
misses SKA (:func:`ska_macs`, 0.2-0.3 %) and the norms' element-wise work and counts the
1x1 RepVGG branch that folding removes, together well under 1 %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgesmith.errors import UsageError

# One kernel per group of 8 channels, a 3x3 aggregation window, a 7x7 perception window.
SKA_GROUP = 8
SKA_KERNEL = 3
LKP_KERNEL = 7

CONFIGS: dict[str, dict] = {
    # heads / key_dim are for the attention blocks of the last stage; the value width of a
    # head is width // heads (upstream: attn_ratio = width / (key_dim * heads)).
    "t": {"widths": [64, 128, 256, 384], "depths": [0, 2, 8, 10], "heads": 4, "key_dim": 16},
    "s": {"widths": [96, 192, 320, 448], "depths": [1, 2, 8, 10], "heads": 4, "key_dim": 16},
    "b": {"widths": [128, 256, 384, 512], "depths": [4, 6, 8, 10], "heads": 4, "key_dim": 16},
}

# (parameters in millions, GMACs) at 224x224, 1000 classes, as the paper and the official README print them.


def small_kernel_aggregate(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Small-kernel aggregation: a 3x3 per-pixel dynamic kernel, shared by channel groups.

    ``out[b, c, i, j] = sum_{dy, dx} x[b, c, i + dy - 1, j + dx - 1] * weight[b, c % G, 3 * dy + dx, i, j]``
    with zero padding, where ``G = weight.shape[1]``. Channel ``c`` uses kernel ``c % G`` (as
    upstream), so viewing ``x`` as ``(B, C // G, G, H, W)`` lines each channel up with its kernel
    and a plain broadcast does the sharing.

    Args:
        x: Features ``(B, C, H, W)``.
        weight: Kernels ``(B, G, 9, H, W)``, ``C`` a multiple of ``G``.

    Returns:
        ``(B, C, H, W)``.
    """
    _, channels, height, width = x.shape
    groups = weight.shape[1]
    padded = F.pad(x, (1, 1, 1, 1)).reshape(-1, channels // groups, groups, height + 2, width + 2)
    out = None
    for tap in range(SKA_KERNEL * SKA_KERNEL):
        dy, dx = divmod(tap, SKA_KERNEL)
        # (B, 1, G, H, W) broadcasts over the C // G channel copies; select the tap before adding
        # the axis so no tensor exceeds rank 5 (Core ML's limit).
        term = padded[..., dy:dy + height, dx:dx + width] * weight[:, :, tap].unsqueeze(1)
        out = term if out is None else out + term
    return out.reshape(-1, channels, height, width)


def ska_macs(model: nn.Module) -> int:
    """Multiply-adds of every SKA in ``model`` for one image, which ``count_macs`` misses.

    The paper counts SKA as a depthwise 3x3 conv: ``9 * C * H * W`` per LS convolution.

    Args:
        model: A model from :func:`build` (at the ``image_size`` it was built for).

    Returns:
        The MACs.
    """
    return sum(9 * m.channels * m.resolution ** 2 for m in model.modules() if isinstance(m, LSConv))


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            bn_weight: float = 1.0) -> nn.Sequential:
    """A bias-free ``nn.Conv2d`` (same padding) followed by ``nn.BatchNorm2d``.

    Args:
        cin: Input channels.
        cout: Output channels.
        kernel: Square kernel size (odd).
        stride: Stride.
        groups: Convolution groups (``cin`` for depthwise).
        bn_weight: Initial BN scale; 0 makes a residual branch start as the identity.
    """
    bn = nn.BatchNorm2d(cout)
    nn.init.constant_(bn.weight, bn_weight)
    conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return nn.Sequential(conv, bn)


def _make_divisible(value: float, divisor: int = 8) -> int:
    # Squeeze-excite width rule of timm's SEModule (round to nearest, at least one divisor).
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class Residual(nn.Module):
    """``x + branch(x)``; no stochastic depth, so eval and train forward the same graph."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class RepDepthwise(nn.Module):
    """RepVGG-style depthwise mixer: ``dw3x3-BN(x) + dw1x1-BN(x) + x`` (one 3x3 after reparam)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv3 = conv_bn(dim, dim, 3, groups=dim)
        self.conv1 = conv_bn(dim, dim, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Unlike RepViT's, LSNet's version has no BN after the sum (upstream parameter counts agree).
        return self.conv3(x) + self.conv1(x) + x


class SqueezeExcite(nn.Module):
    """Channel gate: global mean, 1x1 conv, ReLU, 1x1 conv, sigmoid, scale (reduction 1/4)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = _make_divisible(dim * 0.25)
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class KernelNorm(nn.Module):
    """GroupNorm over predicted kernels: ``(B, G * 9, H, W) -> (B, G, 9, H, W)``, one group per kernel.

    Computes exactly ``nn.GroupNorm(G, 9 * G)`` (same parameters) from mean and rsqrt, because
    coremltools' group_norm cannot take a dynamic batch and the MLX exporter has no group_norm.
    The result comes out in the layout :func:`small_kernel_aggregate` takes.

    Args:
        groups: Number of kernels ``G``.
        eps: Added to the variance.
    """

    def __init__(self, groups: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(groups * SKA_KERNEL ** 2))
        self.bias = nn.Parameter(torch.zeros(groups * SKA_KERNEL ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = x.reshape(-1, self.groups, SKA_KERNEL ** 2, height, width)
        centred = x - x.mean((2, 3, 4), keepdim=True)
        scaled = centred * torch.rsqrt((centred * centred).mean((2, 3, 4), keepdim=True) + self.eps)
        shape = (self.groups, SKA_KERNEL ** 2, 1, 1)
        return scaled * self.weight.reshape(shape) + self.bias.reshape(shape)


class LSConv(nn.Module):
    """LS convolution: ``BN(SKA(x, LKP(x))) + x``.

    Args:
        dim: Channels, a multiple of 8.
        resolution: Spatial size it runs at (only for :func:`ska_macs`).
    """

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        half, groups = dim // 2, dim // SKA_GROUP
        self.channels, self.resolution = dim, resolution
        # Large-kernel perception: squeeze to half width, see 7x7, predict 9 taps per group.
        self.perceive = nn.Sequential(
            conv_bn(dim, half), nn.ReLU(),
            conv_bn(half, half, LKP_KERNEL, groups=half),
            conv_bn(half, half), nn.ReLU(),
            nn.Conv2d(half, SKA_KERNEL ** 2 * groups, 1),
        )
        self.norm = KernelNorm(groups)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(small_kernel_aggregate(x, self.norm(self.perceive(x)))) + x


class Attention(nn.Module):
    """Multi-head self-attention with a depthwise 3x3 on the queries and a relative-position bias.

    The bias is a learned value per head and per ``(|dy|, |dx|)`` offset, looked up through a
    precomputed index buffer, so the module runs at one fixed ``resolution``.

    Args:
        dim: Channels.
        key_dim: Query/key width per head.
        heads: Number of heads.
        resolution: Height and width of the feature map.
    """

    def __init__(self, dim: int, key_dim: int, heads: int, resolution: int):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, dim // heads
        self.scale = key_dim ** -0.5
        qk = key_dim * heads
        self.splits = [qk, qk, self.value_dim * heads]
        self.qkv = conv_bn(dim, sum(self.splits))
        self.query_dw = conv_bn(qk, qk, 3, groups=qk)
        self.proj = conv_bn(self.value_dim * heads, dim, bn_weight=0.0)
        rows = torch.arange(resolution).repeat_interleave(resolution)
        cols = torch.arange(resolution).repeat(resolution)
        offsets = (rows[:, None] - rows[None]).abs() * resolution + (cols[:, None] - cols[None]).abs()
        self.register_buffer("bias_index", offsets, persistent=False)
        self.bias = nn.Parameter(torch.zeros(heads, resolution * resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = height * width
        q, k, v = self.qkv(x).split(self.splits, dim=1)
        q = self.query_dw(q).reshape(-1, self.heads, self.key_dim, tokens)
        k = k.reshape(-1, self.heads, self.key_dim, tokens)
        v = v.reshape(-1, self.heads, self.value_dim, tokens)
        scores = torch.matmul(q.transpose(-2, -1), k) * self.scale + self.bias[:, self.bias_index]
        out = torch.matmul(v, scores.softmax(dim=-1).transpose(-2, -1))
        return self.proj(F.relu(out.reshape(-1, self.heads * self.value_dim, height, width)))


class Block(nn.Module):
    """One LSNet block: token mixer, optional squeeze-excite, residual FFN (hidden ratio 2).

    Even positions in a stage use :class:`RepDepthwise` + :class:`SqueezeExcite`; odd ones use
    :class:`LSConv`, or residual :class:`Attention` in the last stage.
    """

    def __init__(self, dim: int, index: int, last_stage: bool, heads: int, key_dim: int, resolution: int):
        super().__init__()
        if index % 2 == 0:
            self.mixer = RepDepthwise(dim)
            self.se = SqueezeExcite(dim)
        else:
            self.mixer = (Residual(Attention(dim, key_dim, heads, resolution)) if last_stage
                          else LSConv(dim, resolution))
            self.se = nn.Identity()
        self.ffn = Residual(nn.Sequential(
            conv_bn(dim, 2 * dim), nn.ReLU(), conv_bn(2 * dim, dim, bn_weight=0.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.se(self.mixer(x)))


def _half(size: int) -> int:
    return (size - 1) // 2 + 1  # output size of a stride-2, padding-1, 3x3 conv


class LSNet(nn.Module):
    """LSNet classifier: stem, four stages, global mean, ``BatchNorm1d`` + ``Linear`` head.

    Args:
        widths: Channels of the four stages (multiples of 8).
        depths: Blocks per stage.
        heads: Attention heads (last stage), reduced for narrow widths.
        key_dim: Query/key width per head, reduced for narrow widths.
        num_classes: Logits.
        image_size: Square input size the model is built for (sets the attention bias table).
        in_chans: Input channels.
    """

    def __init__(self, widths: list[int], depths: list[int], heads: int, key_dim: int,
                 num_classes: int, image_size: int, in_chans: int):
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(
            conv_bn(in_chans, w0 // 4, 3, 2), nn.ReLU(),
            conv_bn(w0 // 4, w0 // 2, 3, 2), nn.ReLU(),
            conv_bn(w0 // 2, w0, 3, 2),
        )
        resolution = _half(_half(_half(image_size)))
        # A narrow last stage keeps key_dim-wide heads while it can, then narrows the keys.
        heads = max(1, min(heads, widths[-1] // key_dim))
        key_dim = min(key_dim, widths[-1] // heads)
        stages = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            layers = []
            if i > 0:  # downsample: depthwise 3x3 stride 2, then 1x1 to the new width
                resolution = _half(resolution)
                layers += [conv_bn(widths[i - 1], widths[i - 1], 3, 2, groups=widths[i - 1]),
                           conv_bn(widths[i - 1], dim, 1)]
            layers += [Block(dim, j, i == len(widths) - 1, heads, key_dim, resolution) for j in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.BatchNorm1d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            image: Float32 ``(B, in_chans, image_size, image_size)``.

        Returns:
            Logits ``(B, num_classes)``.
        """
        features = self.stages(self.stem(image)).mean((2, 3))
        return self.head(self.head_norm(features))


def build(name: str, *, num_classes: int = 1000, image_size: int = 224, in_chans: int = 3,
          widths: list[int] | None = None, depths: list[int] | None = None) -> nn.Module:
    """Build a randomly initialised LSNet in eval mode.

    Args:
        name: ``t``, ``s`` or ``b`` (a key of :data:`CONFIGS`).
        num_classes: Number of logits.
        image_size: Square input size; the attention bias tables are built for it, so the
            model runs at this size only.
        in_chans: Input channels.
        widths: Override the four stage widths (multiples of 8), e.g. for a narrow student.
        depths: Override the four stage depths.

    Returns:
        The :class:`LSNet` module, in eval mode, its BN statistics estimated on Gaussian noise
        (weights are random: no pretrained weights exist offline).

    Raises:
        UsageError: Unknown name, or widths/depths that do not describe four stages of
            multiples of 8 channels.
    """
    if name not in CONFIGS:
        raise UsageError(f"unknown LSNet model {name!r}", hint=f"known: {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    widths = list(cfg["widths"] if widths is None else widths)
    depths = list(cfg["depths"] if depths is None else depths)
    if len(widths) != 4 or len(depths) != 4:
        raise UsageError(f"LSNet needs 4 stage widths and depths, got widths={widths} depths={depths}")
    if any(w <= 0 or w % SKA_GROUP for w in widths):
        raise UsageError(f"LSNet widths must be positive multiples of {SKA_GROUP} (SKA channel groups), "
                         f"got {widths}")
    if any(d < 0 for d in depths):
        raise UsageError(f"LSNet depths must be >= 0, got {depths}")
    model = LSNet(widths, depths, cfg["heads"], cfg["key_dim"], num_classes, image_size, in_chans)
    _calibrate_batchnorm(model, image_size, in_chans)
    return model.eval()


def _calibrate_batchnorm(model: nn.Module, image_size: int, in_chans: int) -> None:
    # Fresh running statistics (mean 0, var 1) leave eval-mode activations unnormalised: each
    # squeeze-excite gate (~0.5 at init) halves the signal and the logits shrink to 1e-4 or
    # less, all but identical for any input. One train-mode pass on Gaussian noise, with momentum 1,
    # sets every BN's statistics to what training-mode BN would use, so logits are O(1).
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(4, in_chans, image_size, image_size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
