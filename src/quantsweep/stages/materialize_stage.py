"""The materialize stage: schemes in, one verified ONNX per scheme and deployment target out.

Each target writes its schemes in its own runtime's Q/DQ placement (through the backend seam)
into ``<candidates>/<target>/``; the FP32 model is shared. Every artifact is checked as it is
written (ONNX checker, per-precision node counts against the plan, an ONNX Runtime run, agreement
with the Torch simulation) and recorded in ``candidates.json`` at once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from quantsweep.core.config import ActDtype, QuantFormat
from quantsweep.core.errors import InputError
from quantsweep.core.records import write_json
from quantsweep.core.runs import environment, new_run_dir
from quantsweep.evaluation.artifact_checks import torch_export_output
from quantsweep.evaluation.artifact_verdict import VERIFY_IMAGES, artifact_verdict
from quantsweep.models import LoadedModel
from quantsweep.models.network import enumerate_layers
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE, Artifact, CandidatesIndex, TargetCandidates
from quantsweep.onnx_graph.output_map import producer_quants
from quantsweep.onnx_graph.placement import input_ranges
from quantsweep.onnx_graph.scale_groups import shared_ranges
from quantsweep.quant.calibrators import read_act_ranges, write_act_ranges
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant, write_producers
from quantsweep.quant.scheme import COSTS_KIND, COSTS_NAME, WEIGHTS_DIR, SchemeRecords
from quantsweep.schemes.scheme_records import FP32_NAME, Policy, Precision, Scheme
from quantsweep.stages.common import ProgressFactory, RunCache, calibrate, model_source, no_progress
from quantsweep.stages.schemes_stage import FP32_ONNX, SchemeSet, read_scheme_set
from quantsweep.targets import Backend, Objective, backend_names, get_backend
from quantsweep.targets.base import ModelSource, conv_kinds, onnx_source
from quantsweep.targets.modelopt_writer import check_writer, plan_deviations, write_modelopt

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeRequest:
    """Which schemes to write for which deployment targets (none: every target that can run them)."""

    schemes_dirs: tuple[Path, ...]
    targets: tuple[str, ...] = ()
    writer: str = "native"  # or "modelopt": ModelOpt's ONNX PTQ writes the tensorrt artifacts
    # leave a speed target's top-K schemes past K=0 to the evaluate stage, which writes one only if
    # it needs it (`quantsweep run`: most are dominated by K=0 or a search finalist, never scored)
    defer_top_k: bool = False


def scheme_plan(scheme: Scheme) -> dict[str, Precision]:
    """ONNX node -> precision for every layer of ``scheme``."""
    return {a.onnx_node: a.precision for a in scheme.layers}


def _runs(backend: Backend, scheme_set: SchemeSet, kinds) -> bool:
    try:
        for scheme in scheme_set.schemes:
            backend.check_plan(backend.adapt_plan(scheme_plan(scheme), kinds), kinds)
    except InputError:
        return False
    return True


def match_targets(
    scheme_sets: Sequence[SchemeSet], targets: Sequence[str], kinds
) -> dict[str, tuple[Backend, SchemeSet]]:
    """Each target with the first schemes whose every layer it can run; one clear error otherwise."""
    names = targets or backend_names()
    matched = {}
    for name in names:
        backend = get_backend(name)
        writable = backend.writable()
        if not writable.available:
            if targets:  # asked for by name: said before any work starts
                raise InputError(f"target {name} cannot write its artifacts here: {writable.reason}")
            LOG.info("target %s left out: %s", name, writable.reason)
            continue
        found = next((s for s in scheme_sets if _runs(backend, s, kinds)), None)
        if found is not None:
            matched[name] = (backend, found)
        elif targets:
            have = ", ".join(f"{s.combination} (low {s.low.label})" for s in scheme_sets)
            raise InputError(
                f"target {name} runs {', '.join(sorted(backend.runs()))} only; "
                f"the schemes given are {have}: sweep {backend.sweep_formats()[0].name} for it"
            )
    if not matched:
        raise InputError("no deployment target can run the schemes given")
    return matched


class _Writer:
    """The model, images, calibration and quantizer records shared by every artifact of one run."""

    def __init__(
        self,
        loaded: LoadedModel,
        images: torch.Tensor,
        act_ranges,
        fp32_path: Path,
        *,
        records,
        nodes: Mapping[str, str],
        producers: Sequence[ProducerQuant] = (),
    ) -> None:
        self.loaded, self.images, self.act_ranges = loaded, images, act_ranges
        self.producers = list(producers)
        self.writer = "native"
        self.fp32_path = fp32_path
        self.fp32 = onnx.load(str(fp32_path))
        self.kinds = conv_kinds(self.fp32)
        self.fp32_bytes = fp32_path.stat().st_size
        # the tensors quantized layers read get the Torch calibrator's ranges (MSE, percentile, ...)
        inputs = input_ranges(self.fp32, {nodes[n]: r for n, r in act_ranges.items() if n in nodes})
        inputs |= {p.tensor: p.range for p in self.producers}
        self.ranges = RangeCache(self.fp32, images, preset=inputs)
        # GPTQ / MSE codes and corrected biases: one sequential pass per format (quant.scheme)
        self.records: SchemeRecords = records
        # targets whose non-deployed load paths were already located node by node: once per target
        # says where that path departs for the placement; every artifact still gets its verdict
        self.located: set[str] = set()
        # the checkpoint and calibration images, for targets that make their artifact from the model
        self.source: ModelSource | None = None

    def verify(
        self, path: Path, *, assignment: Mapping[str, QuantFormat], expected, backend: Backend | None = None
    ) -> dict[str, Any]:
        """The file's checks (ONNX Runtime, Torch agreement) and, for a target's artifact, every way
        its own runtime loads it checked against the same Torch output."""
        sample = self.images[:VERIFY_IMAGES]
        reference = torch_export_output(
            self.loaded.network,
            sample,
            assignment=assignment,
            act_ranges=self.act_ranges,
            weights=self.records.for_assignment(assignment),
            producers=self.producers,
        )
        return artifact_verdict(
            path,
            backend=backend,
            images=sample,
            torch_output=reference,
            expected_counts=expected,
            fp32_bytes=self.fp32_bytes,
            located=self.located,
        )

    def _plan(self, backend: Backend, scheme: Scheme):
        """What the target really writes for ``scheme``: per-layer precisions and the weight records."""
        plan = backend.adapt_plan(scheme_plan(scheme), self.kinds)
        written = {a.torch_name: plan[a.onnx_node] for a in scheme.layers}
        assignment = {name: p.as_format() for name, p in written.items() if p.weight}
        nodes = {a.torch_name: a.onnx_node for a in scheme.layers}
        weights = {nodes[n]: r for n, r in self.records.for_assignment(assignment).items()}
        return plan, written, assignment, weights

    def serialized_bytes(self, backend: Backend, scheme: Scheme) -> int:
        """The size of the ONNX file ``scheme`` is written as, without writing or checking it."""
        plan, _, _, weights = self._plan(backend, scheme)
        model = backend.write(self.fp32, plan, ranges=self.ranges, weights=weights, producers=self.producers)
        return model.ByteSize()

    def scheme(self, backend: Backend, scheme: Scheme, path: Path) -> Artifact:
        plan, written, assignment, weights = self._plan(backend, scheme)
        start = time.perf_counter()
        if self.writer == "modelopt":
            write_modelopt(self.fp32_path, path, plan=plan, images=self.images)
        else:
            model = backend.write(
                self.fp32, plan, ranges=self.ranges, weights=weights, producers=self.producers
            )
            path = backend.save(model, path, source=self.source)
        seconds = time.perf_counter() - start
        expected = backend.written_counts(dict(Counter(p.label for p in written.values())))
        checked = self.verify(path, assignment=assignment, expected=expected, backend=backend)
        checked |= {"writer": self.writer, "write_seconds": seconds}
        if self.writer == "modelopt":
            checked["plan_deviations"] = plan_deviations(onnx.load(str(onnx_source(path))), plan)
        return _artifact(scheme.name, path, scheme.policy.value, scheme.kept_layers, checked)


def _artifact(name: str, path: Path, policy: str, kept, checked: dict[str, Any]) -> Artifact:
    write_json(onnx_source(path).with_suffix(".verify.json"), "artifact_verification", checked)
    return Artifact(
        name=name,
        file=f"{path.parent.name}/{path.name}" if policy != Policy.FP32 else path.name,
        policy=policy,
        kept_layers=None if kept is None else tuple(kept),
        size_bytes=checked["size_bytes"],
        avg_weight_bits=checked["avg_weight_bits"],
        counts_match=checked["counts_match"],
        torch_vs_onnx_rel_l2=checked["torch_vs_onnx_rel_l2"],
        runtime_agrees=checked.get("runtime_agrees"),
        runtime_summary=checked.get("runtime_summary"),
    )


def _deferrable(backend: Backend, scheme: Scheme, schemes: Sequence[Scheme]) -> bool:
    """A scheme the evaluate stage may never score, so it writes it only if it must: a speed target's
    top-K scheme past K=0 (one with fewer float layers usually meets the target first); on a size
    target, a top-K or bit-budget scheme with float layers (one no smaller than a passing file is
    not scored) unless a reference scheme is compared with it at its K (always scored)."""
    if not scheme.kept_layers:
        return False
    if backend.objective is Objective.SPEED:
        return scheme.policy is Policy.TOP_K
    kept = len(scheme.kept_layers)
    if any(s.policy.is_reference and len(s.kept_layers or ()) == kept for s in schemes):
        return False
    return scheme.policy in (Policy.TOP_K, Policy.BUDGET)


def _deferred(scheme: Scheme, path: Path, *, size_bytes: int | None) -> Artifact:
    """The index entry of a scheme left to the evaluate stage: its plan, no file yet (a size target's
    entry carries the size its file will have: the evaluate stage compares sizes before scoring)."""
    return Artifact(
        name=scheme.name,
        file=f"{path.parent.name}/{path.name}",
        policy=scheme.policy.value,
        kept_layers=tuple(scheme.kept_layers or ()),
        size_bytes=size_bytes,
        avg_weight_bits=None,
        counts_match=None,
        torch_vs_onnx_rel_l2=None,
        deferred=True,
    )


def _baselines(
    backend: Backend, entry: TargetCandidates, target_dir: Path, *, inputs: ModelSource, fp32_bytes: int
) -> None:
    """Each third-party baseline of the target (Ultralytics' INT8 export), or why it is missing."""
    for name, make in backend.baselines().items():
        try:
            path = make(inputs, target_dir / f"{name}.onnx")
        except Exception as exc:  # a third-party tool's failure is a result to record, not a crash
            LOG.warning("%s baseline %s not made: %s", backend.name, name, exc)
            entry.failures.append({"name": name, "reason": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        size = backend.artifact_bytes(path)
        checked = {
            "file": path.name,
            "size_bytes": size,
            "fp32_over_size": fp32_bytes / size,
            "avg_weight_bits": None,
            "counts_match": None,
            "torch_vs_onnx_rel_l2": None,
            # not a quantsweep plan: there is no Torch simulation of it to compare with
            "runtime_summary": "a third-party export: scored and timed on the runtime, not simulated",
        }
        entry.artifacts.append(_artifact(name, path, Policy.BASELINE, None, checked))


def _read_schemes(request: MaterializeRequest) -> list[SchemeSet]:
    scheme_sets = [read_scheme_set(Path(d)) for d in request.schemes_dirs]
    if not scheme_sets:
        raise InputError("--schemes is required (a schemes run directory)")
    first = scheme_sets[0]
    for other in scheme_sets[1:]:
        if (other.sweep_config.model, other.sweep_config.imgsz) != (
            first.sweep_config.model,
            first.sweep_config.imgsz,
        ):
            raise InputError(
                f"{other.directory} comes from another model or input size than {first.directory}"
            )
    return scheme_sets


def _torch_ranges(scheme_set: SchemeSet, loaded, batch, layers) -> dict[str, ActRange]:
    """The sweep's calibrated input ranges when it recorded every layer's, else calibrated here."""
    config = scheme_set.sweep_config
    names = [layer.name for layer in layers]
    recorded = read_act_ranges(scheme_set.sweep_dir)
    if recorded is not None:
        method, ranges = recorded
        if method is config.calib.method and set(names) <= set(ranges):
            return ranges
    return calibrate(loaded.network, batch, config, names)


def asymmetric_acts(matched: Mapping[str, tuple[Backend, SchemeSet]]) -> bool:
    """True when every target whose schemes quantize activations to INT8 writes them as UINT8
    with a zero point: the one sequential pass per format then simulates that (recovery)."""
    placements = [b.placement for b, s in matched.values() if s.low.act is ActDtype.INT8]
    return bool(placements) and all(p.asymmetric for p in placements)


def _prepare_writer(
    scheme_sets: list[SchemeSet],
    run_dir: Path,
    cache: RunCache,
    *,
    asymmetric: bool,
    progress: ProgressFactory = no_progress,
) -> _Writer:
    config = scheme_sets[0].sweep_config
    loaded = cache.load(config)
    batch = cache.batch(config)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    nodes = {a.torch_name: a.onnx_node for a in scheme_sets[0].schemes[0].layers}
    shutil.copyfile(scheme_sets[0].directory / FP32_ONNX, run_dir / FP32_FILE)
    fp32 = onnx.load(str(run_dir / FP32_FILE))
    # tensors that meet at a Concat or move into each other share one range, and those a residual
    # Add also reads are quantized where they are made (onnx_graph.scale_groups, quant.producer_quant)
    act_ranges = shared_ranges(fp32, _torch_ranges(scheme_sets[0], loaded, batch, layers), nodes)
    producers = producer_quants(fp32, loaded.network, nodes=nodes, ranges=act_ranges, image=batch.images[:1])
    write_json(run_dir / "environment.json", "environment", environment())
    write_act_ranges(run_dir, act_ranges, config.calib)
    write_producers(run_dir, producers)
    records = SchemeRecords(
        run_dir / WEIGHTS_DIR,
        loaded.network,
        batch.images,
        config.quantizer,
        act_ranges,
        layer_names=[layer.name for layer in layers],
        asymmetric=asymmetric,
        progress=progress,
        producers=producers,
    )
    return _Writer(
        loaded,
        batch.images,
        act_ranges,
        run_dir / FP32_FILE,
        records=records,
        nodes=nodes,
        producers=producers,
    )


def materialize_candidates(
    request: MaterializeRequest,
    *,
    out: Path,
    progress: ProgressFactory = no_progress,
    cache: RunCache | None = None,
) -> Path:
    """Write and verify FP32, every scheme per target and each target's baselines; return the run dir."""
    check_writer(request.writer, request.targets)
    scheme_sets = _read_schemes(request)
    kinds = conv_kinds(onnx.load(str(scheme_sets[0].directory / FP32_ONNX)))
    matched = match_targets(scheme_sets, request.targets, kinds)
    config = scheme_sets[0].sweep_config
    run_dir = new_run_dir(out, model_name=Path(config.model).stem, stage="candidates")
    writer = _prepare_writer(
        scheme_sets, run_dir, cache or RunCache(), asymmetric=asymmetric_acts(matched), progress=progress
    )
    writer.writer = request.writer
    index = CandidatesIndex(sweep_dir=str(scheme_sets[0].sweep_dir), imgsz=config.imgsz)
    source = model_source(config, writer.fp32_path, images=writer.images)
    writer.source = source
    with progress(1 + sum(len(s.schemes) + 1 for _, s in matched.values()), "materialize") as step:
        checked = writer.verify(writer.fp32_path, assignment={}, expected=None)
        fp32 = _artifact(FP32_NAME, writer.fp32_path, Policy.FP32, None, checked)
        step(FP32_NAME)
        for name, (backend, scheme_set) in matched.items():
            target_dir = run_dir / name
            target_dir.mkdir()
            entry = TargetCandidates(name, str(scheme_set.directory), scheme_set.combination, [fp32])
            index.targets[name] = entry
            for scheme in scheme_set.schemes:
                path = target_dir / f"{scheme.name}.onnx"
                if request.defer_top_k and _deferrable(backend, scheme, scheme_set.schemes):
                    by_size = backend.objective is Objective.SIZE
                    size = writer.serialized_bytes(backend, scheme) if by_size else None
                    entry.artifacts.append(_deferred(scheme, path, size_bytes=size))
                else:
                    entry.artifacts.append(writer.scheme(backend, scheme, path))
                index.write(run_dir)
                step(f"{name} {scheme.name}")
            _baselines(backend, entry, target_dir, inputs=source, fp32_bytes=writer.fp32_bytes)
            index.write(run_dir)
            step(f"{name} baselines")
    write_json(run_dir / "tensor_ranges.json", "tensor_ranges", {"ranges": writer.ranges.to_dict()})
    costs = {
        "quantizer": config.quantizer.to_dict(),
        "seconds_per_format": writer.records.seconds,
        "recovery_seconds_per_format": writer.records.recovery_seconds,
    }
    write_json(run_dir / WEIGHTS_DIR / COSTS_NAME, COSTS_KIND, costs)
    return run_dir
