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
from quantsweep.records import read_json, write_json
from quantsweep.runs import environment, new_run_dir
from quantsweep.schemes.records import Scheme
from quantsweep.schemes.writer import INDEX_KIND, SCHEME_KIND

LOG = logging.getLogger(__name__)
CANDIDATES_KIND = "candidates_index"
BASELINE_INT8 = "baseline_int8"
# the Torch counterpart of the ONNX Runtime baseline (which also quantizes non-conv ops)
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

    def __init__(self, loaded: LoadedModel, batch, fp32_path: Path, act_ranges) -> None:
        self.loaded, self.images, self.fp32_path, self.act_ranges = (
            loaded,
            batch.images,
            fp32_path,
            act_ranges,
        )
        self.fp32 = onnx.load(str(fp32_path))
        self.fp32_bytes = fp32_path.stat().st_size

    def verify(self, path: Path, *, assignment, expected) -> dict[str, Any]:
        reference = torch_export_output(
            self.loaded.network, self.images, assignment=assignment, act_ranges=self.act_ranges
        )
        return verify_artifact(
            path,
            expected_counts=expected,
            images=self.images,
            torch_output=reference,
            fp32_bytes=self.fp32_bytes,
        )

    def scheme(self, scheme: Scheme, path: Path) -> dict[str, Any]:
        plans, assignment = {}, {}
        for layer in scheme.layers:
            fmt = layer.precision.as_format()
            if fmt is None:
                continue
            amax = None if fmt.act is ActDtype.FP16 else self.act_ranges[layer.torch_name]
            plans[layer.onnx_node] = NodePlan(fmt, amax)
            assignment[layer.torch_name] = fmt
        onnx.save(materialize(self.fp32, plans), str(path))
        return self.verify(path, assignment=assignment, expected=scheme.precision_counts())


def materialize_candidates(schemes_dir: Path, *, out: Path, progress: ProgressFactory = no_progress) -> Path:
    """Write and verify the FP32 model, the INT8 baseline and every scheme; return the run directory."""
    schemes_dir = Path(schemes_dir)
    index, schemes = _load_schemes(schemes_dir)
    config = read_sweep_config(Path(index["sweep_dir"]))
    loaded = load_model(config.model, head=config.head)
    batch = calibration_batch(config)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    act_ranges = calibrate(loaded.network, batch, config, [layer.name for layer in layers])
    run_dir = new_run_dir(out, model_name=loaded.name, stage="candidates")
    write_json(run_dir / "environment.json", "environment", environment())
    write_json(
        run_dir / "act_ranges.json", "act_ranges", {"method": config.calib.method.value, "amax": act_ranges}
    )
    fp32_path = run_dir / "fp32.onnx"
    shutil.copyfile(schemes_dir / FP32_ONNX, fp32_path)
    worker = _Materializer(loaded, batch, fp32_path, act_ranges)
    artifacts: list[dict[str, Any]] = []

    def record(name: str, kept: int | None, verification: dict[str, Any]) -> None:
        write_json(run_dir / f"{name}.verify.json", "artifact_verification", verification)
        artifacts.append(
            {
                "name": name,
                "kept": kept,
                **{
                    k: verification[k]
                    for k in (
                        "file",
                        "counts_match",
                        "torch_vs_onnx_rel_l2",
                        "size_bytes",
                        "fp32_over_size",
                        "avg_weight_bits",
                    )
                },
            }
        )
        write_json(
            run_dir / "candidates.json",
            CANDIDATES_KIND,
            {"schemes_dir": str(schemes_dir), "sweep_dir": index["sweep_dir"], "artifacts": artifacts},
        )

    with progress(len(schemes) + 2, "materialize") as step:
        record("fp32", None, worker.verify(fp32_path, assignment={}, expected=None))
        step("fp32")
        baseline = quantize_with_ort(fp32_path, run_dir / f"{BASELINE_INT8}.onnx", images=batch.images)
        int8 = dict.fromkeys((layer.name for layer in layers), W8A8)
        record(BASELINE_INT8, 0, worker.verify(baseline, assignment=int8, expected=None))
        step(BASELINE_INT8)
        for scheme in schemes:
            record(
                scheme.name, len(scheme.kept_layers), worker.scheme(scheme, run_dir / f"{scheme.name}.onnx")
            )
            step(scheme.name)
    return run_dir
