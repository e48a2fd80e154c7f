"""Host fallback: runs a HostLaunch's framework op on the CPU."""
from __future__ import annotations

from typing import Any

import numpy as np

from vnpu.dtypes import numpy_to_torch, torch_to_numpy
from vnpu.isa.program import HostLaunch


def _torch_op(target: str) -> Any:
    import torch

    qual = target.split(":", 1)[1]  # "aten::sort.default"
    ns, rest = qual.split("::")
    name, overload = rest.split(".", 1) if "." in rest else (rest, "default")
    return getattr(getattr(getattr(torch.ops, ns), name), overload)


def _rebuild(obj: Any, tensors: list[Any]) -> Any:
    import torch

    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__vnpu_arg__":
        return tensors[obj[1]]
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__torch_dtype__":
        return getattr(torch, obj[1])
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__torch_memfmt__":
        return getattr(torch, obj[1])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(o, tensors) for o in obj)
    if isinstance(obj, dict):
        return {k: _rebuild(v, tensors) for k, v in obj.items()}
    return obj


def execute_host(launch: HostLaunch, inputs: list[np.ndarray]) -> list[np.ndarray]:
    if launch.target.startswith("torch:"):
        import torch

        op = _torch_op(launch.target)
        tensors = [numpy_to_torch(a) for a in inputs]
        # host ops compute in fp32 like the reference; results are rounded to the program's dtype on write-back
        tensors = [t.float() if t.is_floating_point() else t for t in tensors]
        for i in launch.payload.get("complex_args", ()):  # complex tensors travel as their real views
            tensors[i] = torch.view_as_complex(tensors[i].contiguous())
        with torch.no_grad():
            out = op(*_rebuild(launch.payload["args"], tensors), **_rebuild(launch.payload["kwargs"], tensors))
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for i in launch.payload.get("complex_outs", ()):
            outs[i] = torch.view_as_real(outs[i].resolve_conj().resolve_neg()).contiguous()
        return [torch_to_numpy(o).astype(ref.dtype.np) for o, ref in zip(outs, launch.outputs)]
    if launch.target.startswith("onnx:"):
        return _execute_onnx(launch, inputs)
    raise RuntimeError(f"no host executor for {launch.target!r}")


def _execute_onnx(launch: HostLaunch, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """An ONNX node the chip does not run, evaluated with onnx.reference (in fp32 like the reference)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    node = onnx.NodeProto()
    node.ParseFromString(launch.payload["node"])
    feeds = {}
    for name, a in zip(launch.payload["input_names"], inputs):
        a = np.asarray(a)
        feeds[name] = a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a
    outs = ReferenceEvaluator(node, opsets={"": launch.payload["opset"]}).run(None, feeds)
    return [np.asarray(o).astype(ref.dtype.np) for o, ref in zip(outs, launch.outputs)]
