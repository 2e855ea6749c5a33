"""Quantizers on a module's output, for tensors quantized where they are produced.

A conv's input quantizer leaves every other reader of the same tensor in float: a C2f bottleneck's
residual Add reads the Split half its first conv reads quantized. Runtimes that quantize a tensor
once, where it is produced (OpenVINO fuses one FakeQuantize into the op that makes it; NNCF places
them so), run that Add on the codes. To simulate exactly what such an artifact computes, the
module that produces the tensor gets a fake quantizer on its output, with the range its readers
share (:mod:`quantsweep.onnx_graph.scale_groups`), on while any of those readers is quantized.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quantsweep.core.config import ActDtype
from quantsweep.core.records import read_json, write_json
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act

PRODUCERS_FILE = "producer_quants.json"
PRODUCERS_KIND = "producer_quants"


@dataclass(frozen=True)
class ProducerQuant:
    """One module output quantized where it is produced.

    ``tensor`` is the same value in the ONNX graph; ``readers`` are the quantized layers (Torch
    names) that read it, directly or through Split/Concat, and ``nodes`` their ONNX nodes.
    """

    module: str
    tensor: str
    range: ActRange
    readers: tuple[str, ...]
    nodes: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "module": self.module,
            "tensor": self.tensor,
            "range": self.range.to_dict(),
            "readers": list(self.readers),
            "nodes": list(self.nodes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ProducerQuant:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["module"],
            data["tensor"],
            ActRange.from_dict(data["range"]),
            tuple(data["readers"]),
            tuple(data["nodes"]),
        )


def write_producers(run_dir: Path, producers: Sequence[ProducerQuant]) -> None:
    """Record a run directory's producer quantizers."""
    write_json(
        Path(run_dir) / PRODUCERS_FILE, PRODUCERS_KIND, {"producers": [p.to_dict() for p in producers]}
    )


def read_producers(run_dir: Path) -> list[ProducerQuant]:
    """A run directory's producer quantizers (none for runs made before they existed)."""
    path = Path(run_dir) / PRODUCERS_FILE
    if not path.is_file():
        return []
    return [ProducerQuant.from_dict(p) for p in read_json(path, PRODUCERS_KIND)["producers"]]


def active_act(producer: ProducerQuant, acts: Mapping[str, ActDtype]) -> ActDtype | None:
    """The activation type of the first reader quantized in ``acts`` (layer -> simulated type), or
    None when no reader is: then the tensor stays float, as the artifact leaves it."""
    return next((acts[r] for r in producer.readers if acts.get(r, ActDtype.FP16) is not ActDtype.FP16), None)


def active_nodes(producers: Sequence[ProducerQuant], quantized: set[str]) -> dict[str, ProducerQuant]:
    """``{ONNX tensor: producer}`` for producers read by a node in ``quantized`` (ONNX node names)."""
    return {p.tensor: p for p in producers if quantized.intersection(p.nodes)}


def _output_hook(rng: ActRange, act: ActDtype):
    scale, zero = act_qparams(rng, act)
    lo, hi = {ActDtype.UINT8: (0, 255), ActDtype.INT8: (-128, 127)}.get(act, (None, None))

    def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        quantized = fake_quant_act(output, scale=scale, act=act, zero_point=zero)
        if lo is None or not output.requires_grad:
            return quantized
        # straight through the rounding, not where clipped (as the distillation's input quantizers)
        codes = output.detach() / scale + zero
        inside = ((codes > lo) & (codes < hi)).to(output.dtype)
        return quantized.detach() + (output - output.detach()) * inside

    return hook


@contextlib.contextmanager
def quantized_producers(
    module: nn.Module, producers: Sequence[ProducerQuant], acts: Mapping[str, ActDtype]
) -> Iterator[None]:
    """Fake-quantize each active producer's module output inside the block (see :func:`active_act`)."""
    handles = []
    try:
        for producer in producers:
            act = active_act(producer, acts)
            if act is not None:
                target = module.get_submodule(producer.module)
                handles.append(target.register_forward_hook(_output_hook(producer.range, act)))
        yield
    finally:
        for handle in handles:
            handle.remove()
