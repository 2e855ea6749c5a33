"""Calibration passes in chunks of images, so memory does not grow with the number of images.

A pass that sends every calibration image through the network at once holds every intermediate
activation of every image: 128 images at 640 px held 12 GiB in the sweep and did not finish. Here
at most :func:`images_per_chunk` images run at once (32 at 320 px, 8 at 640 px):

- :func:`collect_alone`: each layer's statistics from its input in the float model, accumulated
  over the chunks (the sweep quantizes each layer alone).
- :func:`sequential_by_block`: layers quantized in execution order, each from its input with
  every earlier layer already quantized, as one pass over all images would give, but block by
  block: the block outputs of every chunk are kept (what the next blocks read), and a block is
  re-run once per layer it holds, up to that layer (an exception stops the block there).

With a single chunk the callers keep their one-pass path (same records, same arithmetic).
:class:`BlockStates` (every chunk's state between blocks) also carries block reconstruction
(quant/block_reconstruction.py) from block to block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from quantsweep.models.network import StagedNetwork
from quantsweep.quant.gptq import LayerStats, merge_stats

# images x pixels per chunk: 32 images at 320 px
CHUNK_PIXELS = 32 * 320 * 320

# (layer, its input) -> the input the layer computes with (quantized as the plan says)
InputQuant = Callable[[str, torch.Tensor], torch.Tensor]
# (layer name, layer, input, quantized input) -> statistics of this chunk
StatsOf = Callable[[str, nn.Module, torch.Tensor, torch.Tensor], LayerStats]


def images_per_chunk(images: torch.Tensor) -> int:
    """How many of these images one pass runs at once."""
    return max(1, CHUNK_PIXELS // (images.shape[-1] * images.shape[-2]))


def chunks_of(images: torch.Tensor) -> list[torch.Tensor]:
    """``images`` in chunks of :func:`images_per_chunk`."""
    size = images_per_chunk(images)
    return [images[i : i + size] for i in range(0, len(images), size)]


def collect_alone(
    network: StagedNetwork, chunks: Sequence[torch.Tensor], names: Sequence[str], stats_of: StatsOf
) -> dict[str, LayerStats]:
    """Each named layer's statistics from its input in the float model, over every chunk."""
    found: dict[str, LayerStats] = {}

    def make_hook(name: str):
        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            found[name] = merge_stats(found.get(name), stats_of(name, layer, inputs[0], inputs[0]))

        return hook

    module = network.module
    handles = [module.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            for chunk in chunks:
                network.run(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return found


class _Reached(Exception):
    """Raised by the hook of the layer a pass was run for: the rest of the block is not needed."""


class BlockStates:
    """Every chunk's state before one block: its previous output and the outputs kept so far."""

    def __init__(self, network: StagedNetwork, chunks: Sequence[torch.Tensor]) -> None:
        self.network = network
        self.states: list[tuple[Any, list[Any]]] = [(chunk, []) for chunk in chunks]

    def step(self, index: int, which: int) -> Any:
        """Block ``index``'s output for chunk ``which`` (gradients as the caller's mode has them)."""
        previous, saved = self.states[which]
        return self.network.step(index, previous, saved)

    def run(self, index: int, hooks: Mapping[str, Callable] | None = None) -> list[Any]:
        """Run block ``index`` on every chunk with ``hooks`` on the named layers; the outputs (a
        chunk whose pass a hook stopped gives None)."""
        module = self.network.module
        hooks = hooks or {}
        handles = [module.get_submodule(n).register_forward_pre_hook(h) for n, h in hooks.items()]
        outputs = []
        try:
            with torch.no_grad():
                for which in range(len(self.states)):
                    try:
                        outputs.append(self.step(index, which))
                    except _Reached:
                        outputs.append(None)
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    def advance(self, index: int, outputs: list[Any]) -> None:
        """Record block ``index``'s outputs as every chunk's new state."""
        keep = index in self.network.keep
        pairs = zip(outputs, self.states, strict=True)
        self.states = [(out, [*saved, out if keep else None]) for out, (_, saved) in pairs]


def _call_order(blocks: BlockStates, index: int, names: Sequence[str]) -> list[str]:
    """The named layers of block ``index`` in the order the block calls them (first chunk)."""
    order: list[str] = []

    def make_hook(name: str):
        def hook(_layer: nn.Module, _inputs: tuple[torch.Tensor, ...]) -> None:
            if name not in order:
                order.append(name)

        return hook

    first = BlockStates(blocks.network, [])
    first.states = blocks.states[:1]
    first.run(index, {name: make_hook(name) for name in names})
    return order


def sequential_by_block(
    network: StagedNetwork,
    chunks: Sequence[torch.Tensor],
    names: Sequence[str],
    *,
    stats_of: StatsOf,
    input_quant: InputQuant,
    quantize: Callable[[str, nn.Module, LayerStats], None],
) -> None:
    """Quantize the named layers in execution order over every chunk (module docstring);
    ``quantize`` sets a layer's quantized weights once its statistics are complete."""
    blocks = BlockStates(network, chunks)
    by_block: dict[int, list[str]] = {}
    for name in names:
        by_block.setdefault(network.block_of(name), []).append(name)
    for index in range(len(network.blocks)):
        done: list[str] = []
        for name in _call_order(blocks, index, by_block.get(index, [])):
            found: dict[str, LayerStats] = {}
            collect = _collecting_hook(name, found, stats_of=stats_of, input_quant=input_quant)
            blocks.run(index, {**_quantizing_hooks(done, input_quant), name: collect})
            quantize(name, network.module.get_submodule(name), found[name])
            done.append(name)
        blocks.advance(index, blocks.run(index, _quantizing_hooks(done, input_quant)))


def _collecting_hook(name: str, found: dict[str, LayerStats], *, stats_of: StatsOf, input_quant: InputQuant):
    """Accumulate ``name``'s statistics into ``found`` and stop the block's pass there."""

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x_quant = input_quant(name, inputs[0])
        found[name] = merge_stats(found.get(name), stats_of(name, layer, inputs[0], x_quant))
        raise _Reached

    return hook


def _quantizing_hooks(names: Sequence[str], input_quant: InputQuant) -> dict[str, Callable]:
    def make_hook(name: str):
        def hook(_layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (input_quant(name, inputs[0]), *inputs[1:])

        return hook

    return {name: make_hook(name) for name in names}
