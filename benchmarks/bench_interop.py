"""Framework interoperability figures (issue: TensorFlow, Keras and ONNX models on the chip).

    python benchmarks/bench_interop.py [--zoo mlp resnet50 ...] [--keras MobileNetV2 ...] [--skip-zoo] [--skip-keras]

1. Zoo models exported with torch.onnx.export (dynamo exporter, opset 18): simulated cycles
   through vnpu.from_onnx vs vnpu.compile on the PyTorch module (ratio; the target is within 1%),
   and fp32 numerics of the ONNX-imported model vs onnxruntime.
2. Keras applications (weights=None, seed 0, 96x96, batch 1, logits) and a transformer encoder
   block via vnpu.from_tensorflow's tf2onnx path: fp32 max|err| / max|ref| and bf16 cosine vs
   TensorFlow.
Every figure is measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

ZOO = ["mlp", "resnet50", "mobilenet-v2", "minilm", "vit-base", "bert-base"]
FUNCTIONAL = {"mlp", "resnet50", "mobilenet-v2", "minilm"}
KERAS = ["MobileNetV2", "ResNet50", "EfficientNetB0", "encoder_block"]


def zoo_rows(names: list[str]) -> None:
    import onnxruntime as ort
    import torch

    import vnpu
    from vnpu.report.numerics import compare
    from vnpu.workloads.zoo import get_workload

    print(f"{'model':14s} {'torch cycles':>14s} {'onnx cycles':>14s} {'onnx/torch':>10s} {'fp32 rel err vs ort':>20s}")
    for name in names:
        model, inputs = get_workload(name).build(1)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = os.path.join(d, f"{name}.onnx")
            torch.onnx.export(model, inputs, path, dynamo=True, opset_version=18, verbose=False)
            cm_o = vnpu.from_onnx(path)
            cm_t = vnpu.compile(model, inputs)
            co, ct = cm_o.profile().cycles, cm_t.profile().cycles
            err = "-"
            if name in FUNCTIONAL:
                feeds = [x.numpy() for x in inputs]
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                ref = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), feeds)})
                err = f"{compare(cm_o.run_numpy(feeds), ref, 'fp32').max_rel_err:.2e}"
        print(f"{name:14s} {ct:14,.0f} {co:14,.0f} {co / ct:10.4f} {err:>20s}", flush=True)


def keras_rows(names: list[str]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import keras
    from test_tensorflow_models import BUILDERS, SEED  # the same models as the tests

    import vnpu
    from vnpu.frontends.tensorflow import tensorflow_to_onnx
    from vnpu.report.numerics import compare

    print(f"{'keras model':16s} {'fp32 max|err|/max|ref|':>24s} {'bf16 cosine':>12s} {'fp32 cycles':>14s} {'convert s':>10s}")
    for name in names:
        build, shape = BUILDERS[name]
        keras.utils.set_random_seed(SEED)
        model = build()
        x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
        ref = model(x, training=False).numpy()
        t0 = time.perf_counter()
        proto, _ = tensorflow_to_onnx(model)
        conv_s = time.perf_counter() - t0
        cm32 = vnpu.from_onnx(proto, dtype="fp32")
        n32 = compare(cm32.run_numpy([x]), [ref], "fp32")
        n16 = compare(vnpu.from_onnx(proto, dtype="bf16").run_numpy([x]), [ref], "bf16")
        print(f"{name:16s} {n32.max_rel_err:24.2e} {n16.cosine:12.6f} {cm32.profile().cycles:14,.0f} {conv_s:10.1f}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", nargs="*", default=ZOO)
    ap.add_argument("--keras", nargs="*", default=KERAS)
    ap.add_argument("--skip-zoo", action="store_true")
    ap.add_argument("--skip-keras", action="store_true")
    args = ap.parse_args()
    if not args.skip_zoo:
        zoo_rows(args.zoo)
    if not args.skip_keras:
        keras_rows(args.keras)


if __name__ == "__main__":
    main()
