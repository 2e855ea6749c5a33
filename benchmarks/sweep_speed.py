"""Exact-sweep cost relative to the naive method, measured side by side in one run.

Prints  sweep_time / (layers x one full forward pass over the same images).  The naive method (a
full forward pass per layer, plus the same metrics) is about 1.0; the issue asks for at most 0.6.
A sample of layers is also measured the naive way, so both figures come from the same machine state.

    python benchmarks/sweep_speed.py [--model PT] [--imgsz 320] [--images 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from quantsweep.core.config import ActDtype, DetectConfig, Granularity, QuantFormat, WeightDtype
from quantsweep.data.images import load_batch, resolve_images
from quantsweep.data.shapes import generate_split
from quantsweep.models import BUNDLED_MODEL, load_model
from quantsweep.models.network import enumerate_layers
from quantsweep.sensitivity.engine import ExactSweep
from testbed import forward_seconds, naive_per_layer

FMT = QuantFormat(WeightDtype.INT4, ActDtype.FP16, Granularity.PER_CHANNEL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--naive-sample", type=int, default=10, help="layers also measured the naive way")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_split(Path(tmp), split="calib", count=args.images, size=args.imgsz, split_seed=2)
        batch = load_batch(resolve_images(data), imgsz=args.imgsz)
    loaded = load_model(args.model)
    layers = enumerate_layers(loaded.network, batch.images[:1])
    forward_s = forward_seconds(loaded.network, batch.images, batch_size=args.batch_size)

    start = time.perf_counter()
    engine = ExactSweep(loaded.network, batch, batch_size=args.batch_size, detect=DetectConfig())
    for layer in layers:
        engine.measure(layer, FMT)
    sweep_s = time.perf_counter() - start

    naive_per_layer_s = naive_per_layer(engine, layers, FMT, sample=args.naive_sample)

    naive_ratio = naive_per_layer_s / forward_s
    ratio = sweep_s / (len(layers) * forward_s)
    print(
        f"model {Path(args.model).name}, {args.images} images at {args.imgsz}, {len(layers)} layers, "
        f"{torch.get_num_threads()} threads, combination {FMT.name}"
    )
    print(f"one full forward pass over the images: {forward_s:.3f} s")
    print(f"exact sweep (reference pass + {len(layers)} layers, all metrics): {sweep_s:.1f} s")
    print(f"naive method, measured on {args.naive_sample} layers: {naive_per_layer_s:.3f} s/layer")
    print(f"naive ratio   = {naive_ratio:.2f}  (full forward per layer + metrics; 1.0 by construction)")
    print(f"sweep ratio   = {ratio:.2f}  (target <= 0.6)")
    print(f"speed-up over naive: {naive_ratio / ratio:.1f}x")


if __name__ == "__main__":
    main()
