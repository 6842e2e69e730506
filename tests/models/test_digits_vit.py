"""The zoo's transformer classifier: loads, matches its card's accuracy, exports with parity."""

from __future__ import annotations

import json

from edgesmith import api as es
from edgesmith.models.zoo import digits_vit
from edgesmith.data.datasets import digits_split
from edgesmith.training.loop import accuracy


def test_digits_vit_matches_its_card_and_exports(tmp_path):
    variant = es.load("zoo:digits-vit")
    assert variant.outputs[0].shape == (4, 10) and variant.task == "classifier"
    _, x_test, _, y_test = digits_split()
    card = json.loads(digits_vit.CARD_PATH.read_text())
    got = accuracy(variant.module, {"image": x_test}, y_test, variant)
    assert abs(got - card["test_accuracy"]) < 0.005, (got, card["test_accuracy"])
    assert sum(p.numel() for p in variant.module.parameters()) == card["params"]
    bundle, parity = es.export(variant, tmp_path, target="onnx")
    assert parity.passed, parity.summary()
