"""The one registry: registration, lookup errors, broken plugins, and every registered entry."""

from __future__ import annotations

import importlib.metadata

import pytest

from edgesmith.errors import UsageError
from edgesmith.export import EXPORTERS
from edgesmith.models.zoo import ZOO
from edgesmith.optimize import PASSES
from edgesmith.registry import Registry
from edgesmith.runtimes import RUNTIMES


def test_register_get_names():
    reg: Registry[int] = Registry("widget")
    assert reg.register("b")(2) == 2  # the decorator returns the object unchanged
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.get("b") == 2
    assert reg.names() == ["a", "b"]
    assert list(reg) == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_duplicate_name_raises():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="'a'"):
        reg.register("a")(2)
    assert reg.get("a") == 1


def test_a_class_registers_under_its_own_name():
    reg: Registry[type] = Registry("widget")

    @reg.register
    class Gadget:
        name = "gadget"

    assert reg.get("gadget") is Gadget  # the key is written once, in the class
    with pytest.raises(ValueError, match="'gadget'"):
        reg.register(type("Again", (), {"name": "gadget"}))
    with pytest.raises(ValueError, match="no name"):
        reg.register(type("Nameless", (), {}))


def test_unknown_name_lists_known_ones():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    reg.register("beta")(2)
    with pytest.raises(UsageError) as info:
        reg.get("gamma")
    text = str(info.value)
    assert "gamma" in text and "alpha" in text and "beta" in text
    assert info.value.exit_code == 2


class _EntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    def __init__(self, name, obj=None, error=None):
        self.name = name
        self._obj = obj
        self._error = error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_broken_plugin_is_reported_not_dropped(monkeypatch):
    groups = []

    def fake_entry_points(group=None):
        groups.append(group)
        return [
            _EntryPoint("good", obj=42),
            _EntryPoint("broken", error=ImportError("no module named 'frobnicate'")),
        ]

    # registry.py calls metadata.entry_points, i.e. this very module attribute
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    reg: Registry[int] = Registry("widget", "edgesmith.widgets")
    reg.register("builtin")(1)

    assert reg.get("good") == 42
    assert groups == ["edgesmith.widgets"]
    assert "broken" not in reg.names()
    assert "frobnicate" in reg.broken()["broken"]
    with pytest.raises(UsageError) as info:
        reg.get("broken")
    text = str(info.value)
    assert "broken" in text and "ImportError" in text and "frobnicate" in text
    assert "unknown" not in text  # it is known, just broken


def test_registry_without_group_ignores_entry_points(monkeypatch):
    def boom(group=None):
        raise AssertionError("entry points read for a registry without a group")

    monkeypatch.setattr(importlib.metadata, "entry_points", boom)
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    assert reg.names() == ["a"]


REGISTRIES = {"pass": PASSES, "exporter": EXPORTERS, "runtime": RUNTIMES, "zoo": ZOO}


@pytest.mark.parametrize(
    "registry, name",
    [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.names()],
)
def test_every_registered_entry_imports(registry, name):
    reg = REGISTRIES[registry]
    entry = reg.get(name)
    assert entry is not None
    if registry in ("pass", "exporter", "runtime"):
        assert entry.name == name  # the registry key equals the class's own name
    else:
        assert entry.name == name and callable(entry.load)


def test_registries_are_not_empty_and_plugins_are_not_broken():
    for reg in REGISTRIES.values():
        assert reg.names()
        assert reg.broken() == {}
    assert {"onnx", "torch"} <= set(EXPORTERS.names())
    assert {"onnxruntime", "torch"} <= set(RUNTIMES.names())
    assert "reparam" in PASSES.names()
    assert "digits-cnn" in ZOO.names()


def test_op_table_registers_by_decorator_and_refuses_duplicates():
    from edgesmith.registry import OpTable

    table: OpTable = OpTable("Widget", "translation")

    @table.op("aten.add.Tensor", "aten.add.Scalar", sizes=True)
    def add(a, b):
        return a + b

    assert table.get("aten.add.Scalar") is add and table.info("aten.add.Tensor") == {"sizes": True}
    assert list(table) == ["aten.add.Tensor", "aten.add.Scalar"] and len(table) == 2
    assert "aten.add.Tensor" in table and "aten.mul.Tensor" not in table
    with pytest.raises(ValueError, match="'aten.add.Tensor'"):
        table.op("aten.add.Tensor")(add)


def test_op_table_lookup_names_the_op_and_the_target():
    from edgesmith.errors import BadInputError, exit_code_for
    from edgesmith.registry import OpTable

    table: OpTable = OpTable("Widget", "translation", hint="add one")
    with pytest.raises(BadInputError) as info:
        table.get("aten.det.default")
    assert str(info.value).startswith("Widget has no translation for op 'aten.det.default'")
    assert info.value.hint == "add one" and exit_code_for(info.value) == 3
