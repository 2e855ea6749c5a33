"""Second moments of a stride-1 conv's input columns, by spatial offset instead of im2col.

For a dense ``kh x kw`` conv with stride 1, the im2col column of output position ``p`` holds the
input at ``p + (i, j)`` for every kernel offset ``(i, j)``, so the block of ``E[c c^T]`` that pairs
offsets ``(i, j)`` and ``(i', j')`` is a sum of ``x[p] x[p + d]^T`` with ``d = (i' - i, j' - j)``
over a window of positions that depends on ``(i, j)``. Every window is the whole image less a few
border rows and columns (where the padding puts zeros), so each block is the whole-image sum for
its ``d``, less the sums over the left-out border rows and columns, plus their corners (counted
twice). The whole-image sums for ``d`` and ``-d`` are transposes of each other: a 3x3 conv's
Hessian then takes 13 channel-by-channel products (and thin border ones) instead of one product
of the nine-times-wider im2col columns with themselves (81 channel blocks): about five times
fewer operations, and no im2col buffer. The result equals the im2col one up to float rounding
(the order of the sums differs).
"""

from __future__ import annotations

import torch
from torch import nn


def applies(layer: nn.Module) -> bool:
    """True for the convs this computes, and faster than im2col for: stride 1, no dilation, zero
    padding, kernel larger than 1x1 and at most 5 wide, several channels per group (a depthwise
    conv's im2col product is small already, and the offsets' Python bookkeeping grows with the
    kernel's area squared)."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.in_channels // layer.groups > 1
        and max(layer.kernel_size) <= 5
        and tuple(layer.kernel_size) != (1, 1)
        and tuple(layer.stride) == (1, 1)
        and tuple(layer.dilation) == (1, 1)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def _window(size: int, pad: int, kernel: int, offset: int) -> tuple[int, int]:
    """Input rows (or columns) that kernel offset ``offset`` reads over all output positions."""
    outputs = size + 2 * pad - kernel + 1
    return max(0, offset - pad), min(size, offset - pad + outputs)


class _Products:
    """Sums of ``x[p] x[p + d]^T`` (``[G, C/G, C/G]``) over the whole image, one border row, one
    border column or one corner, for the input ``[N, C, H, W]``; border ones made when first asked
    (each is needed only for the offsets whose windows leave that row or column out)."""

    def __init__(self, x: torch.Tensor, kernel: tuple[int, int], groups: int) -> None:
        self.x = x.transpose(0, 1).contiguous().float()  # [C, N, H, W]
        self.reach = (kernel[0] - 1, kernel[1] - 1)
        ry, rx = self.reach
        self.padded = nn.functional.pad(self.x, (rx, rx, ry, ry))
        self.groups = groups
        self.whole = {}
        for dy in range(-ry, ry + 1):
            for dx in range(-rx, rx + 1):
                if (dy, dx) >= (0, 0):  # the other half are transposes: sum x[p] x[p - d]^T
                    self.whole[(dy, dx)] = self._outer(self.x, self._at(dy, dx))
        for (dy, dx), product in list(self.whole.items()):
            self.whole[(-dy, -dx)] = product.transpose(1, 2)
        self._border: dict[tuple, torch.Tensor] = {}

    def _at(self, dy: int, dx: int) -> torch.Tensor:
        """``x[.., y + dy, x + dx]`` for every image position (zero outside the image)."""
        (ry, rx), (h, w) = self.reach, self.x.shape[-2:]
        return self.padded[:, :, ry + dy : ry + dy + h, rx + dx : rx + dx + w]

    def _outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per group, the sum over the other axes of ``a[c] b[c']`` (both ``[C, ...]``)."""
        g = self.groups
        a, b = a.reshape(g, a.shape[0] // g, -1), b.reshape(g, b.shape[0] // g, -1)
        return a @ b.transpose(1, 2)

    def border(self, d: tuple[int, int], row: int | None, col: int | None) -> torch.Tensor:
        """The sum over one row, one column, or (both given) one position."""
        key = (d, row, col)
        if key not in self._border:
            rows = slice(None) if row is None else row
            cols = slice(None) if col is None else col
            self._border[key] = self._outer(self.x[:, :, rows, cols], self._at(*d)[:, :, rows, cols])
        return self._border[key]


def _window_sums(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """``[K]``: the sum of each im2col column (channel-major, like ``unfold``)."""
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    h, w = x.shape[-2:]
    per_channel = x.float().sum(0)  # [C, H, W]
    sums = torch.empty(per_channel.shape[0], kh, kw, dtype=per_channel.dtype)  # [C, kh, kw]
    for i in range(kh):
        r0, r1 = _window(h, ph, kh, i)
        for j in range(kw):
            c0, c1 = _window(w, pw, kw, j)
            sums[:, i, j] = per_channel[:, r0:r1, c0:c1].sum((-2, -1))
    return sums.reshape(layer.groups, -1)


def column_moments(
    layer: nn.Conv2d, x: torch.Tensor, x_quant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sums over output positions of ``c c^T`` and ``c`` for the im2col columns of ``x_quant``,
    of ``c`` for those of ``x``, and their number; per group: ``[G, K, K]``, ``[G, K]``, ``[G, K]``."""
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    n, c, h, w = x.shape
    groups = layer.groups
    products = _Products(x_quant, (kh, kw), groups)
    per = c // groups
    hessian = torch.empty(groups, per, kh, kw, per, kh, kw, dtype=products.x.dtype)
    for i in range(kh):
        r0, r1 = _window(h, ph, kh, i)
        left_rows = [u for u in range(h) if not r0 <= u < r1]
        for j in range(kw):
            c0, c1 = _window(w, pw, kw, j)
            left_cols = [v for v in range(w) if not c0 <= v < c1]
            for i2 in range(kh):
                for j2 in range(kw):
                    d = (i2 - i, j2 - j)
                    block = products.whole[d].clone()
                    for u in left_rows:
                        block -= products.border(d, u, None)
                    for v in left_cols:
                        block -= products.border(d, None, v)
                        for u in left_rows:
                            block += products.border(d, u, v)
                    hessian[:, :, i, j, :, i2, j2] = block
    k = per * kh * kw
    count = n * (h + 2 * ph - kh + 1) * (w + 2 * pw - kw + 1)
    return hessian.reshape(groups, k, k), _window_sums(x_quant, layer), _window_sums(x, layer), count
