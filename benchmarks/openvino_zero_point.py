"""OpenVINO: can an activation zero point be moved out of the convs it feeds? (decisions.md)

    python benchmarks/openvino_zero_point.py --run RUN_DIR [--rounds 15]

Reads a finished ``quantsweep run``'s FP32 model and ``openvino`` ``k0.onnx`` and writes three
rewrites of ``k0`` in which every activation DequantizeLinear that feeds only convs dequantizes
with zero point 0 (the same grid shifted by ``c = zero_point * scale``, so each conv reads
``x + c``):

- ``bias``: ``c`` times the conv's weights folded into its bias, exact inside the image and wrong
  at the padded border (the upper bound of what the rewrite can gain, not a model to ship);
- ``full_map``: the exact correction, a ``[1, C, H, W]`` constant subtracted after each conv;
- ``pad``: the bias fold plus an explicit ``Pad`` with value ``c`` before each padded conv (conv
  padding 0), exact.

Each is loaded as the target ships it (``ov.convert_model``, CPU, latency hint), compared with
``k0`` on one image and timed with FP32 (OpenVINO's default precision, the reference) and ``k0``
in one interleaved pass. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from onnx import numpy_helper as nh

from quantsweep.core.runs import cpu_line
from quantsweep.onnx_graph.inspect import dequantized_inputs
from quantsweep.onnx_graph.ort_sessions import SessionOptions, ort_session
from quantsweep.onnx_graph.qdq_graph import readers_of
from quantsweep.targets.openvino_cpu import DEPLOY_CONFIG, OpenVinoRunner
from quantsweep.targets.timing import interleaved_latency

MODES = ("bias", "full_map", "pad")


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return nh.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return nh.to_array(node.attribute[0].t)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def _shapes(model: onnx.ModelProto, image: np.ndarray, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The run-time shapes of ``names`` (ONNX Runtime, one image)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort_session(probe.SerializeToString(), SessionOptions(graph_as_written=True))
    outputs = session.run(names, {session.get_inputs()[0].name: image})
    return {n: o.shape for n, o in zip(names, outputs, strict=True)}


def _feeding_convs(model: onnx.ModelProto):
    """(activation DQ, its zero point, the convs it alone feeds) for each such DQ with a zero point."""
    graph, readers = model.graph, readers_of(model)
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "QuantizeLinear":
            continue
        zero = _constant(graph, node.input[2]) if len(node.input) > 2 else None
        convs = readers.get(node.output[0], [])
        if zero is None or not zero.any() or not convs:
            continue
        if all(c.op_type == "Conv" and c.input[0] == node.output[0] for c in convs):
            yield node, zero, convs


def _correction(weight: np.ndarray, conv: onnx.NodeProto, shift: float, hw: tuple[int, int]) -> np.ndarray:
    """What ``conv`` adds when its input is ``x + shift`` inside the image and 0 in its padding."""
    groups = _attr(conv, "group", 1)
    pads = _attr(conv, "pads", [0, 0, 0, 0])
    x = torch.full((1, weight.shape[1] * groups, *hw), shift)
    x = torch.nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    out = torch.nn.functional.conv2d(
        x,
        torch.from_numpy(weight),
        stride=_attr(conv, "strides", [1, 1]),
        dilation=_attr(conv, "dilations", [1, 1]),
        groups=groups,
    )
    return out.numpy().astype(np.float32)


def rewrite(model: onnx.ModelProto, image: np.ndarray, mode: str) -> tuple[onnx.ModelProto, int]:
    """``model`` with its conv-feeding activation zero points moved out (see the module's docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    found = list(_feeding_convs(out))
    shapes = _shapes(model, image, [dq.output[0] for dq, *_ in found])
    inserts: list[tuple[onnx.NodeProto, onnx.NodeProto, bool]] = []
    for dq, zero, convs in found:
        shift = float(zero) * float(_constant(graph, dq.input[1]))
        graph.initializer.append(nh.from_array(np.zeros_like(zero), f"{dq.name}_zero0"))
        dq.input[2] = f"{dq.name}_zero0"
        for conv in convs:
            computed = dequantized_inputs(out, conv.name)  # the weight and bias as the conv uses them
            correction = _correction(computed[1], conv, shift, shapes[dq.output[0]][2:])
            inserts += _apply(graph, conv, correction, bias=computed.get(2), shift=shift, mode=mode)
    for anchor, node, before in inserts:
        index = list(graph.node).index(anchor)
        graph.node.insert(index if before else index + 1, node)
    return out, len(found)


def _apply(graph, conv, correction: np.ndarray, *, bias: np.ndarray | None, shift: float, mode: str) -> list:
    if mode == "full_map":
        output = conv.output[0]
        conv.output[0] = f"{output}_shifted"
        graph.initializer.append(nh.from_array(correction, f"{conv.name}_correction"))
        sub = helper.make_node("Sub", [conv.output[0], f"{conv.name}_correction"], [output])
        return [(conv, sub, False)]
    middle = correction[0, :, correction.shape[2] // 2, correction.shape[3] // 2]
    bias = np.zeros_like(middle) if bias is None else bias
    graph.initializer.append(nh.from_array((bias - middle).astype(np.float32), f"{conv.name}_bias0"))
    conv.input[2:] = [f"{conv.name}_bias0"]
    pads = list(_attr(conv, "pads", [0, 0, 0, 0]))
    if mode == "bias" or not any(pads):
        return []
    graph.initializer.append(nh.from_array(np.array([0, 0, *pads[:2], 0, 0, *pads[2:]]), f"{conv.name}_p"))
    graph.initializer.append(nh.from_array(np.array(shift, np.float32), f"{conv.name}_pv"))
    padded = f"{conv.input[0]}_{conv.name}_padded"
    pad = helper.make_node("Pad", [conv.input[0], f"{conv.name}_p", f"{conv.name}_pv"], [padded])
    conv.input[0] = padded
    for attribute in conv.attribute:
        if attribute.name == "pads":
            attribute.ints[:] = [0, 0, 0, 0]
    return [(conv, pad, True)]


def main() -> None:
    """Write the rewrites, compare them with ``k0`` on OpenVINO and time them against FP32."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished quantsweep run directory")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    fp32 = next(args.run.glob("*_candidates/*/fp32.onnx"))
    k0 = fp32.parent / "openvino" / "k0.onnx"
    image = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    print(f"CPU: {cpu_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": fp32, "k0": k0}
        for mode in MODES:
            model, count = rewrite(onnx.load(str(k0)), image, mode)
            paths[mode] = Path(tmp) / f"k0_{mode}.onnx"
            onnx.save(model, str(paths[mode]))
        print(f"{count} activation DequantizeLinear nodes feed only convs with a zero point")
        runners = {name: OpenVinoRunner(path, config=DEPLOY_CONFIG) for name, path in paths.items()}
        reference = runners["k0"](image)
        for name in ("fp32", *MODES):
            error = np.linalg.norm(runners[name](image) - reference) / np.linalg.norm(reference)
            print(f"{name}: output against k0, relative L2 {error:.3f}")
        timing = interleaved_latency(runners, image, reference="fp32", rounds=args.rounds)
    for name, timed in timing.items():
        print(
            f"{name}: {timed.median_ms:.2f} ms, {timed.ratio_to_reference:.3f}x FP32 "
            f"(lower quartile {timed.p25_ms:.2f} ms; {timed.rounds} interleaved rounds)"
        )


if __name__ == "__main__":
    main()
