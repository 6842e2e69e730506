"""The zoo: backbone options in references, ``models list --details`` against the papers."""

from __future__ import annotations

import json

import pytest
from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.errors import UsageError
from edgesmith.models.zoo import ZOO, parse_zoo_reference, scale_stages

BACKBONES = [n for n in ZOO.names() if ZOO.get(n).build is not None]


def test_every_backbone_is_registered():
    assert len(BACKBONES) == 10
    assert {"efficientformer-l1", "efficientformer-v2-s0", "lsnet-t"} <= set(BACKBONES)


def test_details_match_the_papers(capsys):
    """Acceptance 1: params within 1% and MACs within 5% of each paper's figure, as the CLI prints them."""
    assert main(["models", "list", "--details", "--json", "efficientformer-*", "lsnet_*"]) == 0
    rows = {r["name"].removeprefix("zoo:"): r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(BACKBONES)
    for name in BACKBONES:
        row = rows[name]
        assert row["input"] == "1x3x224x224"
        assert abs(row["params"] - row["paper_params"]) / row["paper_params"] < 0.01, row
        assert abs(row["macs"] - row["paper_macs"]) / row["paper_macs"] < 0.05, row


def test_options_in_the_reference():
    variant = es.load("zoo:lsnet_t:num_classes=7,image_size=64,batch=2")
    assert variant.name == "lsnet-t"
    assert variant.inputs[0].shape == (2, 3, 64, 64) and variant.inputs[0].dynamic == {0: "batch"}
    assert variant.run()["logits"].shape == (2, 7)
    assert variant.source["reference"] == "zoo:lsnet-t:num_classes=7,image_size=64,batch=2"
    entry, options = parse_zoo_reference("efficientformer-v2-s0")
    assert entry.name == "efficientformer-v2-s0" and options.image_size == 224


@pytest.mark.parametrize("ref, match", [
    ("lsnet-t:classes=3", "classes"),
    ("lsnet-t:image_size=big", "image_size"),
    ("lsnet-t:num_classes=0", "num_classes"),
    ("digits-cnn:batch=2", "takes no options"),
    ("lsnet-x", "lsnet-t"),  # unknown model: the known ones are listed
])
def test_bad_references(ref, match):
    with pytest.raises(UsageError, match=match):
        parse_zoo_reference(ref)


def test_scale_stages():
    assert scale_stages([64, 128, 256, 384], [0, 2, 8, 10]) == (None, None)
    assert scale_stages([64, 128, 256, 384], [0, 2, 8, 10], 0.25, 0.1) == ([16, 32, 64, 96], [0, 1, 1, 1])
    assert scale_stages([48], [3], 0.1, 2.0) == ([8], [6])


def test_unmatched_pattern(capsys):
    assert main(["models", "list", "nothing-*"]) == 2
    assert "nothing-*" in capsys.readouterr().err
