"""`torch.compile(model, backend="vnpu")` from user code that never imports vnpu.

The backend is found through the `torch_dynamo_backends` entry point (pyproject.toml ->
vnpu.api:vnpu_backend). Each model runs in a subprocess whose script imports only torch;
its outputs are compared here with PyTorch eager and with vnpu.compile (torch.export path).
With options={"dtype": "bf16"} the result must match vnpu.compile(dtype="bf16") and differ
from fp32 eager by bf16 rounding: proof that the chip simulation, not eager, produced it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vnpu

MODELS_SRC = textwrap.dedent("""
    import torch

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(32, 64)
            self.fc2 = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x = torch.nn.functional.max_pool2d(x, 2)
            x = torch.relu(self.c2(x))
            x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(x)

    INPUTS = {"MLP": (4, 32), "CNN": (2, 3, 16, 16)}
""")

SCRIPT = textwrap.dedent("""
    import sys
    import traceback
    import warnings
    import torch
    {models}
    state_path, out_path = sys.argv[1:3]
    assert "vnpu" not in sys.modules
    assert "vnpu" in torch._dynamo.list_backends(), torch._dynamo.list_backends()
    saved = torch.load(state_path)
    results = {{}}
    for name, (state, x) in saved.items():
        m = globals()[name]().eval()
        m.load_state_dict(state)
        outs = results[name] = {{}}
        try:
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for dt in ("fp32", "bf16"):
                    torch._dynamo.reset()
                    cm = torch.compile(m, backend="vnpu", options={{"dtype": dt}})
                    outs[dt] = cm(x)
                    outs[dt + "_again"] = cm(x + 1.0)  # a second call reuses the compiled graph
                outs["eager"] = m(x)
            outs["fallback_warnings"] = [str(w.message) for w in caught if "host CPU" in str(w.message)]
        except Exception:
            outs["error"] = traceback.format_exc()[-4000:]
    results["vnpu_loaded"] = "vnpu" in sys.modules  # by torch, through the entry point
    torch.save(results, out_path)
""")

_ns: dict = {}
exec(MODELS_SRC, _ns)


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = _ns[name]().eval()
    if name == "CNN":  # non-trivial BatchNorm statistics
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
            m.bn.weight.uniform_(0.5, 1.5)
            m.bn.bias.uniform_(-0.5, 0.5)
    return m, torch.randn(*_ns["INPUTS"][name])


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> dict:
    """One subprocess (a cold Dynamo costs seconds) compiles every model with backend="vnpu"."""
    d = tmp_path_factory.mktemp("tc")
    models = {name: _model(name) for name in ("MLP", "CNN")}
    state = d / "state.pt"
    torch.save({name: (m.state_dict(), x) for name, (m, x) in models.items()}, state)
    script = d / "user_script.py"
    script.write_text(SCRIPT.format(models=MODELS_SRC))
    out = d / "out.pt"
    r = subprocess.run([sys.executable, str(script), str(state), str(out)], capture_output=True, text=True,
                       timeout=300, cwd=d, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, f"user script failed:\n{r.stderr[-4000:]}"
    return {"models": models, "results": torch.load(out)}


def _check(name: str, user_run: dict) -> None:
    m, x = user_run["models"][name]
    outs = user_run["results"][name]
    assert "error" not in outs, f"torch.compile(backend='vnpu') failed for {name}:\n{outs.get('error')}"
    assert user_run["results"]["vnpu_loaded"]
    with torch.no_grad():
        eager = m(x)
        eager2 = m(x + 1.0)
    # the subprocess's eager run agrees with ours: same weights, same input
    torch.testing.assert_close(outs["eager"], eager, rtol=0, atol=0)
    # fp32 on the chip: eager within float rounding
    torch.testing.assert_close(outs["fp32"], eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["fp32_again"], eager2, rtol=1e-4, atol=1e-5)
    ref32 = vnpu.compile(m, (x,), dtype="fp32")(x)
    torch.testing.assert_close(outs["fp32"], ref32, rtol=1e-5, atol=1e-6)
    # bf16 on the chip: the same numbers as the ahead-of-time path, and visibly not fp32 eager
    ref16 = vnpu.compile(m, (x,), dtype="bf16")(x)
    scale = eager.abs().max().item()
    # within 2 bf16 ulps of the output scale: the two frontends may round an op differently
    torch.testing.assert_close(outs["bf16"].float(), ref16.float(), rtol=0, atol=2 * 2**-8 * scale)
    err = (outs["bf16"].float() - eager).abs().max().item()
    assert 1e-5 * scale < err < 3e-2 * scale, (err, scale)


def test_torch_compile_mlp_without_importing_vnpu(user_run):
    _check("MLP", user_run)


def test_torch_compile_runs_everything_on_chip(user_run):
    """Every op of both models has a vnpu lowering, so neither path may fall back to the host.

    GAP (frontends/torch/aten_ops.py): Dynamo + make_fx produce `aten.native_batch_norm.default`
    (training=False) for BatchNorm2d in eval mode, while only the torch.export form
    `_native_batch_norm_legit_no_training.default` is lowered, so BatchNorm runs on the host
    under torch.compile."""
    for name in ("MLP", "CNN"):
        outs = user_run["results"][name]
        assert "error" not in outs, f"{name}: {outs.get('error', '')[-300:]}"
        assert outs["fallback_warnings"] == [], f"{name}: {outs['fallback_warnings']}"


def test_torch_compile_cnn_without_importing_vnpu(user_run):
    """Conv + BatchNorm + pooling + flatten: make_fx emits `aten.sym_size.int` for flatten's
    view sizes, which must be specialized to the static shape (it once crashed _host_call)."""
    _check("CNN", user_run)


class _VmapScan(torch.nn.Module):
    """One step of a parallel prefix scan written with torch.vmap, as transformers' Mamba
    does: Dynamo puts the vmap's functorch transform calls into the graph itself."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        def combine(a_l, b_l, a_r, b_r):
            return a_l * a_r, a_r * b_l + b_r
        a2, b2 = torch.vmap(combine)(a[0::2], b[0::2], a[1::2], b[1::2])
        return torch.cat([a2, b2], dim=-1).exp()


def test_torch_compile_graph_with_vmap_inside():
    # functionalize over a graph that enters vmap itself raised a functorch INTERNAL ASSERT
    # (transformers' Mamba under torch.compile); such graphs are traced to ATen first
    from vnpu.frontends.errors import FallbackWarning
    import warnings

    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    m = _VmapScan()
    ref = m(a, b)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        out = torch.compile(m, backend="vnpu")(a, b)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
