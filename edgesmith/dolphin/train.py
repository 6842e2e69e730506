"""Training and evaluating a :mod:`Dolphin <edgesmith.dolphin.model>` pair.

Both LMs stay frozen; the memory embeddings, the projector and any LoRA adapters train, in two
stages of one run (one AdamW schedule, :class:`~edgesmith.training.loop.Trainer`: progress,
a checkpoint every ``save_every`` steps, resume):

1. ``reconstruct_steps``: the decoder restores a context (``reconstruct`` tokens) from its memory;
2. ``steps``: the decoder continues a document (``continuation`` tokens) from the memory of its
   prefix (``context`` tokens).

Windows of ``context + continuation`` decoder tokens are cut from the training text (the
evaluation text's train split by default); the encoder gets the same tokens when the two sides
share a vocabulary, else the window's text through its own tokenizer.

:func:`continuation_perplexity` is the quality figure: the perplexity of a window's continuation
with no context, with the memory of another window's context (what the trained memory tokens give
by themselves), with the compressed context, and with the full context in the decoder's prompt.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.training.checkpoint import Checkpoint
from edgesmith.dolphin.backbone import pair_digest
from edgesmith.dolphin.tokens import left_pad, separator


def shared_vocabulary(dolphin) -> bool:
    """Whether encoder and decoder token ids mean the same (a truncated copy, or equal tokenizer vocabularies)."""
    enc, dec = dolphin.encoder_tokenizer, dolphin.decoder_tokenizer
    if dolphin.pair["encoder"]["reference"] == dolphin.pair["decoder"]["reference"]:
        return True
    if enc is not None and dec is not None:
        return enc is dec or enc.get_vocab() == dec.get_vocab()
    return False


def encoder_inputs(dolphin, ids: np.ndarray):
    """Encoder ``(ids, mask)`` for contexts given in decoder tokens (re-tokenized as text where the vocabularies differ).

    Raises:
        BadInputError: Different vocabularies and no tokenizers to carry the text across (says which sides).
    """
    import torch

    if shared_vocabulary(dolphin):
        return torch.from_numpy(np.ascontiguousarray(ids)), None
    enc, dec = dolphin.encoder_tokenizer, dolphin.decoder_tokenizer
    if enc is None or dec is None:
        e, d = dolphin.pair["encoder"], dolphin.pair["decoder"]
        raise BadInputError(f"dolphin: encoder {e['reference']} and decoder {d['reference']} have different "
                            f"vocabularies ({e['vocab']} and {d['vocab']} tokens) and no tokenizers to carry text "
                            "between them", hint="build the pair with both tokenizers, or use one tokenizer family")
    texts = [dec.decode(row.tolist()) for row in ids]
    return left_pad([enc(t, add_special_tokens=False)["input_ids"] for t in texts])


def training_windows(dolphin, text: str, length: int) -> np.ndarray:
    """Non-overlapping windows of ``length`` decoder tokens of ``text``."""
    from edgesmith.eval.lm import token_windows

    if dolphin.decoder_tokenizer is None:
        raise BadInputError("dolphin: training on text needs the decoder's tokenizer")
    return token_windows(dolphin.decoder_tokenizer, text, length)


def train(dolphin, windows: np.ndarray, checkpoint_dir: str = "", resume: bool = False, force: bool = False,
          progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train ``dolphin``'s memory, projector (and adapters) on ``windows`` of ``context + continuation`` tokens.

    Args:
        dolphin: The pair (its options give the stages, steps, batch and rate).
        windows: int64 ``(N, context + continuation)`` decoder token windows.
        checkpoint_dir: Where ``last.pt`` is kept (empty: no checkpoint).
        resume: Continue the run saved there (same options and pair).
        force: Start over even if a checkpoint exists.
        progress: ``progress(description, step, steps)``.

    Returns:
        The trainer's report (steps, losses first/last per stage, seconds, trained parameters).

    Raises:
        BadInputError: Windows of the wrong length, or fewer than one batch.
        UsageError: A checkpoint of another run (other options or another pair) without ``force``.
    """
    import torch
    from torch.nn import functional as F

    from edgesmith.training.loop import Trainer

    o = dolphin.options
    width = o.context + o.continuation
    if windows.ndim != 2 or windows.shape[1] != width:
        raise BadInputError(f"dolphin: training windows have shape {windows.shape}; need (N, {width}) = "
                            f"context {o.context} + continuation {o.continuation}")
    if len(windows) < o.batch:
        raise BadInputError(f"dolphin: {len(windows)} training windows of {width} tokens, fewer than one batch of "
                            f"{o.batch}", hint="give more text, or smaller context/continuation/batch")
    run = {k: v for k, v in vars(o).items() if k != "save_every"} | {"pair": pair_digest(dolphin.pair)}
    ckpt = Checkpoint("dolphin", "edgesmith-dolphin-checkpoint/1", checkpoint_dir, run, resume, force)
    total = o.reconstruct_steps + o.steps
    state = ckpt.load()
    lens = None
    if state is None and shared_vocabulary(dolphin):  # a resumed run has its fitted weights already
        lens = dolphin.fit_lens(torch.from_numpy(np.ascontiguousarray(windows[:16, :o.context])))
    trainer = Trainer("dolphin", dolphin, dolphin.trainable(),
                      SimpleNamespace(steps=total, lr=o.lr, seed=o.seed, save_every=o.save_every),
                      ckpt, state, progress=progress)

    def step(i: int) -> list[float]:
        index = np.sort(trainer.batch_index(len(windows), o.batch))
        rows = windows[index]
        if i < o.reconstruct_steps:
            context = target = rows[:, o.context - o.reconstruct:o.context]
        else:
            context, target = rows[:, :o.context], rows[:, o.context:]
        memories = dolphin.compress(*encoder_inputs(dolphin, context))
        targets = torch.from_numpy(np.ascontiguousarray(target))
        logits = dolphin.continuation_logits(memories, targets)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        return [float(loss.detach())]

    def describe(losses: list[float]) -> str:
        stage = "restore" if len(trainer.history) <= o.reconstruct_steps else "continue"
        return f"dolphin {stage} loss {losses[0]:.3f}"

    report = trainer.run(step, describe)
    history = [h[0] for h in trainer.history]
    stages = {"restore": history[:o.reconstruct_steps], "continue": history[o.reconstruct_steps:]}
    report["stages"] = {name: {"steps": len(h), "loss_first": _mean(h[:5]), "loss_last": _mean(h[-5:])}
                        for name, h in stages.items() if h}
    for key in ("loss_first", "loss_last"):
        report.pop(key, None)
    if lens is not None:
        report["lens_residual"] = round(lens, 4)
    return report


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def continuation_perplexity(dolphin, windows: np.ndarray, context: int, batch: int = 4,
                            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Perplexity of each window's continuation (after ``context`` tokens) four ways.

    ``none``: ``[sep] + continuation``; ``other``: the memory of the next window's context (what the
    trained memory gives without this document); ``compressed``: the memory of its own context;
    ``full``: ``[sep] + context + continuation``. ``gap_closed`` = ``(none - compressed) / (none - full)``
    in mean negative log-likelihood.

    Raises:
        BadInputError: Windows no longer than ``context``.
    """
    import torch

    if windows.ndim != 2 or windows.shape[1] <= context:
        raise BadInputError(f"dolphin: windows of shape {windows.shape} leave no continuation after {context} tokens")
    sep = separator(dolphin)
    totals = {"none": 0.0, "other": 0.0, "compressed": 0.0, "full": 0.0}
    count = 0
    n = len(windows)
    with torch.no_grad():
        memories = []
        for start in range(0, n, batch):
            memories.append(dolphin.compress(*encoder_inputs(dolphin, windows[start:start + batch, :context])))
        memories = torch.cat(memories)
        others = memories.roll(1, 0) if n > 1 else memories
        for start in range(0, n, batch):
            rows = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch]))
            target = rows[:, context:]
            seps = torch.full((len(rows), 1), sep, dtype=torch.long)
            m = target.shape[1]
            full = dolphin.decoder(input_ids=torch.cat([seps, rows], 1), use_cache=False).logits[:, -m - 1:-1]
            none = dolphin.decoder(input_ids=torch.cat([seps, target], 1), use_cache=False).logits[:, :-1]
            logits = {"none": none, "full": full,
                      "compressed": dolphin.continuation_logits(memories[start:start + batch], target),
                      "other": dolphin.continuation_logits(others[start:start + batch], target)}
            for name, value in logits.items():
                logp = torch.log_softmax(value.double(), -1)
                totals[name] -= float(logp.gather(-1, target[..., None]).sum())
            count += target.numel()
            if progress:
                progress(min(start + batch, n), n)
    nll = {k: v / count for k, v in totals.items()}
    gap = nll["none"] - nll["full"]
    return {**{k: round(math.exp(v), 3) for k, v in nll.items()},
            "nll": {k: round(v, 5) for k, v in nll.items()},
            "gap_closed": round((nll["none"] - nll["compressed"]) / gap, 4) if gap > 0 else None,
            "windows": n, "tokens": count}


def held_out_perplexity(dolphin, windows: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """:func:`continuation_perplexity` on the evaluation text's test split, in windows of the pair's training
    context then continuation lengths.

    Args:
        dolphin: The (trained) pair.
        windows: Windows to score (0: all of the test split).
        progress: ``progress(windows scored, windows)``; called with 0 first, so the total is known at once.
    """
    from edgesmith.data.datasets import eval_text

    o = dolphin.options
    rows = training_windows(dolphin, eval_text("test"), o.context + o.continuation)
    rows = rows[:windows] if windows > 0 else rows
    if progress:
        progress(0, len(rows))
    return continuation_perplexity(dolphin, rows, o.context, progress=progress)
