"""ModelOpt ``auto_quantize`` (gradient method) against quantsweep's exact and fast rankings.

Same testbed, same 16 calibration images at 320 px; int4-fp16 and int8-int8 per_channel.
ModelOpt needs a loss; the original project used the mean of squared outputs (MSE to the FP32
output scores zero for every layer, because its scored forward runs unquantized). Needs
``nvidia-modelopt`` (an optional extra, best in its own environment): the script says so and
stops without it.

    python benchmarks/modelopt_compare.py
"""

from __future__ import annotations

import importlib.util
import sys
import time

import torch

from quantsweep.core.config import ActDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.models import BUNDLED_MODEL, load_model
from quantsweep.sensitivity.engine import ExactSweep
from quantsweep.sensitivity.fast import estimate
from testbed import compare, load_testbed

INT4_WEIGHT_ONLY = {
    "quant_cfg": [
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "cfg": {"enable": False}},
    ],
    "algorithm": "max",
}
# (quantsweep format, ModelOpt format): INT8_DEFAULT_CFG is per-channel weights, per-tensor inputs
FORMATS = (
    (QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL), INT4_WEIGHT_ONLY),
    (QuantFormat(WeightDtype.INT8, ActDtype.INT8, Granularity.PER_CHANNEL), "INT8_DEFAULT_CFG"),
)


def _modelopt_scores(images: torch.Tensor, names: list[str], fmt_cfg) -> tuple[dict[str, float], float]:
    import modelopt.torch.quantization as mtq  # noqa: PLC0415 (optional dependency)

    model = load_model(BUNDLED_MODEL).network.module
    for module in model.modules():  # its backward hooks fail on in-place activations
        if hasattr(module, "inplace"):
            module.inplace = False
    for param in model.parameters():
        param.requires_grad_(True)
    loader = [images[i : i + 8] for i in range(0, len(images), 8)]

    def forward_step(net, batch):
        out = net(batch)
        return out[0] if isinstance(out, tuple) else out

    start = time.perf_counter()
    _, state = mtq.auto_quantize(
        model,
        constraints={"effective_bits": 10.0},  # the scores do not depend on it
        quantization_formats=[fmt_cfg],
        data_loader=loader,
        forward_step=forward_step,
        loss_func=lambda output, _batch: output.pow(2).mean(),
        num_calib_steps=len(loader),
        num_score_steps=len(loader),
        method="gradient",
    )
    seconds = time.perf_counter() - start
    scores = {}
    for stats in state["candidate_stats"].values():
        score = max(stats["scores"])  # the INT4 option's score; "no quantization" scores 0
        for module_name in stats["module_names"]:
            for name in names:
                if name == module_name or name.startswith(module_name + "."):
                    scores[name] = score
    return scores, seconds


def main() -> None:
    if importlib.util.find_spec("modelopt") is None:
        print("nvidia-modelopt is not installed: nothing to compare")
        sys.exit(0)
    bed = load_testbed()
    network, layers, calib, ranges = bed.network, bed.layers, bed.calib, bed.act_ranges
    names = bed.names
    for fmt, modelopt_cfg in FORMATS:
        start = time.perf_counter()
        engine = ExactSweep(network, calib, batch_size=8, detect=DetectConfig())
        exact = {layer.name: engine.measure(layer, fmt, act_ranges=ranges).box_error for layer in layers}
        exact_s = time.perf_counter() - start
        fast = estimate(network, calib, layers, fmt=fmt, act_ranges=ranges)
        modelopt, modelopt_s = _modelopt_scores(calib.images, names, modelopt_cfg)
        print(f"\n{fmt.name}: ModelOpt scored {sum(n in modelopt for n in names)} of {len(names)} convs")
        rows = [
            ("exact", exact, exact_s),
            ("fast", fast.box_error, fast.seconds),
            ("modelopt", {n: modelopt.get(n, 0.0) for n in names}, modelopt_s),
        ]
        print(f"{'method':9} {'seconds':>8} {'spearman':>8} {'top10':>5} {'top10-kept mAP50-95':>20}")
        for label, scores, seconds in rows:
            rho, overlap, kept_map = compare(bed, fmt, exact, scores)
            print(f"{label:9} {seconds:8.1f} {rho:8.3f} {overlap:5d} {kept_map:20.4f}")


if __name__ == "__main__":
    main()
