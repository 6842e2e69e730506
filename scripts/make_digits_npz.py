"""Write the scikit-learn digits split of ``zoo:digits-cnn`` as an ``.npz`` for ``--data``.

Usage::

    python scripts/make_digits_npz.py digits.npz

Arrays: ``x_train``/``x_test`` float32 ``(N, 1, 8, 8)`` in ``[0, 1]`` (the
teacher's input), ``y_train``/``y_test`` int64 labels. The split is the one the
teacher was trained on (stratified 80/20, ``random_state=0``), so its test
images are unseen by both teacher and student.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train_digits_cnn import load_split  # noqa: E402


def main(out: str) -> None:
    x_train, x_test, y_train, y_test = load_split()
    np.savez_compressed(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {out}: {len(x_train)} train, {len(x_test)} test images")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
