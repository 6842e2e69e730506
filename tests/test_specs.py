"""Tensor signatures: ``--input`` parsing, manifest round trip, descriptions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesmith.errors import UsageError
from edgesmith.specs import TensorSpec, example_array, parse_input_spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("image:1x3x224x224:float32", TensorSpec("image", (1, 3, 224, 224), "float32")),
        ("image:1x3x224x224", TensorSpec("image", (1, 3, 224, 224), "float32")),
        ("input_ids:1x128:int64", TensorSpec("input_ids", (1, 128), "int64")),
        ("x:7:bool", TensorSpec("x", (7,), "bool")),
        ("  pixel_values:2x8:float16 ", TensorSpec("pixel_values", (2, 8), "float16")),
    ],
)
def test_parse_input_spec_good(text, expected):
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize(
    "text, named",
    [
        ("image:1x3:complex64", "complex64"),  # unknown dtype
        ("image:1x0x8", "image:1x0x8"),  # zero dimension
        ("image:0", "image:0"),
        ("image", "image"),  # no shape
        ("image:1x3x:float32", "image:1x3x"),  # dangling x
        ("image:1xx3", "1xx3"),  # empty dimension
        ("image:x", "image:x"),
        ("image:-1x3", "-1x3"),
        ("1image:1x3", "1image"),  # name must be an identifier
        ("image:1x3:float32:extra", "extra"),
        ("", ""),
        ("garbage!!", "garbage!!"),
    ],
)
def test_parse_input_spec_bad(text, named):
    with pytest.raises(UsageError) as info:
        parse_input_spec(text)
    assert named in str(info.value)
    assert info.value.exit_code == 2


def test_tensor_spec_round_trip():
    spec = TensorSpec("input_ids", (2, 128), "int64", {0: "batch", 1: "sequence"})
    d = spec.to_dict()
    assert d == {"name": "input_ids", "shape": [2, 128], "dtype": "int64",
                 "dynamic_axes": {"0": "batch", "1": "sequence"}}
    back = TensorSpec.from_dict(json.loads(json.dumps(d)))  # through JSON: axis keys become strings
    assert back == spec
    assert isinstance(back.shape, tuple) and all(isinstance(k, int) for k in back.dynamic)
    static = TensorSpec("x", (3,), "float32")
    assert TensorSpec.from_dict(json.loads(json.dumps(static.to_dict()))) == static


def test_describe_shows_dynamic_names():
    spec = TensorSpec("input_ids", (2, 128), "int64", {0: "batch", 1: "sequence"})
    assert spec.describe() == "input_ids: batchxsequence int64"
    assert TensorSpec("image", (4, 1, 8, 8), "float32", {0: "batch"}).describe() == "image: batchx1x8x8 float32"
    assert TensorSpec("image", (4, 1, 8, 8)).describe() == "image: 4x1x8x8 float32"
    assert TensorSpec("s", ()).describe() == "s: scalar float32"


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int8", "uint8", "bool"])
def test_example_array_matches_spec_and_is_deterministic(dtype):
    spec = TensorSpec("x", (2, 3, 4), dtype)
    a = example_array(spec, seed=1)
    assert a.shape == (2, 3, 4) and a.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, example_array(spec, seed=1))
