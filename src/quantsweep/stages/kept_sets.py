"""Kept sets written as artifacts from a finished materialize run, and scored on a target's runtime.

A kept set (the layers that stay float) in a target's placement, from the materialize run's
quantizer records, producers and tensor ranges: what the search's trials and finalists are, what a
top-K scheme is (K=0: nothing kept), and how the evaluate stage writes a scheme whose writing
materialize deferred.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from quantsweep.core.records import JsonLines, read_json
from quantsweep.evaluation.scoring import Accuracy
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.producer_quant import ProducerQuant, read_producers
from quantsweep.quant.scheme import WEIGHTS_DIR, load_records, records_path
from quantsweep.schemes.scheme_records import Precision
from quantsweep.stages.common import model_source
from quantsweep.stages.schemes_stage import SchemeSet, read_scheme_set
from quantsweep.targets import Backend
from quantsweep.targets.base import conv_kinds


class KeptSetMeasure:
    """Writes a kept set in the target's placement, scores it on its runtime, logs every score."""

    def __init__(
        self,
        backend: Backend,
        scheme_set: SchemeSet,
        ranges: RangeCache,
        context,
        log,
        *,
        records,
        source,
        producers: Sequence[ProducerQuant] = (),
    ):
        self.backend, self.scheme_set, self.ranges = backend, scheme_set, ranges
        self.producers = producers  # tensors quantized where made, as materialize wrote them
        self.source = source  # the checkpoint and calibration images, for targets that need them
        self.context, self.log = context, log
        self.records = records  # format name -> {layer: quantizer record}, from the materialize stage
        self.kinds = conv_kinds(ranges.model)
        # every kept set scored so far (a resumed search's log, candidates already scored): a trial
        # or finalist with one of these kept sets is not scored again
        self.accuracies = {
            tuple(sorted(r["kept"])): Accuracy(**r["accuracy"]) for r in log.read() if "accuracy" in r
        }

    def with_records(self, records, log) -> KeptSetMeasure:
        """The same measure over other quantizer records (recovered ones), logging to ``log``."""
        return KeptSetMeasure(
            self.backend,
            self.scheme_set,
            self.ranges,
            self.context,
            log,
            records=records,
            source=self.source,
            producers=self.producers,
        )

    def plan(self, kept: tuple[str, ...]) -> dict[str, Precision]:
        """ONNX node -> precision of the kept set as the target writes it (adapted to what it runs,
        as materialize does), checked."""
        keep = set(kept)
        plan = {
            a.onnx_node: self.scheme_set.high if a.torch_name in keep else self.scheme_set.low
            for a in self.scheme_set.ranking
        }
        plan = self.backend.adapt_plan(plan, self.kinds)
        self.backend.check_plan(plan, self.kinds)
        return plan

    def model(self, kept: tuple[str, ...]) -> onnx.ModelProto:
        """The kept set written in the target's placement."""
        plan = self.plan(kept)
        weights = {}
        for a in self.scheme_set.ranking:
            fmt = plan[a.onnx_node].as_format()
            record = None if fmt is None else self.records.get(fmt.name, {}).get(a.torch_name)
            if record is not None:
                weights[a.onnx_node] = record
        return self.backend.write(
            self.ranges.model, plan, ranges=self.ranges, weights=weights, producers=self.producers
        )

    def __call__(self, kept: tuple[str, ...]) -> float:
        key = tuple(sorted(kept))
        if key not in self.accuracies:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.backend.save(self.model(kept), Path(tmp) / "trial.onnx", source=self.source)
                acc = self.context.score(self.backend, path)
            self.accuracies[key] = acc
            self.log.append(
                {"kept": list(key), "score": acc.value(self.context.metric), "accuracy": acc.to_dict()}
            )
        return self.accuracies[key].value(self.context.metric)


def recorded_ranges(candidates_dir: Path, images: torch.Tensor) -> RangeCache:
    """The materialize run's tensor ranges, extended from the calibration images if a tensor is new."""
    cache = RangeCache(onnx.load(str(candidates_dir / FP32_FILE)), images)
    recorded = read_json(candidates_dir / "tensor_ranges.json", "tensor_ranges")["ranges"]
    cache.found.update({name: ActRange.from_dict(value) for name, value in recorded.items()})
    return cache


def kept_set_writer(backend: Backend, *, candidates_dir: Path, schemes_dir: Path):
    """``write(kept, path) -> artifact``: a kept set (Torch names) written in ``backend``'s placement
    from a finished run's candidates and schemes exactly as the search writes its trials, for
    benchmarks that time kept sets (benchmarks/island_groups.py)."""
    scheme_set = read_scheme_set(Path(schemes_dir))
    source = model_source(scheme_set.sweep_config, Path(candidates_dir) / FP32_FILE)
    ranges = recorded_ranges(Path(candidates_dir), source.images)
    measure = run_measure(
        backend,
        scheme_set,
        ranges,
        candidates_dir=Path(candidates_dir),
        source=source,
        context=None,  # no scoring context: the writer only writes
        log=JsonLines(Path(os.devnull)),  # an empty log that nothing appends to
    )

    def write(kept: tuple[str, ...], path: Path) -> Path:
        return backend.save(measure.model(kept), path, source=source)

    return write


def run_measure(
    backend: Backend, scheme_set: SchemeSet, ranges: RangeCache, *, candidates_dir: Path, source, context, log
) -> KeptSetMeasure:
    """A measure of kept sets over a finished materialize run's quantizer records and producers."""
    return KeptSetMeasure(
        backend,
        scheme_set,
        ranges,
        context,
        log,
        records=quantizer_records(candidates_dir, scheme_set),
        source=source,
        producers=read_producers(candidates_dir),
    )


def quantizer_records(candidates_dir: Path, scheme_set: SchemeSet) -> dict[str, dict]:
    """The materialize stage's quantizer records of the schemes' two precisions (none: round to nearest)."""
    found = {}
    for precision in (scheme_set.low, scheme_set.high):
        fmt = precision.as_format()
        path = None if fmt is None else records_path(candidates_dir / WEIGHTS_DIR, fmt)
        if path is not None and path.is_file():
            found[fmt.name] = load_records(path)
    return found
