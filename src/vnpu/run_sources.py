"""What `vnpu run` can run: a zoo workload, an ONNX file, a Keras file or a SavedModel
directory. Each source builds its model and inputs, compiles it for the chip and computes
the source framework's own fp32 output as the numerics reference."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.runtime.compiled import CompiledModel

INPUT_SEED = 0
DEFAULT_INT_BOUND = 10  # integer inputs that index no table are drawn from [0, 10)


class SourceError(ValueError):
    """A model path or input shape that `vnpu run` cannot use; the message says why."""


MAX_DIM = 1 << 31  # one input dim; past this a shape is a typo, not a model
PROBE_BATCH = 16  # zoo builds with a larger batch are sized from a batch-1 build first


def check_input_bytes(shapes: Sequence[tuple[tuple[int, ...], int]], chip: Chip | None, where: str,
                      batch: int | None = None) -> None:
    """SourceError unless the inputs (shape, bytes per element) fit the chip's HBM and the host's
    memory, before any of them is allocated. With `batch`, the shapes are one sample's and the
    batch multiplies them (zoo workloads); the message then names the largest batch that fits."""
    from vnpu.sim.device import HOST_MEMORY_SHARE, host_available_bytes

    if not shapes:
        return
    one = sum(math.prod(shape) * itemsize for shape, itemsize in shapes)
    # on the host, random inputs are drawn in 64-bit first: 8 more bytes an element of the largest input
    host_one = one + 8 * max(math.prod(shape) for shape, _ in shapes)
    n = batch or 1
    limits = []
    if chip is not None:
        limits.append((one, chip.hbm.bytes, f"{chip.name}'s {chip.hbm.bytes / 2**30:.1f} GiB of HBM"))
    avail = host_available_bytes()
    if avail:
        limits.append((host_one, int(HOST_MEMORY_SHARE * avail),
                       f"{HOST_MEMORY_SHARE:.0%} of the host's {avail / 2**30:.1f} GiB of available memory"))
    for need, cap, what in limits:
        if need * n > cap:
            fit = f"; at most batch {cap // need} fits (--batch)" if batch and need and cap // need >= 1 else ""
            raise SourceError(f"{where}: the inputs need {need * n / 2**30:.2f} GiB, more than {what}{fit}")


def is_model_path(model: str) -> bool:
    p = Path(model)
    return p.suffix in (".onnx", ".keras", ".h5", ".vnpu") or p.is_dir() or ("/" in model and p.exists())


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`NAME=D0,D1,...` (or `D0,D1,...` for a model with one input, keyed "") -> shapes."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        if len(dims) > 1000:
            raise SourceError(f"--input-shape {item[:40]!r}...: {len(dims)} characters of dims; expected NAME=D0,D1,...")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise SourceError(f"--input-shape {item!r}: expected NAME=D0,D1,... with integer dims") from None
        if not shape or any(d < 1 for d in shape):
            raise SourceError(f"--input-shape {item!r}: dims must be positive integers")
        if any(d > MAX_DIM for d in shape):
            raise SourceError(f"--input-shape {item!r}: a dim is over the limit of {MAX_DIM:,}")
        out[name.strip()] = shape
    return out


def _fill(name: str, dims: Sequence[int | str | None], given: Mapping[str, tuple[int, ...]], batch: int,
          n_inputs: int, where: str) -> tuple[int, ...]:
    """Concrete dims for one input: --input-shape, else the model's, a dynamic leading dim taking --batch."""
    shape = given.get(name) or (given.get("") if n_inputs == 1 else None)
    if shape is not None:
        if len(shape) != len(dims):
            raise SourceError(f"--input-shape for {name!r} has rank {len(shape)}; the model's input has rank {len(dims)}")
        return shape
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(batch)
        else:
            raise SourceError(f"{where}: input {name!r} dim {i} ({d or 'unnamed'}) is dynamic; give its shape with "
                              f"--input-shape {name}=" + ",".join(str(x) if isinstance(x, int) and x > 0 else
                                                                   (str(batch) if j == 0 else "N")
                                                                   for j, x in enumerate(dims)))
    return tuple(out)


def _random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: DType, int_bound: int) -> np.ndarray:
    if dtype.is_float:
        return rng.standard_normal(shape).astype(np.float32)
    if dtype == DType.bool:
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, int_bound, shape).astype(dtype.np)


@dataclass
class RunSource:
    """A model for `vnpu run`; subclasses fill in the framework-specific parts."""

    name: str
    family: str
    description: str
    reference_label: str
    inputs: list[np.ndarray] = field(default_factory=list)

    def build(self, batch: int, chip: Chip | None = None) -> None:
        """The model and its inputs for `batch`; inputs that would not fit `chip`'s HBM or the
        host's memory are refused (SourceError) before they are allocated."""
        raise NotImplementedError

    def compile(self, chip: Chip, dtype: DType, strict: bool, quant: str | None = None) -> CompiledModel:
        """`quant`: a post-training scheme; static ones calibrate on this run's own inputs."""
        raise NotImplementedError

    def reference(self) -> list[np.ndarray]:
        raise NotImplementedError


class ZooSource(RunSource):
    def __init__(self, workload: Any):
        super().__init__(workload.name, workload.family, workload.description, "torch eager fp32")
        self.workload = workload

    def build(self, batch: int, chip: Chip | None = None) -> None:
        from vnpu.dtypes import torch_to_numpy

        if batch > PROBE_BATCH:  # zoo inputs grow with the batch: size them from one sample first
            _, sample = self.workload.build(1)
            check_input_bytes([(tuple(x.shape[1:]), x.element_size()) for x in sample], chip,
                              f"{self.name} at batch {batch}", batch)
        self.model, self.torch_inputs = self.workload.build(batch)
        self.inputs = [torch_to_numpy(x) for x in self.torch_inputs]

    def compile(self, chip: Chip, dtype: DType, strict: bool, quant: str | None = None) -> CompiledModel:
        import vnpu

        return vnpu.compile(self.model, self.torch_inputs, chip=chip, dtype=dtype, strict=strict, name=self.name,
                            quant=quant, calibration=[self.torch_inputs])

    def reference(self) -> list[np.ndarray]:
        import torch

        from vnpu.report.numerics import flatten_outputs

        with torch.no_grad():
            return flatten_outputs(self.model(*self.torch_inputs))


class OnnxFileSource(RunSource):
    def __init__(self, path: Path, input_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__(path.stem, "onnx", f"ONNX file {path}", "onnxruntime fp32")
        self.path = path
        self.given = dict(input_shapes)

    def build(self, batch: int, chip: Chip | None = None) -> None:
        from vnpu.frontends.onnx import input_specs, load_model

        self.proto = load_model(self.path)
        specs = input_specs(self.proto)
        self._check_names([n for n, _, _ in specs])
        self.shapes = {n: _fill(n, dims, self.given, batch, len(specs), str(self.path)) for n, dims, _ in specs}
        check_input_bytes([(self.shapes[n], dt.itemsize) for n, _, dt in specs], chip, str(self.path))
        bounds = _index_bounds(self.proto)
        rng = np.random.default_rng(INPUT_SEED)
        self.inputs = [_random_input(rng, self.shapes[n], dt, bounds.get(n, DEFAULT_INT_BOUND)) for n, _, dt in specs]
        self.names = [n for n, _, _ in specs]

    def _check_names(self, names: list[str]) -> None:
        extra = sorted(set(self.given) - set(names) - ({""} if len(names) == 1 else set()))
        if extra:
            raise SourceError(f"--input-shape names {extra}, which are not inputs of {self.path}; its inputs are {names}")

    def compile(self, chip: Chip, dtype: DType, strict: bool, quant: str | None = None) -> CompiledModel:
        import vnpu

        return vnpu.from_onnx(self.proto, chip=chip, dtype=dtype, input_shapes=self.shapes, strict=strict,
                              name=self.name, quant=quant, calibration=[self.inputs])

    def reference(self) -> list[np.ndarray]:
        from vnpu.frontends.errors import require

        ort = require("onnxruntime", "onnx")
        sess = ort.InferenceSession(self.proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, dict(zip(self.names, self.inputs)))]


def _index_bounds(proto: Any) -> dict[str, int]:
    """For integer inputs used as Gather indices into a weight table (token ids), the table size,
    so that random ids stay in range."""
    sizes = {t.name: list(t.dims) for t in proto.graph.initializer}
    out: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in sizes:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            dim = sizes[n.input[0]][axis]
            out[n.input[1]] = min(out.get(n.input[1], dim), dim)
    return out


class TensorFlowSource(RunSource):
    """A .keras file or a SavedModel directory; TF itself gives the reference."""

    def __init__(self, path: Path, input_shapes: Mapping[str, tuple[int, ...]]):
        kind = "savedmodel" if path.is_dir() else "keras"
        super().__init__(path.stem if kind == "keras" else path.name, kind,
                         f"{'SavedModel' if kind == 'savedmodel' else 'Keras model'} {path}", "TensorFlow fp32")
        self.path = path
        self.given = dict(input_shapes)

    def build(self, batch: int, chip: Chip | None = None) -> None:
        from vnpu.frontends.tensorflow.converter import (_tf, keras_input_specs, load_keras_file,
                                                          saved_model_function, tensorflow_to_onnx)

        tf = _tf()
        if self.path.is_dir():
            self.fn, specs, _ = saved_model_function(self.path)
        else:
            model = load_keras_file(self.path)
            specs = keras_input_specs(model)
            self.fn = model
        names = [s.name for s in specs]
        extra = sorted(set(self.given) - set(names) - ({""} if len(names) == 1 else set()))
        if extra:
            raise SourceError(f"--input-shape names {extra}, which are not inputs of {self.path}; its inputs are {names}")
        fixed = [tf.TensorSpec(_fill(s.name, s.shape.as_list(), self.given, batch, len(specs), str(self.path)),
                               s.dtype, name=s.name) for s in specs]
        check_input_bytes([(tuple(s.shape.as_list()), _tf_dtype(s.dtype).itemsize) for s in fixed], chip,
                          str(self.path))
        rng = np.random.default_rng(INPUT_SEED)
        self.inputs = [_random_input(rng, tuple(s.shape.as_list()), _tf_dtype(s.dtype), DEFAULT_INT_BOUND) for s in fixed]
        self.proto, _ = tensorflow_to_onnx(self.fn if self.path.is_dir() else model, fixed)

    def compile(self, chip: Chip, dtype: DType, strict: bool, quant: str | None = None) -> CompiledModel:
        import vnpu

        return vnpu.from_onnx(self.proto, chip=chip, dtype=dtype, strict=strict, name=self.name, quant=quant,
                              calibration=[self.inputs])

    def reference(self) -> list[np.ndarray]:
        tf = __import__("tensorflow")
        xs = [tf.constant(x) for x in self.inputs]
        out = self.fn(*xs) if self.path.is_dir() else self.fn(xs if len(xs) > 1 else xs[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in outs]


def _tf_dtype(dt: Any) -> DType:
    name = dt.name
    return {"float32": DType.fp32, "float64": DType.fp32, "float16": DType.fp16, "bfloat16": DType.bf16,
            "int64": DType.int64, "int32": DType.int32, "int8": DType.int8, "bool": DType.bool}.get(name, DType.fp32)


def model_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "this model file or its shapes cannot be used" (reported as bad input)."""
    from vnpu.compiler.quantize import QuantError
    from vnpu.frontends.errors import ModelExportError
    from vnpu.frontends.onnx.importer import DynamicShapeError, OnnxModelError
    from vnpu.frontends.tensorflow.converter import TensorFlowModelError

    return (SourceError, OnnxModelError, DynamicShapeError, TensorFlowModelError, ModelExportError, QuantError)


def open_source(model: str, input_shapes: Mapping[str, tuple[int, ...]]) -> RunSource:
    """A zoo name or a model path -> its RunSource (zoo lookups raise UnknownWorkloadError)."""
    if not is_model_path(model):
        if input_shapes:
            raise SourceError("--input-shape applies to model files; zoo workloads take --batch")
        from vnpu.workloads.zoo import get_workload

        return ZooSource(get_workload(model))
    path = Path(model)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.suffix == ".onnx":
        return OnnxFileSource(path, input_shapes)
    if path.suffix == ".vnpu":
        if input_shapes:
            raise SourceError(f"{path} is compiled for fixed input shapes; --input-shape does not apply")
        return ArtifactSource(path)
    if path.suffix in (".keras", ".h5") or (path.is_dir() and (path / "saved_model.pb").exists()):
        return TensorFlowSource(path, input_shapes)
    raise SourceError(f"{path}: not a model vnpu can run; give a zoo name (vnpu zoo), a .onnx file, a .keras file "
                      "or a SavedModel directory")


class ArtifactSource(RunSource):
    """A saved `.vnpu` artifact: runs as compiled (its chip, precision and input shapes). It
    carries no model code, so there is no framework reference to check numerics against."""

    def __init__(self, path: Path):
        from vnpu.runtime.artifact import ArtifactError

        super().__init__(path.stem, "artifact", f"compiled artifact {path}", "")
        self.path = path
        try:
            self.cm = CompiledModel.load(path)
        except ArtifactError as e:
            raise SourceError(str(e)) from None

    def build(self, batch: int, chip: Chip | None = None) -> None:
        shapes = [ref.shape for _, ref in self.cm.program.user_inputs()]
        if batch != 1 and any(not s or s[0] != batch for s in shapes):
            raise SourceError(f"{self.path} is compiled for input shapes {[list(s) for s in shapes]}; "
                              f"recompile it for batch {batch}")
        check_input_bytes([(ref.shape, ref.dtype.itemsize) for _, ref in self.cm.program.user_inputs()], chip,
                          str(self.path))
        rng = np.random.default_rng(INPUT_SEED)
        self.inputs = [_random_input(rng, ref.shape, ref.dtype, DEFAULT_INT_BOUND) for _, ref in self.cm.program.user_inputs()]

    def compile(self, chip: Chip, dtype: DType, strict: bool, quant: str | None = None) -> CompiledModel:
        if quant is not None and quant != getattr(self.cm.info, "quant", ""):
            raise SourceError(f"{self.path} was compiled {'with ' + self.cm.info.quant if self.cm.info.quant else 'unquantized'}; "
                              f"recompile it to run it under {quant}")
        if self.cm.info.fallback_ops and strict:
            ops = ", ".join(sorted(self.cm.info.fallback_ops))
            raise SourceError(f"--strict: {self.path} runs {ops} on the host CPU")
        return self.cm

    def reference(self) -> list[np.ndarray]:
        return []
