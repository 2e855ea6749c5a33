"""The materialize stage: a schemes directory in, one verified QDQ ONNX per scheme out (plus baselines)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import onnx

from quantsweep.config import ActDtype, Granularity, QuantFormat, WeightDtype
from quantsweep.errors import InputError
from quantsweep.export.ort_backend import quantize_with_ort
from quantsweep.export.qdq import NodePlan, materialize
from quantsweep.export.verify import torch_export_output, verify_artifact
from quantsweep.models.network import enumerate_layers
from quantsweep.models.ultralytics_adapter import LoadedModel, load_model
from quantsweep.pipeline.common import (
    ProgressFactory,
    calibrate,
    calibration_batch,
    no_progress,
    read_sweep_config,
)
from quantsweep.pipeline.schemes_stage import FP32_ONNX
from quantsweep.quant.calibrators import ranges_record
from quantsweep.quant.scheme import WEIGHTS_DIR, SchemeRecords
from quantsweep.records import read_json, write_json
from quantsweep.runs import environment, new_run_dir
from quantsweep.schemes.records import Scheme
from quantsweep.schemes.writer import INDEX_KIND, SCHEME_KIND

LOG = logging.getLogger(__name__)
CANDIDATES_KIND = "candidates_index"
BASELINE_INT8 = "baseline_int8"
BASELINE_INT8_ORT = "baseline_int8_ort"
# the whole-model INT8 baseline: every conv W8A8, per-channel weights
W8A8 = QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL)


def _load_schemes(schemes_dir: Path) -> tuple[dict[str, Any], list[Scheme]]:
    index_path = schemes_dir / "schemes_index.json"
    if not index_path.is_file():
        raise InputError(f"{schemes_dir} is not a schemes directory (no schemes_index.json)")
    index = read_json(index_path, INDEX_KIND)
    schemes = [
        Scheme.from_dict(read_json(schemes_dir / row["file"], SCHEME_KIND)) for row in index["schemes"]
    ]
    return index, schemes


class _Materializer:
    """Holds the model, images and FP32 graph shared by every artifact of one run."""

    def __init__(
        self, loaded: LoadedModel, batch, fp32_path: Path, act_ranges, nodes: dict[str, str], *, quantizer
    ) -> None:
        self.loaded, self.images, self.act_ranges, self.nodes = loaded, batch.images, act_ranges, nodes
        self.fp32_path = fp32_path
        # GPTQ and bias correction: records from a sequential pass per format (quant.scheme)
        self.records = SchemeRecords(
            fp32_path.parent / WEIGHTS_DIR,
            loaded.network,
            batch.images,
            quantizer,
            act_ranges,
            layer_names=list(nodes),
        )
        self.fp32 = onnx.load(str(fp32_path))
        self.fp32_bytes = fp32_path.stat().st_size

    def verify(self, path: Path, *, assignment, expected) -> dict[str, Any]:
        reference = torch_export_output(
            self.loaded.network,
            self.images,
            assignment=assignment,
            act_ranges=self.act_ranges,
            weights=self.records.for_assignment(assignment),
        )
        return verify_artifact(
            path,
            expected_counts=expected,
            images=self.images,
            torch_output=reference,
            fp32_bytes=self.fp32_bytes,
        )

    def _write(self, assignment: dict[str, QuantFormat], nodes: dict[str, str], path: Path) -> Path:
        plans = {
            nodes[name]: NodePlan(fmt, act_range=None if fmt.act is ActDtype.FP16 else self.act_ranges[name])
            for name, fmt in assignment.items()
        }
        records = self.records.for_assignment(assignment)
        onnx.save(materialize(self.fp32, plans, {nodes[n]: r for n, r in records.items()}), str(path))
        return path

    def uniform(self, assignment: dict[str, QuantFormat], path: Path) -> Path:
        """Every layer of ``assignment`` quantized, mapped through the schemes' node names."""
        return self._write(assignment, self.nodes, path)

    def scheme(self, scheme: Scheme, path: Path) -> dict[str, Any]:
        assignment = {a.torch_name: a.precision.as_format() for a in scheme.layers if a.precision.weight}
        nodes = {a.torch_name: a.onnx_node for a in scheme.layers}
        self._write(assignment, nodes, path)
        return self.verify(path, assignment=assignment, expected=scheme.precision_counts())


class _Index:
    """``candidates.json`` and one ``<name>.verify.json`` per artifact, rewritten as each one finishes."""

    SUMMARY_KEYS = (
        "file",
        "counts_match",
        "torch_vs_onnx_rel_l2",
        "size_bytes",
        "fp32_over_size",
        "avg_weight_bits",
    )

    def __init__(self, run_dir: Path, *, schemes_dir: Path, sweep_dir: str) -> None:
        self.run_dir = run_dir
        self.header = {"schemes_dir": str(schemes_dir), "sweep_dir": sweep_dir}
        self.artifacts: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []

    def _write(self) -> None:
        payload = {**self.header, "artifacts": self.artifacts, "failures": self.failures}
        write_json(self.run_dir / "candidates.json", CANDIDATES_KIND, payload)

    def record(self, name: str, kept: int | None, verification: dict[str, Any]) -> None:
        write_json(self.run_dir / f"{name}.verify.json", "artifact_verification", verification)
        summary = {key: verification[key] for key in self.SUMMARY_KEYS}
        self.artifacts.append({"name": name, "kept": kept, **summary})
        self._write()

    def fail(self, name: str, exc: Exception) -> None:
        self.failures.append({"name": name, "reason": f"{type(exc).__name__}: {exc}"[:500]})
        self._write()


def _baselines(worker: _Materializer, index: _Index, *, layers, images) -> None:
    run_dir = index.run_dir
    int8 = dict.fromkeys((layer.name for layer in layers), W8A8)
    baseline = worker.uniform(int8, run_dir / f"{BASELINE_INT8}.onnx")
    index.record(
        BASELINE_INT8, 0, worker.verify(baseline, assignment=int8, expected={"int8-int8": len(layers)})
    )
    try:
        # Conv only: quantizing every op also quantizes the output Concat of pixel boxes and 0..1
        # scores under one scale, which zeroes the scores (measured: mAP 0.0 on the testbed).
        ort_path = quantize_with_ort(
            worker.fp32_path, run_dir / f"{BASELINE_INT8_ORT}.onnx", images=images, op_types=("Conv",)
        )
        index.record(BASELINE_INT8_ORT, 0, worker.verify(ort_path, assignment=int8, expected=None))
    except Exception as exc:  # a third-party tool's failure is a result to record, not a crash
        LOG.warning("ONNX Runtime's quantize_static failed: %s", exc)
        index.fail(BASELINE_INT8_ORT, exc)
        (run_dir / f"{BASELINE_INT8_ORT}.onnx").unlink(missing_ok=True)


def materialize_candidates(schemes_dir: Path, *, out: Path, progress: ProgressFactory = no_progress) -> Path:
    """Write and verify the FP32 model, the INT8 baselines and every scheme; return the run directory."""
    schemes_dir = Path(schemes_dir)
    index, schemes = _load_schemes(schemes_dir)
    config = read_sweep_config(Path(index["sweep_dir"]))
    loaded = load_model(config.model, head=config.head)
    batch = calibration_batch(config)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    act_ranges = calibrate(loaded.network, batch, config, [layer.name for layer in layers])
    run_dir = new_run_dir(out, model_name=loaded.name, stage="candidates")
    write_json(run_dir / "environment.json", "environment", environment())
    write_json(run_dir / "act_ranges.json", "act_ranges", ranges_record(act_ranges, config.calib))
    fp32_path = run_dir / "fp32.onnx"
    shutil.copyfile(schemes_dir / FP32_ONNX, fp32_path)
    nodes = {a.torch_name: a.onnx_node for a in schemes[0].layers}
    worker = _Materializer(loaded, batch, fp32_path, act_ranges, nodes, quantizer=config.quantizer)
    artifacts = _Index(run_dir, schemes_dir=schemes_dir, sweep_dir=index["sweep_dir"])
    with progress(len(schemes) + 2, "materialize") as step:
        artifacts.record("fp32", None, worker.verify(fp32_path, assignment={}, expected=None))
        step("fp32")
        _baselines(worker, artifacts, layers=layers, images=batch.images)
        step("baselines")
        for scheme in schemes:
            verification = worker.scheme(scheme, run_dir / f"{scheme.name}.onnx")
            artifacts.record(scheme.name, len(scheme.kept_layers), verification)
            step(scheme.name)
    costs = {"quantizer": config.quantizer.to_dict(), "seconds_per_format": worker.records.seconds}
    write_json(run_dir / WEIGHTS_DIR / "costs.json", "quantizer_costs", costs)
    return run_dir
