"""Artifacts the evaluate stage writes itself, checked as materialize checks its own.

The search writes its finalists (kept sets no scheme had), and ``quantsweep run`` lets materialize
defer a speed target's top-K schemes past K=0 until the evaluate stage needs one (usually none is
scored: a scheme with fewer float layers meets the accuracy target first). Either is written from
the materialize run's records exactly as the search writes its trials, then gets the verify record
materialize gives its own artifacts (``evaluation.artifact_verdict``): beside the file, and its
verdict in the model's result, so the recommendation never passes over a departure silently.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from quantsweep.core.config import SweepConfig
from quantsweep.core.records import JsonLines, write_json
from quantsweep.evaluation.artifact_checks import torch_export_output
from quantsweep.evaluation.artifact_verdict import VERIFY_IMAGES, artifact_verdict
from quantsweep.models import load_model
from quantsweep.onnx_graph.calibration import RangeCache
from quantsweep.onnx_graph.candidates import FP32_FILE, Artifact
from quantsweep.onnx_graph.inspect import average_weight_bits
from quantsweep.quant.calibrators import read_act_ranges
from quantsweep.quant.producer_quant import read_producers
from quantsweep.stages.common import model_source
from quantsweep.stages.kept_sets import KeptSetMeasure, recorded_ranges, run_measure
from quantsweep.stages.schemes_stage import read_scheme_set
from quantsweep.targets import Backend
from quantsweep.targets.base import ModelSource, onnx_source

# what a model's result carries from its verify record (the report's runtime line and the
# recommendation's check read these)
RESULT_FIELDS = ("counts_match", "torch_vs_onnx_rel_l2", "runtime_agrees", "runtime_summary")


def file_fields(backend: Backend, model, path: Path) -> dict[str, Any]:
    """What a model's result records of a file the evaluate stage wrote (search finalist, deferred
    scheme): where it is, its size, its average weight bits and a short hash."""
    return {
        "file": str(path),
        "size_bytes": backend.artifact_bytes(path),
        "avg_weight_bits": average_weight_bits(model),
        "sha256_16": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
    }


class EvalWrites:
    """Writes and checks kept sets during an evaluate run, from one finished materialize run."""

    def __init__(self, candidates_dir: Path, config: SweepConfig) -> None:
        self.candidates_dir = Path(candidates_dir)
        self.config = config
        self.producers = read_producers(self.candidates_dir)
        recorded = read_act_ranges(self.candidates_dir)
        self.act_ranges = {} if recorded is None else recorded[1]
        self.fp32_bytes = (self.candidates_dir / FP32_FILE).stat().st_size
        self.located: set[str] = set()  # as materialize: each target's other load paths located once
        self._network = None
        self._source: ModelSource | None = None
        self._ranges: RangeCache | None = None

    @property
    def source(self) -> ModelSource:
        """The checkpoint, FP32 ONNX and calibration images (loaded once, when first needed)."""
        if self._source is None:
            self._source = model_source(self.config, self.candidates_dir / FP32_FILE)
        return self._source

    @property
    def ranges(self) -> RangeCache:
        """The materialize run's tensor ranges (extended from the calibration images if needed)."""
        if self._ranges is None:
            self._ranges = recorded_ranges(self.candidates_dir, self.source.images)
        return self._ranges

    def check(self, backend: Backend, path: Path, *, measure: KeptSetMeasure, kept) -> dict[str, Any]:
        """The verify record of ``path``, written from ``kept`` by ``measure`` (also saved beside it)."""
        if self._network is None:  # the checkpoint path the user gave (a pickle), once, only if needed
            self._network = load_model(self.config.model, head=self.config.head).network
        plan = measure.plan(tuple(kept))
        written = {a.torch_name: plan[a.onnx_node] for a in measure.scheme_set.ranking}
        assignment = {name: p.as_format() for name, p in written.items() if p.weight}
        weights = {
            name: measure.records[fmt.name][name]
            for name, fmt in assignment.items()
            if name in measure.records.get(fmt.name, {})
        }
        images = self.source.images[:VERIFY_IMAGES]
        reference = torch_export_output(
            self._network,
            images,
            assignment=assignment,
            act_ranges=self.act_ranges,
            weights=weights,
            producers=self.producers,
        )
        checked = artifact_verdict(
            path,
            backend=backend,
            images=images,
            torch_output=reference,
            expected_counts=backend.written_counts(dict(Counter(p.label for p in written.values()))),
            fp32_bytes=self.fp32_bytes,
            located=self.located,
        )
        write_json(onnx_source(path).with_suffix(".verify.json"), "artifact_verification", checked)
        return checked

    def write_deferred(self, backend: Backend, artifact: Artifact, *, schemes_dir: Path, directory: Path):
        """Write and check a scheme materialize deferred; its result record's fields."""
        measure = run_measure(
            backend,
            read_scheme_set(Path(schemes_dir)),
            self.ranges,
            candidates_dir=self.candidates_dir,
            source=self.source,
            context=None,  # written here, scored by the evaluate stage as any other artifact
            log=JsonLines(Path(os.devnull)),  # an empty log that nothing appends to
        )
        kept = tuple(artifact.kept_layers or ())
        model = measure.model(kept)
        directory.mkdir(parents=True, exist_ok=True)
        path = backend.save(model, directory / f"{artifact.name}.onnx", source=self.source)
        checked = self.check(backend, path, measure=measure, kept=kept)
        return {
            **artifact.to_dict(),
            "kept": artifact.kept,
            **file_fields(backend, model, path),
            "deferred": False,
            **{key: checked.get(key) for key in RESULT_FIELDS},
        }
