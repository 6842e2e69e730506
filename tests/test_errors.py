"""Exit codes of the error hierarchy, and messages that carry their hint."""

from __future__ import annotations

import pytest

from edgesmith.errors import (
    BadInputError, EdgesmithError, OutputExistsError, ParityError, RuntimeUnavailableError, UsageError,
    exit_code_for, missing_extra,
)


@pytest.mark.parametrize(
    "exc, code",
    [
        (UsageError("unknown target 'x'"), 2),
        (BadInputError("model m.pt2 does not exist"), 3),
        (ParityError("onnx export failed parity", result=None), 4),
        (RuntimeUnavailableError("coremltools is not installed"), 5),
        (OutputExistsError("out/m.onnx already exists"), 3),
        (Exception("a bug"), 1),
        (KeyError("a bug"), 1),
    ],
)
def test_exit_code_for(exc, code):
    assert exit_code_for(exc) == code


def test_output_exists_is_bad_input():
    assert issubclass(OutputExistsError, BadInputError)
    for cls in (UsageError, BadInputError, ParityError, RuntimeUnavailableError, OutputExistsError):
        assert issubclass(cls, EdgesmithError)


def test_str_includes_hint():
    exc = UsageError("unknown pass 'foo'", hint="choose one of: reparam")
    assert "unknown pass 'foo'" in str(exc)
    assert "choose one of: reparam" in str(exc)
    assert exc.message == "unknown pass 'foo'" and exc.hint == "choose one of: reparam"
    assert str(BadInputError("no hint")) == "no hint"


def test_parity_error_keeps_result_and_hint():
    sentinel = object()
    exc = ParityError("failed", sentinel, hint="try fp32")
    assert exc.result is sentinel
    assert "try fp32" in str(exc)


def test_missing_extra_gives_pip_line():
    exc = missing_extra("coremltools", "coreml")
    assert isinstance(exc, RuntimeUnavailableError) and exit_code_for(exc) == 5
    assert "coremltools" in str(exc)
    assert "pip install 'edgesmith[coreml]'" in str(exc)
