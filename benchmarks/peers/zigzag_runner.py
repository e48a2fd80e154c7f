"""Run GEMM / conv cases through ZigZag (PyPI ``zigzag-dse`` 3.9.1) modelled as one systolic array.

Usage (under the ZigZag virtualenv; imports neither vnpu nor torch)::

    python zigzag_runner.py CASES.json OUT.json

Each case becomes three YAML inputs written to ``/tmp/zz/<index>_<name>/`` (workload, accelerator, mapping),
then one ZigZag evaluation.  OUT.json holds, per case and in input order::

    {"name", "latency_cycles", "ideal_cycles", "wall_s", "error", "detail"}

* ``latency_cycles`` -- ``CostModelEvaluation.latency_total2``, ZigZag's total layer latency (what
  ``zigzag.api.get_hardware_performance_zigzag`` returns): compute cycles + stalls + initial data
  on-loading + final off-loading + the systolic drain of the array.
* ``ideal_cycles`` -- ``ideal_temporal_cycle``: the product of the temporal loops left after the spatial
  unrolling, i.e. ceil-folds x stream length, with no stall or fill/drain.
* ``wall_s`` -- ``time.perf_counter`` around the ZigZag pipeline for the case (YAML parsing included).
* ``detail`` -- extra figures for diagnosis: ZigZag's 100%-utilisation ``ideal_cycle`` (MACs / PEs),
  stall/slack, on-/off-loading and drain cycles, and the spatial mapping used.

Workload (one layer, batch 1, every operand 8 bit, psums included, so a word is one byte as in SCALE-Sim):

* gemm: ``O[m][n] += I[m][k] * W[k][n]`` with loop dims M, N, K.  A (M x K) is the "ifmap" operand I,
  B (K x N) the "filter" operand W, as in SCALE-Sim's GEMM-as-conv.
* conv: ``O[b][k][oy][ox] += W[k][c][fy][fx] * I[b][c][iy][ix]``, ``ix = s*ox + fx``, ``iy = s*oy + fy``,
  no padding; OX/OY = ceil((ifmap - filter + stride) / stride) as SCALE-Sim counts them, K = num_filters, C = channels.

Accelerator (``operational_array`` D1 = R rows, D2 = C cols, 8-bit MACs, ``systolic_dimensions`` [D1, D2]
so ZigZag adds the fill/drain skew of the used rows and columns once per layer).  Memories, innermost first:

* one 1-word register per PE for each operand (``served_dimensions: []``): the stationary operand stays in it,
  the moving ones pass through it.  One word cannot be double-buffered, so ZigZag stalls the array while a
  new fold of the stationary operand is loaded (or, in os, while the finished outputs are drained), which is
  most of the gap between ``ideal_cycles`` and ``latency_cycles`` when DRAM keeps up;
* ifmap, filter and ofmap SRAMs (one instance each for the whole array, sizes from the case).  Their
  array-side ports carry what the array edges of a systolic array carry per cycle (this is what makes
  ZigZag charge e.g. R cycles to load a fold of stationary weights, as a real array does): the operand that
  enters the left edge gets R words/cycle, the one entering the top edge C words/cycle, the ofmap leaves
  the bottom edge at C words/cycle.  os: ifmap left, filter top; ws: ifmap left, filter loaded from the top;
  is: filter left, ifmap loaded from the top.  Their DRAM-side ports get the DRAM bandwidth;
* DRAM with one port per operand, each of ``bandwidth_words_per_cycle`` words/cycle, since SCALE-Sim gives
  each of its three buffers its own backing port of that bandwidth (``DRAM_PORT_PER_OPERAND`` switches to
  one shared port).

Spatial mapping (user-fixed, so ZigZag's spatial-mapping search evaluates just this one):

* os: D1 <- output rows (M, or OX x OY), D2 <- output columns (N, or K filters);
* ws: D1 <- reduction (K, or C x FX x FY), D2 <- output columns (N / K);
* is: D1 <- reduction, D2 <- output rows (M / OX x OY).

SCALE-Sim flattens OX*OY and C*FX*FY into one dimension; ZigZag cannot, so a flattened dimension becomes a
mixed unrolling (e.g. ``D1: [C, 32], [FX, 1], [FY, 1]``) whose factors minimise the number of folds
(prod ceil(dim/factor)); equals SCALE-Sim's ceil(prod dim / R) whenever such a split exists, else it is a
few folds more (7x7x3 filters on 32 rows: 6 folds of {C:1, FX:4, FY:7} where SCALE-Sim has ceil(147/32) = 5).
A factor that does not divide its dimension is made fractional by ZigZag (the last fold partly idle).

Temporal mapping: ZigZag's LOMA search, optimising latency (``MinimalLatencyStage``), ``uneven`` memory
allocation (its default), ``loma_lpf_limit`` = ``LPF_LIMIT`` = 6, the API default.  LOMA tries every ordering
of at most that many loop prime factors (never fewer than the number of temporal loop dims, so a conv with 6
temporal dims always costs 6! = 720 evaluations, ~10 s).  Lower limits are not worth it: they merge loops so
coarsely that the tiles no longer fit the SRAMs (GEMM 512^3 on 32x32 os, 64 kB SRAMs: 421,830 cycles at
lpf <= 4 against 157,793 at 5 and 6); 7 costs ~8x the time (~16 s a GEMM) for a few % (ws: 152,180).
The stage list is that of ``get_hardware_performance_zigzag`` without its result-saving and visualisation
stages (JSON/pickle dumps, a matplotlib figure), which cost wall time but change no figure.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zigzag.mapping.temporal_mapping import TemporalMappingType
from zigzag.stages.evaluation.cost_model_evaluation import CostModelStage
from zigzag.stages.main import MainStage
from zigzag.stages.mapping.spatial_mapping_generation import SpatialMappingGeneratorStage
from zigzag.stages.mapping.temporal_mapping_generator_stage import TemporalMappingGeneratorStage
from zigzag.stages.parser.accelerator_parser import AcceleratorParserStage
from zigzag.stages.parser.workload_parser import WorkloadParserStage
from zigzag.stages.results.reduce_stages import MinimalLatencyStage
from zigzag.stages.workload_iterator import WorkloadStage

SCRATCH = Path("/tmp/zz")
LPF_LIMIT = 6
DRAM_PORT_PER_OPERAND = True
WORD_BITS = 8
DRAM_BITS = 1 << 40  # effectively unbounded off-chip capacity

# Access energies/areas are mandatory in ZigZag's schema but do not affect latency; rough relative values.
REG_COST, SRAM_COST, DRAM_COST = 0.02, 2.0, 700.0


def kib(value: Any) -> int:
    size = int(float(value) * 1024)
    if size < 1:
        raise ValueError(f"SRAM size must be positive, got {value} kB")
    return size


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    dims: dict[str, int]  # ZigZag loop dim -> size
    stride: int
    rows: int
    cols: int
    dataflow: str
    sram_bytes: tuple[int, int, int]  # ifmap, filter, ofmap
    dram_bits: int  # DRAM bits per cycle (per port)

    @staticmethod
    def parse(raw: dict[str, Any]) -> Case:
        kind = raw["kind"]
        stride = 1
        if kind == "gemm":
            dims = {"M": int(raw["M"]), "N": int(raw["N"]), "K": int(raw["K"])}
        elif kind == "conv":
            stride = int(raw["stride"])
            fy, fx = int(raw["filter_h"]), int(raw["filter_w"])
            # SCALE-Sim's count, ceil((ifmap - filter + stride) / stride), so all tools time the same layer
            oy = -(-(int(raw["ifmap_h"]) - fy + stride) // stride)
            ox = -(-(int(raw["ifmap_w"]) - fx + stride) // stride)
            dims = {
                "B": 1,
                "K": int(raw["num_filters"]),
                "C": int(raw["channels"]),
                "OY": oy,
                "OX": ox,
                "FY": fy,
                "FX": fx,
            }
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if min(dims.values()) < 1:
            raise ValueError(f"non-positive layer dimension in {dims}")
        if int(raw["rows"]) < 1 or int(raw["cols"]) < 1:
            raise ValueError("the array needs at least one row and one column")
        dataflow = raw["dataflow"]
        if dataflow not in ("os", "ws", "is"):
            raise ValueError(f"unknown dataflow {dataflow!r}")
        bandwidth = float(raw["bandwidth_words_per_cycle"])
        dram_bits = round(bandwidth * WORD_BITS)
        if dram_bits < 1 or dram_bits != bandwidth * WORD_BITS:
            # ZigZag port bandwidths are whole bits per cycle.
            raise ValueError(f"bandwidth_words_per_cycle must be a positive multiple of 1/8, got {bandwidth}")
        return Case(
            name=str(raw["name"]),
            kind=kind,
            dims=dims,
            stride=stride,
            rows=int(raw["rows"]),
            cols=int(raw["cols"]),
            dataflow=dataflow,
            sram_bytes=(kib(raw["ifmap_sram_kb"]), kib(raw["filter_sram_kb"]), kib(raw["ofmap_sram_kb"])),
            dram_bits=dram_bits,
        )


# ---------------------------------------------------------------- workload


def workload_yaml(case: Case) -> list[dict[str, Any]]:
    layer: dict[str, Any] = {
        "id": 0,
        "name": case.name,
        "operator_type": "Gemm" if case.kind == "gemm" else "Conv",
        "loop_dims": list(case.dims),
        "loop_sizes": list(case.dims.values()),
        "operand_precision": {"W": WORD_BITS, "I": WORD_BITS, "O": WORD_BITS, "O_final": WORD_BITS},
        # Both inputs sourced by the layer itself: constants that start in DRAM.
        "operand_source": {"I": 0, "W": 0},
    }
    if case.kind == "gemm":
        layer["equation"] = "O[m][n]+=I[m][k]*W[k][n]"
    else:
        s = case.stride
        layer["equation"] = "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]"
        layer["dimension_relations"] = [f"ix={s}*ox+1*fx", f"iy={s}*oy+1*fy"]
    return [layer]


# ---------------------------------------------------------------- spatial mapping


def best_split(dims: dict[str, int], size: int) -> dict[str, int]:
    """Unroll factors (product <= size) that minimise the folds prod(ceil(d / f)), then maximise PEs used."""
    best: tuple[int, int] | None = None
    best_factors: dict[str, int] = {}
    ranges = [range(1, min(d, size) + 1) for d in dims.values()]
    for factors in itertools.product(*ranges):
        used = math.prod(factors)
        if used > size:
            continue
        folds = math.prod(math.ceil(d / f) for d, f in zip(dims.values(), factors))
        key = (folds, -used)
        if best is None or key < best:
            best, best_factors = key, dict(zip(dims, factors))
    return best_factors


def spatial_mapping(case: Case) -> dict[str, dict[str, int]]:
    d = case.dims
    if case.kind == "gemm":
        out_rows, out_cols, reduction = {"M": d["M"]}, {"N": d["N"]}, {"K": d["K"]}
    else:
        out_rows = {"OX": d["OX"], "OY": d["OY"]}
        out_cols = {"K": d["K"]}
        reduction = {"C": d["C"], "FX": d["FX"], "FY": d["FY"]}
    on_rows, on_cols = {
        "os": (out_rows, out_cols),
        "ws": (reduction, out_cols),
        "is": (reduction, out_rows),
    }[case.dataflow]
    return {"D1": best_split(on_rows, case.rows), "D2": best_split(on_cols, case.cols)}


def mapping_yaml(sm: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    # Keep every OA dimension listed (factor 1 included): an absent one would be filled by ZigZag's own search.
    return [
        {
            "name": "default",
            "spatial_mapping": {oa: [f"{dim}, {f}" for dim, f in factors.items()] for oa, factors in sm.items()},
            "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
        }
    ]


# ---------------------------------------------------------------- accelerator


def port(name: str, kind: str, bits: int, *allocation: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "bandwidth_min": min(WORD_BITS, bits),
        "bandwidth_max": bits,
        "allocation": list(allocation),
    }


def memory(
    size_bits: int, cost: float, operands: list[str], ports: list[dict[str, Any]], served: list[str]
) -> dict[str, Any]:
    return {
        "size": size_bits,
        "r_cost": cost,
        "w_cost": cost,
        "area": 0.0,
        "latency": 1,
        "operands": operands,
        "ports": ports,
        "served_dimensions": served,
    }


def accelerator_yaml(case: Case) -> dict[str, Any]:
    r, c, bw, w = case.rows, case.cols, case.dram_bits, WORD_BITS
    # Bits per cycle across the array edge each SRAM feeds (see module docstring).
    ifmap_edge, filter_edge = (c * w, r * w) if case.dataflow == "is" else (r * w, c * w)
    ofmap_edge = c * w
    ifmap_b, filter_b, ofmap_b = case.sram_bytes

    def input_reg(op: str) -> dict[str, Any]:
        return memory(
            WORD_BITS,
            REG_COST,
            [op],
            [port("r_port_1", "read", w, f"{op}, tl"), port("w_port_1", "write", w, f"{op}, fh")],
            [],
        )

    def input_sram(op: str, size_bytes: int, edge: int) -> dict[str, Any]:
        return memory(
            size_bytes * 8,
            SRAM_COST,
            [op],
            [port("r_port_1", "read", edge, f"{op}, tl"), port("w_port_1", "write", bw, f"{op}, fh")],
            ["D1", "D2"],
        )

    if DRAM_PORT_PER_OPERAND:
        dram_ports = [
            port("r_port_1", "read", bw, "I1, tl"),
            port("r_port_2", "read", bw, "I2, tl"),
            port("rw_port_1", "read_write", bw, "O, fl", "O, tl"),
        ]
    else:
        dram_ports = [port("rw_port_1", "read_write", bw, "I1, tl", "I2, tl", "O, fl", "O, tl")]

    return {
        "name": f"systolic_{r}x{c}_{case.dataflow}",
        "memories": {
            "reg_I": input_reg("I1"),
            "reg_W": input_reg("I2"),
            "reg_O": memory(
                WORD_BITS,
                REG_COST,
                ["O"],
                [
                    port("r_port_1", "read", w, "O, tl"),
                    port("r_port_2", "read", w, "O, th"),
                    port("w_port_1", "write", w, "O, fl"),
                    port("w_port_2", "write", w, "O, fh"),
                ],
                [],
            ),
            "sram_ifmap": input_sram("I1", ifmap_b, ifmap_edge),
            "sram_filter": input_sram("I2", filter_b, filter_edge),
            "sram_ofmap": memory(
                ofmap_b * 8,
                SRAM_COST,
                ["O"],
                [
                    port("w_port_1", "write", ofmap_edge, "O, fl"),
                    port("r_port_1", "read", ofmap_edge, "O, tl"),
                    port("r_port_2", "read", bw, "O, th"),
                    port("w_port_2", "write", bw, "O, fh"),
                ],
                ["D1", "D2"],
            ),
            "dram": memory(DRAM_BITS, DRAM_COST, ["I1", "I2", "O"], dram_ports, ["D1", "D2"]),
        },
        "operational_array": {
            "unit_energy": 0.04,
            "unit_area": 1.0,
            "input_precision": [WORD_BITS, WORD_BITS],
            "dimensions": ["D1", "D2"],
            "sizes": [r, c],
            "systolic_dimensions": ["D1", "D2"],
        },
    }


# ---------------------------------------------------------------- running


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "case"


def run_case(raw: dict[str, Any], index: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": raw.get("name", f"case{index}"),
        "latency_cycles": None,
        "ideal_cycles": None,
        "wall_s": None,
        "error": None,
        "detail": None,
    }
    try:
        case = Case.parse(raw)
        folder = SCRATCH / f"{index:03d}_{safe_name(case.name)}"
        folder.mkdir(parents=True, exist_ok=True)
        sm = spatial_mapping(case)
        paths = {}
        for kind, data in (
            ("workload", workload_yaml(case)),
            ("accelerator", accelerator_yaml(case)),
            ("mapping", mapping_yaml(sm)),
        ):
            paths[kind] = str(folder / f"{kind}.yaml")
            with open(paths[kind], "w", encoding="utf-8") as f:
                yaml.safe_dump(data, f, sort_keys=False)

        pipeline = MainStage(
            [
                WorkloadParserStage,
                AcceleratorParserStage,
                WorkloadStage,
                MinimalLatencyStage,
                SpatialMappingGeneratorStage,
                MinimalLatencyStage,
                TemporalMappingGeneratorStage,
                CostModelStage,
            ],
            workload=paths["workload"],
            accelerator=paths["accelerator"],
            mapping=paths["mapping"],
            loma_lpf_limit=LPF_LIMIT,
            loma_show_progress_bar=False,
            nb_mappings_generated=1,
            enable_mix_spatial_mapping_generation=False,
            access_same_data_considered_as_no_access=True,  # as the API sets it
            temporal_mapping_type=TemporalMappingType("uneven"),
        )
        t0 = time.perf_counter()
        try:
            answers = pipeline.run()
        finally:
            result["wall_s"] = time.perf_counter() - t0

        cme = answers[0][0]
        result["latency_cycles"] = float(cme.latency_total2)
        result["ideal_cycles"] = float(cme.ideal_temporal_cycle)
        result["detail"] = {
            "ideal_full_utilization_cycles": float(cme.ideal_cycle),
            "stall_slack_cycles": float(cme.stall_slack_comb),
            "onloading_cycles": float(cme.data_onloading_cycle),
            "offloading_cycles": float(cme.data_offloading_cycle),
            "systolic_drain_cycles": float(cme.systolic_drain_cycle),
            "mac_spatial_utilization": float(cme.mac_spatial_utilization),
            "spatial_mapping": sm,
            "inputs": str(folder),
        }
    except Exception as exc:  # one bad case must not stop the others
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
        result["error"] = msg[:500] or type(exc).__name__
        traceback.print_exc(file=sys.stderr)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} CASES.json OUT.json", file=sys.stderr)
        return 2
    # ZigZag logs every stage at INFO; keep only its warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Our single mapping entry is "default" on purpose; ZigZag warns that it falls back to it.
    logging.getLogger("zigzag.parser.mapping_factory").setLevel(logging.ERROR)
    with open(argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    results = []
    for i, raw in enumerate(cases):
        res = run_case(raw, i)
        results.append(res)
        status = res["error"] or f"latency {res['latency_cycles']:.0f} ideal {res['ideal_cycles']:.0f}"
        print(f"[zigzag] {res['name']}: {status} ({res['wall_s'] or 0:.2f} s)", file=sys.stderr)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
