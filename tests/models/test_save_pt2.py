"""A saved variant is a ``.pt2`` file: another name is refused before any work, not written unreadable."""

from __future__ import annotations

import pytest

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.errors import UsageError
from edgesmith.models.loader import save_pt2


@pytest.mark.parametrize("name, hint", [("v", "v.pt2"), ("v.pth", "v.pt2")])
def test_optimize_refuses_an_out_without_pt2_and_writes_nothing(name, hint, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["optimize", "zoo:digits-mlp", "-p", "reparam", "-o", name]) == 2
    err = capsys.readouterr().err
    assert repr(name) in err and f"-o {hint}" in err
    assert list(tmp_path.iterdir()) == []


def test_save_pt2_refuses_and_a_pt2_reads_back(tmp_path):
    variant = es.load("zoo:digits-mlp")
    with pytest.raises(UsageError, match="suffix .pt2"):
        save_pt2(variant, tmp_path / "v")
    path = save_pt2(variant, tmp_path / "v.pt2")
    assert es.load(str(path)).name == variant.name
