"""Offline datasets: what zoo models were trained on, and the fixed evaluation text.

A zoo model records its dataset in ``variant.source["dataset"]``; passes keep
the source, so an optimized variant still knows it. ``digits`` is scikit-learn's
bundled copy of the UCI 8x8 handwritten digits (Alpaydin & Kaynak, 1998): no
download, and the split is the one the digits models were trained on
(stratified 80/20, ``random_state=0``), so the test images are unseen by them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, missing_extra

DIGITS = "sklearn-digits"
EVAL_TEXT = "devils-dictionary"
_TEXT_DIR = Path(__file__).parent / "text"


def eval_text(split: str = "test") -> str:
    """The fixed English evaluation text: Bierce's "The Devil's Dictionary" (public domain).

    Prepared by ``scripts/prepare_eval_text.py`` from Debian's ``dict-devil`` 1.0-13.1:
    ``test`` is every 10th dictionary entry (99 entries, held out for every language-model
    quality figure), ``train`` the other 900 (calibration and fine-tuning).

    Raises:
        UsageError: A split other than ``train`` or ``test``.
    """
    from edgesmith.errors import UsageError

    if split not in ("train", "test"):
        raise UsageError(f"the evaluation text has no split {split!r}", hint="use train or test")
    return (_TEXT_DIR / f"{EVAL_TEXT}-{split}.txt").read_text(encoding="utf-8")


def eval_sentences(part: str = "eval") -> list[str]:
    """Sentences of the evaluation text, for embedding-model figures.

    The sentences (of four words or more, each once) of the train split and then the test split; every
    second one is ``eval`` (1,445 sentences: retrieval agreement is measured on them), the
    others ``train`` (for fine-tuning an encoder without touching the eval sentences).

    Raises:
        UsageError: A part other than ``eval`` or ``train``.
    """
    import re

    from edgesmith.errors import UsageError

    if part not in ("eval", "train"):
        raise UsageError(f"the evaluation sentences have no part {part!r}", hint="use eval or train")
    text = re.sub(r"\s+", " ", eval_text("train") + " " + eval_text("test"))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
    sentences = list(dict.fromkeys(sentences))  # the book repeats a few: each once, or they would leak
    return sentences[1::2] if part == "eval" else sentences[0::2]


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``: images float32 ``(N, 1, 8, 8)`` in ``[0, 1]``, labels int64.

    Raises:
        RuntimeUnavailableError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise missing_extra("sklearn", "dev") from None
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return tuple(train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels))


def dataset_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``(x_train, x_test, y_train, y_test)`` split of a dataset named in a variant's source.

    Raises:
        BadInputError: An unknown dataset name.
    """
    if name == DIGITS:
        return digits_split()
    raise BadInputError(f"no offline dataset named {name!r}", hint=f"known: {DIGITS}")
