"""Zoo models quantized by onnxruntime (quantize_static, QDQ, int8 per-channel weights), run on
vnpu (strict: every node on the chip) and on onnxruntime's CPU, compared in units of the output's
quantization step.

    PYTHONPATH=$PWD/src python benchmarks/onnx_quantized.py                  # resnet50, bert-base
    PYTHONPATH=$PWD/src python benchmarks/onnx_quantized.py --models mobilenet-v2 --calib 2

Each model is built at batch 1 (vnpu.workloads.zoo), exported with torch.onnx.export (TorchScript
exporter), quantized with a few random calibration batches, and run on one more random batch.
Two onnxruntime references: its default session (graph optimizations on: its QDQ fusions into
QLinearConv / QGemm / QLinearAdd ..., with their own fixed-point rounding of some intermediates)
and the same model with optimizations off (each DequantizeLinear / float op / QuantizeLinear on
its own: the QDQ graph's arithmetic as written).

uint8 activations x int8 weights: onnxruntime's x86 u8s8 GEMM sums pairs of products in saturating
int16 (pmaddubsw) when the CPU lacks VNNI, so with full 8-bit weights its fused kernels are not exact
where that saturates; --reduce-range (default on) quantizes weights to 7 bits, onnxruntime's remedy.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _export(name: str) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    import onnx
    import torch

    from vnpu.workloads import zoo

    model, inputs = zoo.get_workload(name).build(1)
    names = [f"input{i}" for i in range(len(inputs))]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(inputs), buf, input_names=names, output_names=["y"], opset_version=17,
                          dynamo=False)
    return onnx.load_from_string(buf.getvalue()), [(n, t.numpy()) for n, t in zip(names, inputs)]


def _random_like(inputs: list[tuple[str, np.ndarray]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for n, a in inputs:
        if a.dtype.kind == "f":
            out[n] = rng.normal(0, 1, a.shape).astype(a.dtype)
        else:  # token ids: within the range the example uses
            out[n] = rng.integers(int(a.min()), int(a.max()) + 1, a.shape).astype(a.dtype)
    return out


def _quantize(model: Any, batches: list[dict[str, np.ndarray]], reduce_range: bool, tmp: Path) -> Any:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    src, dst = tmp / "f32.onnx", tmp / "qdq.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
    return onnx.load(dst)


def _output_step(model: Any) -> float | None:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    n = prod.get(model.graph.output[0].name)
    if n is None or n.op_type != "DequantizeLinear" or n.input[1] not in inits:
        return None
    return float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])


def _ort(model: Any, feeds: dict[str, np.ndarray], optimized: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _distribution(got: np.ndarray, want: np.ndarray, step: float | None) -> str:
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if step is None:
        scale = float(np.abs(want).max()) or 1.0
        return f"max |diff| {d.max():.3g} (output not a DequantizeLinear: {d.max() / scale:.2%} of max |ref|)"
    steps = np.rint(d / step)
    return (f"exactly equal {np.mean(steps == 0):.4%}, within 1 step {np.mean(steps <= 1):.4%}, "
            f"max {int(steps.max())} steps")


def run(name: str, n_calib: int, reduce_range: bool) -> None:
    import vnpu
    from vnpu.frontends.errors import UnsupportedOpError
    from vnpu.frontends.onnx.qdq import fuse_qdq

    rng = np.random.default_rng(0)
    t0 = time.time()
    f32, inputs = _export(name)
    batches = [_random_like(inputs, rng) for _ in range(n_calib)]
    with tempfile.TemporaryDirectory() as d:
        qdq = _quantize(f32, batches, reduce_range, Path(d))
    _, groups = fuse_qdq(qdq)
    t1 = time.time()
    print(f"== {name}: exported + quantize_static ({n_calib} calibration batches) in {t1 - t0:.0f} s; "
          f"{groups} QDQ matmul / conv groups")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cm = vnpu.from_onnx(qdq, strict=True)
            fallback = "none (strict)"
        except UnsupportedOpError as e:
            fallback = f"strict refused: {str(e).splitlines()[0]}"
            cm = vnpu.from_onnx(qdq)
    if cm.has_host_ops:
        fallback += "; host ops: " + ", ".join(sorted({l.target for l in cm.program.launches if getattr(l, "kind", "") == "host"}))
    mm = [l for l in cm.program.launches if getattr(l, "kind", "") in ("matmul", "conv")]
    int8 = sum(str(l.dtype) in ("int8", "DType.int8") for l in mm)
    t2 = time.time()
    print(f"   compiled in {t2 - t1:.0f} s; host fallback: {fallback}; matmul/conv launches with int8 operands: "
          f"{int8}/{len(mm)}")
    feeds = _random_like(inputs, rng)
    got = cm.run_numpy([feeds[n] for n, _ in inputs])[0]
    t3 = time.time()
    step = _output_step(qdq)
    print(f"   vnpu run {t3 - t2:.0f} s; output {tuple(got.shape)}, quantization step {step}")
    fused, unfused = _ort(qdq, feeds, True), _ort(qdq, feeds, False)
    print(f"   |vnpu - ort|, ort with default optimizations: {_distribution(got, fused, step)}")
    print(f"   |vnpu - ort|, ort with optimizations off:     {_distribution(got, unfused, step)}")
    print(f"   baseline, |ort default - ort off|:            {_distribution(fused, unfused, step)}")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,bert-base")
    ap.add_argument("--calib", type=int, default=3, help="random calibration batches")
    ap.add_argument("--full-range", action="store_true", help="8-bit weights (no reduce_range)")
    args = ap.parse_args()
    for name in args.models.split(","):
        run(name.strip(), args.calib, not args.full_range)


if __name__ == "__main__":
    main()
