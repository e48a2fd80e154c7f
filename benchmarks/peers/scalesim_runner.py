"""Run one study through SCALE-Sim v3 (PyPI ``scalesim==3.0.0``) and report its per-layer cycles.

Usage (under SCALE-Sim's own virtualenv, which needs ``numpy<2.4``; imports neither vnpu nor torch)::

    python scalesim_runner.py STUDY.json OUT.json

STUDY.json: {"name", "gemm": bool, "rows", "cols", "dataflow", "ifmap_sram_kb", "filter_sram_kb",
"ofmap_sram_kb", "bandwidth_words_per_cycle", "layers": [{"name", "M", "N", "K"} | {"name", "ifmap_h",
"ifmap_w", "filter_h", "filter_w", "channels", "num_filters", "stride"}]}.

The study becomes SCALE-Sim's own inputs (a .cfg, a topology CSV and an empty layout CSV) in a temporary
folder, and one ``scalesim.scale_sim.scalesim(...).run_scale()`` call runs all its layers, as
``python -m scalesim.scale`` would. The .cfg asks for CALC interface bandwidth (SCALE-Sim's sample
configuration): SCALE-Sim then sizes DRAM bandwidth so that the array never stalls, and reports
compute cycles. OUT.json: {"wall_s", "layers": [{"name", "total_cycles_incl_prefetch",
"total_cycles", "stall_cycles", "mapping_efficiency", "compute_util"}]}, read from its COMPUTE_REPORT.csv.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

CFG = """[general]
run_name = {name}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:   {ifmap_sram_kb}
FilterSramSzkB:  {filter_sram_kb}
OfmapSramSzkB:   {ofmap_sram_kb}
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : {bandwidth_words_per_cycle}
Dataflow : {dataflow}
MemoryBanks:   1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def topology_csv(study: dict) -> str:
    """SCALE-Sim's topology format (every row ends with a comma)."""
    if study["gemm"]:
        rows = ["Layer,M,N,K,"] + [f"{l['name']},{l['M']},{l['N']},{l['K']}," for l in study["layers"]]
    else:
        rows = ["Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,Strides,"]
        rows += [f"{l['name']},{l['ifmap_h']},{l['ifmap_w']},{l['filter_h']},{l['filter_w']},{l['channels']},"
                 f"{l['num_filters']},{l['stride']}," for l in study["layers"]]
    return "\n".join(rows) + "\n"


def run(study: dict) -> dict:
    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory(prefix="scalesim_") as tmp:
        d = Path(tmp)
        (d / "arch.cfg").write_text(CFG.format(**study))
        (d / "topo.csv").write_text(topology_csv(study))
        (d / "layout.csv").write_text("Layer name,\n")
        t0 = time.perf_counter()
        sim = scalesim(save_disk_space=True, verbose=False, config=str(d / "arch.cfg"), topology=str(d / "topo.csv"),
                       layout=str(d / "layout.csv"), input_type_gemm=bool(study["gemm"]))
        sim.run_scale(top_path=str(d / "out"))
        wall = time.perf_counter() - t0
        report = next((d / "out").rglob("COMPUTE_REPORT.csv")).read_text().strip().splitlines()[1:]
    layers = []
    for spec, line in zip(study["layers"], report):
        f = [x.strip() for x in line.split(",")]
        layers.append({"name": spec["name"], "total_cycles_incl_prefetch": int(float(f[1])),
                       "total_cycles": int(float(f[2])), "stall_cycles": int(float(f[3])),
                       "mapping_efficiency": float(f[5]) / 100, "compute_util": float(f[6]) / 100})
    return {"wall_s": wall, "layers": layers}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: scalesim_runner.py STUDY.json OUT.json")
    study = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(study), indent=1))
