"""Shared fixtures: tiny Ultralytics models from YAML, a small generated dataset, the testbed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from torch import nn

os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "yolo")
)
os.environ.setdefault("YOLO_OFFLINE", "1")

from quantsweep.core.config import ActDtype, CalibConfig, HeadMode, QuantFormat
from quantsweep.core.hardware import portable_int8_weights
from quantsweep.core.records import JsonLines
from quantsweep.data.images import Batch, load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.evaluation.search_moves import MoveKind, SearchMove
from quantsweep.models import LoadedModel, load_model
from quantsweep.models.network import LayerInfo, StagedNetwork, enumerate_layers
from quantsweep.onnx_graph.placement import Placement, apply_placement, input_ranges
from quantsweep.quant.apply import calibrate_inputs
from quantsweep.quant.numerics import ActRange
from quantsweep.quant.weights import QuantizedWeight
from quantsweep.schemes.scheme_records import Precision
from quantsweep.targets.timing import SAME_TIME_SHARE

TINY_IMGSZ = 96
# every detector family Ultralytics ships, tiny, from its YAML (RT-DETR: same modules as rtdetr-l.yaml)
RTDETR_TINY = str(Path(__file__).resolve().parent / "models" / "rtdetr-tiny.yaml")
FAMILIES = {
    "yolov8": ("yolov8n.yaml", HeadMode.AUTO),
    "yolov9": ("yolov9t.yaml", HeadMode.AUTO),
    "yolov10-nms": ("yolov10n.yaml", HeadMode.NMS),
    "yolov10-end2end": ("yolov10n.yaml", HeadMode.END2END),
    "yolo11": ("yolo11n.yaml", HeadMode.AUTO),
    "yolo12": ("yolo12n.yaml", HeadMode.AUTO),
    "rtdetr": (RTDETR_TINY, HeadMode.AUTO),
}
REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO.parent / "shared" / "testbed" / "yolov10m-shapes.pt"
BUNDLED = REPO / "src" / "quantsweep" / "assets" / "yolov10m-shapes.pt"
# INT8 W8A8 as every CPU of this architecture runs it exactly (7-bit weight codes on x86): what the
# CPU targets sweep and write by default, and what a runtime-vs-Torch comparison must use
CPU_W8A8 = Precision(portable_int8_weights(), ActDtype.INT8)
CPU_INT8 = CPU_W8A8.weight.value


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def tiny_model(name: str = "yolov8n.yaml", *, head: HeadMode = HeadMode.AUTO) -> LoadedModel:
    """A randomly initialised Ultralytics model with 8 classes, BN folded, that makes detections.

    Ultralytics initialises class biases so that scores start near 0.001; zeroing them spreads the
    scores around 0.5, so that detections, pseudo-labels and mAP are not all empty.
    """
    torch.manual_seed(0)
    loaded = load_model(name, num_classes=8, head=head)
    # Default init leaves activations vanishing with depth, so quantizing most layers would change
    # nothing measurable; fan-in scaled weights keep signals O(1). The DFL conv is fixed, not learned.
    for layer_name, module in loaded.network.module.named_modules():
        # Linear too: RT-DETR's decoder layers start as deep copies (identical weights, which the
        # ONNX export shares) and some of its heads start at zero; trained weights are all distinct.
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not layer_name.endswith("dfl.conv"):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, std=1.0 / fan_in**0.5)
            if module.bias is not None:
                nn.init.normal_(module.bias, std=0.1)
    detect = loaded.network.blocks[-1]
    for branch in (getattr(detect, "cv3", None), getattr(detect, "one2one_cv3", None)):
        for level in branch or ():
            level[-1].bias.data.zero_()
    return loaded


def calibrated_tiny_model(data: Path) -> tuple[StagedNetwork, Batch, list[LayerInfo], dict]:
    """The tiny YOLOv8n, the images of ``data`` at TINY_IMGSZ, its layers and its activation
    ranges from the default calibrator: what a sweep of the tiny model starts from."""
    network = tiny_model("yolov8n.yaml").network
    batch = load_batch(resolve_images(data), imgsz=TINY_IMGSZ)
    layers = enumerate_layers(network, batch.images[:1])

    def drive():
        with torch.no_grad():
            network.run(batch.images)
            yield None

    ranges = calibrate_inputs(network.module, [x.name for x in layers], drive(), calib=CalibConfig())
    return network, batch, layers, ranges


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_model()`` saved as an Ultralytics-style checkpoint (``{"model": DetectionModel}``)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-v8n.pt"
    torch.save({"model": tiny_model().network.module}, path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight labelled 96-px shape images; returns the data YAML."""
    root = tmp_path_factory.mktemp("shapes")
    return generate_split(root, split="val", count=8, size=TINY_IMGSZ, split_seed=5)


@pytest.fixture(scope="session")
def testbed_checkpoint() -> Path:
    """The trained YOLOv10m testbed (bundled copy, or the shared one)."""
    for path in (BUNDLED, TESTBED):
        if path.is_file():
            return path
    raise FileNotFoundError("testbed checkpoint missing: neither bundled nor in ../shared/testbed")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_model("yolov8n.yaml")`` exported to ONNX, its layer mapping and 4 calibration images."""
    from quantsweep.models.network import enumerate_layers  # noqa: PLC0415
    from quantsweep.onnx_graph.export import export_fp32, map_layers  # noqa: PLC0415

    loaded = tiny_model("yolov8n.yaml")
    images = torch.rand(4, 3, TINY_IMGSZ, TINY_IMGSZ)
    path = tmp_path_factory.mktemp("tiny_onnx") / "fp32.onnx"
    model = export_fp32(loaded.network, imgsz=TINY_IMGSZ, path=path)
    layers = enumerate_layers(loaded.network, images[:1])
    mapping = map_layers(model, loaded.network.module, layers)
    return {"path": path, "model": model, "images": images, "nodes": mapping.nodes, "loaded": loaded}


@pytest.fixture(scope="session")
def tiny_v10_onnx(tmp_path_factory: pytest.TempPathFactory):
    """A tiny YOLOv10n (it has depthwise convs) exported at 64 px, its node kinds and 2 images."""
    from quantsweep.onnx_graph.export import export_fp32  # noqa: PLC0415
    from quantsweep.targets.base import conv_kinds  # noqa: PLC0415

    path = tmp_path_factory.mktemp("tiny_v10") / "fp32.onnx"
    model = export_fp32(tiny_model("yolov10n.yaml").network, imgsz=64, path=path)
    images = torch.rand(2, 3, 64, 64)
    return {"path": path, "model": model, "kinds": conv_kinds(model), "images": images}


@dataclass
class UndecidedPair:
    """An ``ort-cpu`` result store where a shared timing pass put ``k0`` (0.50x FP32) and the more
    accurate ``search_k1`` (0.52x) 4% apart; the three models are copies of one tiny ONNX file."""

    backend: object
    store: object
    context: SimpleNamespace
    request: SimpleNamespace
    choose: dict


@pytest.fixture
def undecided_pair(tiny_onnx, tmp_path: Path) -> UndecidedPair:
    """What ``evaluate_stage.settle_tie`` is given after such a pass (scores and timings as recorded)."""
    import shutil  # noqa: PLC0415

    from quantsweep.evaluation.accuracy_target import AccuracyTarget  # noqa: PLC0415
    from quantsweep.evaluation.scoring import Accuracy  # noqa: PLC0415
    from quantsweep.onnx_graph.candidates import Artifact  # noqa: PLC0415
    from quantsweep.stages.eval_records import ResultStore  # noqa: PLC0415
    from quantsweep.targets import get_backend  # noqa: PLC0415
    from quantsweep.targets.timing import Timing  # noqa: PLC0415

    store = ResultStore(
        tmp_path / "results", target="ort-cpu", candidates_dir=tmp_path, metric="map50_95_gt", reference=0.9
    )
    for name, score, ratio in (("fp32", 0.9, 1.0), ("k0", 0.895, 0.50), ("search_k1", 0.898, 0.52)):
        shutil.copy(tiny_onnx["path"], tmp_path / f"{name}.onnx")
        artifact = Artifact(
            name, f"{name}.onnx", "fp32" if name == "fp32" else "top_k", None, 1000, 8.0, True, 0.0
        )
        store.write_accuracy(artifact, Accuracy(score, score, score, score))
        timing = {"median_ms": 10 * ratio, "p10_ms": 0, "p90_ms": 0, "ratio_to_reference": ratio}
        store.write_timing(name, Timing(**timing, ratio_spread=0, runs=35, rounds=7, device="cpu"))
    target = AccuracyTarget(0.01)
    context = SimpleNamespace(
        config=SimpleNamespace(imgsz=TINY_IMGSZ),
        batch=SimpleNamespace(images=tiny_onnx["images"]),
        reference_score=0.9,
    )
    return UndecidedPair(
        backend=get_backend("ort-cpu"),
        store=store,
        context=context,
        request=SimpleNamespace(accuracy_target=target),
        choose={"reference": 0.9, "metric": "map50_95_gt", "target": target},
    )


def cli_process(args: list[str], **env: str) -> subprocess.Popen:
    """``quantsweep ARGS`` in a fresh process (stdout dropped, stderr kept for failure messages)."""
    return subprocess.Popen(
        [sys.executable, "-m", "quantsweep.cli.main", *args],
        # faulthandler: a process that hangs is sent SIGABRT and prints every thread's stack
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_after_layers(
    proc: subprocess.Popen, root: Path, pattern: str, *, layers: int, timeout: float
) -> Path:
    """SIGKILL ``proc`` as soon as the ``layer_results.jsonl`` matching ``pattern`` under ``root``
    holds ``layers`` lines; that file. Fails the test if the sweep finished or never got there; a
    sweep still running at ``timeout`` is aborted first, so the failure shows where it was stuck."""
    start = time.monotonic()
    results = None
    while time.monotonic() < start + timeout and proc.poll() is None:
        found = list(root.glob(pattern))
        if found and len(JsonLines(found[0]).read()) >= layers:
            results = found[0]
            break
        time.sleep(0.01)
    if results is None and proc.poll() is None:
        proc.send_signal(signal.SIGABRT)  # faulthandler (cli_process) prints the stacks
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if results is None:
        state = f"exited with {proc.returncode}" if proc.returncode != -signal.SIGABRT else "stuck"
        pytest.fail(
            f"the sweep {state} after {time.monotonic() - start:.0f} s, before {layers} layers of "
            f"{pattern} were written: " + proc.stderr.read().decode()[-4000:]
        )
    return results


@dataclass(frozen=True)
class NodePlan:
    """One ONNX node's format and the calibrated range of its input (for quantized activations)."""

    fmt: QuantFormat
    act_amax: float | ActRange | None = None
    act_range: ActRange | None = None


def qdq_artifact(
    model: onnx.ModelProto,
    plans: Mapping[str, NodePlan],
    weights: Mapping[str, QuantizedWeight] | None = None,
) -> onnx.ModelProto:
    """``model`` written by the writer that ships (``apply_placement`` + ``QdqEditor``), Q/DQ on
    inputs and weights only; UINT8 activations asymmetric, as ONNX Runtime's placement has them."""
    node_ranges = {}
    for name, plan in plans.items():
        found = plan.act_range if plan.act_range is not None else plan.act_amax
        if found is not None:
            node_ranges[name] = found if isinstance(found, ActRange) else ActRange.symmetric(found)
    preset = input_ranges(model, node_ranges)

    def ranges(tensors: set[str]) -> dict[str, ActRange]:
        missing = sorted(set(tensors) - set(preset))
        if missing:
            raise ValueError(f"no calibrated range for {missing}")
        return {t: preset[t] for t in tensors}

    precisions = {
        n: Precision(p.fmt.weight, p.fmt.act, p.fmt.granularity, p.fmt.int4_block_size)
        for n, p in plans.items()
    }
    asymmetric = any(p.fmt.act is ActDtype.UINT8 for p in plans.values())
    return apply_placement(
        model, precisions, ranges=ranges, placement=Placement(asymmetric=asymmetric), weights=weights
    )


def without_faster_in_float(moves: list[SearchMove]) -> list[SearchMove]:
    """The search's moves after the faster-in-float one, checked: where the runtime's profile
    offers that set (it depends on the CPU), it is the first move, always timed whole, and scored
    only where it timed faster than nothing kept (search_opening.SearchOpening._faster_in_float)."""
    faster = [m for m in moves if m.kind is MoveKind.FASTER_IN_FLOAT]
    assert moves[: len(faster)] == faster and len(faster) <= 1, moves
    for move in faster:
        assert move.x_nothing_kept is not None and move.per_inference_ms < 0, move
        assert (move.score is None) == (move.x_nothing_kept >= 1.0 - SAME_TIME_SHARE), move
    return moves[len(faster) :]
