"""The machine-readable run report written by ``vnpu run MODEL --json PATH``.

Schema (``schema_version`` 1). Times are seconds, energies joules, sizes bytes, rates per
second; fractions are in [0, 1] (not percent). Values that cannot be computed are ``null``.

Top level
---------
``schema``              always ``"vnpu-run-report"``
``schema_version``      ``1``; bumped on any incompatible change
``vnpu_version``        the vnpu package version that wrote the report
``chip``                chip name (preset name or the ``name`` field of a chip TOML file)
``chip_fingerprint``    hash of the full chip spec the program was compiled for
``chip_spec``           the full chip spec used (every field of ``vnpu.chip.schema.Chip``)
``model``               workload name (``vnpu zoo`` lists them)
``model_info``          object: ``family``, ``description``, ``input_shapes``, ``weight_bytes``,
                        ``quant`` (scheme or ``""``), ``quantized_weight_bytes`` (``[before, after]``: the
                        weights the scheme quantized at ``dtype``, and quantized with their scales),
                        ``activation_bytes``, ``hbm_image_bytes`` (simulated HBM the program needs),
                        ``launches`` (kernels + host ops), ``instructions`` (device instructions)
``dtype``               compute dtype: ``"fp32"`` or ``"bf16"``
``batch``               batch size the model was built and compiled for
``timing_only``         ``true``: only the timing simulation ran (no data, no numerics)
``cycles``              simulated chip cycles for one forward pass (including kernel launch gaps)
``clock_hz``            chip clock
``latency_s``           ``cycles / clock_hz``
``throughput_per_s``    samples per second: ``batch / latency_s``
``flops``               floating-point operations executed (2 per MAC, plus vector work counted by kernels)
``achieved_flops_per_s``  ``flops / latency_s``
``peak_flops_per_s``    matrix-engine peak at ``dtype`` (all cores)
``hbm_bytes``           HBM traffic, read + write (``hbm_read_bytes``, ``hbm_write_bytes`` split it
                        where the simulator reports the split; DMA traffic incl. burst rounding)
``achieved_hbm_bytes_per_s``, ``peak_hbm_bytes_per_s``  HBM bandwidth achieved and the chip's peak
``energy_j``            total energy of one forward pass
``energy``              breakdown object: ``mac_j``, ``vector_j``, ``sram_j``, ``l2_j``, ``hbm_j``,
                        ``static_j`` (leakage over ``latency_s``), ``total_j`` (== ``energy_j``)
``average_power_w``     ``energy_j / latency_s``
``utilization``         object:
                          ``matrix``: achieved / peak matrix FLOPs over the whole run;
                          ``hbm_bandwidth``: achieved / peak HBM bandwidth;
                          ``engines``: ``{queue: {"busy": f, "stall": f}}`` for queues ``dma_in``,
                          ``matrix``, ``vector``, ``dma_out``; fractions of ``cores x cycles`` the
                          engine was busy / waited on a semaphore with work queued
``launch_overhead_cycles``  cycles not inside any kernel: chip-wide barriers + dispatch
``kernels``             list, in launch order, one object per kernel or host (fallback) op:
                          ``index``, ``name``, ``kind`` (matmul, conv, elementwise, ..., ``host``),
                          ``host`` (bool: ran on the host CPU), ``ops`` (IR ops fused into it),
                          ``start_cycle``, ``cycles``, ``fraction`` (of total ``cycles``),
                          ``flops``, ``macs``, ``hbm_bytes``, ``sram_bytes``, ``vector_ops``,
                          ``instructions``, ``bound`` (``"compute"`` | ``"memory"``: which roofline
                          bound is larger), ``compute_bound_cycles``, ``memory_bound_cycles``,
                          ``roofline_fraction`` (roofline bound / actual cycles; 1 = at the bound),
                          ``energy_j``, ``busy`` and ``stall`` (per-queue cycles summed over cores)
``fallback_ops``        ``{aten op: count}`` of ops that ran on the host CPU (empty when none)
``numerics``            ``null`` when ``timing_only``; otherwise an object:
                          ``reference``: ``"torch eager fp32"``;
                          ``max_abs_err``: max |vnpu - reference| over all output elements;
                          ``max_rel_err``: ``max_abs_err / max|reference|``;
                          ``cosine``: cosine similarity of the flattened outputs;
                          ``max_abs_ref``, ``elements``, ``outputs``, ``nonfinite`` (NaN/inf outputs
                          where the reference is finite);
                          ``criterion``: the pass rule (fp32: ``max_abs_err <= 1e-4 * max|ref|``;
                          bf16: ``cosine >= 0.999``; quantized: ``cosine >= 0.99``); ``passed``: bool;
                          ``quant``: the scheme (``""`` when not quantized); ``top1_agreement``:
                          quantized runs with 2-D outputs (logits), the fraction of rows whose argmax
                          matches the reference's, else ``null``
``build_s``             wall time to build the PyTorch model and inputs
``compile_s``           wall time of ``vnpu.compile`` (torch.export + compiler)
``simulate_s``          wall time of the simulation (functional, or timing-only)
``eager_s``             wall time of the PyTorch eager reference; ``null`` when ``timing_only``
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.report.metrics import is_host, run_metrics
from vnpu.report.numerics import Numerics
from vnpu.sim.profile import KernelProfile, Profile

SCHEMA = "vnpu-run-report"
SCHEMA_VERSION = 1


def _kernel(i: int, k: KernelProfile, total_cycles: float) -> dict[str, Any]:
    return {
        "index": i, "name": k.name, "kind": k.kind, "host": is_host(k), "ops": list(k.ops),
        "start_cycle": k.start_cycle, "cycles": k.cycles,
        "fraction": k.cycles / total_cycles if total_cycles else 0.0,
        "flops": k.flops, "macs": k.macs, "hbm_bytes": k.hbm_bytes, "sram_bytes": k.sram_bytes,
        "vector_ops": k.vector_ops, "instructions": k.instructions,
        "bound": k.bound, "compute_bound_cycles": k.compute_bound_cycles,
        "memory_bound_cycles": k.memory_bound_cycles, "roofline_fraction": k.roofline_fraction,
        "energy_j": k.energy_j, "busy": dict(k.busy), "stall": dict(k.stall),
    }


def build_report(profile: Profile, chip: Chip, *, model: str, dtype: DType | str, batch: int = 1,
                 numerics: Numerics | None = None, timing_only: bool = False,
                 fallback_ops: dict[str, int] | None = None, model_info: dict[str, Any] | None = None,
                 chip_fingerprint: str | None = None, build_s: float | None = None,
                 compile_s: float | None = None, simulate_s: float | None = None,
                 eager_s: float | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (schema in this module's docstring)."""
    from vnpu import __version__

    dt = DType(dtype)
    m = run_metrics(profile, chip, dt, batch)
    energy = dict(m.energy)
    energy["total_j"] = m.energy_j
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "vnpu_version": __version__,
        "chip": chip.name,
        "chip_fingerprint": chip_fingerprint,
        "chip_spec": chip.model_dump(mode="json"),
        "model": model,
        "model_info": dict(model_info or {}),
        "dtype": dt.value,
        "batch": batch,
        "timing_only": bool(timing_only),
        "cycles": m.cycles,
        "clock_hz": m.clock_hz,
        "latency_s": m.latency_s,
        "throughput_per_s": m.throughput_per_s,
        "flops": m.flops,
        "achieved_flops_per_s": m.achieved_flops_per_s,
        "peak_flops_per_s": m.peak_flops_per_s,
        "hbm_bytes": m.hbm_bytes,
        "hbm_read_bytes": m.hbm_read_bytes,
        "hbm_write_bytes": m.hbm_write_bytes,
        "achieved_hbm_bytes_per_s": m.achieved_hbm_bytes_per_s,
        "peak_hbm_bytes_per_s": m.peak_hbm_bytes_per_s,
        "energy_j": m.energy_j,
        "energy": energy,
        "average_power_w": m.average_power_w,
        "utilization": {
            "matrix": m.matrix_utilization,
            "hbm_bandwidth": m.hbm_fraction,
            "engines": {q: {"busy": m.busy[q], "stall": m.stall[q]} for q in m.busy},
        },
        "launch_overhead_cycles": m.launch_overhead_cycles,
        "kernels": [_kernel(i, k, profile.cycles) for i, k in enumerate(profile.kernels)],
        "fallback_ops": dict(fallback_ops or {}),
        "numerics": None if (timing_only or numerics is None) else numerics.to_dict(),
        "build_s": build_s,
        "compile_s": compile_s,
        "simulate_s": simulate_s,
        "eager_s": None if timing_only else eager_s,
    }
    return _finite(report)


def _finite(x: Any) -> Any:
    """NaN/inf -> None, so that the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path
