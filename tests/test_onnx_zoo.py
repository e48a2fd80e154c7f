"""Zoo models exported with torch.onnx.export (torch 2.13's default dynamo exporter, opset 18):
on the chip they match onnxruntime, and they compile to the same program as the PyTorch
module through vnpu.compile: simulated cycles within 1% (the IR after import does not
depend on the framework the computation came from)."""
from __future__ import annotations

import warnings

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter
import torch  # noqa: E402

import vnpu  # noqa: E402
from vnpu.frontends.errors import FallbackWarning  # noqa: E402
from vnpu.report.numerics import compare  # noqa: E402
from vnpu.workloads.zoo import get_workload  # noqa: E402

# (zoo name, run the functional simulation too). ViT-Base is checked for cycles only (its
# functional simulation is slow; minilm covers the same ops); bert-base is left to
# benchmarks/bench_interop.py (minilm is the same architecture, smaller).
MODELS = [("mlp", True), ("resnet50", True), ("mobilenet-v2", True), ("minilm", True), ("vit-base", False)]


def _export(model: torch.nn.Module, inputs: tuple, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=True, opset_version=18, verbose=False)


@pytest.mark.parametrize("name,functional", MODELS, ids=[m for m, _ in MODELS])
def test_torch_onnx_export_matches_onnxruntime_and_torch_cycles(name: str, functional: bool, tmp_path) -> None:
    model, inputs = get_workload(name).build(1)
    path = str(tmp_path / f"{name}.onnx")
    _export(model, inputs, path)

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # everything runs on the chip
        cm_onnx = vnpu.from_onnx(path)
        cm_torch = vnpu.compile(model, inputs)
    c_onnx, c_torch = cm_onnx.profile().cycles, cm_torch.profile().cycles
    assert c_onnx == pytest.approx(c_torch, rel=0.01), f"{name}: onnx {c_onnx:.0f} vs torch {c_torch:.0f} cycles"
    assert len(cm_onnx.program.launches) == pytest.approx(len(cm_torch.program.launches), abs=1)

    if functional:
        feeds = [x.numpy() for x in inputs]
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), feeds)})
        num = compare(cm_onnx.run_numpy(feeds), ref, "fp32")
        assert num.passed, f"{name}: max rel err {num.max_rel_err:.2e}"
