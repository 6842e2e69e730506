"""One way to write sizes and durations: binary units named KiB/MiB/GiB, durations with their unit."""

from __future__ import annotations

import pytest

from edgesmith.profiles.fpga import latency_text
from edgesmith.units import format_bytes, format_duration, format_mib


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1024, "1.00 KiB"), (88830 * 1024, "86.7 MiB"), (3 * 2**30, "3.00 GiB"),
    (None, "—"), (-1, "—"), (float("nan"), "—"),
])
def test_bytes_are_written_in_the_largest_binary_unit(n, text):
    assert format_bytes(n) == text


def test_peak_memory_in_mib_reads_like_a_size():
    assert format_mib(29.15) == "29.1 MiB"
    assert format_mib(1536) == "1.50 GiB"
    assert format_mib(None) == "—"  # unknown, never 0


@pytest.mark.parametrize("ms, text", [
    (0.000185, "185 ns"), (0.000245, "245 ns"), (0.0785, "78.5 us"), (12.34, "12.3 ms"), (4200, "4.20 s"),
    (None, "—"),
])
def test_durations_carry_their_unit(ms, text):
    assert format_duration(ms) == text


def test_hls_latency_is_one_number_per_sample_and_per_batch():
    # export prints one sample; profile's table holds the golden batch: both in one sentence, one unit
    assert latency_text(37, 5.0) == "37 cycles = 185 ns per sample at a 5 ns clock"
    assert latency_text(37, 5.0, batch=4, interval_cycles=4) == (
        "37 cycles = 185 ns per sample at a 5 ns clock; a batch of 4 (a new sample every 4 cycles): "
        "49 cycles = 245 ns")
