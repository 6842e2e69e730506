"""Elementwise MIL ops: binary arithmetic and comparisons, unary math, activations, casts.

Semantics follow the ``value_inference`` methods and docstrings of
``coremltools/converters/mil/mil/ops/defs/iOS15/{elementwise_binary,elementwise_unary,activation}.py``
(numpy broadcasting; ``inverse``, ``log`` and ``rsqrt`` add their ``epsilon``;
``round`` rounds half to even; ``gelu`` has three modes).
"""

from __future__ import annotations

import numpy as np

from edgesmith.runtimes.coreml.mil.table import OPS

# MIL dtype names (the ``cast`` op's ``dtype`` input) -> numpy
CAST_DTYPES = {
    "bool": np.bool_, "fp16": np.float16, "fp32": np.float32, "fp64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, to within 1.5e-7 (Abramowitz & Stegun 7.1.26), computed in float64."""
    z = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(z))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(z) * (1.0 - poly * np.exp(-z * z))


def sigmoid_(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))


# ---------------------------------------------------------------- binary

OPS.op("add")(lambda x, y: np.add(x, y))
OPS.op("sub")(lambda x, y: np.subtract(x, y))
OPS.op("mul")(lambda x, y: np.multiply(x, y))
OPS.op("real_div")(lambda x, y: np.true_divide(x, y))
OPS.op("floor_div")(lambda x, y: np.floor_divide(x, y))
OPS.op("mod")(lambda x, y: np.mod(x, y))
OPS.op("pow")(lambda x, y: np.power(x, y))
OPS.op("maximum")(lambda x, y: np.maximum(x, y))
OPS.op("minimum")(lambda x, y: np.minimum(x, y))
OPS.op("equal")(lambda x, y: np.equal(x, y))
OPS.op("not_equal")(lambda x, y: np.not_equal(x, y))
OPS.op("less")(lambda x, y: np.less(x, y))
OPS.op("less_equal")(lambda x, y: np.less_equal(x, y))
OPS.op("greater")(lambda x, y: np.greater(x, y))
OPS.op("greater_equal")(lambda x, y: np.greater_equal(x, y))
OPS.op("logical_and")(lambda x, y: np.logical_and(x, y))
OPS.op("logical_or")(lambda x, y: np.logical_or(x, y))
OPS.op("logical_xor")(lambda x, y: np.logical_xor(x, y))
OPS.op("logical_not")(lambda x: np.logical_not(x))
OPS.op("select")(lambda cond, a, b: np.where(cond, a, b))

# ---------------------------------------------------------------- unary math

OPS.op("abs")(lambda x: np.abs(x))
OPS.op("sign")(lambda x: np.sign(x))
OPS.op("ceil")(lambda x: np.ceil(x))
OPS.op("floor")(lambda x: np.floor(x))
OPS.op("round")(lambda x: np.round(x))
OPS.op("sqrt")(lambda x: np.sqrt(x))
OPS.op("square")(lambda x: np.square(x))
OPS.op("exp")(lambda x: np.exp(x))
OPS.op("exp2")(lambda x: np.exp2(x))
OPS.op("sin")(lambda x: np.sin(x))
OPS.op("cos")(lambda x: np.cos(x))
OPS.op("tan")(lambda x: np.tan(x))
OPS.op("sinh")(lambda x: np.sinh(x))
OPS.op("cosh")(lambda x: np.cosh(x))
OPS.op("tanh")(lambda x: np.tanh(x))
OPS.op("asin")(lambda x: np.arcsin(x))
OPS.op("acos")(lambda x: np.arccos(x))
OPS.op("atan")(lambda x: np.arctan(x))
OPS.op("atanh")(lambda x: np.arctanh(x))
OPS.op("erf")(lambda x: erf(x))
OPS.op("inverse")(lambda x, epsilon=1e-4: 1.0 / (x + epsilon))
OPS.op("log")(lambda x, epsilon=1e-45: np.log(x + epsilon))
OPS.op("rsqrt")(lambda x, epsilon=1e-12: 1.0 / np.sqrt(x + epsilon))
OPS.op("clip")(lambda x, alpha, beta: np.minimum(np.maximum(x, alpha), beta))
OPS.op("threshold")(lambda x, alpha: np.maximum(x, alpha))


@OPS.op("cast")
def cast(x, dtype):
    """``x.astype(dtype)``; float to integer truncates toward zero, as numpy (and coremltools) does."""
    return np.asarray(x).astype(CAST_DTYPES[str(dtype)])


# ---------------------------------------------------------------- activations

OPS.op("relu")(lambda x: np.maximum(x, 0))
OPS.op("relu6")(lambda x: np.clip(x, 0, 6))
OPS.op("sigmoid")(lambda x: sigmoid_(x))
OPS.op("silu")(lambda x: x * sigmoid_(x))
OPS.op("softplus")(lambda x: np.logaddexp(0.0, x))
OPS.op("leaky_relu")(lambda x, alpha=0.01: np.where(x >= 0, x, alpha * x))
OPS.op("elu")(lambda x, alpha=1.0: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))))
OPS.op("sigmoid_hard")(lambda x, alpha=0.2, beta=0.5: np.clip(alpha * x + beta, 0.0, 1.0))
OPS.op("thresholded_relu")(lambda x, alpha=1.0: np.where(x > alpha, x, 0))


@OPS.op("gelu")
def gelu(x, mode="EXACT"):
    """GELU in the ``EXACT``, ``TANH_APPROXIMATION`` or ``SIGMOID_APPROXIMATION`` form."""
    x = np.asarray(x, np.float32)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid_(1.702 * x)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


@OPS.op("prelu")
def prelu(x, alpha):
    """Leaky ReLU with one slope per channel (axis 1)."""
    a = np.asarray(alpha).reshape((1, -1) + (1,) * (np.ndim(x) - 2))
    return np.where(x >= 0, x, a * x)
