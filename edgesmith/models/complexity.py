"""Parameter and multiply-accumulate counts of a torch module.

MACs follow the convention of the backbone papers (fvcore / thop): one MAC per
multiply-add in convolutions, linear layers and matrix products (attention
included); element-wise ops, normalisation and pooling are not counted.
"""

from __future__ import annotations


def count_params(module) -> int:
    """Number of parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module, *inputs) -> int:
    """Multiply-accumulates of one forward pass on ``inputs``.

    Args:
        module: The torch module (put in eval mode by the caller).
        *inputs: Example tensors, passed positionally.

    Returns:
        MACs (torch's FLOP counter halved: it counts a multiply-add as two FLOPs).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2
