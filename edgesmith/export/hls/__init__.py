"""FPGA HLS exporter: hls4ml project with automatic fixed-point precision (``hls/``).

The variant is lowered to layers hls4ml converts (:mod:`edgesmith.export.hls.graph`;
an unsupported layer stops the export naming it), its per-layer ``ap_fixed``
types are chosen from calibration data (:mod:`edgesmith.export.hls.precision`)
unless a fixed type is given, and hls4ml (Fast Machine Learning Lab, "hls4ml:
machine learning inference in FPGAs", Vitis HLS backend by default) writes the
HLS C++ project. Its C simulation is compiled with g++ and checked against the
source model on the whole calibration set; if it misses the parity target, every
fraction gets one more bit and the project is rebuilt (twice at most).

The bundle's ``hls/`` holds the project as hls4ml writes it: ``firmware/``
(the C++ and weights), ``build_prj.tcl`` / ``vivado_synth.tcl`` for the vendor
tool (not run here), the testbench ``<project>_test.cpp`` with ``tb_data/`` made
from the golden inputs and outputs, and the compiled C simulation library that
the ``hls`` runtime runs (tier ``emulated``). A ``README.md`` beside it tells the
user who will synthesise it what to run, and gives the chosen precisions and the
predicted resources (:mod:`edgesmith.profiles.fpga`).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgesmith.errors import BadInputError, UsageError, require
from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.profiles.fpga import estimate, latency_text, resources_text
from edgesmith.quiet import quiet

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
IOS = ("parallel", "stream")
STRATEGIES = ("latency", "resource")
_FIXED = re.compile(r"^ap_fixed<(\d+),(-?\d+)>$")
TOP1_MARGIN = 0.005  # the precision search aims this far above the parity tolerance
SNR_MARGIN_DB = 5.0


@dataclasses.dataclass
class HlsOptions:
    """Options of the ``hls`` target.

    Attributes:
        backend: hls4ml backend: ``vitis`` (Vitis HLS) or ``vivado`` (Vivado HLS).
        io: ``parallel`` (every layer's values in registers, lowest latency) or ``stream``
            (layers connected by FIFOs, for larger convolutional models).
        reuse_factor: How many times each multiplier is reused (1 = fully parallel; higher saves DSPs
            and costs cycles).
        strategy: ``latency`` (weights in registers) or ``resource`` (weights in block RAM, for reuse > 1).
        clock_ns: Target clock period in nanoseconds.
        part: FPGA part number (default: the ZCU104's Zynq UltraScale+ ZU7EV).
        precision: ``auto`` (chosen per layer from calibration data) or one ``ap_fixed<W,I>`` for every
            tensor (hls4ml's default is ``ap_fixed<16,6>``).
        data: Calibration data, an ``.npz`` or image folder (``x_train`` is used); default: the dataset the
            model was trained on (zoo models), else the golden inputs.
        samples: At most this many calibration samples.
        margin: Extra integer bits for results and accumulators beyond the calibrated range.
        project: Name of the HLS top function and project (default: from the model's name).
    """

    backend: str = "vitis"
    # metadata "cli": the flag ``edgesmith export`` offers for the field (besides -O key=value); "help" its
    # text, "choices" / "min" / "min_open" what the flag accepts
    io: str = dataclasses.field(default="parallel", metadata={
        "cli": "--io", "choices": IOS,
        "help": "layers' I/O, parallel (registers, lowest latency) or stream (FIFOs) [parallel]."})
    reuse_factor: int = dataclasses.field(default=1, metadata={
        "cli": "--reuse-factor", "min": 1,
        "help": "uses of each multiplier per inference (1 = fully parallel; more saves DSPs) [1]."})
    strategy: str = "latency"
    clock_ns: float = dataclasses.field(default=5.0, metadata={
        "cli": "--clock-ns", "min": 0, "min_open": True, "help": "clock period in ns [5]."})
    part: str = dataclasses.field(default="xczu7ev-ffvc1156-2-e", metadata={
        "cli": "--part", "help": "FPGA part [xczu7ev-ffvc1156-2-e, the ZCU104's]."})
    precision: str = "auto"
    data: str = ""
    samples: int = 2000
    margin: int = 1
    project: str = ""

    def __post_init__(self):
        def bad(field, known):
            return UsageError(f"target 'hls': {field}={getattr(self, field)!r} is not supported",
                              hint=f"use one of {', '.join(known)}")
        if self.backend not in BACKENDS:
            raise bad("backend", BACKENDS)
        if self.io not in IOS:
            raise bad("io", IOS)
        if self.strategy not in STRATEGIES:
            raise bad("strategy", STRATEGIES)
        if self.reuse_factor < 1:
            raise UsageError(f"target 'hls': reuse_factor={self.reuse_factor} must be at least 1")
        if not self.clock_ns > 0:
            raise UsageError(f"target 'hls': clock_ns={self.clock_ns} must be positive")
        if self.samples < 1:
            raise UsageError(f"target 'hls': samples={self.samples} must be at least 1")
        if self.margin < 0:
            raise UsageError(f"target 'hls': margin={self.margin} must not be negative")
        m = _FIXED.match(self.precision.replace(" ", ""))
        if self.precision != "auto" and (m is None or not 0 < int(m[1]) <= 64 or int(m[2]) > int(m[1])):
            raise UsageError(f"target 'hls': precision={self.precision!r} is not auto or ap_fixed<W,I>",
                             hint="e.g. precision=auto or precision=ap_fixed<16,6>")
        if self.project and not re.match(r"^[A-Za-z_]\w*$", self.project):
            raise UsageError(f"target 'hls': project={self.project!r} is not a C identifier")


@EXPORTERS.register
class HlsExporter(Exporter):
    """Variant -> hls4ml project (``hls/``) with its C simulation, checked on the calibration set."""

    name = "hls"
    runtime = "hls"
    model_file = "hls"
    Options = HlsOptions

    @property
    def precision(self) -> str:
        return "fixed"

    @classmethod
    def describe(cls, bundle, parity) -> list:
        """The precision table the export chose, its C simulation's agreement and the predicted resources."""
        info = bundle.manifest.details.get("hls")
        if not info:
            return []
        chosen = info.get("precision_table")  # None with one precision for every tensor
        mode = "chosen from calibration data" if chosen else f"{info['precision_mode']} for every tensor"
        rows = chosen or [[name, "", t.get("weight", ""), t.get("bias", ""), t.get("result", ""),
                           t.get("accum", ""), ""] for name, t in info["types"].items()]
        table = {"title": f"{info['project']}: ap_fixed<W,I> per layer ({mode})",
                 "columns": [{"name": "layer", "key": True}, "kind", "weight", "bias", "result", "accum",
                             {"name": "max |result|", "justify": "right"}],
                 "rows": rows}
        cal, est = info["calibration"], info["estimates"]
        agree = f"{cal['top1_agreement']:.2%}" if cal.get("top1_agreement") is not None else "n/a"
        snr = f"{cal['snr_db']:.1f} dB" if cal.get("snr_db") is not None else "exact"
        return [table,
                {"markup": f"C simulation vs PyTorch on {cal['samples']} calibration samples ({cal['source']}): "
                           f"top-1 agreement {agree}, SNR {snr}"},
                {"markup": f"predicted on {est['part']}: {resources_text(est['total'], est.get('capacity'))}; "
                           f"latency {latency_text(est['latency_cycles'], est['clock_ns'])} (first-order model, "
                           "not synthesised)"}]

    def _export_impl(self, variant, stage: Path) -> None:
        from edgesmith.export.hls.graph import lower
        from edgesmith.export.hls.precision import choose_precision, format_table
        from edgesmith.parity import TOLERANCES

        opts = self.options
        with quiet("hls4ml"):
            hls4ml = require("hls4ml", "hls")
        if shutil.which("g++") is None:
            from edgesmith.errors import RuntimeUnavailableError
            raise RuntimeUnavailableError("g++ is not installed; the HLS C simulation is compiled with it",
                                          hint="install a C++ compiler (e.g. apt install g++)")
        lowered = lower(variant)
        x_cal, data_source = self._calibration(variant)
        self._calibration_x = x_cal
        reference = variant.run({variant.inputs[0].name: x_cal})[variant.outputs[0].name]
        tol = TOLERANCES["fixed"]
        plan = None
        if opts.precision == "auto":
            plan = choose_precision(lowered, x_cal, classify=variant.classify, margin=opts.margin,
                                    min_top1=tol["min_top1"] + TOP1_MARGIN,
                                    min_snr_db=tol["min_snr_db"] + SNR_MARGIN_DB)
        project = opts.project or _c_name(variant.name)
        out_dir = stage / "hls"
        for attempt in range(3):
            hls_model, library = self._build(hls4ml, lowered, plan, variant, out_dir, project)
            csim = _csim(library, project, variant)
            check = _compare(reference, csim(x_cal), variant.classify)
            if check.passed or plan is None:
                break
            variant.notes.append(f"hls: C simulation missed the target with the chosen precision "
                                 f"({'; '.join(check.failures)}); every fraction widened by one bit")
            plan = plan.widened(1)
        estimates = estimate(hls_model, reuse_factor=opts.reuse_factor, io=opts.io, strategy=opts.strategy,
                             clock_ns=opts.clock_ns, part=opts.part)
        over = {k: v for k, v in (estimates["utilisation"] or {}).items() if v > 1.0}
        if over:
            variant.notes.append(f"hls: predicted {', '.join(f'{k.upper()} {v:.0%}' for k, v in over.items())} of "
                                 f"{opts.part}: it may not fit; raise the reuse factor (--reuse-factor), use "
                                 "--io stream or -O strategy=resource, or a larger part")
        worst = check.worst
        self.details["hls"] = {
            "project": project,
            "library": str(library.relative_to(stage)),
            "backend": BACKENDS[opts.backend], "io": f"io_{opts.io}", "part": opts.part,
            "clock_ns": opts.clock_ns, "reuse_factor": opts.reuse_factor, "strategy": opts.strategy,
            "precision_mode": opts.precision,
            "precision": plan.to_dict() if plan else None,
            "precision_table": format_table(plan) if plan else None,
            "types": _model_types(hls_model),
            "calibration": {"source": data_source, "samples": int(len(x_cal)),
                            "top1_agreement": worst.top1_agreement if worst else None,
                            "snr_db": worst.snr_db if worst and np.isfinite(worst.snr_db) else None,
                            "passed": check.passed},
            "layers": [dataclasses.asdict(layer) for layer in lowered.layers],
            "estimates": estimates,
        }
        _tidy_project(out_dir, stage)
        (stage / "README.md").write_text(_readme(variant, self.details["hls"]))

    def _extra_feeds(self, variant) -> list[tuple[dict, dict]]:
        """The whole calibration set, besides the golden inputs (and another batch size)."""
        name = variant.inputs[0].name
        x = self._calibration_x
        return [*super()._extra_feeds(variant), ({name: x}, variant.run({name: x}))]

    def _calibration(self, variant) -> tuple[np.ndarray, str]:
        from edgesmith.export.hls.precision import check_calibration

        opts = self.options
        shape = variant.inputs[0].shape
        if opts.data:
            from edgesmith.data.images import load_image_data

            x = load_image_data(opts.data, tuple(shape[1:])).x_train
            source = f"{Path(opts.data).name} (x_train)"
        elif variant.source.get("dataset"):
            from edgesmith.data.datasets import dataset_split

            x = dataset_split(variant.source["dataset"])[0]
            source = f"{variant.source['dataset']} train split"
        else:
            x = variant.example[variant.inputs[0].name]
            source = "golden inputs"
            variant.notes.append(f"hls: precision calibrated on the {len(x)} golden inputs only; give -O data=DATA "
                                 "(an .npz or image folder) for types that hold on real data")
        x = check_calibration(x, shape)[: opts.samples]
        return x, source

    def _build(self, hls4ml, lowered, plan, variant, out_dir: Path, project: str):
        from edgesmith.runtimes.hls import build_library

        opts = self.options
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shape = lowered.input_shape
        default = "ap_fixed<16,6>" if plan is not None else opts.precision.replace(" ", "")
        with quiet("hls4ml", stdout=True):
            config = hls4ml.utils.config_from_pytorch_model(
                lowered.module, shape, granularity="name" if plan is not None else "model",
                backend=BACKENDS[opts.backend], default_precision=default, default_reuse_factor=opts.reuse_factor)
            config["Model"]["Strategy"] = opts.strategy.capitalize()
            if plan is not None:
                plan.hls_config(config)
            with tempfile.TemporaryDirectory() as tmp:
                tb_in, tb_out = Path(tmp) / "tb_in.npy", Path(tmp) / "tb_out.npy"
                x = variant.example[variant.inputs[0].name]
                np.save(tb_in, x.reshape(len(x), -1).astype(np.float32))
                np.save(tb_out, variant.run()[variant.outputs[0].name].reshape(len(x), -1).astype(np.float32))
                try:
                    hls_model = hls4ml.converters.convert_from_pytorch_model(
                        lowered.module, output_dir=str(out_dir), project_name=project, backend=BACKENDS[opts.backend],
                        io_type=f"io_{opts.io}", part=opts.part, clock_period=opts.clock_ns, hls_config=config,
                        input_data_tb=str(tb_in), output_data_tb=str(tb_out))
                    hls_model.write()
                except Exception as exc:  # hls4ml raises bare exceptions on layers it cannot place
                    raise BadInputError(f"hls4ml cannot convert {variant.name}: {type(exc).__name__}: {exc}",
                                        hint="see the supported layers in `edgesmith targets list`") from exc
        return hls_model, build_library(out_dir, project)


def _csim(library: Path, project: str, variant):
    from edgesmith.runtimes.hls import CSim

    return CSim(library, project, int(np.prod(variant.inputs[0].shape[1:])), tuple(variant.outputs[0].shape[1:]))


def _compare(reference: np.ndarray, candidate: np.ndarray, classify: bool):
    from edgesmith.parity import compare

    return compare({"out": reference}, {"out": candidate}, precision="fixed", tier="emulated", classify=classify)


def _c_name(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if re.match(r"^[A-Za-z_]", ident) else f"m_{ident}"


def _model_types(hls_model) -> dict[str, dict[str, str]]:
    """The types hls4ml settled on per layer (what the C++ declares), for the manifest and the README."""
    types = {}
    for layer in hls_model.get_layers():
        entry = {"result": layer.get_output_variable().type.precision.definition_cpp()}
        for key, w in getattr(layer, "weights", {}).items():
            entry[key] = w.type.precision.definition_cpp()
        accum = layer.get_attr("accum_t")
        if accum is not None and hasattr(accum, "precision"):
            entry["accum"] = accum.precision.definition_cpp()
        types[layer.name] = entry
    return types


def _tidy_project(out_dir: Path, stage: Path) -> None:
    """Drop the staging directory's absolute path from the project (it is renamed into place)."""
    config = out_dir / "hls4ml_config.yml"
    if config.exists():
        text = config.read_text()
        config.write_text(text.replace(str(out_dir), ".").replace(str(stage), "."))


def _readme(variant, info: dict) -> str:
    est = info["estimates"]
    total = est["total"]
    cap = est.get("capacity")
    lines = [
        f"# {variant.name}: HLS project (hls4ml, {info['backend']} backend)",
        "",
        f"Made by edgesmith from `{variant.source.get('reference', variant.name)}`. Top function "
        f"`{info['project']}`, {info['io']}, reuse factor {info['reuse_factor']}, {info['strategy']} strategy, "
        f"part `{info['part']}`, clock {info['clock_ns']} ns.",
        "",
        "## What was checked here",
        f"The C simulation (`hls/firmware/{info['project']}.cpp` compiled with g++, `ap_fixed` arithmetic bit for bit)"
        f" was compared with the PyTorch model on {info['calibration']['samples']} calibration samples "
        f"({info['calibration']['source']}): top-1 agreement "
        + (f"{info['calibration']['top1_agreement']:.2%}" if info['calibration']['top1_agreement'] is not None
           else "n/a")
        + f", SNR {info['calibration']['snr_db'] or float('inf'):.1f} dB. That is parity tier **emulated**: no"
        " synthesis, co-simulation or board run was done.",
        "",
        "## Synthesise it",
        "With Vitis HLS (or Vivado HLS for the vivado backend) on the PATH, from `hls/`:",
        "",
        "```",
        "vitis_hls -f build_prj.tcl \"csim=1 synth=1 cosim=1 export=1\""
        if info["backend"] == "Vitis" else "vivado_hls -f build_prj.tcl \"csim=1 synth=1 cosim=1 export=1\"",
        "```",
        "",
        f"`csim` runs `{info['project']}_test.cpp` on `tb_data/` (the bundle's golden inputs, with the PyTorch "
        "outputs to compare); `cosim` checks the RTL against the same data; `vivado_synth.tcl` runs logic "
        "synthesis for resource figures.",
        "",
        "## Predicted resources (not synthesised)",
        f"{resources_text(total, cap, of=True)}; latency {latency_text(est['latency_cycles'], est['clock_ns'])}, "
        f"interval {est['interval_cycles']:,} cycles. "
        "First-order model (edgesmith.profiles.fpga); the synthesis report is the real figure.",
        "",
        "## Precision per layer",
        "| layer | result | weight | bias | accum |",
        "|---|---|---|---|---|",
    ]
    for name, t in info["types"].items():
        lines.append(f"| {name} | {t.get('result', '')} | {t.get('weight', t.get('scale', ''))} | "
                     f"{t.get('bias', '')} | {t.get('accum', '')} |")
    mode = "chosen automatically from calibration data" if info["precision_mode"] == "auto" else \
        f"{info['precision_mode']} for every tensor"
    lines += ["", f"Precision: {mode}.", ""]
    return "\n".join(lines)
