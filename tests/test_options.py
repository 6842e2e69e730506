"""Typed options: text and typed values fill the same dataclass; every pass option has its help."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pytest

from edgesmith.errors import UsageError
from edgesmith.optimize import PASSES, parse_pass_spec
from edgesmith.options import build_options, option, option_help


@dataclasses.dataclass
class _Options:
    data: str = option("", "Where the data is.")
    steps: int = option(10, "Steps.")
    lr: float = option(1e-3, "Learning rate.")
    resume: bool = option(False, "Continue.")
    limit: Optional[int] = option(None, "At most this many.")


def test_text_is_converted_to_the_field_type():
    o = build_options(_Options, {"data": "x.npz", "steps": "5", "lr": "0.5", "resume": "yes", "limit": "none"}, "t")
    assert o == _Options("x.npz", 5, 0.5, True, None)


def test_typed_values_are_taken_as_they_are():
    o = build_options(_Options, {"data": Path("d") / "x.npz", "steps": 5, "lr": 2, "resume": True, "limit": None}, "t")
    assert o == _Options(str(Path("d") / "x.npz"), 5, 2.0, True, None)
    assert type(o.lr) is float and o.resume is True


@pytest.mark.parametrize("key,value,text", [
    ("steps", 2.5, "t: steps=2.5 is not a valid int"),  # never truncated
    ("steps", True, "t: steps=True is not a valid int"),
    ("resume", 1, "t: resume=1 is not a valid bool"),
    ("steps", "many", "t: steps='many' is not a valid int"),
])
def test_a_value_of_the_wrong_type_is_refused(key, value, text):
    with pytest.raises(UsageError, match="is not a valid") as info:
        build_options(_Options, {key: value}, "t")
    assert str(info.value) == text


def test_help_comes_from_the_field_metadata():
    assert option_help(_Options) == {"data": "Where the data is.", "steps": "Steps.", "lr": "Learning rate.",
                                     "resume": "Continue.", "limit": "At most this many."}
    assert dataclasses.fields(_Options)[0].metadata["help"] == "Where the data is."


@pytest.mark.parametrize("name", PASSES.names())
def test_every_pass_option_has_help(name):
    helps = option_help(PASSES.get(name).Options)
    assert helps and all(helps.values()), [k for k, v in helps.items() if not v]


def test_typed_defaults_fill_a_pass_spec():
    step = parse_pass_spec("distill:epochs=3", {"data": Path("digits.npz"), "resume": True, "unused": 1})
    assert (step.options.data, step.options.resume, step.options.epochs) == ("digits.npz", True, 3)
