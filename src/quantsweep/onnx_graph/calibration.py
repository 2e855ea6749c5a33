"""Activation ranges of any tensors of an FP32 ONNX graph, from the calibration images.

A backend's placement quantizes tensors the Torch sweep never names (conv outputs for ONNX
Runtime's integer kernels), so ranges are taken on the exported graph itself: every requested
tensor becomes an extra graph output and the FP32 model runs once per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
import torch

from quantsweep.onnx_graph.ort_sessions import ort_session, with_outputs
from quantsweep.quant.numerics import ActRange

# tensors -> their calibrated ranges; computed on demand and cached (see :class:`RangeCache`)
RangeSource = Callable[[set[str]], Mapping[str, ActRange]]


class RangeCache:
    """A :data:`RangeSource` over one FP32 model and image set that measures each tensor once.

    ``preset`` ranges (the Torch calibrator's, for the tensors that feed quantized layers) are used
    as they are, so the artifacts quantize inputs as the sweep's simulation did; tensors no Torch
    layer reads (conv outputs, for ONNX Runtime's integer kernels) get their min/max here.
    """

    def __init__(
        self, model: onnx.ModelProto, images: torch.Tensor, *, preset: Mapping[str, ActRange] | None = None
    ) -> None:
        self.model, self.images = model, images
        self.found: dict[str, ActRange] = dict(preset or {})

    def __call__(self, tensors: set[str]) -> dict[str, ActRange]:
        missing = set(tensors) - set(self.found)
        self.found.update(tensor_ranges(self.model, self.images, missing))
        return {name: self.found[name] for name in tensors}

    def to_dict(self) -> dict[str, list[float]]:
        """Every range measured so far, JSON-ready."""
        return {name: r.to_dict() for name, r in sorted(self.found.items())}


def tensor_ranges(
    model: onnx.ModelProto, images: torch.Tensor, tensors: Iterable[str]
) -> dict[str, ActRange]:
    """``{tensor: range}`` over ``images`` (one run per image, batch 1, as the model is exported)."""
    wanted = sorted(set(tensors))
    if not wanted:
        return {}
    session = ort_session(with_outputs(model, wanted).SerializeToString())
    input_name = session.get_inputs()[0].name
    low = dict.fromkeys(wanted, np.inf)
    high = dict.fromkeys(wanted, -np.inf)
    for image in images:
        values = session.run(wanted, {input_name: image[None].numpy()})
        for name, value in zip(wanted, values, strict=True):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    return {name: ActRange(low[name], high[name], max(-low[name], high[name])) for name in wanted}
