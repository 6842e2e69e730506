"""Language-model text in and quality out: token windows from text, and perplexity.

Every language-model quality figure edgesmith reports is the perplexity of the
next token over non-overlapping windows of the fixed evaluation text's test split
(:func:`edgesmith.data.datasets.eval_text`), each window scored on its own (the
first token of a window is context only).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from edgesmith.errors import BadInputError


def text_source(spec: str, split: str = "train") -> str:
    """``devils-dictionary`` (the bundled evaluation text, at ``split``) or a UTF-8 text file's content.

    Raises:
        BadInputError: A file that cannot be read.
    """
    from edgesmith.data.datasets import EVAL_TEXT, eval_text

    if spec in (EVAL_TEXT, ""):
        return eval_text(split)
    try:
        with open(spec, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read text {spec}: {exc}",
                            hint=f"give a UTF-8 text file, or {EVAL_TEXT} for the bundled text") from None


def token_windows(tokenizer, text: str, window: int, max_windows: int | None = None) -> np.ndarray:
    """Tokenize ``text`` once and cut it into non-overlapping windows of ``window`` tokens.

    Returns:
        int64 ``(N, window)``; the tail shorter than a window is dropped.

    Raises:
        BadInputError: The text holds fewer tokens than one window (says how many it has).
    """
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    n = len(ids) // window
    if n < 1:
        raise BadInputError(f"the text has {len(ids)} tokens, fewer than one window of {window}",
                            hint="give more text or a shorter window")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * window].reshape(n, window)


def lm_feeds(variant, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The variant's inputs for token windows: ``input_ids``, and an all-ones mask / zero token types where taken."""
    feeds = {}
    for spec in variant.inputs:
        if spec.name == "input_ids":
            feeds[spec.name] = ids
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones_like(ids)
        elif spec.name == "token_type_ids":
            feeds[spec.name] = np.zeros_like(ids)
        else:
            raise BadInputError(f"{variant.name} takes {spec.name!r}, which token windows do not give")
    return feeds


def spread_windows(windows: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``windows`` spread evenly from the first to the last (all of them when there are fewer):
    a text's first windows are often alike (a dictionary's first letter), so calibration samples it all."""
    if len(windows) <= count:
        return windows
    return windows[np.linspace(0, len(windows) - 1, count).round().astype(int)]


def run_windows(module, variant, windows: np.ndarray) -> None:
    """Run ``module`` (the variant's module or a changed copy) on each token window alone, outputs dropped:
    what calibration hooks and counters observe."""
    from edgesmith.models.variant import run_module

    for i in range(len(windows)):
        run_module(module, variant.inputs, variant.outputs, lm_feeds(variant, windows[i:i + 1]))


def perplexity(variant, windows: np.ndarray, batch: int = 4, module=None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Next-token perplexity of a causal LM over token windows.

    Args:
        variant: An ``lm`` variant (its inputs name the feeds).
        windows: int64 ``(N, T)`` token windows.
        batch: Windows per forward pass.
        module: Run this module instead of the variant's (another width of the same model).
        progress: Called as ``progress(done, total)`` windows.

    Returns:
        ``{"perplexity", "nll", "tokens"}`` (mean negative log-likelihood in nats per token).
    """
    import torch

    from edgesmith.models.variant import run_module

    module = module if module is not None else variant.module
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        ids = windows[start:start + batch]
        logits = run_module(module, variant.inputs, variant.outputs, lm_feeds(variant, ids))[variant.outputs[0].name]
        logp = torch.log_softmax(torch.from_numpy(logits[:, :-1]).double(), dim=-1)
        target = torch.from_numpy(ids[:, 1:])
        total -= float(logp.gather(-1, target[..., None]).sum())
        count += target.numel()
        if progress:
            progress(min(start + batch, len(windows)), len(windows))
    nll = total / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count}
