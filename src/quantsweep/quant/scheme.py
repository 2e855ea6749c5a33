"""Quantize many layers at once from calibration images: a whole scheme, or each layer alone.

- :func:`quantize_scheme` (what the artifacts carry): layers in execution order, each one's
  statistics taken from its input as the model sees it with every earlier layer of the scheme
  already quantized (weights, corrected biases and input activations), so GPTQ and bias correction
  also compensate the error arriving from upstream. One forward pass over the images, or, when
  they are many or large, block by block over chunks of them (quant/streaming.py).
- :func:`quantize_each_alone` (what the sweep measures): every layer from its input in the float
  model, for every format at once; a sweep measures a layer alone, so its upstream is float.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from quantsweep.core.config import ActDtype, QuantFormat, WeightQuantConfig
from quantsweep.models.network import StagedNetwork
from quantsweep.quant.gptq import LayerStats, layer_stats
from quantsweep.quant.layer_quant import WEIGHT_METHODS, quantize_layer
from quantsweep.quant.numerics import ActRange, act_qparams, fake_quant_act
from quantsweep.quant.producer_quant import ProducerQuant, quantized_producers
from quantsweep.quant.recovery import recover
from quantsweep.quant.streaming import chunks_of, collect_alone, sequential_by_block
from quantsweep.quant.weights import QuantizedWeight

LOG = logging.getLogger(__name__)
Ranges = Mapping[str, float | ActRange] | None


def needs_statistics(config: WeightQuantConfig) -> bool:
    """True when the method needs calibration inputs (anything beyond plain round to nearest)."""
    return WEIGHT_METHODS[config.method].needs_statistics or config.bias_correction


def _quantized_input(name: str, x: torch.Tensor, act: ActDtype, act_ranges: Ranges) -> torch.Tensor:
    if act is ActDtype.FP16:
        return x
    if act_ranges is None or name not in act_ranges:
        raise ValueError(f"no calibrated activation range for {name}")
    scale, zero_point = act_qparams(act_ranges[name], act)
    return fake_quant_act(x, scale=scale, act=act, zero_point=zero_point)


def _drive(network: StagedNetwork, images: torch.Tensor, hooks: Mapping[str, Callable]) -> None:
    module = network.module
    handles = [module.get_submodule(name).register_forward_pre_hook(hook) for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            network.run(images)
    finally:
        for handle in handles:
            handle.remove()


def _stats(_name: str, layer: nn.Module, x: torch.Tensor, x_quant: torch.Tensor) -> LayerStats:
    return layer_stats(layer, x, x_quant)


def _stats_under(
    name: str, layer: nn.Module, x: torch.Tensor, _x: torch.Tensor, *, act: ActDtype, act_ranges: Ranges
) -> LayerStats:
    return layer_stats(layer, x, _quantized_input(name, x, act, act_ranges))


def _set_weights(layer: nn.Module, record: QuantizedWeight, saved: list) -> None:
    """Put ``record``'s dequantized weight (and corrected bias) in ``layer``, the originals in ``saved``."""
    saved.append((layer.weight, layer.weight.data))
    layer.weight.data = record.dequantize().to(layer.weight.dtype)
    if record.bias is not None:
        saved.append((layer.bias, layer.bias.data))
        layer.bias.data = record.bias.to(layer.bias.dtype)


def quantize_scheme(
    network: StagedNetwork,
    assignment: Mapping[str, QuantFormat],
    images: torch.Tensor,
    *,
    config: WeightQuantConfig,
    act_ranges: Ranges = None,
    on_layer: Callable[[str], None] | None = None,
    producers: Sequence[ProducerQuant] = (),
) -> dict[str, QuantizedWeight]:
    """Records for every layer of ``assignment``, quantized sequentially in execution order.

    The model is left as it was. Activation ranges are the float model's (calibrated once).
    ``on_layer`` is told each layer's name once it is quantized (a progress bar). ``producers``:
    module outputs quantized where they are made, as the artifacts do.
    """
    started = time.perf_counter()
    module = network.module
    if not needs_statistics(config):
        records = {
            n: quantize_layer(module.get_submodule(n), f, config=config) for n, f in assignment.items()
        }
        LOG.info(
            "quantized %d layers (%s) in %.1f s",
            len(records),
            config.method.value,
            time.perf_counter() - started,
        )
        return records
    quantizer = _LayerQuantizer(assignment, config=config, act_ranges=act_ranges, on_layer=on_layer)
    acts = {name: fmt.act for name, fmt in assignment.items()}
    try:
        with quantized_producers(module, producers, acts):
            _sequential(
                network,
                chunks_of(images),
                list(assignment),
                make_hook=quantizer.make_hook,
                input_quant=quantizer.input_quant,
                quantize=quantizer.quantize,
            )
    finally:
        quantizer.restore()
    missing = set(assignment) - set(quantizer.records)
    if missing:
        raise ValueError(f"layers never ran on the calibration images: {sorted(missing)[:5]}")
    LOG.info(
        "quantized %d layers sequentially (%s) in %.1f s",
        len(quantizer.records),
        config.method.value,
        time.perf_counter() - started,
    )
    return quantizer.records


class _LayerQuantizer:
    """Quantizes each layer as the sequential pass reaches it and runs the rest of the pass on its
    quantized weights (``restore`` puts the float weights back)."""

    def __init__(
        self, assignment: Mapping[str, QuantFormat], *, config, act_ranges: Ranges, on_layer
    ) -> None:
        self.assignment = assignment
        self.config = config
        self.act_ranges = act_ranges
        self.on_layer = on_layer  # told each layer's name once it is quantized (a progress bar)
        self.records: dict[str, QuantizedWeight] = {}
        self.saved: list[tuple[nn.Parameter, torch.Tensor]] = []

    def quantize(self, name: str, layer: nn.Module, stats: LayerStats) -> None:
        """Quantize ``layer`` from ``stats`` and set its weights to the result."""
        self.records[name] = quantize_layer(layer, self.assignment[name], config=self.config, stats=stats)
        _set_weights(layer, self.records[name], self.saved)
        if self.on_layer is not None:
            self.on_layer(name)

    def input_quant(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the layer's quantized input reads it."""
        return _quantized_input(name, x, self.assignment[name].act, self.act_ranges)

    def make_hook(self, name: str):
        """A forward pre-hook that quantizes the layer from its input, then feeds it the quantized input."""

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x_quant = self.input_quant(name, inputs[0])
            self.quantize(name, layer, layer_stats(layer, inputs[0], x_quant))
            return (x_quant, *inputs[1:])

        return hook

    def restore(self) -> None:
        """The float weights back, in reverse order of setting."""
        for param, original in reversed(self.saved):
            param.data = original


def _sequential(network, chunks, names, *, make_hook, input_quant, quantize) -> None:
    """One pass (one chunk) with a hook per layer, or block by block over several chunks."""
    if len(chunks) == 1:  # one pass over every image
        _drive(network, chunks[0], {name: make_hook(name) for name in names})
    else:
        sequential_by_block(
            network, chunks, names, stats_of=_stats, input_quant=input_quant, quantize=quantize
        )


def quantize_each_alone(
    network: StagedNetwork,
    layer_names: Sequence[str],
    images: torch.Tensor,
    *,
    formats: Sequence[QuantFormat],
    config: WeightQuantConfig,
    act_ranges: Ranges = None,
) -> dict[str, dict[str, QuantizedWeight]]:
    """``{format name: {layer: record}}``, each layer quantized from its input in the float model."""
    module = network.module
    records: dict[str, dict[str, QuantizedWeight]] = {fmt.name: {} for fmt in formats}
    if not needs_statistics(config):
        for name in layer_names:
            for fmt in formats:
                records[fmt.name][name] = quantize_layer(module.get_submodule(name), fmt, config=config)
        return records

    def make_hook(name: str):
        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            stats: dict[ActDtype, LayerStats] = {}
            for fmt in formats:
                if fmt.act not in stats:
                    x_quant = _quantized_input(name, inputs[0], fmt.act, act_ranges)
                    stats[fmt.act] = layer_stats(layer, inputs[0], x_quant)
                records[fmt.name][name] = quantize_layer(layer, fmt, config=config, stats=stats[fmt.act])

        return hook

    chunks = chunks_of(images)
    if len(chunks) > 1:  # statistics accumulated over chunks, then every layer quantized
        for act in dict.fromkeys(fmt.act for fmt in formats):
            stats_of = functools.partial(_stats_under, act=act, act_ranges=act_ranges)
            found = collect_alone(network, chunks, layer_names, stats_of)
            for fmt in (f for f in formats if f.act is act):
                for name in layer_names:
                    layer = module.get_submodule(name)
                    records[fmt.name][name] = quantize_layer(layer, fmt, config=config, stats=found[name])
        return records
    _drive(network, images, {name: make_hook(name) for name in layer_names})
    return records


def save_records(path: Path, records: Mapping[str, QuantizedWeight]) -> None:
    """Write records (codes, scales, zero points, biases) for a later stage, as plain tensors."""
    state = {
        name: {
            "codes": r.codes,
            "scale": r.scale,
            "zero_point": r.zero_point,
            "bias": r.bias,
            "fmt": r.fmt.to_dict(),
            "method": r.method,
        }
        for name, r in records.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_records(path: Path) -> dict[str, QuantizedWeight]:
    """Inverse of :func:`save_records` (tensors only: ``weights_only`` loading runs no code)."""
    state = torch.load(path, weights_only=True)
    return {
        name: QuantizedWeight(
            s["codes"], s["scale"], s["zero_point"], QuantFormat.from_dict(s["fmt"]), s["bias"], s["method"]
        )
        for name, s in state.items()
    }


@contextlib.contextmanager
def _no_bar(_total: int, _label: str) -> Iterator[Callable[[str], None]]:
    yield lambda _name: None


WEIGHTS_DIR = "quantized_weights"
COSTS_NAME, COSTS_KIND = "costs.json", "quantizer_costs"  # inside WEIGHTS_DIR: settings and seconds


def records_path(directory: Path, fmt: QuantFormat) -> Path:
    """Where the records of one format live inside ``directory``."""
    return Path(directory) / f"{fmt.name.replace('/', '_')}.pt"


class SchemeRecords:
    """The records schemes take their quantized layers from: one sequential pass per format.

    Each format's pass quantizes every layer (in execution order, as :func:`quantize_scheme`), so
    a scheme that keeps some layers in float reuses records whose statistics saw those layers
    quantized: one pass per format instead of one per scheme and search trial (docs/decisions.md).
    Records are written to ``directory`` so later stages (the search) use the same ones. The
    quantizer's recovery method (quant/recovery.py) runs on each format's records before they are
    written.
    """

    def __init__(
        self,
        directory: Path,
        network: StagedNetwork,
        images: torch.Tensor,
        config: WeightQuantConfig,
        act_ranges: Ranges,
        *,
        layer_names: Sequence[str],
        asymmetric: bool = False,
        progress: Callable[[int, str], AbstractContextManager[Callable[[str], None]]] | None = None,
        producers: Sequence[ProducerQuant] = (),
    ) -> None:
        self.directory, self.network, self.images = Path(directory), network, images
        self.config, self.act_ranges, self.layer_names = config, act_ranges, list(layer_names)
        self.asymmetric = asymmetric  # the targets write INT8 activations as UINT8 (recovery simulates it)
        self.progress = progress  # a bar per pass: at 640 px with 128 images a pass takes minutes
        self.producers = list(producers)  # module outputs the artifacts quantize where made
        self.cache: dict[str, dict[str, QuantizedWeight]] = {}
        self.seconds: dict[str, float] = {}  # the whole pass per format, recovery included
        self.recovery_seconds: dict[str, float] = {}

    def for_format(self, fmt: QuantFormat) -> dict[str, QuantizedWeight]:
        """Every layer's record under ``fmt`` (computed once, then read back)."""
        if fmt.name not in self.cache:
            path = records_path(self.directory, fmt)
            if path.is_file():
                self.cache[fmt.name] = load_records(path)
            else:
                started = time.perf_counter()
                assignment = dict.fromkeys(self.layer_names, fmt)
                bar = self.progress or _no_bar
                with bar(len(assignment), f"quantize {fmt.name}") as step:
                    records = quantize_scheme(
                        self.network,
                        assignment,
                        self.images,
                        config=self.config,
                        act_ranges=self.act_ranges,
                        on_layer=step,
                        producers=self.producers,
                    )
                recovering = time.perf_counter()
                records = recover(
                    self.network,
                    records,
                    self.images,
                    config=self.config,
                    act_ranges=self.act_ranges or {},
                    asymmetric=self.asymmetric,
                    producers=self.producers,
                )
                self.recovery_seconds[fmt.name] = time.perf_counter() - recovering
                self.seconds[fmt.name] = time.perf_counter() - started
                save_records(path, records)
                self.cache[fmt.name] = records
        return self.cache[fmt.name]

    def for_assignment(self, assignment: Mapping[str, QuantFormat]) -> dict[str, QuantizedWeight]:
        """The records of the quantized layers of one scheme."""
        return {name: self.for_format(fmt)[name] for name, fmt in assignment.items()}
