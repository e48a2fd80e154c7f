"""A chip from a SCALE-Sim v3 architecture file (.cfg): one R x C systolic array, SCALE-Sim's timing.

The SCALE-Sim model maps onto vnpu's schema as follows (docs/timing.md has the cycle terms):

- ArrayHeight x ArrayWidth, Dataflow   -> one core, `core.matrix` rows x cols, dataflow,
  `pipelined_folds = false` (fold by fold, as SCALE-Sim counts) and `mapping = "fold_stream"`
  (each fold streams its whole T dimension, as SCALE-Sim maps a layer).
- IfmapSramSzkB + FilterSramSzkB + OfmapSramSzkB -> the core's scratchpad. SCALE-Sim counts
  in words; vnpu runs the study in fp32, so one word is 4 bytes and every byte figure is
  4 x the word figure. The three buffers become one scratchpad; the fold_stream kernel
  splits it between streamed, stationary and accumulator tiles.
- Bandwidth (words/cycle)              -> HBM bandwidth at a 1 GHz clock (1 cycle = 1 ns),
  no burst penalty (a 4-byte burst), 1-cycle latency. SCALE-Sim's CALC mode ignores this
  figure and reports no stalls; vnpu always prices memory, so its stall cycles show what
  that bandwidth costs.
"""
from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from vnpu.chip import ChipError, chip_from_dict
from vnpu.chip.schema import Chip

WORD_BYTES = 4  # the study runs in fp32
DEFAULT_BANDWIDTH_WORDS = 10  # SCALE-Sim's sample configs use 10 words/cycle


@dataclass(frozen=True)
class ScaleSimArch:
    run_name: str
    rows: int
    cols: int
    ifmap_sram_kb: int
    filter_sram_kb: int
    ofmap_sram_kb: int
    dataflow: str
    bandwidth_words: float
    bandwidth_mode: str  # CALC (SCALE-Sim sizes bandwidth to avoid stalls) or USER


_KEYS = {  # our field -> (section, SCALE-Sim key); configparser keys are case-insensitive
    "rows": ("architecture_presets", "ArrayHeight"),
    "cols": ("architecture_presets", "ArrayWidth"),
    "ifmap_sram_kb": ("architecture_presets", "IfmapSramSzkB"),
    "filter_sram_kb": ("architecture_presets", "FilterSramSzkB"),
    "ofmap_sram_kb": ("architecture_presets", "OfmapSramSzkB"),
    "dataflow": ("architecture_presets", "Dataflow"),
}


def read_scalesim_cfg(path: str | Path) -> ScaleSimArch:
    """Parses a SCALE-Sim .cfg; errors name the file, section and key."""
    p = Path(path)
    if not p.is_file():
        raise ChipError(f"SCALE-Sim config {p} does not exist")
    cp = configparser.ConfigParser()
    try:
        cp.read_string(p.read_text(), source=str(p))
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ChipError(f"SCALE-Sim config {p} is not a valid .cfg file: {e}") from None
    vals: dict[str, object] = {}
    for field, (section, key) in _KEYS.items():
        if not cp.has_option(section, key):
            raise ChipError(f"SCALE-Sim config {p}: missing `{key}` in section [{section}]")
        raw = cp.get(section, key).strip()
        if field == "dataflow":
            if raw.lower() not in ("os", "ws", "is"):
                raise ChipError(f"SCALE-Sim config {p}: Dataflow must be os, ws or is (got {raw!r})")
            vals[field] = raw.lower()
            continue
        try:
            v = int(raw)
        except ValueError:
            raise ChipError(f"SCALE-Sim config {p}: `{key}` must be a positive integer (got {raw!r})") from None
        if v <= 0:
            raise ChipError(f"SCALE-Sim config {p}: `{key}` must be a positive integer (got {v})")
        vals[field] = v
    bw_raw = cp.get("architecture_presets", "Bandwidth", fallback="").strip()
    try:
        bw = float(bw_raw.split(",")[0]) if bw_raw else float(DEFAULT_BANDWIDTH_WORDS)
    except ValueError:
        raise ChipError(f"SCALE-Sim config {p}: `Bandwidth` must be a number of words per cycle (got {bw_raw!r})") from None
    if bw <= 0:
        raise ChipError(f"SCALE-Sim config {p}: `Bandwidth` must be positive (got {bw})")
    mode = cp.get("run_presets", "InterfaceBandwidth", fallback="CALC").strip().upper()
    name = cp.get("general", "run_name", fallback=p.stem).strip() or p.stem
    return ScaleSimArch(run_name=name, bandwidth_words=bw, bandwidth_mode=mode, **vals)  # type: ignore[arg-type]


def chip_from_scalesim(arch: ScaleSimArch, bandwidth_words: float | None = None) -> Chip:
    """The vnpu chip that times layers the way SCALE-Sim does on `arch`."""
    bw = bandwidth_words if bandwidth_words is not None else arch.bandwidth_words
    sram_bytes = (arch.ifmap_sram_kb + arch.filter_sram_kb + arch.ofmap_sram_kb) * 1024 * WORD_BYTES
    bw_bytes = bw * WORD_BYTES
    data = {
        "name": f"scalesim-{arch.run_name}",
        "description": f"SCALE-Sim compatibility: one {arch.rows}x{arch.cols} {arch.dataflow.upper()} array, "
                       f"{arch.ifmap_sram_kb}+{arch.filter_sram_kb}+{arch.ofmap_sram_kb} kB SRAM (words), "
                       f"{bw:g} words/cycle",
        "kind": "design",
        "clock_ghz": 1.0,  # one cycle per ns: cycles read directly
        "cores": 1,
        "kernel_launch_us": 0.0,  # SCALE-Sim times layers in isolation
        "core": {
            "matrix": {"rows": arch.rows, "cols": arch.cols, "dataflow": arch.dataflow, "pipelined_folds": False,
                       "mapping": "fold_stream", "rate": {"fp32": 1.0}},
            "vector": {"lanes": arch.cols, "sfu_lanes": max(arch.cols // 4, 1)},
            "scratchpad": {"bytes": sram_bytes, "bytes_per_cycle": (arch.rows + arch.cols) * 2 * WORD_BYTES},
            "dma_bytes_per_cycle": max(int(bw_bytes), 1),
        },
        "l2": {"bytes": sram_bytes, "bytes_per_cycle": max(int(bw_bytes), 1)},
        "hbm": {"bytes": 1 << 34, "bandwidth_gbs": bw_bytes, "latency_ns": 1.0, "burst_bytes": WORD_BYTES},
        "host_link": {"bandwidth_gbs": 32.0, "latency_us": 1.0},
        # SCALE-Sim models no energy; these are vnpu-v1's figures so reports stay well-formed.
        "energy": {"pj_per_mac": {"fp32": 1.0}, "pj_per_vector_op": 0.5, "pj_per_sram_byte": 0.1,
                   "pj_per_l2_byte": 0.3, "pj_per_hbm_byte": 4.0, "static_w": 1e-3},
        "sources": {"all": "translated from a SCALE-Sim v3 .cfg by vnpu.chip.scalesim_cfg"},
    }
    return chip_from_dict(data, f"<SCALE-Sim config {arch.run_name}>")


__all__ = ["ScaleSimArch", "read_scalesim_cfg", "chip_from_scalesim", "WORD_BYTES"]
