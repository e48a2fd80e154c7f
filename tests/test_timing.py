"""Timing model checks against hand derivations.

Every expected number here is derived by hand (in the comments) from the chip figures and
the execution model in docs/architecture.md; none is read back from vnpu. The custom
chips (tests/conftest.py: ROUND) run at 1 GHz, so 1 GB/s == 1 byte/cycle and 1 ns == 1 cycle:
  dma_bytes_per_cycle = 8, HBM 8 B/cycle, HBM latency 10 cycles, kernel_launch_us = 0.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import make_chip, round_chip
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, TensorType
from vnpu.isa import cost
from vnpu.isa.instructions import CoreStream, DmaLoad, DmaStore, HbmRef, MatMul, SramRef, VecOp
from vnpu.isa.program import KernelLaunch, Program
from vnpu.sim.device import Device
import vnpu

F32 = DType.fp32


# -- helpers ----------------------------------------------------------------------------
def program_of(launch: KernelLaunch, hbm_bytes: int, dtype: DType = F32) -> Program:
    return Program("test", "", dtype, [launch], hbm_bytes, [], [], [])


def hbm(offset: int, shape: tuple[int, ...], dtype: DType = F32) -> HbmRef:
    strides = []
    s = 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return HbmRef(offset, dtype, tuple(shape), tuple(reversed(strides)))


def sram_np(dev: Device, core: int, ref: SramRef) -> np.ndarray:
    return np.ndarray(ref.shape, ref.dtype.np, dev.sram(core), ref.offset)


def hbm_np(dev: Device, ref: HbmRef) -> np.ndarray:
    return np.ndarray(ref.shape, ref.dtype.np, dev.hbm, ref.offset)


def gemm_graph(m: int, k: int, n: int, dt: DType = DType.bf16) -> Graph:
    g = Graph("gemm")
    a = g.add_input("a", TensorType((m, k), dt))
    b = g.add_input("b", TensorType((k, n), dt))
    g.outputs = [g.add_node("matmul", [a, b]).output]
    return g


# -- 1. one MatMul instruction: the systolic closed form -----------------------------------
# 4x4 array (R = C = 4), A[M=10, K=7] @ B[K=7, N=9].
# Per fold: P cycles to preload the stationary block, T to stream, R + C - 2 to skew/drain.
#  OS: stationary = output block R x C over (M, N): folds = ceil(10/4)*ceil(9/4) = 3*3 = 9, T = K = 7
#  WS: stationary = weights over (K, N):            folds = ceil(7/4)*ceil(9/4)  = 2*3 = 6, T = M = 10
#  IS: stationary = inputs over (K, M):             folds = ceil(7/4)*ceil(10/4) = 2*3 = 6, T = N = 9
# Per fold: preload P (R = 4 for WS/IS: the stationary block shifts in; 0 for OS: the
# accumulators clear in place), stream T, skew R + C - 2 = 6.
# Fold by fold (SCALE-Sim v3 counts one less, see docs/timing.md):  folds * (P + T + R + C - 2)
#  OS: 9 * (0 + 7 + 6)  = 9 * 13 = 117
#  WS: 6 * (4 + 10 + 6) = 6 * 20 = 120
#  IS: 6 * (4 + 9 + 6)  = 6 * 19 = 114
# Pipelined folds (the next block loads, or for OS the last outputs drain, while the current
# one streams; T >= R here so a fold costs T): first preload P, then folds * T of
# streaming, then the last skew R + C - 2:
#  OS: 0 + 9*7  + 6 = 69
#  WS: 4 + 6*10 + 6 = 70
#  IS: 4 + 6*9  + 6 = 64
# fp32 at rate 0.25 MAC/PE/cycle streams 4x longer: T' = 4T.
#  WS fp32: fold-by-fold 6 * (8 + 4 + 40 - 2) = 300; pipelined 4 + 6*40 + 6 = 250
# T < R (WS with M = 2, T = 2): a fold cannot start streaming before its block has loaded, so
# folds start every max(T, R) = 4 cycles; the last one streams T = 2 and drains 6:
#  pipelined 4 + 5*4 + 2 + 6 = 32; fold-by-fold 6 * (8 + 4 + 2 - 2) = 72
MATMUL_CASES = [
    # dataflow, pipelined, dtype, (M, K, N), cycles
    ("os", False, "bf16", (10, 7, 9), 117),
    ("ws", False, "bf16", (10, 7, 9), 120),
    ("is", False, "bf16", (10, 7, 9), 114),
    ("os", True, "bf16", (10, 7, 9), 69),
    ("ws", True, "bf16", (10, 7, 9), 70),
    ("is", True, "bf16", (10, 7, 9), 64),
    ("ws", False, "fp32", (10, 7, 9), 300),
    ("ws", True, "fp32", (10, 7, 9), 250),
    ("ws", False, "bf16", (2, 7, 9), 72),
    ("ws", True, "bf16", (2, 7, 9), 32),
]


def _mm_chip(dataflow: str, pipelined: bool):
    return round_chip(core__matrix__dataflow=dataflow, core__matrix__pipelined_folds=pipelined,
                      core__matrix__rate={"bf16": 1.0, "fp32": 0.25})


@pytest.mark.parametrize("dataflow,pipelined,dt,mkn,expected", MATMUL_CASES)
def test_matmul_cycles_closed_form(dataflow, pipelined, dt, mkn, expected):
    chip = _mm_chip(dataflow, pipelined)
    m, k, n = mkn
    assert cost.matmul_cycles(chip, m, k, n, DType(dt)) == expected


@pytest.mark.parametrize("dataflow,pipelined,dt,mkn,expected", MATMUL_CASES)
def test_single_matmul_instruction_simulated(dataflow, pipelined, dt, mkn, expected):
    """A one-instruction program: the kernel takes exactly the closed form and computes A @ B."""
    chip = _mm_chip(dataflow, pipelined)
    m, k, n = mkn
    dtype = DType(dt)
    a = SramRef(0, dtype, (m, k))
    b = SramRef(1024, dtype, (k, n))
    acc = SramRef(2048, F32, (m, n))
    cs = CoreStream()
    cs.queues["matrix"].append(MatMul(a, b, acc, accumulate=False))
    launch = KernelLaunch("mm", "matmul", ["matmul"], [cs], 2 * m * k * n, 0, dtype)
    dev = Device(chip, 1024)
    rng = np.random.default_rng(0)
    av = rng.integers(-4, 5, (m, k)).astype(np.float32)  # small integers: exact in bf16 and fp32
    bv = rng.integers(-4, 5, (k, n)).astype(np.float32)
    sram_np(dev, 0, a)[...] = av.astype(dtype.np)
    sram_np(dev, 0, b)[...] = bv.astype(dtype.np)
    prof = dev.run(program_of(launch, 1024, dtype))
    kp = prof.kernels[0]
    assert kp.cycles == expected
    assert kp.busy["matrix"] == expected
    assert kp.macs == m * k * n
    assert prof.cycles == expected  # kernel_launch_us = 0
    np.testing.assert_array_equal(sram_np(dev, 0, acc), av @ bv)


def test_load_matmul_store_timeline():
    """DMA in, matmul, DMA out on one core, hand-scheduled.

    A, B, C are 8x8 fp32 = 256 bytes each; DMA and HBM move 8 B/cycle -> 32 cycles each, then
    the 10-cycle HBM latency before the data lands.
      A load: engine 0..32, lands 42
      B load: engine 32..64, lands 74 -> signals LOADED
      MatMul 8x8x8, WS 4x4 pipelined: folds ceil(8/4)*ceil(8/4) = 4, T = 8: 4 + 4*8 + 6 = 42 -> 74..116
      Store: 116..148 on the engine, lands 158 = kernel end.
    """
    chip = round_chip()
    A, B, C = hbm(0, (8, 8)), hbm(256, (8, 8)), hbm(512, (8, 8))
    sa, sb, sc = SramRef(0, F32, (8, 8)), SramRef(256, F32, (8, 8)), SramRef(512, F32, (8, 8))
    cs = CoreStream(semaphores=2)
    LOADED, MM = 0, 1
    cs.queues["dma_in"] += [DmaLoad(A, sa), DmaLoad(B, sb, signal=LOADED)]
    cs.queues["matrix"].append(MatMul(sa, sb, sc, False, waits=((LOADED, 1),), signal=MM))
    cs.queues["dma_out"].append(DmaStore(sc, C, waits=((MM, 1),)))
    dev = Device(chip, 768)
    rng = np.random.default_rng(1)
    av, bv = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)
    hbm_np(dev, A)[...] = av
    hbm_np(dev, B)[...] = bv
    kp = dev.run(program_of(KernelLaunch("k", "matmul", ["matmul"], [cs]), 768)).kernels[0]
    assert kp.cycles == pytest.approx(158)
    assert kp.busy["dma_in"] == pytest.approx(64)
    assert kp.busy["matrix"] == pytest.approx(42)
    assert kp.busy["dma_out"] == pytest.approx(32)
    assert kp.hbm_bytes == 3 * 256
    np.testing.assert_allclose(hbm_np(dev, C), av @ bv, rtol=1e-6, atol=1e-6)


# -- 2. a large elementwise op is HBM-bound ---------------------------------------------------
def test_large_elementwise_add_runs_at_hbm_bandwidth():
    """c = a + b over 64M fp32 elements: read 2 x 256 MiB, write 256 MiB, at 4 TB/s -> ~201 us.

    The vector work is 64M / (32 cores x 256 lanes) = 8192 cycles = 5.5 us and each core's DMA
    can do 384 GB/s (x32 = 12 TB/s), so the shared HBM channel is the limit.
    """
    n = 64 * 2**20
    g = Graph("add")
    a = g.add_input("a", TensorType((n,), F32))
    b = g.add_input("b", TensorType((n,), F32))
    g.outputs = [g.add_node("add", [a, b]).output]
    cm = vnpu.compile_ir(g, "vnpu-v1", "fp32")
    p = cm.profile()
    ideal_s = 3 * n * 4 / (4000.0 * 1e9)  # bytes / (4000 GB/s)
    assert p.seconds == pytest.approx(ideal_s, rel=0.05)
    assert p.seconds >= ideal_s  # nothing beats the channel


# -- 3. HBM is one channel shared by all cores ----------------------------------------------
@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_hbm_shared_by_all_cores(cores):
    """Each core loads B = 64 KiB in 4 requests; per-core DMA 32 B/cycle, HBM 64 B/cycle.

    One core is limited by its own engine: B / 32 = 2048 cycles. With N >= 2 cores the
    channel is the limit: N * B / 64 cycles (it never idles: N x 32 B/cycle >= 64). The last
    request lands one HBM latency (10 cycles) later.
    """
    B = 64 * 1024
    chip = round_chip(cores=cores, core__dma_bytes_per_cycle=32, hbm__bandwidth_gbs=64.0)
    streams = []
    for c in range(cores):
        cs = CoreStream()
        for j in range(4):
            src = hbm(c * B + j * (B // 4), (B // 4,), DType.int8)
            cs.queues["dma_in"].append(DmaLoad(src, SramRef(j * (B // 4), DType.int8, (B // 4,))))
        streams.append(cs)
    prog = program_of(KernelLaunch("loads", "copy", [], streams), cores * B)
    kp = Device(chip, cores * B, functional=False).run(prog).kernels[0]
    expected = max(B / 32, cores * B / 64) + 10
    assert kp.cycles == pytest.approx(expected)
    assert kp.hbm_bytes == cores * B


# -- 4. double buffering: overlap exactly where the semaphores allow it ------------------------
def _chunked_gemm(n_chunks: int, n: int, double_buffered: bool):
    """acc = sum_j A_j @ B_j, A_j [16,16], B_j [16,n] fp32, each chunk a separate HBM array.

    double_buffered: gemm.py's scheme: two SRAM buffers; the loads of chunk j wait until the
      matmul of chunk j-2 is done (MM >= j-1); matmul j waits for its loads (LOADED >= j+1).
    serialized: one SRAM buffer; the loads of chunk j wait for matmul j-1 (MM >= j).
    """
    a_bytes, b_bytes = 16 * 16 * 4, 16 * n * 4
    LOADED, MM = 0, 1
    cs = CoreStream(semaphores=2)
    bufs = [(SramRef(0, F32, (16, 16)), SramRef(1024, F32, (16, n))),
            (SramRef(4096, F32, (16, 16)), SramRef(5120, F32, (16, n)))]
    acc = SramRef(8192, F32, (16, n))
    refs = []
    off = 0
    for j in range(n_chunks):
        A, B = hbm(off, (16, 16)), hbm(off + a_bytes, (16, n))
        off += a_bytes + b_bytes
        refs.append((A, B))
        sa, sb = bufs[j % 2] if double_buffered else bufs[0]
        w = (((MM, j - 1),) if j >= 2 else ()) if double_buffered else (((MM, j),) if j >= 1 else ())
        cs.queues["dma_in"] += [DmaLoad(A, sa, waits=w), DmaLoad(B, sb, waits=w, signal=LOADED)]
        cs.queues["matrix"].append(MatMul(sa, sb, acc, accumulate=j > 0, waits=((LOADED, j + 1),), signal=MM))
    return KernelLaunch("chunks", "matmul", ["matmul"], [cs]), refs, acc, off


@pytest.mark.parametrize("n,case", [(20, "compute-bound"), (8, "transfer-bound")])
def test_double_buffering_overlaps_only_where_the_program_says(n, case):
    """Four chunks on the ROUND chip (DMA = HBM = 8 B/cycle, latency 10, 4x4 WS pipelined).

    Load time per chunk Ld = (1024 + 64 n) / 8;  matmul 16x16xn: folds 4 * ceil(n/4), T = 16,
    mm = 4 + folds * 16 + 6.
      n = 20: Ld = 128 + 160 = 288, mm = 4 + 20*16 + 6 = 330 >= Ld + latency = 298, so the
        array never waits after the first chunk:  pipelined = Ld + 10 + 4 mm = 298 + 1320 = 1618
      n = 8:  Ld = 128 + 64 = 192, mm = 4 + 8*16 + 6 = 138 < Ld, so the DMA engine never waits:
        pipelined = 4 Ld + 10 + mm = 768 + 10 + 138 = 916
    Serialized, each chunk pays load, latency and matmul in turn: 4 (Ld + 10 + mm)
      n = 20: 4 * 628 = 2512;   n = 8: 4 * 340 = 1360
    """
    chip = round_chip()
    chunks = 4
    ld = (1024 + 64 * n) / 8
    mm = 4 + 4 * math.ceil(n / 4) * 16 + 6
    if case == "compute-bound":
        assert mm >= ld + 10
        expect_pipe = ld + 10 + chunks * mm
    else:
        assert mm < ld
        expect_pipe = chunks * ld + 10 + mm
    expect_serial = chunks * (ld + 10 + mm)
    rng = np.random.default_rng(2)
    results = {}
    for db in (True, False):
        launch, refs, acc, nbytes = _chunked_gemm(chunks, n, db)
        dev = Device(chip, nbytes)
        ref_out = np.zeros((16, n), np.float32)
        for A, B in refs:
            av = rng.standard_normal(A.shape).astype(np.float32)
            bv = rng.standard_normal(B.shape).astype(np.float32)
            hbm_np(dev, A)[...] = av
            hbm_np(dev, B)[...] = bv
            ref_out += av @ bv
        kp = dev.run(program_of(launch, nbytes)).kernels[0]
        results[db] = kp.cycles
        np.testing.assert_allclose(sram_np(dev, 0, acc), ref_out, rtol=1e-5, atol=1e-4)
        # the engines did the same work either way
        assert kp.busy["matrix"] == pytest.approx(chunks * mm)
        assert kp.busy["dma_in"] == pytest.approx(chunks * ld)
    assert results[True] == pytest.approx(expect_pipe)
    assert results[False] == pytest.approx(expect_serial)


def test_compiled_gemm_overlaps_compute_and_transfer():
    """A compiled GEMM on one core whose compute and HBM time are comparable.

    256x256x256 bf16 on an 8x8 array at 1 GHz with 8 B/cycle HBM: compute is at least
    256^3 / 64 = 262144 cycles, and the operand traffic is of the same order. With the
    double-buffered pipeline the kernel must take about max(compute, transfer) -- we allow
    5% for the pipeline fill (first chunk's load, last tile's store) -- and far less than the
    sum of the two.
    """
    chip = round_chip(core__matrix__rows=8, core__matrix__cols=8)
    cm = vnpu.compile_ir(gemm_graph(256, 256, 256), chip, "bf16")
    kp = cm.profile().kernels[0]
    compute = kp.busy["matrix"]
    transfer = kp.busy["dma_in"] + kp.busy["dma_out"]  # both directions share the one HBM channel
    assert compute >= 256**3 / 64
    assert transfer >= 0.5 * compute, "test premise: transfer comparable to compute"
    assert kp.cycles <= 1.05 * max(compute, transfer)
    assert kp.cycles <= 0.7 * (compute + transfer)


# -- 5. compute scales with cores -------------------------------------------------------------
def test_gemm_matrix_time_scales_with_cores():
    """4096^3 bf16 on vnpu-v1-like chips with 8, 16, 32 cores (64x64 arrays, 1 MAC/PE/cycle).

    Ideal matrix time per core = 4096^3 / (cores * 4096) = 2^24 / cores cycles:
    8 -> 2097152, 16 -> 1048576, 32 -> 524288. Each MatMul instruction adds its pipeline fill
    and drain (2R + C - 2 = 190 cycles per instruction, a few % for tiles of >= 128 rows), and
    the output tiles (a multiple of 32) divide evenly over the cores, so the busiest core's
    matrix time must be within 5% of ideal, and halve (within 3%) when the cores double.
    The whole kernel is compute bound, so its time scales the same way.
    """
    crit = {}
    kern = {}
    for cores in (8, 16, 32):
        chip = make_chip({"cores": cores, "name": f"v1-{cores}c"})
        cm = vnpu.compile_ir(gemm_graph(4096, 4096, 4096), chip, "bf16")
        dev = Device(chip, cm.program.hbm_bytes, functional=False)
        prof = dev.run(cm.program, trace=True)
        per_core: dict[int, float] = {}
        for e in dev.trace_events:
            if e["cat"] == "matrix":
                per_core[e["pid"]] = per_core.get(e["pid"], 0.0) + e["dur"] * 1e-6 * chip.clock_hz
        assert len(per_core) == cores
        crit[cores] = max(per_core.values())
        kern[cores] = prof.kernels[0].cycles
        ideal = 2**24 / cores
        assert ideal <= crit[cores] <= 1.05 * ideal
    assert crit[8] / crit[16] == pytest.approx(2.0, rel=0.03)
    assert crit[16] / crit[32] == pytest.approx(2.0, rel=0.03)
    assert kern[8] / kern[16] == pytest.approx(2.0, rel=0.05)
    assert kern[16] / kern[32] == pytest.approx(2.0, rel=0.05)


# -- 6. vector instructions and launch overhead ------------------------------------------------
@pytest.mark.parametrize("op,expected", [
    ("add", 8 + 4),   # 8-cycle pipeline + ceil(1000 / 256 lanes)
    ("exp", 8 + 16),  # transcendental: ceil(1000 / 64 SFU lanes)
])
def test_vector_instruction_cycles(op, expected):
    chip = round_chip(core__vector__lanes=256, core__vector__sfu_lanes=64)
    x, y, z = SramRef(0, F32, (1000,)), SramRef(4096, F32, (1000,)), SramRef(8192, F32, (1000,))
    cs = CoreStream()
    cs.queues["vector"].append(VecOp(op, z, (x, y) if op == "add" else (x,)))
    dev = Device(chip, 64)
    xv = np.linspace(-2, 2, 1000, dtype=np.float32)
    sram_np(dev, 0, x)[...] = xv
    sram_np(dev, 0, y)[...] = 1.0
    kp = dev.run(program_of(KernelLaunch("v", "elementwise", [op], [cs]), 64)).kernels[0]
    assert kp.cycles == expected
    ref = xv + 1.0 if op == "add" else np.exp(xv)
    np.testing.assert_allclose(sram_np(dev, 0, z), ref, rtol=1e-6)


def test_kernel_launch_overhead_between_kernels():
    """Two one-MatMul kernels (70 cycles each, see MATMUL_CASES) with kernel_launch_us = 2
    (2000 cycles at 1 GHz): the second starts 70 + 2000 cycles after the first; the run,
    which counts the overhead after each launch, lasts 2 * (70 + 2000) = 4140 cycles."""
    chip = round_chip(kernel_launch_us=2.0)
    launches = []
    for _ in range(2):
        cs = CoreStream()
        cs.queues["matrix"].append(MatMul(SramRef(0, F32, (10, 7)), SramRef(512, F32, (7, 9)),
                                          SramRef(1024, F32, (10, 9)), False))
        launches.append(KernelLaunch("mm", "matmul", ["matmul"], [cs], dtype=DType.bf16))
    prog = Program("test", "", DType.bf16, launches, 64, [], [], [])
    prof = Device(chip, 64, functional=False).run(prog)
    assert [k.cycles for k in prof.kernels] == [70, 70]
    assert prof.kernels[1].start_cycle == pytest.approx(2070)
    assert prof.cycles == pytest.approx(4140)


def _matmul_launch(name: str = "mm") -> KernelLaunch:
    cs = CoreStream()
    cs.queues["matrix"].append(MatMul(SramRef(0, F32, (10, 7)), SramRef(512, F32, (7, 9)),
                                      SramRef(1024, F32, (10, 9)), False))
    return KernelLaunch(name, "matmul", ["matmul"], [cs], dtype=DType.bf16)


@pytest.mark.parametrize("launch_us,barrier_us,gap", [(2.0, 0.4, 1930), (0.05, 0.04, 40), (0.3, 0.5, 300)])
def test_kernel_dispatch_overlaps_the_running_kernel(launch_us, barrier_us, gap):
    """With a hardware queue (kernel_barrier_us) the next kernel is dispatched while one runs:
    after a 70-cycle kernel the gap is max(barrier, launch - 70) cycles at 1 GHz, the barrier at
    most the launch: 2000 - 70 = 1930; a 50-cycle launch hides behind the kernel except the
    40-cycle barrier; a barrier longer than the launch is cut to it (300)."""
    chip = round_chip(kernel_launch_us=launch_us, kernel_barrier_us=barrier_us)
    prog = Program("test", "", DType.bf16, [_matmul_launch(), _matmul_launch()], 64, [], [], [])
    prof = Device(chip, 64, functional=False).run(prog)
    assert [k.cycles for k in prof.kernels] == [70, 70]
    assert prof.kernels[1].start_cycle == pytest.approx(70 + gap)
    assert prof.cycles == pytest.approx(2 * (70 + gap))


def test_weights_prefetched_into_l2_in_the_idle_hbm_time():
    """Kernel A is one 70-cycle MatMul (no HBM traffic); kernel B loads a 512-byte weight view
    (a program constant) and then a 512-byte activation. ROUND chip with a 64 B/cycle DMA engine:
    8 B/cycle HBM, 10-cycle HBM latency; L2 at 64 B/cycle, 5-cycle hit latency; launch 30 cycles.
    Without prefetch B's loads hold the HBM channel 64 + 64 cycles, + 10 latency = 138. With
    4 KiB of prefetch, A's 70 cycles and the 30-cycle gap leave 100 idle HBM cycles = 800 bytes
    >= 512: the weight is in L2 when B starts and its load takes 512 / 64 = 8 cycles on the L2
    port; the activation follows from HBM: B = 8 + 64 + 10 = 82 cycles. B still counts the
    weight's 512 HBM bytes (read during A), and 512 L2-hit bytes. A 200-byte share of L2 holds
    nothing (the view is larger)."""
    def run(prefetch: int):
        chip = round_chip(kernel_launch_us=0.03, core__dma_bytes_per_cycle=64, l2__bytes=1 << 16,
                          l2__bytes_per_cycle=64, l2__latency_ns=5.0, l2__weight_prefetch_bytes=prefetch)
        w = HbmRef(0, DType.int8, (512,), (1,))
        x = HbmRef(4096, DType.int8, (512,), (1,))
        cs = CoreStream()
        cs.queues["dma_in"] += [DmaLoad(w, SramRef(0, DType.int8, (512,))),
                                DmaLoad(x, SramRef(1024, DType.int8, (512,)))]
        b = KernelLaunch("b", "copy", ["copy"], [cs], dtype=DType.bf16)
        prog = Program("t", "", DType.bf16, [_matmul_launch("a"), b], 8192, [], [], [(w, np.zeros(512, np.int8))])
        return Device(chip, 8192, functional=False).run(prog).kernels[1]

    cold, warm, small = run(0), run(4096), run(200)
    assert cold.cycles == pytest.approx(138) and cold.prefetched_bytes == 0 and cold.l2_hit_bytes == 0
    assert warm.prefetched_bytes == 512 and warm.l2_hit_bytes == 512 and warm.hbm_read_bytes == 1024
    assert warm.cycles == pytest.approx(82)
    assert small.cycles == pytest.approx(138) and small.prefetched_bytes == 0


# -- steady-state shortcut: identical launches are simulated once in timing-only mode ----------
def _matmul_chain(layers: int):
    """x [16, 32] through `layers` identical [32, 32] matmuls (weights are runtime inputs)."""
    g = Graph("chain")
    h = g.add_input("x", TensorType((16, 32), F32))
    for i in range(layers):
        w = g.add_input(f"w{i}", TensorType((32, 32), F32))
        h = g.add_node("matmul", [h, w]).output
    return g, h


def test_identical_launches_share_one_simulation():
    """Three identical matmul layers and one of another shape: timing-only simulates two
    distinct launches, and every kernel's cycles equal the full functional simulation's."""
    from vnpu.api import compile_ir
    from vnpu.sim.device import Device

    chip = round_chip(cores=2)
    g, h = _matmul_chain(3)
    w_last = g.add_input("w_last", TensorType((32, 8), F32))
    g.outputs = [g.add_node("matmul", [h, w_last]).output]
    cm = compile_ir(g, chip, "fp32")
    keys = [l.timing_key for l in cm.program.launches]
    assert len(keys) == 4 and len(set(keys)) == 2 and keys[0] == keys[1] == keys[2] != keys[3]
    dev = Device(chip, cm.program.hbm_bytes, functional=False)
    fast = dev.run(cm.program)
    assert len(dev._memo) == 2
    rng = np.random.default_rng(0)
    cm.run_numpy([rng.standard_normal(s).astype(np.float32) for s in [(16, 32), (32, 32), (32, 32), (32, 32), (32, 8)]])
    full = cm.last_profile
    assert [k.cycles for k in fast.kernels] == pytest.approx([k.cycles for k in full.kernels], rel=1e-12)
    assert [k.start_cycle for k in fast.kernels] == pytest.approx([k.start_cycle for k in full.kernels], rel=1e-12)
    assert fast.cycles == pytest.approx(full.cycles, rel=1e-12)
    assert fast.busy == pytest.approx(full.busy, rel=1e-12)


def test_timing_only_compile_lowers_identical_layers_once():
    """compile_graph(timing_only=True) lowers each distinct kernel once and shares its
    instruction streams with identical layers (also across programs through kernel_cache);
    the simulated time equals the fully lowered program's, and functional runs are refused."""
    from vnpu.compiler.lower import CompileError, KernelCache, compile_graph
    from vnpu.sim.device import Device

    chip = round_chip(cores=2)
    g, h = _matmul_chain(3)
    g.outputs = [h]
    full, _ = compile_graph(g, chip, "fp32")
    cache = KernelCache()
    lean, _ = compile_graph(g, chip, "fp32", timing_only=True, kernel_cache=cache)
    assert [l.name for l in lean.launches] == [l.name for l in full.launches]
    assert lean.launches[0].cores is lean.launches[1].cores is lean.launches[2].cores
    assert len({id(l.cores) for l in full.launches}) == 3
    t_full = Device(chip, full.hbm_bytes, functional=False).run(full, trace=True)  # trace: no memo, all simulated
    t_lean = Device(chip, lean.hbm_bytes, functional=False).run(lean, trace=True)
    assert t_lean.cycles == pytest.approx(t_full.cycles, rel=1e-12)
    assert [k.cycles for k in t_lean.kernels] == pytest.approx([k.cycles for k in t_full.kernels], rel=1e-12)
    again, _ = compile_graph(g, chip, "fp32", timing_only=True, kernel_cache=cache)  # a second program
    assert again.launches[0].cores is lean.launches[0].cores
    with pytest.raises(ValueError, match="timing-only"):
        Device(chip, lean.hbm_bytes, functional=True).run(lean)
    with pytest.raises(CompileError, match="another chip"):  # a cache serves one chip
        compile_graph(g, round_chip(cores=4), "fp32", timing_only=True, kernel_cache=cache)


def test_timing_only_compile_shares_multi_launch_kernels():
    """Two identical decode attentions, each lowered to a key-split launch and its combine:
    the second reuses both launches under its own names, and times exactly as lowered anew."""
    import math

    from vnpu.chip import load_chip
    from vnpu.compiler.lower import compile_graph
    from vnpu.sim.device import Device

    chip = load_chip("vnpu-v1")
    g = Graph("two_decodes")
    outs = []
    for i in range(2):
        q = g.add_input(f"q{i}", TensorType((1, 4, 1, 64), F32))
        k = g.add_input(f"k{i}", TensorType((1, 2, 1000, 64), F32))
        v = g.add_input(f"v{i}", TensorType((1, 2, 1000, 64), F32))
        p = g.add_input(f"p{i}", TensorType((1,), DType.int64))
        outs.append(g.add_node("attention", [q, k, v, p], {"scale": 1 / math.sqrt(64)}, name=f"att{i}").output)
    g.outputs = outs
    full, _ = compile_graph(g, chip, "bf16")
    lean, _ = compile_graph(g, chip, "bf16", timing_only=True)
    names = [l.name for l in full.launches]
    assert len(names) == 4 and any("combine" in n for n in names)  # split + combine per attention
    assert [l.name for l in lean.launches] == names
    assert lean.launches[2].cores is lean.launches[0].cores and lean.launches[3].cores is lean.launches[1].cores
    t_full = Device(chip, full.hbm_bytes, functional=False).run(full, trace=True)
    t_lean = Device(chip, lean.hbm_bytes, functional=False).run(lean, trace=True)
    assert [k.cycles for k in t_lean.kernels] == pytest.approx([k.cycles for k in t_full.kernels], rel=1e-12)
