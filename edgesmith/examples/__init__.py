"""The example recipes and data that ship with edgesmith, for ``edgesmith examples list`` / ``copy``.

The README's commands refer to ``examples/``; ``edgesmith examples copy examples``
makes that folder wherever the user stands, from the installed package.
"""

from __future__ import annotations

from pathlib import Path

from edgesmith.errors import OutputExistsError

HERE = Path(__file__).parent
DIGITS_NPZ = "digits.npz"


def examples() -> dict[str, str]:
    """Each shipped example's file name and what it is (its opening comment, without the command lines)."""
    found = {p.name: _about(p.read_text(encoding="utf-8")) for p in sorted(HERE.glob("*.yaml"))}
    found[DIGITS_NPZ] = ("the scikit-learn digits split zoo:digits-cnn was trained on, for --data "
                         "(written by copy; needs scikit-learn)")
    return found


def _about(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("#   "):  # an indented line is a command to run it
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def write_digits_npz(path: str | Path) -> tuple[int, int]:
    """Write the digits split of ``zoo:digits-cnn`` as an ``.npz`` for ``--data``.

    Arrays ``x_train``/``x_test`` float32 ``(N, 1, 8, 8)`` in ``[0, 1]`` (the teacher's
    input) and ``y_train``/``y_test`` int64 labels, split as the teacher was trained
    (stratified 80/20, ``random_state=0``): its test images are unseen by teacher and student.

    Args:
        path: The ``.npz`` to write.

    Returns:
        ``(train images, test images)``.

    Raises:
        RuntimeUnavailableError: scikit-learn is not installed.
    """
    import numpy as np

    from edgesmith.data.datasets import digits_split

    x_train, x_test, y_train, y_test = digits_split()
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return len(x_train), len(x_test)


def copy_examples(dest: str | Path, force: bool = False) -> list[Path]:
    """Copy the example recipes into ``dest`` and write ``digits.npz`` beside them.

    Args:
        dest: The folder (created if missing).
        force: Overwrite files that exist there.

    Returns:
        The files written.

    Raises:
        OutputExistsError: A file exists and ``force`` was not given (nothing is written then).
        RuntimeUnavailableError: scikit-learn is missing for ``digits.npz`` (the recipes are written).
    """
    dest = Path(dest)
    names = list(examples())
    existing = [n for n in names if (dest / n).exists()]
    if existing and not force:
        raise OutputExistsError(f"{dest / existing[0]} exists", hint="pass --force to overwrite, or copy elsewhere")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        if name != DIGITS_NPZ:
            (dest / name).write_bytes((HERE / name).read_bytes())
            written.append(dest / name)
    write_digits_npz(dest / DIGITS_NPZ)
    return [*written, dest / DIGITS_NPZ]
