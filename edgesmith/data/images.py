"""Labelled image data for passes that train (``distill``): an image folder or an ``.npz``.

Image folder: one sub-folder per class (sorted names are the class indices), images
of any format Pillow reads; they are converted to the model's channels (L or RGB),
resized to its input size and scaled to ``[0, 1]``.

``.npz``: ``x_train`` / ``x_test`` (and ``y_train`` / ``y_test`` for labels), or a
single ``x`` (or ``images``) with optional ``y`` (or ``labels``). Arrays are
float images already in the model's input layout ``(N, C, H, W)``.

Data without a test split is split once, by a seeded permutation, so a resumed
run holds out the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, require

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class ImageData:
    """Train and test images in the model's input layout, labels where known.

    Attributes:
        x_train, x_test: float32 ``(N, C, H, W)``.
        y_train, y_test: int64 ``(N,)`` or None when the data has no labels.
        classes: Class names (folder names), or None.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    classes: list[str] | None = None


def load_image_data(path: str | Path, shape: tuple[int, int, int], test_fraction: float = 0.2,
                    seed: int = 0) -> ImageData:
    """Read DATA for a model taking ``(C, H, W)`` images.

    Args:
        path: An image folder or an ``.npz`` file.
        shape: The model's ``(C, H, W)``.
        test_fraction: Held out for testing when the data has no test split.
        seed: Seed of that split.

    Raises:
        BadInputError: Missing data, no images, arrays of another shape.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"data {path} does not exist", hint="give an image folder or an .npz file")
    if path.is_dir():
        x, y, classes = _read_folder(path, shape)
        parts = _split(x, y, test_fraction, seed)
        return ImageData(*parts, classes=classes)
    if path.suffix != ".npz":
        raise BadInputError(f"data {path} is neither a folder nor an .npz file",
                            hint="give an image folder (one sub-folder per class) or an .npz")
    from edgesmith.arrays import load_arrays

    arrays = load_arrays(path, "data")
    if "x_train" in arrays:
        if "x_test" not in arrays:
            raise BadInputError(f"{path} has x_train but no x_test", hint="add x_test, or give one array x")
        data = ImageData(arrays["x_train"], arrays.get("y_train"), arrays["x_test"], arrays.get("y_test"))
    else:
        key = next((k for k in ("x", "images") if k in arrays), None)
        if key is None:
            raise BadInputError(f"{path} has arrays {sorted(arrays)}, none of x, images or x_train",
                                hint="store the images as x (and labels as y)")
        labels = arrays.get("y", arrays.get("labels"))
        data = ImageData(*_split(arrays[key], labels, test_fraction, seed))
    for name in ("x_train", "x_test"):
        x = getattr(data, name)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise BadInputError(f"{path}: {name} has shape {x.shape}, the model takes (N, {', '.join(map(str, shape))})",
                                hint="store images in the model's input layout (N, C, H, W)")
        setattr(data, name, np.ascontiguousarray(x, dtype=np.float32))
    for name in ("y_train", "y_test"):
        y = getattr(data, name)
        if y is not None:
            setattr(data, name, np.asarray(y).astype(np.int64).reshape(-1))
    return data


def _split(x, y, fraction: float, seed: int):
    if not 0 < fraction < 1:
        raise BadInputError(f"test fraction {fraction} must be between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, round(len(x) * fraction))
    test, train = order[:n_test], order[n_test:]
    if len(train) == 0:
        raise BadInputError(f"only {len(x)} images: too few to hold out a test split")
    pick = (lambda a, idx: None if a is None else a[idx])
    return x[train], pick(y, train), x[test], pick(y, test)


def _read_folder(root: Path, shape):
    image = require("PIL.Image", "images")
    channels, height, width = shape
    if channels not in (1, 3):
        raise BadInputError(f"the model takes {channels}-channel images; an image folder gives 1 or 3",
                            hint="store the data as an .npz in the model's layout")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise BadInputError(f"{root} has no class sub-folders", hint="put each class's images in root/CLASS/")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((width, height), image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except OSError as exc:
                raise BadInputError(f"cannot read image {file}: {exc}") from None
            xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise BadInputError(f"no images under {root}", hint=f"supported: {', '.join(sorted(IMAGE_SUFFIXES))}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes
