"""Weight grids (symmetric or asymmetric, max-based or MSE-chosen) and the quantized-weight record.

A :class:`QuantizedWeight` is the one description of a quantized layer that both the Torch fake
quantization and the ONNX writer read: ``(codes - zero_point) * scale`` is the weight both use,
``bias`` (when set) the bias both use. Symmetric weights are signed codes without a zero point
(INT8 -128..127 with scale ``amax/127``, INT4 -8..7 with ``amax/7``, FP8 E4M3 ``amax/448``);
asymmetric ones are unsigned codes (UINT8 0..255, UINT4 0..15) with a zero point per scale group,
which ONNX DequantizeLinear supports for both widths. In an asymmetric tensor a symmetric group is
stored with zero point 2**(bits-1), which is the same grid shifted, so groups can mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from quantsweep.core.config import Granularity, QuantFormat, WeightDtype, WeightSymmetry
from quantsweep.quant.numerics import FP8_MAX, INT_LIMITS, weight_scale

_TINY = 1e-12
UNSIGNED_MAX = {WeightDtype.INT8: 255, WeightDtype.INT7: 127, WeightDtype.INT4: 15}
# MSE search: clipping ratios below the maximum, and scales that put the maximum on code q < qmax
# (they represent integer-valued weights such as the DFL conv's 0..15 exactly: 15/120 = 1/8).
_CLIP_RATIOS = torch.linspace(0.4, 1.0, 31).tolist()


@dataclass(frozen=True)
class QuantizedWeight:
    """One layer's quantized weight: codes, scale and zero point shaped like ``weight_scale`` gives.

    ``codes`` has the weight's shape (integer values in float32, or ``float8_e4m3fn``); ``scale``
    and ``zero_point`` broadcast against it (per tensor, per output channel, or per block of input
    channels, repeated along the block). ``zero_point`` is None for signed symmetric codes.
    ``bias`` is the corrected bias (None keeps the layer's own).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    fmt: QuantFormat
    bias: torch.Tensor | None = None
    method: str = "rtn"

    @property
    def unsigned(self) -> bool:
        """True when the codes are unsigned (UINT8/UINT4) with a zero point."""
        return self.zero_point is not None

    def dequantize(self) -> torch.Tensor:
        """The weight the codes stand for, in float32."""
        return decode(self.codes, self.scale, self.zero_point)

    def to(self, device: str | torch.device) -> QuantizedWeight:
        """The same record with its tensors on ``device``."""
        zero, bias = self.zero_point, self.bias
        return replace(
            self,
            codes=self.codes.to(device),
            scale=self.scale.to(device),
            zero_point=None if zero is None else zero.to(device),
            bias=None if bias is None else bias.to(device),
        )


@dataclass(frozen=True)
class Grid:
    """A weight grid: scale and (asymmetric) zero point, broadcastable to the weight."""

    scale: torch.Tensor
    zero: torch.Tensor | None
    dtype: WeightDtype


def encode(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dtype: WeightDtype
) -> torch.Tensor:
    """Codes of ``w`` on the grid (round half to even and saturate, as ONNX QuantizeLinear does)."""
    if dtype is WeightDtype.FP8:
        return torch.clamp(w / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    codes = torch.round(w / scale)
    if zero is None:
        qmin, qmax, _ = INT_LIMITS[dtype]
        return torch.clamp(codes, qmin, qmax)
    return torch.clamp(codes + zero, 0, UNSIGNED_MAX[dtype])


def decode(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """``(codes - zero) * scale`` in float32, as DequantizeLinear computes it."""
    values = codes.float()
    if zero is not None:
        values = values - zero
    return values * scale


def fake(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``w`` rounded to the grid (quantize, then dequantize)."""
    return decode(encode(w, grid.scale, grid.zero, grid.dtype), grid.scale, grid.zero)


def group_reduce(x: torch.Tensor, fmt: QuantFormat, op: str) -> torch.Tensor:
    """``x`` reduced (``amax``, ``amin`` or ``sum``) over each scale group, broadcastable to ``x``."""
    if fmt.granularity is Granularity.PER_LAYER:
        return getattr(x, op)().reshape([1] * x.dim())
    if fmt.int4_block_size is None:
        return getattr(x, op)(dim=tuple(range(1, x.dim())), keepdim=True)
    # blocks along axis 1 (input channels); every other index keeps its own value, as ONNX
    # blocked DequantizeLinear defines it
    block = fmt.int4_block_size
    out_ch, in_ch = x.shape[:2]
    blocks = -(-in_ch // block)
    pad_value = {"amax": float("-inf"), "amin": float("inf"), "sum": 0.0}[op]
    padded = torch.nn.functional.pad(x, [0, 0] * (x.dim() - 2) + [0, blocks * block - in_ch], value=pad_value)
    grouped = padded.reshape(out_ch, blocks, block, *x.shape[2:])
    return getattr(grouped, op)(dim=2).repeat_interleave(block, dim=1)[:, :in_ch]


def _ratios(dtype: WeightDtype, *, search: bool) -> list[float]:
    if not search:
        return [1.0]
    if dtype is WeightDtype.FP8:
        return _CLIP_RATIOS
    levels = int(INT_LIMITS[dtype][2])
    return sorted(set(_CLIP_RATIOS) | {levels / q for q in range(-(-levels // 2), levels)})


def _symmetric_grid(weight: torch.Tensor, fmt: QuantFormat, ratio: float) -> Grid:
    return Grid(weight_scale(weight, fmt) * ratio, None, fmt.weight)


def _asymmetric_grid(weight: torch.Tensor, fmt: QuantFormat, ratio: float) -> Grid:
    levels = UNSIGNED_MAX[fmt.weight]
    lo = group_reduce(weight, fmt, "amin").clamp_max(0.0)
    hi = group_reduce(weight, fmt, "amax").clamp_min(0.0)
    scale = ((hi - lo) * ratio / levels).clamp_min(_TINY)
    zero = torch.clamp(torch.round(-lo * ratio / scale), 0, levels)
    return Grid(scale, zero, fmt.weight)


def searched_grid(
    weight: torch.Tensor,
    fmt: QuantFormat,
    *,
    symmetric: bool,
    search: bool,
    importance: torch.Tensor | None = None,
) -> Grid:
    """The grid with the lowest ``importance``-weighted squared error per scale group.

    Without ``search`` this is the max-based grid (round to nearest). ``importance`` (broadcastable
    to the weight, e.g. the mean square of each input column on calibration data) makes the error
    a diagonal estimate of the layer's output error instead of the plain weight error.
    """
    make = _symmetric_grid if symmetric else _asymmetric_grid
    best: Grid | None = None
    best_err = None
    for ratio in _ratios(fmt.weight, search=search):
        grid = make(weight, fmt, ratio)
        sq = (fake(weight, grid) - weight).pow(2)
        err = group_reduce(sq if importance is None else sq * importance, fmt, "sum")
        if best is None:
            best, best_err = grid, err
            continue
        better = err < best_err
        zero = None if grid.zero is None else torch.where(better, grid.zero, best.zero)
        best = Grid(torch.where(better, grid.scale, best.scale), zero, fmt.weight)
        best_err = torch.where(better, err, best_err)
    assert best is not None
    return best


def candidate_grids(
    weight: torch.Tensor,
    fmt: QuantFormat,
    *,
    symmetry: WeightSymmetry,
    search: bool,
    importance: torch.Tensor | None = None,
) -> list[Grid]:
    """The grids a layer chooses among: max-based (and, with ``search``, MSE-chosen) per symmetry."""
    symmetric_options = {
        WeightSymmetry.SYMMETRIC: (True,),
        WeightSymmetry.ASYMMETRIC: (False,),
        WeightSymmetry.AUTO: (True, False),
    }[symmetry]
    if fmt.weight is WeightDtype.FP8:
        symmetric_options = (True,)  # FP8 has no zero point
    elif fmt.weight in (WeightDtype.INT8, WeightDtype.INT7) and symmetry is WeightSymmetry.AUTO:
        # INT8 kernels (TensorRT, ONNX Runtime's QLinearConv) take symmetric weights, and at 8 bits
        # a searched symmetric scale already represents integer weights such as the DFL's exactly
        symmetric_options = (True,)
    grids = []
    for symmetric in symmetric_options:
        grids.append(searched_grid(weight, fmt, symmetric=symmetric, search=False))
        if search:
            grids.append(searched_grid(weight, fmt, symmetric=symmetric, search=True, importance=importance))
    return grids


def merge_grids(grids: Sequence[Grid], choice: torch.Tensor) -> Grid:
    """One grid taking, per output channel, the grid ``choice[channel]`` indexes.

    Symmetric grids join an asymmetric mix with zero point 2**(bits-1) (the same grid, unsigned).
    Per-layer grids have one scale for the whole tensor: the caller picks one grid for them.
    """
    dtype = grids[0].dtype
    pick = choice.reshape(-1, *([1] * (grids[0].scale.dim() - 1)))
    shape = grids[0].scale.shape
    if torch.broadcast_shapes(shape, pick.shape) != shape:
        raise ValueError("per-channel choice on a per-layer grid; pick one grid instead")
    scale = torch.zeros(shape, device=grids[0].scale.device)
    any_asym = any(g.zero is not None and bool((choice == i).any()) for i, g in enumerate(grids))
    zero = torch.zeros(shape, device=scale.device) if any_asym else None
    for index, grid in enumerate(grids):
        mask = (pick == index).expand(shape)
        scale = torch.where(mask, grid.scale.expand(shape), scale)
        if zero is not None:
            own = (
                grid.zero
                if grid.zero is not None
                else torch.full((), UNSIGNED_MAX[dtype] // 2 + 1.0, device=scale.device)
            )
            zero = torch.where(mask, own.expand(shape), zero)
    return Grid(scale, zero, dtype)
