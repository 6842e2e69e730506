"""The numpy Core ML evaluator, op by op against PyTorch.

Every op in the evaluator's table is claimed by a case: a tiny torch module that
coremltools converts into a program containing that op. Each test converts the
case (once per session), checks the op really is in the program, runs the
program in the evaluator and compares every output with PyTorch's.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("coremltools") is None:  # find, not import: its import is slow and noisy
    pytest.skip("coremltools is not installed", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edgesmith.errors import BadInputError, exit_code_for  # noqa: E402
from edgesmith.runtimes.coreml import native_coreml  # noqa: E402
from edgesmith.runtimes.coreml.mil import OPS, MilProgram  # noqa: E402


class _Fn(nn.Module):
    def __init__(self, fn, modules=()):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, *args):
        return self.fn(self.mods, *args)


def _r(*shape, seed=0, scale=1.0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale)


@dataclass
class Case:
    """A torch module whose Core ML program contains ``ops``.

    Attributes:
        ops: The table ops this case exercises (each must appear in the converted program).
        fn: ``fn(modules, *inputs)`` -> tensor or tuple of tensors.
        inputs: Example inputs.
        modules: Submodules (with weights) used by ``fn``.
        dynamic: ``{input index: axis}`` exported as dynamic (makes shape-computing ops appear).
        target: Minimum deployment target.
        atol: Tolerance against PyTorch.
        loose: ``{output index: atol}`` where Core ML itself deviates from PyTorch.
    """

    ops: tuple[str, ...]
    fn: Callable
    inputs: Callable[[], tuple]
    modules: Callable[[], list] = list
    dynamic: dict[int, int] = field(default_factory=dict)
    target: str = "iOS17"
    atol: float = 2e-5
    loose: dict[int, float] = field(default_factory=dict)


def _prelu():
    m = nn.PReLU(3)
    m.weight.data = torch.tensor([0.1, 0.2, 0.3])
    return [m]


def _bn():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    return [bn.eval()]


class _Cache(nn.Module):
    """A buffer the case writes into: torch.export records the write, coremltools makes it a state."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 6), persistent=False)


CASES: dict[str, Case] = {
    "math": Case(
        ("abs", "sign", "ceil", "floor", "round", "sqrt", "exp", "exp2", "sin", "cos", "tan", "sinh", "cosh",
         "tanh", "asin", "acos", "atan", "atanh", "erf", "log", "rsqrt", "clip", "threshold", "inverse",
         "add", "sub", "mul", "real_div", "floor_div", "pow", "maximum", "minimum",
         "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
         "logical_xor", "logical_not", "select", "cast"),
        lambda m, x, y: (
            x.abs(), x.sign(), x.ceil(), x.floor(), (x * 3).round(), x.abs().sqrt(), x.exp(), torch.exp2(x),
            x.sin(), x.cos(), x.tan(), x.sinh(), x.cosh(), x.tanh(), x.clamp(-0.9, 0.9).asin(),
            x.clamp(-0.9, 0.9).acos(), x.atan(), x.clamp(-0.9, 0.9).atanh(), torch.erf(x), (x.abs() + 1).log(),
            torch.rsqrt(x.abs() + 1), torch.threshold(x, 0.1, 0.1), 1 / (x.abs() + 1),
            x + y, x - y, x * y, x / y, torch.floor_divide(x, y), x.abs() ** y, torch.maximum(x, y),
            torch.minimum(x, y), torch.where(x > 0, x, y),
            *(t.float() for t in (x.round() == y.round(), x.round() != y.round(), x < y, x <= y, x > y, x >= y,
                                  torch.logical_and(x > 0, y > 0), torch.logical_or(x > 0, y > 0),
                                  torch.logical_xor(x > 0, y > 0), torch.logical_not(x > 0)))),
        lambda: (_r(3, 5), _r(3, 5, seed=1) + 3),
        # MIL's inverse computes 1 / (x + epsilon), epsilon 1e-4 by default, and the converter keeps
        # the default: Core ML itself is off by up to 1e-4 there, so the evaluator must be too.
        loose={22: 1.01e-4}),
    "activations": Case(
        ("relu", "relu6", "sigmoid", "silu", "softplus", "leaky_relu", "elu", "sigmoid_hard", "gelu", "softmax",
         "prelu", "thresholded_relu"),
        # not gelu(approximate="tanh"): coremltools 9 converts it from torch.export as EXACT
        lambda m, x, img: (F.relu(x), F.relu6(x * 4), torch.sigmoid(x), F.silu(x), F.softplus(x),
                           F.leaky_relu(x, 0.1), F.elu(x, 0.7), F.hardsigmoid(x), F.gelu(x), F.softmax(x, -1),
                           F.log_softmax(x, 0), m[0](img), F.hardswish(x)),
        lambda: (_r(3, 8, scale=3), _r(2, 3, 4, 4)), _prelu),
    "tensor": Case(
        ("reshape", "transpose", "expand_dims", "squeeze", "concat", "stack", "tile", "slice_by_index", "split",
         "gather", "gather_along_axis", "gather_nd", "scatter_along_axis", "scatter_nd", "fill_like",
         "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_argmax", "reduce_argmin",
         "reduce_l2_norm", "reduce_log_sum_exp", "topk", "argsort", "cumsum", "band_part", "one_hot", "pad",
         "reverse", "scatter"),
        lambda m, x, i, j, img: (
            x.reshape(4, 3), x.permute(1, 0), x.unsqueeze(0), x.unsqueeze(1).squeeze(1), torch.cat([x, x], 0),
            torch.stack([x, x], 1), x.repeat(2, 1), x[1:3, ::2], x[:, 1], x.chunk(2, 1)[0], x.split([1, 3], 1)[1],
            x[i], torch.gather(x, 1, i.view(-1, 1).expand(-1, 4) % 4), F.embedding(i, x), x[i, i % 4],
            x.scatter(1, j, torch.ones_like(x)), x.scatter_add(1, j, x),
            torch.index_put(x, (torch.tensor([0, 2]),), torch.ones(2, 4)),
            x.sum(1), x.mean(0, keepdim=True), x.amax(1), x.amin(0), x.argmax(1).float(), x.argmin(0).float(),
            x.norm(dim=1), torch.logsumexp(x, 1), torch.topk(x, 2, 1)[0], torch.topk(x, 2, 1)[1].float(),
            torch.argsort(x, 1).float(), torch.cumsum(x, 1), torch.tril(x), torch.triu(x, 1),
            F.one_hot(torch.argmax(x, 1), 4).float(),
            F.pad(img, (1, 2)), F.pad(img, (1, 1, 1, 1), mode="reflect"), F.pad(img, (1, 1, 2, 0), mode="replicate"),
            torch.flip(x, [1]), torch.cumprod(x, 1)),
        lambda: (_r(3, 4), torch.tensor([0, 2, 1]), torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 1, 1]]),
                 _r(1, 2, 4, 4))),
    "nn": Case(
        ("linear", "matmul", "conv", "conv_transpose", "crop", "max_pool", "avg_pool", "batch_norm",
         "instance_norm", "layer_norm", "upsample_nearest_neighbor", "upsample_bilinear", "pixel_shuffle",
         "pixel_unshuffle"),
        lambda m, x, img, small: (
            m[0](x), x @ x.T, torch.bmm(x.unsqueeze(0), x.T.unsqueeze(0)),
            m[1](img), m[2](img), m[3](img), m[4](img[:, :, 0]), m[5](small), m[6](small),
            F.max_pool2d(img, 3, 2, 1), F.avg_pool2d(img, 3, 2, 1), F.avg_pool2d(img, 3, 2, 1, count_include_pad=False),
            F.max_pool2d(img, 2, 2, ceil_mode=True), F.avg_pool2d(img, 3, 2, 0, ceil_mode=True),
            F.adaptive_avg_pool2d(img, 1), m[7](small), m[8](small), m[9](small), m[10](small),
            F.interpolate(small, scale_factor=2, mode="nearest"),
            F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False),
            F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=True),
            F.interpolate(small, size=(7, 9), mode="nearest"), F.interpolate(small, size=(7, 9), mode="bilinear"),
            F.pixel_shuffle(small, 2), F.pixel_unshuffle(small, 2)),
        lambda: (_r(3, 4), _r(2, 3, 7, 7), _r(2, 4, 4, 6)),
        lambda: [nn.Linear(4, 5), nn.Conv2d(3, 6, 3, stride=2, padding=1),
                 nn.Conv2d(3, 3, 3, groups=3, dilation=2, padding=2), nn.Conv2d(3, 2, (1, 3), padding="same"),
                 nn.Conv1d(3, 4, 2), nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
                 nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)]
        + _bn() + [nn.InstanceNorm2d(4, affine=True), nn.LayerNorm([6]), nn.GroupNorm(2, 4)]),
    # dynamic axes make the program compute shapes at run time
    "shapes": Case(
        ("shape", "range_1d", "fill", "reduce_prod", "square", "mod", "slice_by_size"),
        lambda m, x, i: (torch.arange(x.shape[0]).float() * 2, torch.zeros(x.shape[0], 3) + 1, x * x.shape[0],
                         x.var(0), torch.roll(x, 1, 0), torch.index_put(x, (i,), torch.ones(4))),
        lambda: (_r(3, 4), torch.tensor([2])), dynamic={0: 0}),
    "attention": Case(
        ("scaled_dot_product_attention",),
        lambda m, q, k, v: (F.scaled_dot_product_attention(q, k, v),
                            F.scaled_dot_product_attention(q, k, v, attn_mask=torch.tril(torch.ones(5, 5)).bool())),
        lambda: (_r(1, 2, 5, 8), _r(1, 2, 5, 8, seed=1), _r(1, 2, 5, 8, seed=2)), target="iOS18"),
    # a stateful program (a KV cache's form): the write into the buffer, then a read of it
    "state": Case(
        ("read_state", "slice_update", "write_state"),
        lambda m, x: _write(m[0].cache, x),
        lambda: (_r(2, 2),), lambda: [_Cache()], target="iOS18"),
}


def _write(cache, x):
    cache[:, 1:3] = x
    return cache * 2
# not claimed by an op: fp16 rounding of a few plain ops
FP16 = Case((), lambda m, x, y: (x + y, x * y, x / y), lambda: (_r(3, 5), _r(3, 5, seed=1) + 3))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(case name, precision="fp32")``, each case converted once."""
    root = tmp_path_factory.mktemp("coreml-eval")
    return functools.cache(lambda name, precision="fp32": _convert(name, precision, root))


def _convert(name: str, precision: str, root):
    """Convert a case with coremltools (as the coreml exporter does); return its program, feeds and torch outputs."""
    from edgesmith.export.coreml import _decompositions
    from edgesmith.quiet import quiet

    case = FP16 if name == "fp16" else CASES[name]
    module = _Fn(case.fn, case.modules()).eval()
    args = case.inputs()
    with quiet("coremltools", "torch.export", "torch._dynamo", stdout=True, stderr=True):
        import coremltools as ct

        dims = {i: torch.export.Dim(f"d{i}", min=2) for i in case.dynamic}
        shapes = tuple({case.dynamic[i]: dims[i]} if i in dims else None for i in range(len(args)))
        program = torch.export.export(module, args, dynamic_shapes=(shapes,) if dims else None, strict=False)
        inputs = [ct.TensorType(name=f"in{i}", shape=ct.Shape([ct.RangeDim(1, 64, default=d) if case.dynamic.get(i) == a
                                                             else d for a, d in enumerate(t.shape)]),
                                dtype=np.float32 if t.is_floating_point() else np.int32)
                  for i, t in enumerate(args)]
        program = program.run_decompositions(_decompositions())
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(b.shape), dtype=np.float16), name=n)
                  for n, b in module.named_buffers()
                  if n in program.graph_signature.buffers_to_mutate.values()]  # Core ML states are fp16
        mlmodel = ct.convert(
            program, inputs=inputs, convert_to="mlprogram",
            **({"states": states} if states else {}),
            minimum_deployment_target=getattr(ct.target, case.target), skip_model_load=True,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        )
        path = str(root / f"{name}-{precision}.mlpackage")
        mlmodel.save(path)
    with torch.no_grad():
        ref = module(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    feeds = {f"in{i}": t.numpy() for i, t in enumerate(args)}
    return MilProgram(path), feeds, [r.numpy() for r in ref]


def test_every_op_has_a_case():
    claimed = [o for c in CASES.values() for o in c.ops]
    assert sorted(OPS) == sorted(claimed), "every table op is claimed by exactly one case"
    assert len(claimed) == len(set(claimed))


_CASE_OF = {o: name for name, c in CASES.items() for o in c.ops}


@pytest.mark.parametrize("op_type", sorted(OPS))
def test_op_matches_torch(op_type, converted):
    name = _CASE_OF[op_type]
    program, feeds, ref = converted(name)
    assert op_type in program.op_types, f"case {name!r} no longer produces {op_type!r}: {sorted(set(program.op_types))}"
    out = program.run(feeds)
    assert len(out) == len(ref)
    for i, (got, want) in enumerate(zip(out.values(), ref)):
        assert got.shape == want.shape, f"{name} output {i}"
        atol = CASES[name].loose.get(i, CASES[name].atol)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=atol,
                                   rtol=1e-5, err_msg=f"{name} output {i}")


def test_dynamic_shapes_follow_the_input(converted):
    program, feeds, _ = converted("shapes")
    x = np.random.default_rng(3).standard_normal((7, 4)).astype(np.float32)
    out = list(program.run({"in0": x, "in1": feeds["in1"]}).values())
    np.testing.assert_allclose(out[0], np.arange(7) * 2.0)
    np.testing.assert_allclose(out[2], x * 7, rtol=1e-6)


def test_fp16_program_rounds_like_fp16(converted):
    """In an fp16 program every op's result is rounded to fp16, as PyTorch's half arithmetic does."""
    program, feeds, ref = converted("fp16", "fp16")
    assert "cast" in program.op_types  # fp32 inputs are cast to fp16 by the program
    x, y = (torch.from_numpy(feeds[k]).half() for k in ("in0", "in1"))
    out = list(program.run(feeds).values())
    assert all(o.dtype == np.float16 for o in out)  # outputs as the program declares them
    np.testing.assert_array_equal(out[0], (x + y).numpy())
    np.testing.assert_array_equal(out[1], (x * y).numpy())
    np.testing.assert_array_equal(out[2], (x / y).numpy())
    assert not np.array_equal(out[1].astype(np.float32), ref[1])  # and it is not the fp32 result


def test_uncovered_op_names_the_op(monkeypatch, converted):
    """An op missing from the table is refused when the program loads, naming the op."""
    from edgesmith.registry import OpTable
    from edgesmith.runtimes.coreml.mil import program

    package = converted("activations")[0].path
    without = OpTable(OPS.target, OPS.what, hint=OPS.hint)
    for name in OPS:
        if name != "softmax":
            without.op(name, **OPS.info(name))(OPS.get(name))
    monkeypatch.setattr(program, "OPS", without)
    with pytest.raises(BadInputError) as info:
        MilProgram(package)
    assert "'softmax'" in str(info.value) and exit_code_for(info.value) == 3


@pytest.mark.skipif(native_coreml() is not None, reason="on macOS the bundle runs on Core ML through coremltools")
def test_coreml_bundle_runs_without_torch_or_coremltools(tmp_path):
    """The evaluator path imports neither torch nor coremltools (whose import pulls in torch)."""
    from edgesmith import api as es

    bundle, parity = es.export(es.load("zoo:digits-cnn"), tmp_path, target="coreml")
    code = "import sys\nsys.modules['torch'] = None\nsys.modules['edgesmith.export'] = None\n" + textwrap.dedent(f"""
        from edgesmith.runtimes import check_bundle
        result = check_bundle({str(bundle.path)!r})
        assert result.passed and result.tier == "emulated", result.failures
        assert sys.modules.get("torch") is None and "coremltools" not in sys.modules
        print("ok", result.summary())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok PASS [emulated, fp16]")
    assert proc.stderr == ""  # no "Failed to load _MLModelProxy" noise
