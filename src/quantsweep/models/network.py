"""A framework-neutral description of a detector: blocks wired by index, and its quantizable layers.

The sweep only needs three things from a model: run it, re-run it from any block given the outputs of
the earlier blocks, and know which block each quantizable layer lives in. Any ``nn.Module`` whose
forward is a list of blocks, each reading the previous output or saved earlier outputs, fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantsweep.core.config import ComputeDtype

QUANTIZABLE_TYPES = (nn.Conv2d, nn.Linear)
TORCH_DTYPES = {ComputeDtype.FLOAT32: torch.float32, ComputeDtype.FLOAT16: torch.float16}


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer on the inference path."""

    name: str
    kind: str
    block_index: int
    weight_shape: tuple[int, ...]
    groups: int
    params: int
    macs: int
    exec_order: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "block_index": self.block_index,
            "weight_shape": list(self.weight_shape),
            "groups": self.groups,
            "params": self.params,
            "macs": self.macs,
            "exec_order": self.exec_order,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "weight_shape": tuple(data["weight_shape"])})


@dataclass
class StagedNetwork:
    """Blocks run in order; ``sources[i]`` is -1 (previous output), an index, or a list of them.

    ``keep`` holds the indices whose outputs later blocks read. ``finish`` turns the last block's
    output into the model's output (identity by default).
    """

    module: nn.Module
    blocks: Sequence[nn.Module]
    block_names: Sequence[str]
    sources: Sequence[int | list[int]]
    keep: frozenset[int]
    finish: Callable[[Any], Any] = lambda out: out
    metadata: dict[str, str] = field(default_factory=dict)  # written into exported ONNX models
    # blocks run in float32 whatever the others run in (the head, under a half compute dtype)
    float_blocks: frozenset[int] = frozenset()

    def _inputs(self, index: int, previous: Any, saved: Sequence[Any]) -> Any:
        source = self.sources[index]
        if source == -1:
            inputs = previous
        elif isinstance(source, int):
            inputs = saved[source]
        else:
            inputs = [previous if j == -1 else saved[j] for j in source]
        return _as_float32(inputs) if index in self.float_blocks else inputs

    def run(self, images: torch.Tensor, *, record: bool = False) -> tuple[Any, list[Any]]:
        """Run end to end; with ``record`` also return every block's output (for :meth:`resume`)."""
        outputs: list[Any] = []
        x: Any = images
        for index, block in enumerate(self.blocks):
            x = block(self._inputs(index, x, outputs))
            outputs.append(x if record or index in self.keep else None)
        return self.finish(x), (outputs if record else [])

    def step(self, index: int, previous: Any, saved: Sequence[Any]) -> Any:
        """Run block ``index`` alone on the previous block's output and the outputs it reads."""
        return self.blocks[index](self._inputs(index, previous, saved))

    def resume(self, start: int, recorded: Sequence[Any]) -> Any:
        """Run blocks ``start..end`` reusing the recorded outputs of blocks ``0..start-1``.

        Gives exactly what :meth:`run` gives when nothing before ``start`` changed.
        """
        if start == 0:
            raise ValueError("resume(0) is a full run; call run()")
        outputs = list(recorded[:start])
        x = outputs[start - 1]
        for index in range(start, len(self.blocks)):
            x = self.blocks[index](self._inputs(index, x, outputs))
            outputs.append(x)
        return self.finish(x)

    def block_of(self, layer_name: str) -> int:
        """Index of the block that owns ``layer_name`` (longest matching prefix)."""
        best, best_len = -1, -1
        for index, prefix in enumerate(self.block_names):
            if (layer_name == prefix or layer_name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
        if best < 0:
            raise KeyError(f"layer {layer_name} is in no block")
        return best


def cpu_layout(images: Any) -> Any:
    """``images`` (a CPU image batch) in channels-last layout, anything else unchanged.

    Every conv after it then runs channels-last (PyTorch follows the input's layout): a YOLOv10m
    forward on 16 images at 320 px takes 1.23 s instead of 1.55 s on 2 cores, with outputs equal
    to float rounding (1.6e-7 relative). The sweep's measurement passes use it; the passes that
    make an artifact's numbers (calibration, GPTQ, distillation) do not, so that the artifacts do
    not change with it: YOLOv10s's ONNX Runtime ``k0`` scored 0.7545 instead of 0.7531 with it,
    and distillation from there gained nothing (docs/figures.md, twenty-sixth session).
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4 and images.device.type == "cpu":
        return images.contiguous(memory_format=torch.channels_last)
    return images


def network_dtype(network: StagedNetwork) -> torch.dtype:
    """The dtype the network computes in: that of its first floating-point parameter."""
    for param in network.module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _as_float32(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.float() if inputs.is_floating_point() else inputs
    if isinstance(inputs, list):
        return [_as_float32(x) for x in inputs]
    return inputs


def set_compute_dtype(network: StagedNetwork, dtype: ComputeDtype) -> None:
    """Convert the network to ``dtype`` in place (on its device), all but its head for float16.

    The head (last block) stays float32: box coordinates in pixels rounded to float16 (steps of
    0.25-0.5 px at 320-640 px) would bury a layer's box error in rounding noise. The head's
    anchors and strides (grid points at x.5 and 8/16/32, exact in float16) are plain tensors that
    ``Module.to`` leaves in float16; they promote to float32 in the head's arithmetic.
    """
    dtype = ComputeDtype(dtype)
    network.module.to(dtype=TORCH_DTYPES[dtype])
    last = len(network.blocks) - 1
    network.float_blocks = frozenset() if dtype is ComputeDtype.FLOAT32 else frozenset({last})
    network.blocks[last].to(dtype=torch.float32)


def enumerate_layers(network: StagedNetwork, sample: torch.Tensor) -> list[LayerInfo]:
    """Quantizable layers that run on ``sample``, in execution order, with MACs at that input size.

    Layers that exist but never execute (e.g. an unused head branch) are left out.
    """
    names = {module: name for name, module in network.module.named_modules()}
    seen: dict[str, LayerInfo] = {}

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        name = names[module]
        if name in seen:
            return
        weight = module.weight
        out_elems = output[0].numel()  # one image
        if isinstance(module, nn.Conv2d):
            per_output = weight.shape[1] * weight.shape[2] * weight.shape[3]
            groups = module.groups
        else:
            per_output = weight.shape[1]
            groups = 1
        seen[name] = LayerInfo(
            name=name,
            kind=type(module).__name__,
            block_index=network.block_of(name),
            weight_shape=tuple(weight.shape),
            groups=groups,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=int(out_elems * per_output),
            exec_order=len(seen),
        )

    handles = [
        m.register_forward_hook(hook) for m in network.module.modules() if isinstance(m, QUANTIZABLE_TYPES)
    ]
    try:
        with torch.no_grad():
            network.run(sample[:1])
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


@dataclass
class LoadedModel:
    """A BN-folded detector in eval mode plus what the rest of the tool needs to know about it."""

    name: str
    source: str
    network: StagedNetwork
    class_names: dict[int, str]
    end_to_end: bool
