"""The one place that imports Ultralytics: load a checkpoint or YAML and describe it as a StagedNetwork.

``torch.load`` of a ``.pt`` file unpickles it, which can run arbitrary code: only paths the user
named (or the bundled checkpoint) are ever loaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantsweep.core.config import HeadMode
from quantsweep.core.errors import InputError
from quantsweep.models.network import LoadedModel, StagedNetwork
from quantsweep.models.outputs import (
    CLASS_NAMES_KEY,
    OUTPUT_CONVENTION_KEY,
    HeadOutput,
    OutputConvention,
)

LOG = logging.getLogger(__name__)


def _configure_ultralytics() -> None:
    # Ultralytics writes a settings file and may try the network on import; keep it offline and in
    # the user's config dir.
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_home / "quantsweep" / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # an exporter whose requirement is missing must fail here, not pip-install it at run time
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")


_configure_ultralytics()
# importing ultralytics sets OMP_NUM_THREADS=1 for its training loop when the user has not set it;
# that would reach every process quantsweep starts (Ray workers), so it is put back after the import
_OMP_THREADS = os.environ.get("OMP_NUM_THREADS")

from ultralytics.nn.modules.head import Detect, RTDETRDecoder  # noqa: E402
from ultralytics.nn.tasks import (  # noqa: E402
    BaseModel,
    DetectionModel,
    RTDETRDetectionModel,
    guess_model_task,
)
from ultralytics.utils.torch_utils import fuse_conv_and_bn  # noqa: E402

if _OMP_THREADS is None:
    os.environ.pop("OMP_NUM_THREADS", None)


SUFFIXES = (".pt", ".yaml", ".yml")  # a checkpoint, or a model YAML (random weights)


def accepts(path: Path) -> bool:
    """Whether this adapter reads ``path``: an Ultralytics checkpoint or model YAML, by suffix."""
    return Path(path).suffix.lower() in SUFFIXES


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    num_classes: int | None = None,
    head: HeadMode = HeadMode.AUTO,
) -> LoadedModel:
    """Load an Ultralytics detection checkpoint (``.pt``) or model YAML, fold BN, put it in eval mode.

    ``head`` picks the detection branch before fusing (fusing drops the other one).
    """
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        model = _build_from_yaml(path, num_classes=num_classes)
    else:
        model = _load_checkpoint(path)
    _check_task(model, path=path)
    model = model.float().eval()
    _select_head(model, head, path=path)
    model.fuse(verbose=False)
    _fold_sequential_bn(model)
    model.to(device)
    head = model.model[-1]
    name = path.stem
    return LoadedModel(
        name=name,
        source=str(path),
        network=_staged(model),
        class_names=dict(model.names),
        end_to_end=bool(getattr(head, "end2end", False)) or isinstance(head, RTDETRDecoder),
    )


def _check_task(model: nn.Module, *, path: Path) -> None:
    """Detection only: a segment, pose, obb or classify model ends with one line."""
    head = model.model[-1]
    if isinstance(head, RTDETRDecoder):
        return
    task = guess_model_task(model)
    # Segment, Pose and OBB heads subclass Detect: the task, not the class, tells them apart
    if task != "detect" or not isinstance(head, Detect):
        what = task or f"{type(head).__name__}-headed"
        raise InputError(f"{path} is an Ultralytics {what} model; quantsweep supports detect models only")


def _fold_sequential_bn(model: nn.Module) -> None:
    """Fold a BatchNorm2d that follows a Conv2d inside an ``nn.Sequential`` (RT-DETR's input
    projections), which Ultralytics' ``fuse`` leaves alone but the ONNX export folds: the quantized
    weight must be the one the ONNX node holds.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_and_bn(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()


def _select_head(model: DetectionModel, head: HeadMode, *, path: Path) -> None:
    if head is HeadMode.AUTO:
        return
    want = head is HeadMode.END2END
    if isinstance(model.model[-1], RTDETRDecoder):
        if head is HeadMode.NMS:
            raise InputError(f"{path} is an RT-DETR model: it has no NMS head; use --head auto")
        return
    if want and getattr(model.model[-1], "one2one_cv2", None) is None:
        raise InputError(f"{path} has no NMS-free (one-to-one) head; use --head nms or auto")
    model.end2end = want


def _build_from_yaml(path: Path, *, num_classes: int | None) -> DetectionModel:
    # Ultralytics resolves bare names such as yolov8n.yaml from its own package cfg folder.
    if not path.exists() and path.parent != Path("."):
        raise InputError(f"model YAML not found: {path}")
    try:
        if "rtdetr" in path.stem.lower():
            return RTDETRDetectionModel(cfg=str(path), nc=num_classes, verbose=False)
        return DetectionModel(cfg=str(path), nc=num_classes, verbose=False)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path} is not an Ultralytics detection model YAML ({exc})") from exc


def _load_checkpoint(path: Path) -> DetectionModel:
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from exc
    model = None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") or ckpt.get("model")
    elif isinstance(ckpt, nn.Module):
        model = ckpt
    if not isinstance(model, BaseModel):
        raise InputError(f"{path} is not an Ultralytics detection checkpoint (no DetectionModel inside)")
    return model


def _staged(model: DetectionModel) -> StagedNetwork:
    blocks = list(model.model)
    head = blocks[-1]
    head.export = False
    finish = lambda out: _head_output(head, out)  # noqa: E731
    convention = OutputConvention.END2END if getattr(head, "end2end", False) else OutputConvention.RAW
    if isinstance(head, RTDETRDecoder):
        finish, convention = _rtdetr_finish(model, head), OutputConvention.RTDETR
    return StagedNetwork(
        module=model,
        blocks=blocks,
        block_names=[f"model.{i}" for i in range(len(blocks))],
        sources=[b.f for b in blocks],
        keep=frozenset(model.save),
        finish=finish,
        metadata={
            OUTPUT_CONVENTION_KEY: convention.value,
            CLASS_NAMES_KEY: json.dumps({int(k): str(v) for k, v in dict(model.names).items()}),
        },
    )


def _rtdetr_finish(model: nn.Module, head: RTDETRDecoder):
    # RT-DETR boxes are normalised to the input size. The head records the shapes of its input
    # feature maps on every call (``head.shapes``); the first map's stride, probed once here,
    # turns them back into the input size. No hook stays on the model (it must stay picklable).
    seen: dict[str, int] = {}

    def record(_module: nn.Module, inputs: tuple) -> None:
        seen["w"] = int(inputs[0][0].shape[-1])

    handle = head.register_forward_pre_hook(record)
    probe = 64
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, probe, probe, device=next(model.parameters()).device))
    finally:
        handle.remove()
    stride = probe // seen["w"]

    def finish(out: Any) -> HeadOutput:
        detections, (dec_bboxes, dec_scores, *_rest) = out
        imgsz = int(head.shapes[0][1]) * stride
        return HeadOutput.from_rtdetr(
            dec_bboxes[-1], dec_scores[-1].sigmoid(), detections=detections, imgsz=imgsz
        )

    return finish


def _head_output(head: Detect, out: Any) -> HeadOutput:
    decoded, preds = out if isinstance(out, tuple) else (out, None)
    if head.end2end:
        # The end-to-end output is already top-k detections; the per-anchor tensor behind it is
        # rebuilt from the one-to-one branch so that both conventions give the same metrics.
        raw = head._inference(preds["one2one"])
        return HeadOutput.from_raw(raw, boxes_are_xywh=False, detections=decoded)
    return HeadOutput.from_raw(decoded, boxes_are_xywh=True)


@dataclass(frozen=True)
class UltralyticsExport:
    """One of Ultralytics' one-line quantized exports, ``model.export(format=..., quantize=...)``,
    used as a target's baseline. ``format`` is Ultralytics' own format name; ``needs``: the module
    its exporter imports (checked first: quantsweep never lets Ultralytics install packages)."""

    format: str
    quantize: int | str = 8
    needs: str | None = None

    @property
    def label(self) -> str:
        return f"format='{self.format}', quantize={self.quantize!r}"


# ONNX Runtime quantize_static on Conv/Gemm/MatMul, everything else float
ONNX_INT8 = UltralyticsExport("onnx")
# NNCF, MIXED preset, the head's last ops ignored
OPENVINO_INT8 = UltralyticsExport("openvino", needs="nncf")
_DEPLOYED_SUFFIXES = (".xml", ".tflite", ".onnx")  # what a deployer loads from an export folder


def int8_export_unavailable(model: str | Path, fmt: UltralyticsExport) -> str | None:
    """Why Ultralytics' quantized export of ``model`` cannot stand as a baseline here (None: it can)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        return "a model YAML has random weights, and Ultralytics' export would draw other ones"
    if fmt.needs and importlib.util.find_spec(fmt.needs) is None:
        return f"Ultralytics' {fmt.label} export needs the {fmt.needs} package"
    return None


def export_int8(
    model: str | Path,
    *,
    fmt: UltralyticsExport,
    calib_paths: Sequence[Path],
    imgsz: int,
    work_dir: Path,
) -> Path:
    """Ultralytics' own quantized export of the checkpoint ``model`` (a path the user gave), calibrated
    on ``calib_paths``; returns the file a deployer loads (ONNX, IR ``.xml``, ``.tflite``) under
    ``work_dir``. Ultralytics shuffles the calibration images with torch's seed: pinned, so that a
    baseline is the same in every run.

    The checkpoint is copied into ``work_dir`` first because Ultralytics writes beside it.
    ONNX with ``simplify=False``: the simplifier (onnxslim) is not a dependency and sets no precision.
    """
    from ultralytics import YOLO  # noqa: PLC0415

    reason = int8_export_unavailable(model, fmt)
    if reason:
        raise InputError(reason)
    work_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per ignored node otherwise
    copy = work_dir / Path(model).name
    shutil.copyfile(model, copy)
    yolo = YOLO(str(copy), task="detect")
    if isinstance(yolo.model.model[-1], RTDETRDecoder):
        raise InputError("Ultralytics' RT-DETR export has another output layout; no baseline for it yet")
    listing = work_dir / "calib.txt"
    listing.write_text("".join(f"{Path(p).resolve()}\n" for p in calib_paths))
    data = work_dir / "calib.yaml"
    names = {int(k): str(v) for k, v in yolo.names.items()}
    data.write_text(
        json.dumps({"path": str(work_dir), "train": str(listing), "val": str(listing), "names": names})
    )
    extra = {"simplify": False} if fmt.format == ONNX_INT8.format else {}
    # Ultralytics' device selection sets torch to min(8, cores - 1) threads (1 on 2 cores) for the
    # rest of the process: every later GPTQ pass ran at half speed (42 s instead of 25 s here)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    try:
        exported = Path(
            yolo.export(
                format=fmt.format,
                quantize=fmt.quantize,
                data=str(data),
                imgsz=imgsz,
                batch=1,
                device="cpu",
                **extra,
            )
        )
    finally:
        torch.set_num_threads(threads)
    if not exported.is_dir():
        return exported
    return next(p for suffix in _DEPLOYED_SUFFIXES for p in sorted(exported.rglob(f"*{suffix}")))
