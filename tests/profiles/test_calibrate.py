"""The host calibration's per-class figure is labelled for what it is: a speed factor, not a share."""

from __future__ import annotations

from edgesmith.cli import main
from edgesmith.profiles import calibrate
from edgesmith.profiles.cost import CLASSES
from edgesmith.profiles.roofline import Calibration


def test_a_factor_above_one_is_not_called_a_share_of_the_roofline(monkeypatch, capsys):
    # what a 2-core EPYC measured: pools and elementwise ops beat the DRAM roofline from cache
    efficiency = {c: 1.0 for c in CLASSES} | {"pool": 3.36, "elementwise": 2.85}
    cal = Calibration(peak_gflops=180.0, bandwidth_gbs=37.0, efficiency=efficiency, op_overhead_us=0.4,
                      kernel_floor_us=8.0, run_overhead_us=7.0, spread=0.09, threads=0)
    monkeypatch.setattr(calibrate, "host_calibration", lambda *a, **k: cal)
    capsys.readouterr()
    assert main(["devices", "calibrate"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "share" not in out
    assert "3.36" in out and "2.85" in out
    assert "above 1 = faster than it (the op's data stayed in cache)" in out
