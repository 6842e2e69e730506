"""The zoo model ``digits-cnn``: committed weights, samples, card and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesmith.models.zoo import digits_cnn

MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def model() -> digits_cnn.DigitsCNN:
    return digits_cnn.build(pretrained=True)


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out split, recomputed here rather than trusted from the card."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    _, x_test, _, y_test = model_selection.train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_test, y_test


@pytest.fixture(scope="module")
def test_accuracy(model, test_split) -> float:
    images, labels = test_split
    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predictions == labels).mean())


def test_weights_load_strictly_and_reach_accuracy(model, test_accuracy):
    assert not model.training
    assert test_accuracy >= MIN_ACCURACY


def test_batchnorm_statistics_are_trained(model):
    # Folding tests need non-default running stats (mean 0, var 1 would hide bugs).
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            assert module.running_mean.abs().max() > 1e-3
            assert (module.running_var - 1).abs().max() > 1e-3


@pytest.mark.parametrize("batch", [1, 5, 100])
def test_example_inputs_shape_and_dtype(batch):
    inputs = digits_cnn.example_inputs(batch)
    assert list(inputs) == ["image"]
    assert inputs["image"].shape == (batch, 1, 8, 8)
    assert inputs["image"].dtype == np.float32
    assert 0.0 <= inputs["image"].min() and inputs["image"].max() <= 1.0


def test_stored_samples_are_classified(model):
    with np.load(digits_cnn.SAMPLES_PATH) as samples:
        images, labels = samples["images"], samples["labels"]
    assert images.shape == (64, 1, 8, 8) and labels.shape == (64,)
    np.testing.assert_array_equal(digits_cnn.example_inputs(64)["image"], images)
    with torch.no_grad():
        predictions = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    assert (predictions == labels).mean() >= MIN_ACCURACY


def test_card_matches_recomputed_accuracy(model, test_accuracy, test_split):
    card = json.loads(digits_cnn.CARD_PATH.read_text())
    assert card["name"] == "digits-cnn"
    assert card["test_samples"] == len(test_split[1])
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert abs(card["test_accuracy"] - test_accuracy) <= 0.005


def test_export_with_dynamic_batch_matches_eager(model):
    example = torch.from_numpy(digits_cnn.example_inputs(2)["image"])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes={"image": {0: batch}})
    exported = program.module()
    for size in (1, 5):
        image = torch.from_numpy(digits_cnn.example_inputs(size)["image"])
        with torch.no_grad():
            expected = model(image)
            actual = exported(image)
        assert actual.shape == (size, 10)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
