"""Typed options: one dataclass per pass or exporter, filled from ``key=value`` text.

The CLI (``-p reparam:check=false``, ``-O opset=20``) and recipes fill the same
dataclasses through :func:`build_options`; values are converted to the field's
type, never rewritten.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from edgesmith.errors import BadInputError, UsageError


def _convert(value: str, kind: Any, key: str, owner: str) -> Any:
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value.lower() in ("none", "null"):
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", str(kind))
        raise UsageError(f"{owner}: {key}={value!r} is not a valid {name}") from None


def build_options(cls: type, values: dict[str, str], owner: str) -> Any:
    """Fill an options dataclass from text values.

    Args:
        cls: The options dataclass.
        values: Field name -> text value.
        owner: What the options belong to, for messages (``pass 'reparam'``).

    Raises:
        UsageError: An unknown key (listing the known ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    converted = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"{owner} has no option {key!r}", hint=f"its options are: {', '.join(fields) or 'none'}")
        converted[key] = _convert(value, hints[key], key, owner)
    return cls(**converted)


def parse_key_values(items: typing.Iterable[str], owner: str) -> dict[str, str]:
    """Split ``key=value`` strings into a dict.

    Raises:
        UsageError: An item without ``=``.
    """
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{owner}: cannot read {item!r}", hint="write key=value")
        out[key.strip()] = value.strip()
    return out


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` of each field, for ``--help`` and ``list`` commands."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else ""
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), repr(default)))
    return rows


def read_yaml_file(path: Any, what: str) -> Any:
    """Parse a user's YAML file (a device file, a recipe).

    Args:
        path: The file.
        what: What it is, for the messages (``device file``, ``recipe``).

    Raises:
        BadInputError: The file cannot be read or is not valid YAML (the first line of the parser's
            message says where).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise BadInputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {bad!r})",
                            hint="save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
