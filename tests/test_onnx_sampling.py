"""ONNX spatial and sampling lowerings against onnxruntime (onnx.reference where onnxruntime lacks
the case): ConvTranspose with a run-time weight, GridSample (bicubic, reflection, 3-D), AffineGrid,
MaxUnpool, MaxPool's column-major indices, Resize antialias / keep_aspect_ratio_policy, DeformConv,
RoiAlign."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import vnpu  # noqa: E402

RNG = np.random.default_rng(11)


def _a(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes: list, inputs: dict[str, np.ndarray], outputs: list[tuple[str, int]],
           inits: dict[str, np.ndarray] | None = None, opset: int = 20) -> "onnx.ModelProto":
    def info(name: str, a: np.ndarray) -> "onnx.ValueInfoProto":
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))

    g = helper.make_graph(nodes, "m", [info(k, v) for k, v in inputs.items()],
                          [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                          [onnx.numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    # the outputs' shapes (the checker wants them) from ONNX shape inference
    # (MaxUnpool's output_shape operand it does not read: those from one run of the reference)
    outs = list(onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.output)
    if any(not o.type.tensor_type.HasField("shape") for o in outs):
        refs = ReferenceEvaluator(m).run(None, inputs)
        outs = [helper.make_tensor_value_info(n, t, list(r.shape)) for (n, t), r in zip(outputs, refs)]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    return m


def _ort(m: "onnx.ModelProto", feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _vnpu(m: "onnx.ModelProto", feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return vnpu.from_onnx(m, strict=True).run_numpy(list(feeds.values()))


def _close(out: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * max(float(np.abs(ref).max()), 1.0))


# -- ConvTranspose with the weight (and bias) as graph inputs ------------------------------------
@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(group=2, strides=[2, 3], output_padding=[1, 2], pads=[1, 0, 0, 1])),
    ((2, 3, 4, 4), (3, 2, 2, 2), dict(strides=[2, 2])),  # kernel == stride: the block path needs a constant
    ((1, 2, 7), (2, 3, 4), dict(strides=[3], dilations=[2], pads=[2, 1])),
    ((1, 2, 3, 4, 3), (2, 4, 2, 3, 2), dict(group=2, strides=[2, 1, 2], output_padding=[1, 0, 0])),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
])
def test_conv_transpose_runtime_weight_matches_onnxruntime(x_shape: tuple, w_shape: tuple, attrs: dict) -> None:
    x, w = _a(*x_shape), _a(*w_shape)
    b = _a(w_shape[1] * attrs.get("group", 1))
    m = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], {"x": x, "w": w, "b": b},
               [("y", T.FLOAT)])
    feeds = {"x": x, "w": w, "b": b}
    _close(_vnpu(m, feeds)[0], _ort(m, feeds)[0])


# -- GridSample ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,padding_mode,align_corners", [
    *[("cubic", p, a) for p in ("zeros", "border", "reflection") for a in (0, 1)],
    ("linear", "reflection", 0), ("linear", "reflection", 1), ("nearest", "reflection", 0), ("nearest", "zeros", 1),
])
def test_grid_sample_2d_matches_onnxruntime(mode: str, padding_mode: str, align_corners: int) -> None:
    x = _a(2, 3, 5, 6)
    grid = (RNG.random((2, 4, 7, 2)) * 3.6 - 1.8).astype(np.float32)  # many samples outside the image
    m = _model([helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=padding_mode,
                                 align_corners=align_corners)], {"x": x, "g": grid}, [("y", T.FLOAT)])
    feeds = {"x": x, "g": grid}
    # cubic with border padding: onnxruntime clamps the tap indices only, the ONNX reference (and the
    # backend suite's expected outputs) first clamp a coordinate outside the border box: vnpu follows ONNX
    ref = ReferenceEvaluator(m) if (mode, padding_mode) == ("cubic", "border") else None
    _close(_vnpu(m, feeds)[0], ref.run(None, feeds)[0] if ref else _ort(m, feeds)[0])


@pytest.mark.parametrize("mode,padding_mode,align_corners", [("linear", "reflection", 0), ("nearest", "zeros", 1),
                                                             ("linear", "border", 1)])
def test_grid_sample_3d_matches_reference(mode: str, padding_mode: str, align_corners: int) -> None:
    x = _a(1, 2, 3, 4, 5)
    grid = (RNG.random((1, 2, 3, 4, 3)) * 3 - 1.5).astype(np.float32)
    m = _model([helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=padding_mode,
                                 align_corners=align_corners)], {"x": x, "g": grid}, [("y", T.FLOAT)])
    feeds = {"x": x, "g": grid}
    _close(_vnpu(m, feeds)[0], ReferenceEvaluator(m).run(None, feeds)[0])


# -- AffineGrid ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 1, 3, 4, 2]])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_affine_grid_matches_onnxruntime(size: list[int], align_corners: int) -> None:
    nd = len(size) - 2
    theta = _a(size[0], nd, nd + 1)
    m = _model([helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=align_corners)],
               {"theta": theta}, [("grid", T.FLOAT)], inits={"size": np.array(size, np.int64)})
    _close(_vnpu(m, {"theta": theta})[0], _ort(m, {"theta": theta})[0])


def test_affine_grid_unit_axis_with_align_corners_matches_reference() -> None:
    """A size-1 axis with align_corners sits at -1 (the ONNX reference, torch.linspace(-1, 1, 1));
    onnxruntime puts it elsewhere."""
    theta = _a(1, 2, 3)
    m = _model([helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=1)],
               {"theta": theta}, [("grid", T.FLOAT)], inits={"size": np.array([1, 1, 1, 3], np.int64)})
    _close(_vnpu(m, {"theta": theta})[0], ReferenceEvaluator(m).run(None, {"theta": theta})[0])


def test_affine_grid_feeds_grid_sample() -> None:
    """The spatial-transformer pair: a run-time theta, its grid sampled bilinearly."""
    x, theta = _a(2, 3, 6, 7), (np.eye(2, 3)[None] + 0.2 * _a(2, 2, 3)).astype(np.float32)
    nodes = [helper.make_node("AffineGrid", ["theta", "size"], ["grid"]),
             helper.make_node("GridSample", ["x", "grid"], ["y"])]
    m = _model(nodes, {"x": x, "theta": theta}, [("y", T.FLOAT)], inits={"size": np.array([2, 3, 5, 4], np.int64)})
    feeds = {"x": x, "theta": theta}
    _close(_vnpu(m, feeds)[0], _ort(m, feeds)[0])


# -- MaxUnpool and MaxPool's indices -----------------------------------------------------------
@pytest.mark.parametrize("x_shape,attrs,output_shape", [
    ((2, 3, 6, 8), dict(kernel_shape=[2, 2], strides=[2, 2]), None),
    ((1, 2, 7, 5), dict(kernel_shape=[3, 2], strides=[2, 1]), [1, 2, 8, 7]),
    ((1, 2, 9), dict(kernel_shape=[3], strides=[3]), None),
])
def test_max_unpool_of_max_pool_matches_onnxruntime(x_shape: tuple, attrs: dict, output_shape: list | None) -> None:
    """MaxPool's indices are a run-time input of MaxUnpool: the unpool is a scatter at run time."""
    x = _a(*x_shape)
    ins = ["p", "i"] + (["shape"] if output_shape else [])
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], **attrs),
             helper.make_node("MaxUnpool", ins, ["y"], **attrs)]
    inits = {"shape": np.array(output_shape, np.int64)} if output_shape else None
    m = _model(nodes, {"x": x}, [("y", T.FLOAT)], inits=inits)
    # with output_shape the indices stay those of the unpooled size, zeros padded after (the ONNX
    # reference and the backend suite's expected output); onnxruntime reads them in output_shape
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0] if output_shape else _ort(m, {"x": x})[0]
    np.testing.assert_array_equal(_vnpu(m, {"x": x})[0], ref)


def test_max_pool_column_major_indices_match_onnxruntime() -> None:
    x = _a(2, 3, 7, 6)
    m = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                                 storage_order=1)], {"x": x}, [("y", T.FLOAT), ("i", T.INT64)])
    (y, i), (ry, ri) = _vnpu(m, {"x": x}), _ort(m, {"x": x})
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(i, ri)


# -- Resize ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,scales,sizes", [
    (dict(mode="linear", antialias=1), [1, 1, 0.6, 0.45], None),
    (dict(mode="cubic", antialias=1, exclude_outside=1), None, [1, 2, 5, 4]),
    (dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 0.7, 0.55], None),
    (dict(mode="nearest", keep_aspect_ratio_policy="not_larger", axes=[2, 3]), None, [4, 9]),
    (dict(mode="linear", keep_aspect_ratio_policy="not_smaller", axes=[2, 3]), None, [4, 9]),
])
def test_resize_matches_reference(attrs: dict, scales: list | None, sizes: list | None) -> None:
    x = _a(1, 2, 9, 11)
    inits = {"roi": np.zeros(0, np.float32),
             "scales": np.array(scales or [], np.float32), "sizes": np.array(sizes or [], np.int64)}
    ins = ["x", "roi", "scales"] + (["sizes"] if sizes else [])
    m = _model([helper.make_node("Resize", ins, ["y"], **attrs)], {"x": x}, [("y", T.FLOAT)], inits=inits, opset=19)
    _close(_vnpu(m, {"x": x})[0], ReferenceEvaluator(m).run(None, {"x": x})[0])


# -- DeformConv and RoiAlign: sampling at run-time positions -------------------------------------
@pytest.mark.parametrize("attrs,with_mask", [
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), False),
    (dict(kernel_shape=[2, 3], strides=[2, 1], dilations=[1, 2], group=2, offset_group=2), True),
])
def test_deform_conv_matches_reference(attrs: dict, with_mask: bool) -> None:
    x = _a(2, 4, 6, 7)
    kh, kw = attrs["kernel_shape"]
    g, og = attrs.get("group", 1), attrs.get("offset_group", 1)
    w, b = _a(6, 4 // g, kh, kw), _a(6)
    s, d, p = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
    oh = (6 + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (7 + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    offset = (1.5 * _a(2, og * 2 * kh * kw, oh, ow)).astype(np.float32)  # some taps land outside the image
    feeds = {"x": x, "w": w, "offset": offset, "b": b}
    if with_mask:
        feeds["mask"] = RNG.random((2, og * kh * kw, oh, ow)).astype(np.float32)
    m = _model([helper.make_node("DeformConv", list(feeds), ["y"], **attrs)], feeds, [("y", T.FLOAT)], opset=19)
    _close(_vnpu(m, feeds)[0], ReferenceEvaluator(m).run(None, feeds)[0])


@pytest.mark.parametrize("attrs", [dict(output_height=3, output_width=4, sampling_ratio=2, spatial_scale=0.5),
                                   dict(output_height=2, output_width=2, sampling_ratio=3, mode="max",
                                        coordinate_transformation_mode="output_half_pixel")])
def test_roi_align_matches_onnxruntime(attrs: dict) -> None:
    x = _a(2, 3, 9, 10)
    corners = RNG.random((5, 2, 2)) * np.array([20.0, 18.0]) - 1.0  # (x, y) pairs, some beyond the image
    rois = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    feeds = {"x": x, "rois": rois, "batch": np.array([0, 1, 1, 0, 1], np.int64)}
    m = _model([helper.make_node("RoiAlign", list(feeds), ["y"], **attrs)], feeds, [("y", T.FLOAT)], opset=16)
    _close(_vnpu(m, feeds)[0], _ort(m, feeds)[0])


# -- the same grid sampling core through the PyTorch frontend ---------------------------------------
@pytest.mark.parametrize("align_corners", [False, True])
def test_torch_grid_sample_reflection_matches_eager(align_corners: bool) -> None:
    """Bilinear reflection: PyTorch reflects then clips the coordinate, ONNX reflects the coordinate
    and then each tap: the same pixels, so the PyTorch frontend takes it too."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Sample(torch.nn.Module):
        def forward(self, x: "torch.Tensor", grid: "torch.Tensor") -> "torch.Tensor":
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)

    torch.manual_seed(3)
    x, grid = torch.randn(2, 3, 5, 6), torch.rand(2, 4, 7, 2) * 3.6 - 1.8
    m = Sample().eval()
    out, ref = vnpu.compile(m, (x, grid), strict=True)(x, grid), m(x, grid)
    _close(out.numpy(), ref.numpy())
