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


# Figures outside 1% (params) / 5% (MACs) of the paper's *rounded* figure, yet inside its rounding:
# V2-S0 counts 3.546M against "3.5M"; LSNet-T/S have 0.315/0.537 GMACs against "0.3G"/"0.5G". Each
# matches its upstream architecture's exact parameter count (tests/models/test_efficientformer.py,
# test_lsnet.py). Listed so that any other drift fails.
WITHIN_ROUNDING = {("efficientformer-v2-s0", "params"): 0.05e6, ("lsnet-s", "macs"): 0.05e9,
                   ("lsnet-t", "macs"): 0.05e9}


def test_details_match_the_papers(capsys):
    """Acceptance 1: params within 1% and MACs within 5% of each paper's figure, as the CLI prints them."""
    assert main(["models", "list", "--details", "--json", "efficientformer-*", "lsnet_*"]) == 0
    rows = {r["name"].removeprefix("zoo:"): r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(BACKBONES)
    outside = {}
    for name in BACKBONES:
        row = rows[name]
        assert row["input"] == "1x3x224x224"
        for what, ours, paper, tol in (("params", row["params_as_paper"], row["paper_params"], 0.01),
                                       ("macs", row["macs"], row["paper_macs"], 0.05)):
            if abs(ours - paper) > tol * paper:
                outside[(name, what)] = abs(ours - paper)
    assert set(outside) == set(WITHIN_ROUNDING), outside
    for key, diff in outside.items():
        assert diff <= WITHIN_ROUNDING[key], (key, diff)


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
