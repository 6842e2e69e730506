"""TensorRT's restrictions on single ONNX nodes, as named checks.

The support table (``tensorrt_ops.yaml``) names, per op, the checks that apply
(``rules:``); each check here registers into :data:`RULES` under that name and
returns why TensorRT would refuse the node, or None. The support check
(:func:`edgesmith.export.tensorrt.support.check_onnx`) imports this module and
runs them.
"""

from __future__ import annotations

from typing import Callable

from edgesmith.registry import OpTable

# rule name (as the table's ``rules`` give it) -> check(node, constants, used names) -> reason or None
RULES: OpTable = OpTable("TensorRT's support check", "check", key="rule",
                         hint="name a check of edgesmith/export/tensorrt/rules.py in tensorrt_ops.yaml")


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _input_constant(index: int, what: str) -> Callable:
    def rule(node, consts, used):
        if len(node.input) > index and node.input[index] and node.input[index] not in consts:
            return f"its {what} input {node.input[index]!r} must be a constant (an initializer); fold it first"
        return None

    return rule


@RULES.op("pool_2d_or_3d")
def _pool_2d_or_3d(node, consts, used):
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        return f"only 2-D or 3-D pooling is supported, this one is {len(kernel)}-D"
    return None


@RULES.op("no_dilation")
def _no_dilation(node, consts, used):
    dilations = _attr(node, "dilations", [])
    if any(d != 1 for d in dilations):
        return f"dilations {list(dilations)} are not supported (all ones only)"
    return None


@RULES.op("no_second_output")
def _no_second_output(node, consts, used):
    if len(node.output) > 1 and any(o and o in used for o in node.output[1:]):
        return "only its first output is supported, and a later one is used"
    return None


@RULES.op("topk_sorted_small_k")
def _topk(node, consts, used):
    if _attr(node, "sorted", 1) != 1:
        return "sorted=0 is not supported"
    k = consts.get(node.input[1]) if len(node.input) > 1 else None
    if k is None:
        return "its K input must be a constant"
    if int(k.reshape(-1)[0]) >= 3840:
        return f"K={int(k.reshape(-1)[0])} is too large (TensorRT takes K < 3840)"
    return None


@RULES.op("no_reduction")
def _no_reduction(node, consts, used):
    reduction = _text(_attr(node, "reduction", b"none"))
    return None if reduction == "none" else f"reduction={reduction!r} is not supported"


@RULES.op("dropout_inference")
def _dropout_inference(node, consts, used):
    if len(node.input) > 2 and node.input[2]:
        mode = consts.get(node.input[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return "training_mode must be a constant false (export the model in eval mode)"
    return None


@RULES.op("dense_numeric_constant")
def _dense_numeric_constant(node, consts, used):
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return f"attribute {bad[0]!r} is not supported" if bad else None


_RESIZE = {"coordinate_transformation_mode": ({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                               "asymmetric", "align_corners"}, "half_pixel"),
           "mode": ({"nearest", "linear"}, "nearest"),
           "nearest_mode": ({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}, "round_prefer_floor"),
           "keep_aspect_ratio_policy": ({"stretch"}, "stretch")}


@RULES.op("resize_modes")
def _resize_modes(node, consts, used):
    for name, (allowed, default) in _RESIZE.items():
        value = _text(_attr(node, name, default))
        if value not in allowed:
            return f"{name}={value!r} is not supported (TensorRT takes {', '.join(sorted(allowed))})"
    if _attr(node, "antialias", 0):
        return "antialias=1 is not supported"
    return None


@RULES.op("lstm_layout")
def _lstm_layout(node, consts, used):
    if _attr(node, "input_forget", 0) or _attr(node, "layout", 0):
        return "input_forget and layout must be 0"
    return None


@RULES.op("zero_point_zero")
def _zero_point_zero(node, consts, used):
    if len(node.input) > 2 and node.input[2]:
        zp = consts.get(node.input[2])
        if zp is None or zp.any():
            return "its zero point must be a constant zero (TensorRT quantizes symmetrically)"
    return None


_AXES_INDEX = {"Slice": 3, "Pad": 3}  # the others (Squeeze, Unsqueeze, Reduce*) take axes as input 1


@RULES.op("axes_input_constant")
def _axes_constant(node, consts, used):
    return _input_constant(_AXES_INDEX.get(node.op_type, 1), "axes")(node, consts, used)


RULES.op("axis_input_constant")(_input_constant(1, "axis"))
RULES.op("depth_input_constant")(_input_constant(1, "depth"))
