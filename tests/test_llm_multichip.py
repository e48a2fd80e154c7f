"""Multi-chip LLM serving: collective costs on the chip link, the MoE expert-parallel
schedule choice, and link energy, against numbers computed by hand for a made-up link
(100 GB/s per chip, 1 µs per step, 10 pJ per byte)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from vnpu.chip import load_chip
from vnpu.chip.schema import Link
from vnpu.dtypes import DType
from vnpu.isa.cost import all_gather_seconds, allreduce_seconds, alltoall_seconds, reduce_scatter_seconds
from vnpu.runtime.llm import generate, shard_spec, step_collectives
from vnpu.workloads.llm_zoo import LLMSpec, get_llm

BW, LAT, PJ = 100e9, 1e-6, 10.0


def _chip(latency_us: float = 1.0):
    base = load_chip("vnpu-v1")
    return base.model_copy(update={"chip_link": Link(bandwidth_gbs=100.0, latency_us=latency_us,
                                                     energy_pj_per_byte=PJ)})


def _moe(hidden: int = 1024, k: int = 2, layers: int = 1, experts: int = 16) -> LLMSpec:
    return LLMSpec("moe-test", "qwen3_moe", dict(hidden_size=hidden, num_experts_per_tok=k, num_experts=experts,
                                                 num_hidden_layers=layers), "made-up MoE for collective costs")


def test_collective_costs_by_hand() -> None:
    chip = _chip()
    # 8 MB over 4 chips: ring steps move 8e6 / 4 = 2e6 B per chip: 2e6 / 100e9 = 20 µs + 1 µs latency
    assert reduce_scatter_seconds(chip, 8e6, 4) == pytest.approx(3 * 21e-6)
    assert all_gather_seconds(chip, 8e6, 4) == pytest.approx(3 * 21e-6)
    assert allreduce_seconds(chip, 8e6, 4) == pytest.approx(6 * 21e-6)
    # all-to-all, direct: a chip sends its 3 MB (1 MB to each of 3 peers) at once: 30 µs + one latency
    assert alltoall_seconds(chip, 3e6, 4) == pytest.approx(31e-6)
    for f in (reduce_scatter_seconds, all_gather_seconds, allreduce_seconds, alltoall_seconds):
        assert f(chip, 8e6, 1) == 0.0
    with pytest.raises(ValueError, match="no chip_link"):
        alltoall_seconds(load_chip("vnpu-v1").model_copy(update={"chip_link": None}), 1e6, 2)


def test_dense_step_is_two_allreduces_per_layer() -> None:
    spec = LLMSpec("dense-test", "llama", dict(hidden_size=1024, num_hidden_layers=3), "made-up dense")
    c = step_collectives(spec, _chip(), 4, 2, 5, DType.bf16)
    act = 2 * 5 * 1024 * 2  # [B*S, H] bf16 = 20480 B
    cand = 2 * 16 * 4  # sampled candidates: 16 B per sequence and chip, gathered on every chip
    # ring all-reduce: 6 steps of bytes / 4 + 1 µs; a chip sends 2 (n-1)/n of the tensor, 4 chips.
    # ring all-gather of the candidates: 3 steps; each chip sends 3 of the 4 shares
    assert c.seconds == pytest.approx(6 * (act / 4 / BW + LAT) * 2 * 3 + 3 * (cand / 4 / BW + LAT))
    assert c.link_bytes == pytest.approx(2 * 3 * 6 * act + 3 * cand)
    assert c.moe_schedule == ""


def test_moe_prefill_takes_all_to_all_by_hand() -> None:
    # 512 tokens of hidden 1024 (bf16: 2048 B each), 4 chips, top-2: act = 512 x 2048 = 2^20 B.
    # all-reduce schedule: 2 all-reduces = 12 steps x (2^18 B / 100 GB/s = 2.62144 µs + 1 µs) = 43.457 µs
    # all-to-all schedule: reduce-scatter + all-gather = 6 steps x 3.62144 µs = 21.729 µs, then dispatch and
    #   combine: each chip owns 128 tokens; 16 experts, 4 per chip, top-2 distinct experts uniformly at random:
    #   a given other chip holds neither with probability C(12,2)/C(16,2) = 66/120, so a token goes to
    #   3 x 54/120 = 1.35 remote chips: 128 x 1.35 x 2048 = 353894.4 B = 3.538944 µs + 1 µs, twice = 9.077888 µs;
    #   total 30.806528 µs: all-to-all wins (8 latencies instead of 12, and fewer bytes).
    # both: the candidates' all-gather (16 B per chip, 64 B gathered), 3 x (16 B / 100 GB/s + 1 µs) = 3.00048 µs
    c = step_collectives(_moe(), _chip(), 4, 1, 512, DType.bf16)
    sample = 3 * (16 / BW + LAT)
    assert c.moe_schedule == "all-to-all"
    assert c.seconds == pytest.approx(30.806528e-6 + sample)
    assert c.alternative_seconds == pytest.approx(43.45728e-6 + sample)
    # bytes, all chips: reduce-scatter and all-gather 3 x 2^20 each, dispatch + combine 2 x 512 x 1.35 x 2048,
    # candidates 3 x 64 B
    assert c.link_bytes == pytest.approx(6 * 2**20 + 2831155.2 + 192)


def test_moe_schedule_depends_on_latency_when_chunks_round_up() -> None:
    # 9 tokens over 8 chips, 8 experts (one per chip), top-8: every token reaches all 8 chips, 7 remote
    # copies (C(7,8) = 0). Hidden 2048 B.
    # all-reduce: 2 x 14 steps of 9 x 2048 / 8 = 2304 B (23.04 ns at 100 GB/s)
    # all-to-all: a chip owns ceil(9/8) = 2 tokens: reduce-scatter + all-gather 14 steps of 4096 B (40.96 ns),
    #   dispatch + combine 2 x 2 x 7 x 2048 = 2 x 28672 B (286.72 ns each)
    # with a 1 ns latency: all-reduce 28 x 24.04 ns = 673.1 ns < all-to-all 14 x 41.96 + 2 x 287.72 = 1162.9 ns
    # with a 1 µs latency: all-reduce 28.645 µs > all-to-all 16 latencies + 1.147 µs = 17.147 µs
    spec = _moe(k=8, experts=8)
    fast = step_collectives(spec, _chip(latency_us=0.001), 8, 9, 1, DType.bf16)
    assert fast.moe_schedule == "all-reduce"
    sample = 7 * (9 * 16 * 8 / 8 / BW + 1e-9)  # all-gather of 9 sequences x 16 B x 8 chips
    assert fast.seconds == pytest.approx(28 * (2304 / BW + 1e-9) + sample)
    assert fast.alternative_seconds == pytest.approx(14 * (4096 / BW + 1e-9) + 2 * (28672 / BW + 1e-9) + sample)
    slow = step_collectives(spec, _chip(), 8, 9, 1, DType.bf16)
    assert slow.moe_schedule == "all-to-all"
    assert slow.seconds - 7 * (9 * 16 * 8 / 8 / BW + LAT) == pytest.approx(17.14688e-6)
    # the bytes are what the chips really send, not the padded chunks: 2 x 7 x 9 x 2048 for the ring
    # collectives, 2 x 9 x 7 x 2048 for dispatch and combine, 7 x 9 x 16 x 8 for the candidates
    assert slow.link_bytes == pytest.approx(2 * 7 * 9 * 2048 + 2 * 9 * 7 * 2048 + 7 * 9 * 16 * 8)


def test_multichip_generation_reports_link_time_bytes_and_energy() -> None:
    full, chip, n = get_llm("qwen3-moe-tiny"), _chip(), 2
    rep = generate(full, prompt_len=16, max_new_tokens=3, batch=1, chip=chip, chips=n, timing_only=True)
    half = generate(shard_spec(full, n), prompt_len=16, max_new_tokens=3, batch=1, chip=chip)
    pre, dec = (step_collectives(full, chip, n, 1, t, DType.bf16) for t in (16, 1))
    assert rep.moe_collective == f"prefill {pre.moe_schedule}, decode {dec.moe_schedule}"
    assert rep.prefill_comm_s == pytest.approx(pre.seconds) and rep.decode_comm_s == pytest.approx(dec.seconds)
    assert rep.ttft_s == pytest.approx(half.ttft_s + pre.seconds, rel=1e-9)
    assert rep.tpot_s == pytest.approx(half.tpot_s + dec.seconds, rel=1e-9)
    link_bytes = pre.link_bytes + 2 * dec.link_bytes
    assert rep.link_bytes == pytest.approx(link_bytes) and rep.link_bytes_per_token == pytest.approx(link_bytes / 3)
    assert rep.link_energy_j == pytest.approx(link_bytes * PJ * 1e-12)
    # energy: both chips' own, static power while the links work, and the bytes on the links
    static = chip.energy.static_w * (pre.seconds + 2 * dec.seconds)
    assert rep.total_energy_j == pytest.approx(n * (half.total_energy_j + static) + rep.link_energy_j, rel=1e-9)
    # one chip: no collectives
    one = generate(full, prompt_len=16, max_new_tokens=3, batch=1, chip=chip, timing_only=True)
    assert (one.link_bytes, one.link_energy_j, one.moe_collective, one.decode_comm_s) == (0.0, 0.0, "", 0.0)


def test_link_energy_schema() -> None:
    with pytest.raises(ValidationError, match="energy_pj_per_byte"):
        Link(bandwidth_gbs=100.0, latency_us=1.0, energy_pj_per_byte=-1.0)
    assert Link(bandwidth_gbs=100.0, latency_us=1.0).energy_pj_per_byte is None  # optional: no link energy
    for name in ("vnpu-v1", "h20", "h100", "h200", "a100", "ascend-910b"):
        assert load_chip(name).chip_link.energy_pj_per_byte > 0
