"""Parameter and multiply-accumulate counts of a torch module.

MACs follow the convention of the backbone papers (fvcore / thop): one MAC per
multiply-add in convolutions, linear layers and matrix products (attention
included); element-wise ops, normalisation and pooling are not counted.
"""

from __future__ import annotations


def unique_tensors(tensors) -> list:
    """``tensors`` with every storage counted once: tied weights appear once.

    ``module.parameters()`` drops a tensor seen twice only when it is the same Python object; a
    program loaded from a ``.pt2`` gives a tied embedding and ``lm_head`` two parameter objects
    over one storage, so identity is not enough. Two tensors are one when they view the same
    memory (same storage, offset, shape, strides and dtype).
    """
    seen, out = set(), []
    for t in tensors:
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # meta or otherwise storage-less tensors
            ptr = 0
        key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype) if ptr else id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def count_params(module) -> int:
    """Number of parameters, shared storage counted once (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in unique_tensors(p for _, p in module.named_parameters(remove_duplicate=False)))


def size_bytes(module) -> int:
    """Bytes of the parameters and buffers, shared storage counted once."""
    tensors = [t for _, t in [*module.named_parameters(remove_duplicate=False),
                              *module.named_buffers(remove_duplicate=False)]]
    return sum(t.numel() * t.element_size() for t in unique_tensors(tensors))


def count_flops(module, *inputs) -> int:
    """FLOPs of one forward pass on ``inputs`` (PyTorch's ``FlopCounterMode``: a multiply-add is two).

    Args:
        module: The torch module (put in eval mode by the caller).
        *inputs: Example tensors, passed positionally.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def count_macs(module, *inputs) -> int:
    """Multiply-accumulates of one forward pass on ``inputs`` (:func:`count_flops` halved)."""
    return count_flops(module, *inputs) // 2


def zoo_complexity(entry) -> dict:
    """Parameters and MACs of a zoo model at batch 1, beside its paper's figures.

    Backbones are built with their default options (224x224, 1000 classes, the
    setting papers report) on PyTorch's meta device, so no weights are allocated;
    other models are loaded and run on their example input.

    Returns:
        ``{"params", "params_as_paper", "macs", "input", "paper_params", "paper_macs"}``:
        ``params_as_paper`` counts the way the model's paper does (all parameters unless the
        paper leaves some out); paper figures are None where the model has none.
    """
    import torch

    if entry.build is not None:
        with torch.device("meta"):
            module = entry.build().eval()
            x = torch.empty(1, 3, 224, 224)
        args = [x]
    else:
        variant = entry.load()
        module = variant.module
        args = [torch.from_numpy(variant.example[s.name][:1]) for s in variant.inputs]
    paper = entry.paper or (None, None)
    params = count_params(module)
    return {
        "params": params,
        "params_as_paper": entry.count_as_paper(module) if entry.count_as_paper else params,
        "macs": count_macs(module, *args),
        "input": ", ".join("x".join(map(str, a.shape)) for a in args),
        "paper_params": int(paper[0] * 1e6) if paper[0] is not None else None,
        "paper_macs": int(paper[1] * 1e9) if paper[1] is not None else None,
    }
