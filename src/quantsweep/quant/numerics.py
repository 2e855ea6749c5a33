"""Fake quantization (quantize, then dequantize in float) for INT8, INT4 and FP8 E4M3.

Weights here are symmetric, as TensorRT and QDQ Conv weights use them (``quant.weights`` adds
asymmetric grids and searched scales): INT8 ``amax/127``, INT7 ``amax/63`` (INT8 storage, codes
-64..63), INT4 ``amax/7`` (values -8..7), FP8 E4M3 ``amax/448``. Weights get one scale per tensor,
per output channel, or (INT4) per block of input channels, matching ONNX DequantizeLinear's ``axis`` and
``block_size`` semantics so the ONNX artifacts dequantize to the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsweep.core.config import ActDtype, Granularity, QuantFormat, WeightDtype

INT_LIMITS = {
    WeightDtype.INT8: (-128, 127, 127.0),
    WeightDtype.INT7: (-64, 63, 63.0),  # INT8 storage, 7-bit codes
    WeightDtype.INT4: (-8, 7, 7.0),
}
FP8_MAX = 448.0
_TINY = 1e-12


def _fake_int(x: torch.Tensor, scale: torch.Tensor, *, qmin: int, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def _fake_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # Same saturate-then-round-to-nearest-even as ONNX QuantizeLinear to FLOAT8E4M3FN.
    scaled = torch.clamp(x / scale, -FP8_MAX, FP8_MAX)
    return scaled.to(torch.float8_e4m3fn).to(x.dtype) * scale


def weight_amax(
    weight: torch.Tensor, *, granularity: Granularity, block_size: int | None = None
) -> torch.Tensor:
    """Absolute maximum per scale group, shaped to broadcast against ``weight``."""
    w = weight.detach().abs()
    if granularity is Granularity.PER_LAYER:
        return w.amax().reshape([1] * w.dim())
    if block_size is None:
        return w.amax(dim=tuple(range(1, w.dim())), keepdim=True)
    # Blocks along axis 1 (input channels); every other index keeps its own scale, as ONNX
    # blocked DequantizeLinear defines it.
    out_ch, in_ch = w.shape[:2]
    blocks = -(-in_ch // block_size)
    padded = torch.nn.functional.pad(w, [0, 0] * (w.dim() - 2) + [0, blocks * block_size - in_ch])
    grouped = padded.reshape(out_ch, blocks, block_size, *w.shape[2:])
    return grouped.amax(dim=2).repeat_interleave(block_size, dim=1)[:, :in_ch]


def weight_scale(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """The dequantization scale of ``weight`` under ``fmt`` (broadcastable to the weight)."""
    amax = weight_amax(weight, granularity=fmt.granularity, block_size=fmt.int4_block_size).clamp_min(_TINY)
    if fmt.weight is WeightDtype.FP8:
        return amax / FP8_MAX
    return amax / INT_LIMITS[fmt.weight][2]


def quantize_weight_codes(weight: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored codes and scale of ``weight``: ints in a float tensor (INT8/INT4) or ``float8_e4m3fn``.

    ``codes * scale`` is the dequantized weight; Torch fake quantization and the ONNX
    DequantizeLinear initializers are both built from this one function.
    """
    scale = weight_scale(weight, fmt)
    if fmt.weight is WeightDtype.FP8:
        return torch.clamp(weight / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
    qmin, qmax, _ = INT_LIMITS[fmt.weight]
    return torch.clamp(torch.round(weight / scale), qmin, qmax), scale


def fake_quant_weight(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Round-to-nearest fake quantization of a weight tensor (in float32, returned in its dtype).

    A half-precision weight would lose scales below float16's range (and round the grid).
    """
    codes, scale = quantize_weight_codes(weight.float(), fmt)
    return (codes.float() * scale).to(weight.dtype)


@dataclass(frozen=True)
class ActRange:
    """A calibrated activation range: ``(lo, hi)`` for asymmetric UINT8, ``amax`` for symmetric types.

    Calibrators choose each for its own grid (an MSE-chosen ``amax`` is not ``max(|lo|, |hi|)``).
    """

    lo: float
    hi: float
    amax: float

    @classmethod
    def symmetric(cls, amax: float) -> ActRange:
        """The range an ``amax``-only record (older runs) stands for."""
        return cls(-float(amax), float(amax), float(amax))

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"min": self.lo, "max": self.hi, "amax": self.amax}

    @classmethod
    def from_dict(cls, data: dict[str, float] | float) -> ActRange:
        """Inverse of :meth:`to_dict`; a bare number is an older record's ``amax``."""
        if isinstance(data, int | float):
            return cls.symmetric(data)
        return cls(float(data["min"]), float(data["max"]), float(data["amax"]))


def act_qparams(value: float | ActRange, act: ActDtype) -> tuple[float, int]:
    """Per-tensor ``(scale, zero_point)`` of an activation type for a calibrated range or ``amax``."""
    rng = value if isinstance(value, ActRange) else ActRange.symmetric(value)
    if act is ActDtype.UINT8:
        lo, hi = min(rng.lo, 0.0), max(rng.hi, 0.0)  # zero must be exactly representable
        scale = max(hi - lo, _TINY) / 255.0
        return scale, int(min(max(round(-lo / scale), 0), 255))
    amax = max(float(rng.amax), _TINY)
    return (amax / FP8_MAX if act is ActDtype.FP8 else amax / 127.0), 0


def fake_quant_act(x: torch.Tensor, *, scale: float, act: ActDtype, zero_point: int = 0) -> torch.Tensor:
    """Fake-quantize an activation tensor with a fixed per-tensor scale (``fp16`` leaves it alone)."""
    if act is ActDtype.FP16:
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        # a half-precision scale would be rounded (or flushed to zero): the grid is float32's
        return fake_quant_act(x.float(), scale=scale, act=act, zero_point=zero_point).to(x.dtype)
    scale_t = torch.tensor(scale, dtype=x.dtype, device=x.device)
    if act is ActDtype.FP8:
        return _fake_fp8(x, scale_t)
    if act is ActDtype.UINT8:
        # same order as ONNX QuantizeLinear: round(x / scale) + zero point, then saturate
        codes = torch.clamp(torch.round(x / scale_t) + zero_point, 0, 255)
        return (codes - zero_point) * scale_t
    return _fake_int(x, scale_t, qmin=-128, qmax=127)


def weight_bits(weight: WeightDtype) -> int:
    """Storage bits per weight element."""
    return 4 if weight is WeightDtype.INT4 else 8
