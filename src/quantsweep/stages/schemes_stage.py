"""The schemes stage: a sweep report in, the FP32 ONNX, its layer mapping and candidate schemes out."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from quantsweep.core.config import (
    HighPrecision,
    LowPrecision,
    QuantFormat,
    SweepConfig,
)
from quantsweep.core.errors import InputError
from quantsweep.core.layout import sweep_dir_of
from quantsweep.core.records import read_json, write_json
from quantsweep.core.runs import environment, new_run_dir
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.export import MappingError, export_fp32, map_layers, record_unquantized
from quantsweep.schemes.policies import (
    RankedLayer,
    SchemeSpace,
    budget,
    first_and_head,
    precisions,
    random_k,
    top_k,
)
from quantsweep.schemes.scheme_records import LayerAssignment, Precision, Scheme
from quantsweep.schemes.writer import INDEX_KIND, SCHEME_KIND, write_schemes
from quantsweep.sensitivity.sweep_report import REPORT_KIND
from quantsweep.stages.common import RunCache, read_sweep_config

LOG = logging.getLogger(__name__)
FP32_ONNX = "model_fp32.onnx"


@dataclass(frozen=True)
class SchemeSet:
    """A schemes run directory read back: its schemes, precisions and the sweep they came from."""

    directory: Path
    sweep_dir: Path
    sweep_config: SweepConfig
    combination: str
    low: Precision
    high: Precision
    schemes: tuple[Scheme, ...]

    @property
    def ranking(self) -> list[LayerAssignment]:
        """Every layer, most sensitive first (layers the sweep skipped last)."""
        return sorted(self.schemes[0].layers, key=lambda a: (a.rank is None, a.rank or 0))

    @property
    def onnx_nodes(self) -> dict[str, str]:
        """``{Torch layer: ONNX conv node}`` of every layer."""
        return {a.torch_name: a.onnx_node for a in self.schemes[0].layers}


def read_scheme_set(schemes_dir: Path) -> SchemeSet:
    """The checked contents of a schemes run directory (one clear error when it is not one)."""
    index_path = Path(schemes_dir) / "schemes_index.json"
    if not index_path.is_file():
        raise InputError(f"{schemes_dir} is not a schemes directory (no schemes_index.json)")
    index = read_json(index_path, INDEX_KIND)
    schemes = tuple(
        Scheme.from_dict(read_json(Path(schemes_dir) / row["file"], SCHEME_KIND)) for row in index["schemes"]
    )
    if not schemes:
        raise InputError(f"{schemes_dir} holds no schemes")
    sweep_dir = Path(index["sweep_dir"])
    return SchemeSet(
        directory=Path(schemes_dir),
        sweep_dir=sweep_dir,
        sweep_config=read_sweep_config(sweep_dir),
        combination=index["combination"],
        low=Precision.from_dict(index["low_precision"]),
        high=Precision.from_dict(index["high_precision"]),
        schemes=schemes,
    )


@dataclass(frozen=True)
class SchemesRequest:
    """Inputs of the schemes stage."""

    report: Path
    ks: tuple[int, ...] = (0, 5, 10, 20)
    high: HighPrecision = HighPrecision.FLOAT
    low: LowPrecision = LowPrecision.AUTO
    target_bits: float | None = None
    seed: int = 0
    references: bool = True  # random and first+head schemes at each K, to show what the ranking buys
    reference_ks: tuple[int, ...] | None = None  # the Ks that get them (None: every K > 0)


def _ranked_layers(report: dict, layers) -> list[RankedLayer]:
    info = {layer.name: layer for layer in layers}
    ranked, seen = [], set()
    for row in report["layers"]:
        layer = info.get(row["name"])
        if layer is None:
            raise InputError(f"report layer {row['name']} is not in the model")
        ranked.append(
            RankedLayer(
                row["name"],
                len(ranked) + 1,
                float(row["sensitivity"]),
                layer.params,
                layer.block_index,
                layer.exec_order,
            )
        )
        seen.add(row["name"])
    # layers the sweep skipped (a --layers subset) rank last: never kept by a ranking
    for layer in layers:
        if layer.name not in seen:
            ranked.append(
                RankedLayer(
                    layer.name, len(ranked) + 1, 0.0, layer.params, layer.block_index, layer.exec_order
                )
            )
    return ranked


def _export(cache: RunCache, loaded, layers, *, imgsz: int, run_dir: Path):
    """The FP32 ONNX in ``run_dir`` and its mapping, exported once per run (copied after that)."""
    if cache.fp32_onnx is not None:
        shutil.copyfile(cache.fp32_onnx, run_dir / FP32_ONNX)
        return cache.mapping
    fp32 = export_fp32(loaded.network, imgsz=imgsz, path=run_dir / FP32_ONNX)
    try:
        mapping = map_layers(fp32, loaded.network.module, layers)
    except MappingError as exc:
        raise InputError(str(exc)) from exc
    record_unquantized(fp32, mapping, path=run_dir / FP32_ONNX)
    cache.fp32_onnx, cache.mapping = run_dir / FP32_ONNX, mapping
    return mapping


def make_schemes(request: SchemesRequest, *, out: Path, cache: RunCache | None = None) -> Path:
    """Export, map and write the candidate schemes into a new run directory; return it."""
    if not request.report.is_file():
        raise InputError(f"sensitivity report not found: {request.report}")
    report = read_json(request.report, REPORT_KIND)
    fmt = QuantFormat.from_dict(report["format"])
    sweep_dir = sweep_dir_of(request.report, fmt)
    config = read_sweep_config(sweep_dir)
    cache = cache or RunCache()
    loaded = cache.load(config)
    layers = enumerate_layers(loaded.network, torch.zeros(1, 3, config.imgsz, config.imgsz))
    if any(k > len(layers) for k in request.ks):
        raise InputError(f"--ks asks to keep more layers than the model's {len(layers)}")
    run_dir = new_run_dir(out, model_name=loaded.name, stage="schemes")
    mapping = _export(cache, loaded, layers, imgsz=config.imgsz, run_dir=run_dir)
    write_json(run_dir / "mapping.json", "layer_mapping", mapping.to_dict())
    write_json(run_dir / "environment.json", "environment", environment())
    low, high = precisions(fmt, low=request.low, high=request.high)
    space = SchemeSpace(ranked=_ranked_layers(report, layers), onnx_nodes=mapping.nodes, low=low, high=high)
    schemes = [top_k(space, k) for k in request.ks]
    reference_ks = request.ks if request.reference_ks is None else request.reference_ks
    for k in sorted({k for k in reference_ks if k > 0 and k in request.ks} if request.references else ()):
        schemes += [random_k(space, k, seed=request.seed), first_and_head(space, k)]
    if request.target_bits is not None:
        try:
            schemes.append(budget(space, target_bits=request.target_bits))
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    context = {
        "report": str(request.report.resolve()),
        "sweep_dir": str(sweep_dir),
        "combination": fmt.name,
        "low": low.label,
        "high": high.label,
        "low_precision": low.to_dict(),
        "high_precision": high.to_dict(),
        "fp32_onnx": FP32_ONNX,
        "imgsz": config.imgsz,
        "seed": request.seed,
    }
    write_schemes(run_dir, schemes, context=context)
    return run_dir
