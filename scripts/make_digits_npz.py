"""Write the scikit-learn digits split of ``zoo:digits-cnn`` as an ``.npz`` for ``--data``.

Usage::

    python scripts/make_digits_npz.py digits.npz

The same file ``edgesmith examples copy DIR`` writes as ``DIR/digits.npz``
(:func:`edgesmith.examples.write_digits_npz`, which describes the arrays).
"""

from __future__ import annotations

import sys

from edgesmith.examples import write_digits_npz


def main(out: str) -> None:
    train, test = write_digits_npz(out)
    print(f"wrote {out}: {train} train, {test} test images")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
