"""``quantsweep run``: data (generated for the bundled model), sweep, then a check of the ranking.

The check keeps the top-K layers of the ranking unquantized, quantizes the rest with the swept
format, and scores mAP against labels on held-out images, with the uniform model for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantsweep.config import QuantFormat, SweepConfig
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.errors import InputError
from quantsweep.models.network import enumerate_layers
from quantsweep.models.ultralytics_adapter import load_model
from quantsweep.pipeline import ProgressFactory, no_progress, sweep
from quantsweep.records import read_json, write_json, write_text_atomic
from quantsweep.runs import new_run_dir
from quantsweep.sweep.report import REPORT_KIND, REPORT_NAME
from quantsweep.sweep.verify import evaluate_kept

LOG = logging.getLogger(__name__)
CALIB_SPLIT_SEED = 2  # a split the testbed checkpoint never saw; its val split is seed 1


@dataclass(frozen=True)
class RunConfig:
    """The whole job: a sweep plus the data and K values of the ranking check."""

    sweep: SweepConfig
    eval_data: str | None
    eval_images: int = 100
    ks: tuple[int, ...] = (0, 5, 10)


def _default_data(run_dir: Path, config: RunConfig) -> tuple[str, str]:
    data_dir = run_dir / "data"
    calib = generate_split(
        data_dir / "calib",
        split="calib",
        count=config.sweep.max_images,
        size=config.sweep.imgsz,
        split_seed=CALIB_SPLIT_SEED,
    )
    val = generate_split(data_dir / "val", split="val", count=config.eval_images, size=config.sweep.imgsz)
    return str(calib), str(val)


def _first_report(sweep_dir: Path, formats: tuple[QuantFormat, ...]) -> tuple[QuantFormat, dict[str, Any]]:
    for fmt in formats:
        path = sweep_dir / fmt.name / f"{REPORT_NAME}.json"
        if path.is_file():
            return fmt, read_json(path, REPORT_KIND)
    raise InputError(f"the sweep in {sweep_dir} produced no report")


def run_job(config: RunConfig, *, out: Path, progress: ProgressFactory = no_progress) -> Path:
    """Run everything into a new run directory; return it."""
    run_dir = new_run_dir(out, model_name=Path(config.sweep.model).stem, stage="run")
    sweep_config, eval_data = config.sweep, config.eval_data
    if eval_data is None:
        calib, eval_data = _default_data(run_dir, config)
        sweep_config = dataclasses.replace(sweep_config, images=calib, seed=0)
    write_json(
        run_dir / "run_config.json",
        "run_config",
        {
            "sweep": sweep_config.to_dict(),
            "eval_data": eval_data,
            "eval_images": config.eval_images,
            "ks": list(config.ks),
        },
    )
    eval_set = resolve_images(eval_data).subset(count=config.eval_images, seed=None)
    if not eval_set.has_labels:
        raise InputError(f"evaluation data {eval_data} has images without label files")
    sweep_dir = sweep(sweep_config, out=run_dir, progress=progress)
    fmt, report = _first_report(sweep_dir, sweep_config.formats)
    check = dataclasses.replace(config, sweep=sweep_config)
    rows = _check_ranking(check, fmt, report, eval_set=eval_set, sweep_dir=sweep_dir, progress=progress)
    payload = {
        "combination": fmt.name,
        "sweep_dir": str(sweep_dir),
        "eval_images": len(eval_set.paths),
        "rows": rows,
    }
    write_json(run_dir / "topk_check.json", "topk_check", payload)
    write_text_atomic(run_dir / "summary.md", _summary(payload, report))
    return run_dir


def _check_ranking(run: RunConfig, fmt, report, *, eval_set, sweep_dir: Path, progress) -> list[dict]:
    config = run.sweep
    loaded = load_model(config.model, device=config.device, head=config.head)
    batch = load_batch(eval_set, imgsz=config.imgsz)
    layers = enumerate_layers(loaded.network, batch.images[:1].to(config.device))
    ranked = [row["name"] for row in report["layers"]]
    act_ranges = None
    if (sweep_dir / "act_ranges.json").is_file():
        act_ranges = read_json(sweep_dir / "act_ranges.json", "act_ranges")["amax"]
    first_and_head = [
        layer.name for layer in layers if layer.block_index in (0, len(loaded.network.blocks) - 1)
    ]
    schemes = [("FP32", None, [])]
    schemes += [(f"top-{k} kept", fmt, ranked[:k]) for k in sorted({min(k, len(ranked)) for k in run.ks})]
    schemes.append(("first conv + head kept", fmt, first_and_head))
    rows = []
    with progress(len(schemes), "check") as step:
        for label, scheme_fmt, kept in schemes:
            result = evaluate_kept(
                loaded.network,
                batch,
                layers=layers,
                fmt=scheme_fmt,
                kept=set(kept),
                batch_size=config.batch_size,
                detect=config.detect,
                act_ranges=act_ranges,
                device=config.device,
            )
            rows.append(
                {
                    "scheme": label,
                    "kept": len(kept),
                    "kept_layers": kept,
                    "map50_95": result.map50_95,
                    "map50": result.map50,
                }
            )
            step(label)
    return rows


def _summary(payload: dict[str, Any], report: dict[str, Any]) -> str:
    fp32 = payload["rows"][0]["map50_95"]
    lines = [
        f"# quantsweep run: {payload['combination']}",
        "",
        f"Ranking from `{payload['sweep_dir']}`; mAP against labels on {payload['eval_images']} held-out "
        "images (PyTorch fake quantization).",
        "",
        "| scheme | layers kept unquantized | mAP50-95 | mAP50 | % of FP32 |",
        "|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['scheme']} | {row['kept']} | {row['map50_95']:.4f} | {row['map50']:.4f} "
            f"| {100 * row['map50_95'] / fp32:.1f}% |"
        )
    lines += ["", f"Top layers: {', '.join(f'`{n}`' for n in report['top_layers'])}", ""]
    return "\n".join(lines)
