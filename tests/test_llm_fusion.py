"""Decoder-layer launch fusions: the MoE router chain (softmax -> top-k -> normalize -> expert
schedule) and the MoE combine (weighted top-k sum + residual) as one kernel each, and sibling
small kernels (q/k RoPE, K/V appends) in one launch. Each against torch or numpy, bit-identical
to the unfused kernels (prefill and decode logits, fp32 and bf16), and counted in the
qwen3-moe-tiny decode program."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vnpu
import vnpu.compiler.patterns as patterns
from vnpu.chip import load_chip
from vnpu.dtypes import DType
from vnpu.ir.graph import TensorType


class _Router(torch.nn.Module):
    """Qwen3-MoE's routing (transformers Qwen3MoeSparseMoeBlock)."""

    def __init__(self, k: int, normalize: bool = True) -> None:
        super().__init__()
        self.k, self.normalize = k, normalize

    def forward(self, logits: torch.Tensor) -> tuple:
        p = F.softmax(logits, dim=-1, dtype=torch.float)
        w, i = torch.topk(p, self.k, dim=-1)
        if self.normalize:
            w = w / w.sum(dim=-1, keepdim=True)
        return w, i


@pytest.mark.parametrize("tokens,experts,k", [(1, 8, 1), (3, 8, 2), (37, 128, 8), (70, 8, 2), (5, 128, 1)])
def test_fused_router_matches_torch(tokens: int, experts: int, k: int) -> None:
    torch.manual_seed(tokens * 1000 + experts + k)
    x = torch.randn(tokens, experts) * 3  # continuous random logits: no ties
    m = _Router(k)
    cm = vnpu.compile(m, (x,))
    kinds = [op for l in cm.program.launches for op in l.ops]
    assert len(cm.program.launches) == 1 and kinds[:2] == ["softmax", "topk"], kinds
    w, i = cm(x)
    rw, ri = m(x)
    assert torch.equal(i, ri)
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_router_bit_identical_to_the_unfused_chain(dtype: str, normalize: bool, monkeypatch) -> None:
    torch.manual_seed(3)
    x = torch.randn(40, 64) * 2  # 40 rows over 16 cores: several tiles per core
    m = _Router(4, normalize)
    fused = vnpu.compile(m, (x,), dtype=dtype)
    monkeypatch.setattr(patterns, "fuse_moe_router", lambda g: 0)
    plain = vnpu.compile(m, (x,), dtype=dtype)
    assert len(fused.program.launches) == 1 < len(plain.program.launches)
    for a, b in zip(fused(x), plain(x)):
        assert torch.equal(a, b)


def _decode_launches(name: str, fuse: bool, monkeypatch) -> list[str]:
    from vnpu.runtime.llm import LLMSession
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

    if not fuse:
        _no_fusion(monkeypatch)
    sess = LLMSession(DecoderStep(build_llm(get_llm(name)), 1, 64), load_chip("vnpu-v1"), DType.fp32, 1, name,
                      functional=False)
    from vnpu.runtime.llm import repeated_block

    launches = sess.decode_program(5).launches
    repeated_block([l.timing_key for l in launches])  # layer extrapolation still finds the repeated layer
    monkeypatch.undo()
    return [l.name for l in launches]


def test_router_pattern_fires_on_the_qwen3_moe_decode_graph(monkeypatch) -> None:
    before = _decode_launches("qwen3-moe-tiny", False, monkeypatch)
    after = _decode_launches("qwen3-moe-tiny", True, monkeypatch)
    layers = 2
    routers = [n for n in after if n.startswith("moe_router_")]
    assert len(routers) == layers
    assert not any(n.startswith(("_softmax", "sum_", "div")) for n in after)
    assert len([n for n in after if n.startswith("moe_combine_")]) == layers
    assert len([n for n in after if n.startswith("rope_")]) == len([n for n in after if n.startswith("index_copy")]) \
        == layers  # q and k RoPE in one launch, K and V appends in one launch
    assert not any(n.endswith("_route") for n in after)  # the expert schedule comes from the router kernel
    # softmax + topk + sum + div + moe_route -> one kernel; mul + reduce + residual add -> one kernel;
    # two sibling pairs
    assert len(before) - len(after) == (4 + 2 + 2) * layers


def _no_fusion(monkeypatch) -> None:
    monkeypatch.setattr(patterns, "fuse_moe_router", lambda g: 0)
    monkeypatch.setattr(patterns, "fuse_moe_combine", lambda g: 0)
    monkeypatch.setattr(patterns, "group_sibling_kernels", lambda g: 0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sibling_launches_bit_identical_on_a_dense_decoder(dtype: str, monkeypatch) -> None:
    """qwen3-tiny (dense): q/k RoPE and K/V appends grouped, prefill and decode logits unchanged."""
    from vnpu.workloads.llm_zoo import get_llm

    spec = get_llm("qwen3-tiny")
    fused = _moe_steps(spec, dtype, 7, 2, prefix=("rope", "index"))
    _no_fusion(monkeypatch)
    plain = _moe_steps(spec, dtype, 7, 2, prefix=("rope", "index"))
    assert sum(n.count("+") for n in fused[2]) == 2 * spec.num_layers * 2  # per layer and program: 2 groups
    assert not any("+" in n for n in plain[2])
    for a, b in zip(fused[:2], plain[:2]):
        np.testing.assert_array_equal(a, b)


def _moe_spec(k: int):
    from dataclasses import replace

    from vnpu.workloads.llm_zoo import get_llm

    spec = get_llm("qwen3-moe-tiny")
    return replace(spec, config=dict(spec.config, num_experts_per_tok=k)) if k != spec.config["num_experts_per_tok"] \
        else spec


def _moe_steps(spec, dtype: str, tokens: int, batch: int, prefix: tuple[str, ...] = ()) -> list:
    """Logits of a prefill over `tokens` tokens and one decode step."""
    from vnpu.runtime.llm import LLMSession
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, prompt_ids

    sess = LLMSession(DecoderStep(build_llm(spec), batch, 64), load_chip("vnpu-v1"), DType(dtype), batch, spec.name)
    ids = prompt_ids(spec.config["vocab_size"], batch, tokens).numpy()
    nxt, logits, _ = sess.run(sess.prefill_program(tokens), ids, np.arange(tokens))
    _, logits2, _ = sess.run(sess.decode_program(tokens), nxt[:, None], np.array([tokens]))
    if prefix:
        return [logits, logits2, [l.name for p in sess.programs.values() for l in p.launches
                                  if l.name.startswith(prefix)]]
    kinds = {l.name.split("_")[1] for p in sess.programs.values() for l in p.launches if l.name.startswith("moe_")}
    return [logits, logits2, kinds]


@pytest.mark.parametrize("dtype,k,tokens", [("fp32", 2, 7), ("bf16", 2, 7), ("bf16", 8, 7), ("fp32", 2, 40)])
def test_fused_moe_layers_bit_identical_to_unfused(dtype: str, k: int, tokens: int, monkeypatch) -> None:
    """Router (with the expert schedule) and combine fused give the very logits of the unfused
    kernels: prefill of 2 x 7 tokens (router on one core) or 2 x 40 (router on all cores, then
    the schedule's own launch), and a decode step of 2 tokens."""
    spec = _moe_spec(k)
    fused = _moe_steps(spec, dtype, tokens, 2)
    _no_fusion(monkeypatch)
    plain = _moe_steps(spec, dtype, tokens, 2)
    assert {"router", "combine"} <= fused[2] and not {"router", "combine"} & plain[2]
    for a, b in zip(fused[:2], plain[:2]):
        np.testing.assert_array_equal(a, b)


def test_moe_combine_matches_the_weighted_sum() -> None:
    """The combine kernel alone against numpy: sum_k w * y + r (fp32, several items per core)."""
    from vnpu.compiler.lower import compile_graph
    from vnpu.ir.graph import Graph
    from vnpu.sim.device import Device

    rng = np.random.default_rng(0)
    t, k, h = 70, 3, 200
    g = Graph("combine")
    y = g.add_input("y", TensorType((t, k, h), DType.fp32))
    w = g.add_input("w", TensorType((t, k, 1), DType.fp32))
    r = g.add_input("r", TensorType((t, 1, h), DType.fp32))
    n = g.add_node("moe_combine", [y, w, r], {"mul_dtype": DType.fp32, "sum_dtype": DType.fp32,
                                             "out_dtype": DType.fp32})
    g.outputs = [n.output]
    prog, _ = compile_graph(g, load_chip("vnpu-v1"), DType.fp32)
    yv, wv, rv = (rng.standard_normal(v.shape).astype(np.float32) for v in (y, w, r))
    dev = Device(load_chip("vnpu-v1"), prog.hbm_bytes)
    for ref, data in prog.constants:
        dev.write(ref, data)
    for ref, data in zip(prog.inputs, (yv, wv, rv)):
        dev.write(ref, data)
    dev.run(prog)
    out = dev.read(prog.outputs[0])
    np.testing.assert_allclose(out, (yv * wv).sum(1) + rv[:, 0], rtol=1e-5, atol=1e-5)


def test_sibling_kernels_that_overflow_the_scratchpad_launch_apart() -> None:
    """Two independent RoPEs whose tiles each fill most of a small scratchpad (as a long prefill's
    do on the GPU profiles) cannot share a core's scratchpad: the group lowers to two launches,
    and each output is still x * cos + rotate_half(x) * sin."""
    from vnpu.ir.graph import Graph

    base = load_chip("vnpu-v1")
    core = base.core.model_copy(update={"scratchpad": base.core.scratchpad.model_copy(update={"bytes": 96 * 1024})})
    chip = base.model_copy(update={"cores": 1, "core": core})
    g = Graph("two_ropes")
    f32 = DType.fp32
    c = g.add_input("cos", TensorType((64, 64), f32))
    s = g.add_input("sin", TensorType((64, 64), f32))
    xs = [g.add_input(f"x{i}", TensorType((1, 4, 64, 64), f32)) for i in range(2)]
    g.outputs = [g.add_node("rope", [x, c, s], {}).output for x in xs]
    cm = vnpu.compile_ir(g, chip, "fp32")
    ropes = [l for l in cm.program.launches if "rope" in l.ops]
    assert len(ropes) == 2 and any("+rope" in l.name for l in ropes)  # grouped, then launched apart
    torch.manual_seed(3)
    cos, sin = torch.randn(64, 64), torch.randn(64, 64)
    x0, x1 = torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64)
    out = cm(cos, sin, x0, x1)

    def rope(x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    torch.testing.assert_close(out[0], rope(x0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], rope(x1), atol=1e-5, rtol=1e-5)
