"""Token ids on either side of a Dolphin pair: left-padded batches, the memory placeholder, id checks.

Contexts and prompts are left-padded (with a mask), so the memory tokens end every context row
and generation appends to every prompt row at once. The two sides may have different tokenizers,
so ids are checked against the vocabulary of the side that takes them.
"""

from __future__ import annotations

import torch

from edgesmith.errors import BadInputError

PLACEHOLDER = -1  # a prompt position that takes the next memory vector


def left_pad(rows: list[list[int]], pad: int = 0):
    """``(ids, mask)`` int64 tensors of rows left-padded to the longest (mask 0 on padding).

    Raises:
        BadInputError: An empty row.
    """
    if not rows or any(len(r) == 0 for r in rows):
        raise BadInputError("dolphin: an empty context or prompt", hint="give at least one token per row")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def check_ids(ids, vocab: int, what: str, side: str) -> None:
    """Refuse ids outside ``[0, vocab)``.

    Args:
        ids: An int64 tensor.
        vocab: The vocabulary size of the side that takes them.
        what: ``context``, ``prompt`` or ``target`` (named in the error).
        side: ``encoder`` or ``decoder`` (named in the error).

    Raises:
        BadInputError: Naming the offending id and the vocabulary.
    """
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise BadInputError(f"dolphin: {what} token id {int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())} "
                            f"is outside the {side}'s vocabulary of {vocab}",
                            hint=f"tokenize the {what} with the {side}'s tokenizer (the sides may differ)")


def separator(dolphin) -> int:
    """The token a prompt with no context starts with (the decoder's BOS, else EOS, else 0)."""
    config = dolphin.decoder.config
    for value in (getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
