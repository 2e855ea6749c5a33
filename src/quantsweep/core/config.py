"""Typed configuration: dtype and granularity enums, quantization formats, sweep settings.

Everything the user types (CLI flags, YAML) is parsed into these records once, at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from quantsweep.core.errors import InputError


class WeightDtype(enum.StrEnum):
    """Storage type of a layer's weights."""

    INT8 = "int8"
    # INT8 storage with codes -64..63: x86 CPUs without VNNI multiply UINT8 x INT8 in pairs summed
    # in saturating 16 bits (vpmaddubsw), which full-range INT8 weights overflow; 7-bit codes cannot
    # (255 * 64 * 2 < 32767). See docs/decisions.md, "INT8 on CPUs without VNNI".
    INT7 = "int7"
    INT4 = "int4"
    FP8 = "fp8"


class ActDtype(enum.StrEnum):
    """Type of a layer's input activations; ``fp16`` means weight-only quantization."""

    FP16 = "fp16"
    INT8 = "int8"
    FP8 = "fp8"
    # asymmetric per-tensor UINT8 with a zero point (ONNX Runtime on x86 prefers it; TensorRT and
    # OpenVINO want the signed symmetric ``int8``)
    UINT8 = "uint8"


class Granularity(enum.StrEnum):
    """Scale granularity for weights; activations are always per tensor (as QDQ Conv inputs are)."""

    PER_LAYER = "per_layer"
    PER_CHANNEL = "per_channel"


class CalibMethod(enum.StrEnum):
    """How activation ranges are derived from calibration images."""

    MAX = "max"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"


class WeightMethod(enum.StrEnum):
    """How weights are rounded: to nearest (max scale), with MSE-chosen clipping, or with GPTQ."""

    RTN = "rtn"
    MSE = "mse"
    GPTQ = "gptq"


class Recovery(enum.StrEnum):
    """What recovers accuracy with every layer kept quantized, after the sequential pass.

    ``distill``: a label-free fine-tune of each quantized layer's bias and per-channel weight scale
    (codes fixed) against the FP32 model's outputs on the calibration images (quant/distill.py),
    applied to every artifact. ``reconstruct``: each block's integer weight codes re-rounded
    (AdaRound, block by block as BRECQ) and its biases tuned against the FP32 block output, with
    quantized inputs in the loop (quant/block_reconstruction.py), applied to every artifact;
    ``reconstruct+distill``: the one, then the other (codes, then scales and biases).
    ``auto``: the artifacts start without it; the search runs it for a
    speed target whose nothing-kept model misses the accuracy target, before any float island,
    and keeps it where it gains (a float island costs run time on every inference; recovery costs
    seconds once).
    """

    NONE = "none"
    DISTILL = "distill"
    RECONSTRUCT = "reconstruct"
    RECONSTRUCT_DISTILL = "reconstruct+distill"
    AUTO = "auto"


class WeightSymmetry(enum.StrEnum):
    """Weight grids: signed symmetric, asymmetric (zero point per channel), or chosen per channel.

    ``auto`` chooses per output channel by output error for INT4 and keeps INT8 symmetric (what
    INT8 kernels take); FP8 is always symmetric. TensorRT needs ``symmetric`` INT4 weights too.
    """

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"
    AUTO = "auto"


class RankMetric(enum.StrEnum):
    """Per-layer metric the sweep ranks by (higher = more sensitive)."""

    BOX_ERROR = "box_error"
    CLASS_ERROR = "class_error"
    NMSE = "nmse"
    MAP_DROP_VS_FP32 = "map_drop_vs_fp32"
    MAP_DROP_GT = "map_drop_gt"


class HeadMode(enum.StrEnum):
    """Which detection branch runs: the checkpoint's own, the NMS-free one-to-one, or one-to-many + NMS."""

    AUTO = "auto"
    END2END = "end2end"
    NMS = "nms"


class HighPrecision(enum.StrEnum):
    """What the layers a scheme keeps run at: ``float`` (no Q/DQ at all) or INT8 weights."""

    FLOAT = "float"
    INT8 = "int8"


class LowPrecision(enum.StrEnum):
    """What every other layer of a scheme runs at (``auto``: the swept combination itself)."""

    AUTO = "auto"
    INT8 = "int8"
    INT4 = "int4"
    FP8 = "fp8"


# spellings the CLI still accepts for a value that was renamed
ALIASES: dict[type[enum.StrEnum], dict[str, str]] = {HighPrecision: {"fp16": "float"}}


class DropMode(enum.StrEnum):
    """How an allowed accuracy drop (``--max-drop``) is read."""

    RELATIVE = "relative"
    ABSOLUTE = "absolute"


class IslandOrder(enum.StrEnum):
    """The order the search keeps layers float in, when nothing-kept misses the accuracy target."""

    GAIN_PER_MS = "gain-per-ms"  # sweep sensitivity per millisecond the island costs on the runtime
    RANK = "rank"  # the sweep's ranking, most sensitive first


class ApConvention(enum.StrEnum):
    """How average precision integrates precision over recall (both use 101 recall points)."""

    ULTRALYTICS = "ultralytics"  # trapezoid over the linearly interpolated envelope (yolo val)
    COCO = "coco"  # mean of the envelope sampled at the recall points (pycocotools COCOeval)


class SweepMethod(enum.StrEnum):
    """How sensitivities are obtained."""

    EXACT = "exact"
    FAST = "fast"
    HYBRID = "hybrid"


class ComputeDtype(enum.StrEnum):
    """The dtype the sweep runs the network in (statistics and metrics stay float32)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


def parse_enum_list(text: str, enum_type: type[enum.StrEnum], *, what: str) -> tuple[Any, ...]:
    """Parse ``"a,b"`` into enum members, naming the valid values when one is unknown."""
    values = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        item = ALIASES.get(enum_type, {}).get(item, item)
        try:
            values.append(enum_type(item))
        except ValueError:
            valid = ", ".join(m.value for m in enum_type)
            raise InputError(f"unknown {what} '{item}'; valid: {valid}") from None
    if not values:
        raise InputError(f"no {what} given")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class QuantFormat:
    """One (weight dtype, activation dtype, granularity) combination of the sweep."""

    weight: WeightDtype
    act: ActDtype
    granularity: Granularity
    int4_block_size: int | None = None

    @property
    def name(self) -> str:
        """Directory-style name: ``int4-fp16/per_channel`` (``-b32`` when blocked)."""
        block = f"-b{self.int4_block_size}" if self.int4_block_size else ""
        return f"{self.weight.value}-{self.act.value}/{self.granularity.value}{block}"

    def unsupported_reason(self) -> str | None:
        """Why this combination cannot be expressed as a deployable QDQ Conv, or None if it can."""
        if self.weight is WeightDtype.FP8 and self.act in (ActDtype.INT8, ActDtype.UINT8):
            return (
                "FP8 weights with INT8 activations: no Conv kernel mixes the two "
                "(TensorRT and ONNX Runtime pair FP8 with FP8, INT8 with INT8)"
            )
        if self.int4_block_size is not None and self.weight is not WeightDtype.INT4:
            return "a block size applies to INT4 weights only"
        if self.int4_block_size is not None and self.granularity is Granularity.PER_LAYER:
            return "block-wise INT4 is a per-channel refinement; per_layer has one scale per tensor"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "weight": self.weight.value,
            "act": self.act.value,
            "granularity": self.granularity.value,
            "int4_block_size": self.int4_block_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantFormat:
        """Inverse of :meth:`to_dict`."""
        return cls(
            weight=WeightDtype(data["weight"]),
            act=ActDtype(data["act"]),
            granularity=Granularity(data["granularity"]),
            int4_block_size=data.get("int4_block_size"),
        )


@dataclass(frozen=True)
class CalibConfig:
    """Activation-range calibration settings."""

    # mse: best W8A8 accuracy with signed INT8 activations on the testbed (benchmarks/quantizers.py)
    method: CalibMethod = CalibMethod.MSE
    percentile: float = 99.99


@dataclass(frozen=True)
class WeightQuantConfig:
    """How weights are quantized (any method composes with INT8, INT4 and FP8 weights).

    ``gptq_damp`` is the dampening added to the Hessian diagonal, as a fraction of its mean;
    ``act_order`` quantizes the columns with the largest Hessian diagonal first. ``recovery`` runs
    after the sequential pass, on the records the artifacts carry, for ``recovery_steps`` steps.
    """

    method: WeightMethod = WeightMethod.GPTQ
    symmetry: WeightSymmetry = WeightSymmetry.AUTO
    bias_correction: bool = True
    gptq_damp: float = 0.01
    act_order: bool = True
    recovery: Recovery = Recovery.AUTO
    recovery_steps: int = 200

    def __post_init__(self) -> None:
        if self.recovery_steps < 1:
            raise InputError(f"recovery steps must be at least 1 (got {self.recovery_steps})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **asdict(self),
            "method": self.method.value,
            "symmetry": self.symmetry.value,
            "recovery": self.recovery.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WeightQuantConfig:
        """Inverse of :meth:`to_dict`; a record without one (older runs) was round-to-nearest, symmetric."""
        if data is None:
            return cls(WeightMethod.RTN, WeightSymmetry.SYMMETRIC, bias_correction=False)
        return cls(
            method=WeightMethod(data["method"]),
            symmetry=WeightSymmetry(data["symmetry"]),
            bias_correction=data["bias_correction"],
            gptq_damp=data.get("gptq_damp", 0.01),
            act_order=data.get("act_order", True),
            recovery=Recovery(data.get("recovery", Recovery.NONE.value)),
            recovery_steps=data.get("recovery_steps", 200),
        )


@dataclass(frozen=True)
class DetectConfig:
    """Detection decoding, identical for every model compared."""

    conf_threshold: float = 0.001
    iou_threshold: float = 0.7
    max_det: int = 300
    pseudo_label_conf: float = 0.25


@dataclass(frozen=True)
class SweepConfig:
    """Everything that decides a sweep's numbers; written to the run directory as ``config.json``."""

    model: str
    images: str
    imgsz: int = 320
    max_images: int = 16
    # the first of them that the sweep ranks layers on: one forward pass per measured layer each,
    # and every block output of each kept in memory; calibration ranges, GPTQ statistics and
    # recovery use all ``max_images``
    rank_images: int = 16
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    head: HeadMode = HeadMode.AUTO
    formats: tuple[QuantFormat, ...] = ()
    layer_patterns: tuple[str, ...] = ()
    top_k: int = 10
    rank_by: RankMetric = RankMetric.BOX_ERROR
    method: SweepMethod = SweepMethod.EXACT
    hybrid_exact: int | None = None  # layers the hybrid method measures exactly; default 2*top_k+10
    calib: CalibConfig = field(default_factory=CalibConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    image_root: str | None = None  # where a COCO json's images are (default: the json's folder)
    quantizer: WeightQuantConfig = field(default_factory=WeightQuantConfig)
    compute_dtype: ComputeDtype = ComputeDtype.FLOAT32

    def __post_init__(self) -> None:
        if self.imgsz <= 0 or self.imgsz % 32:
            raise InputError(f"--imgsz {self.imgsz} is not a positive multiple of 32")
        if self.max_images <= 0:
            raise InputError(f"--max-images must be positive, got {self.max_images}")
        if self.rank_images <= 0:
            raise InputError(f"--rank-images must be positive, got {self.rank_images}")
        if self.batch_size <= 0:
            raise InputError(f"--batch-size must be positive, got {self.batch_size}")
        if self.top_k <= 0:
            raise InputError(f"--top-k must be positive, got {self.top_k}")
        if self.method is not SweepMethod.EXACT and self.rank_by is not RankMetric.BOX_ERROR:
            raise InputError(
                f"--method {self.method.value} estimates box_error only; use --rank-by box_error"
            )

    @property
    def ranked_images(self) -> int:
        """How many calibration images the sweep ranks on."""
        return min(self.rank_images, self.max_images)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["formats"] = [f.to_dict() for f in self.formats]
        data["layer_patterns"] = list(self.layer_patterns)
        data["rank_by"] = self.rank_by.value
        data["method"] = self.method.value
        data["head"] = self.head.value
        data["calib"]["method"] = self.calib.method.value
        data["quantizer"] = self.quantizer.to_dict()
        data["compute_dtype"] = self.compute_dtype.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        """Inverse of :meth:`to_dict` (record keys such as ``schema_version`` are ignored)."""
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["formats"] = tuple(QuantFormat.from_dict(f) for f in data["formats"])
        values["layer_patterns"] = tuple(data.get("layer_patterns", ()))
        values["rank_by"] = RankMetric(data["rank_by"])
        values["method"] = SweepMethod(data.get("method", "exact"))
        values["head"] = HeadMode(data.get("head", "auto"))
        calib = data.get("calib", {})
        values["calib"] = CalibConfig(
            method=CalibMethod(calib.get("method", "max")), percentile=calib.get("percentile", 99.99)
        )
        values["detect"] = DetectConfig(**data.get("detect", {}))
        values["quantizer"] = WeightQuantConfig.from_dict(data.get("quantizer"))
        values["compute_dtype"] = ComputeDtype(data.get("compute_dtype", "float32"))  # older runs: float32
        values["rank_images"] = data.get("rank_images", data.get("max_images", 16))  # older: ranked on all
        return cls(**values)


class ExecutorKind(enum.StrEnum):
    """Where sweep shards and evaluation tasks run: in this process, or on a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class ExecutorConfig:
    """How work is spread; it never changes a result, so it is not part of :class:`SweepConfig`.

    ``address`` is Ray's: ``auto`` (a running cluster on this machine), ``host:port``, or None (start
    a local cluster). ``workers`` defaults to one per GPU (``--device cuda``) or one per
    ``threads_per_worker`` CPUs of the cluster; ``shard_layers`` defaults to a size that gives each
    worker about four shards per combination.
    """

    kind: ExecutorKind = ExecutorKind.LOCAL
    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    shard_layers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers <= 0:
            raise InputError(f"--ray-workers must be positive, got {self.workers}")
        if self.threads_per_worker <= 0:
            raise InputError(f"--worker-threads must be positive, got {self.threads_per_worker}")
        if self.shard_layers is not None and self.shard_layers <= 0:
            raise InputError(f"--shard-layers must be positive, got {self.shard_layers}")
        if self.kind is ExecutorKind.LOCAL and self.address:
            raise InputError("--ray-address needs --executor ray")
