"""Rich tables for the `vnpu` command: run summary, per-kernel breakdown, numerics, chips, zoo."""
from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.report import format as fmt
from vnpu.report.metrics import is_host, kernels_by_time, run_metrics
from vnpu.report.numerics import Numerics
from vnpu.sim.profile import Profile

HOST_STYLE = "bold yellow"
_DATAFLOW = {"os": "output-stationary", "ws": "weight-stationary", "is": "input-stationary"}
# Meanings for fields whose schema entry has no description.
_MEANING = {
    "name": "chip name", "description": "", "kind": "design (vnpu's own) or datasheet-approximation of a real part",
    "clock_ghz": "core clock, GHz", "cores": "number of cores (each: matrix + vector engines, scratchpad, DMA)",
    "core.matrix.rows": "systolic array rows (PEs)", "core.matrix.cols": "systolic array columns (PEs)",
    "core.scratchpad.bytes": "per-core scratchpad SRAM", "l2.bytes": "shared L2 / buffer",
    "l2.bytes_per_cycle": "L2 bandwidth, bytes per cycle", "hbm.bytes": "HBM capacity",
    "hbm.latency_ns": "loaded access latency from a core, ns", "host_link.bandwidth_gbs": "GB/s",
    "host_link.latency_us": "µs per transfer", "chip_link.bandwidth_gbs": "GB/s", "chip_link.latency_us": "µs",
    "energy.pj_per_mac": "pJ per multiply-accumulate, by dtype", "energy.pj_per_vector_op": "pJ per vector element op",
    "energy.pj_per_sram_byte": "pJ per scratchpad byte accessed", "energy.pj_per_l2_byte": "pJ per byte crossing L2",
    "energy.pj_per_hbm_byte": "pJ per HBM byte transferred", "energy.static_w": "leakage + always-on power, W",
    "area_mm2": "die area, mm²",
}


def chip_line(chip: Chip) -> str:
    m = chip.core.matrix
    return (f"{chip.name} — {chip.cores} cores × {m.rows}×{m.cols} {m.dataflow.upper()} array "
            f"@ {chip.clock_ghz:g} GHz")


def _frac_style(f: float) -> str:
    return "green" if f >= 0.6 else ("yellow" if f >= 0.25 else "red")


def summary_table(profile: Profile, chip: Chip, *, model: str, dtype: DType | str, batch: int = 1,
                  fallback_ops: dict[str, int] | None = None, timing_only: bool = False) -> Table:
    """Whole-run figures: time, throughput, compute vs peak, HBM vs peak, energy, engine use."""
    dt = DType(dtype)
    m = run_metrics(profile, chip, dt, batch)
    t = Table(title=f"vnpu run · {model} on {chip.name}", box=box.SIMPLE_HEAD, show_header=False,
              title_style="bold", pad_edge=False)
    t.add_column("metric", style="bold cyan", no_wrap=True)
    t.add_column("value")
    t.add_row("chip", chip_line(chip))
    mode = "timing only" if timing_only else "functional + timing"
    t.add_row("model", f"{model} · batch {batch} · {dt.value} · {mode}")
    t.add_row("cycles", f"{fmt.count(m.cycles)}  (launch overhead {fmt.count(m.launch_overhead_cycles)}, "
                        f"{fmt.pct(m.launch_overhead_cycles / m.cycles if m.cycles else 0)})")
    t.add_row("latency", fmt.seconds(m.latency_s))
    t.add_row("throughput", f"{m.throughput_per_s:,.1f} samples/s")
    t.add_row("compute", Text.assemble(
        f"{fmt.si(m.flops, 'FLOP')} → {fmt.si(m.achieved_flops_per_s, 'FLOP/s')} of "
        f"{fmt.si(m.peak_flops_per_s, 'FLOP/s')} {dt.value} peak ",
        (f"({fmt.pct(m.flops_fraction)})", _frac_style(m.flops_fraction))))
    t.add_row("matrix utilization", Text(fmt.pct(m.matrix_utilization), _frac_style(m.matrix_utilization)))
    split = ""
    if m.hbm_read_bytes is not None and m.hbm_write_bytes is not None:
        split = f" (read {fmt.nbytes(m.hbm_read_bytes)}, write {fmt.nbytes(m.hbm_write_bytes)})"
    t.add_row("HBM traffic", Text.assemble(
        f"{fmt.nbytes(m.hbm_bytes)}{split} → {fmt.si(m.achieved_hbm_bytes_per_s, 'B/s')} of "
        f"{fmt.si(m.peak_hbm_bytes_per_s, 'B/s')} peak ",
        (f"({fmt.pct(m.hbm_fraction)})", _frac_style(m.hbm_fraction))))
    parts = " · ".join(f"{k.removesuffix('_j')} {fmt.joules(v)}" for k, v in m.energy.items())
    t.add_row("energy", f"{fmt.joules(m.energy_j)} per pass, avg {m.average_power_w:.1f} W\n{parts}")
    eng = Table.grid(padding=(0, 2))
    for _ in range(3):
        eng.add_column()
    for q in m.busy:
        eng.add_row(q, Text(f"busy {fmt.pct(m.busy[q])}", _frac_style(m.busy[q])), f"stall {fmt.pct(m.stall[q])}")
    t.add_row("engines\n(of cores × cycles)", eng)
    if fallback_ops:
        ops = ", ".join(f"{op} ×{n}" for op, n in sorted(fallback_ops.items()))
        t.add_row(Text("host fallback", HOST_STYLE), Text(ops, HOST_STYLE))
    return t


def kernel_table(profile: Profile, top: int = 15) -> Table:
    """Kernels by time, longest first; the `top` longest get a row, the rest one summary row.
    Host (fallback) ops are highlighted."""
    total = profile.cycles or 1.0
    ranked = kernels_by_time(profile)
    shown, rest = ranked[: max(top, 0)], ranked[max(top, 0):]
    t = Table(title=f"kernels by time (top {len(shown)} of {len(ranked)})", box=box.SIMPLE_HEAD, title_style="bold",
              pad_edge=False)
    t.add_column("#", justify="right", style="dim")
    t.add_column("kernel", overflow="fold", max_width=28)
    t.add_column("kind")
    t.add_column("fused ops", overflow="fold", max_width=36)
    t.add_column("cycles", justify="right")
    t.add_column("%", justify="right")
    t.add_column("bound")
    t.add_column("roofline", justify="right")
    t.add_column("FLOPs", justify="right")
    t.add_column("HBM", justify="right")
    for i, k in shown:
        host = is_host(k)
        style = HOST_STYLE if host else None
        rf = k.roofline_fraction
        t.add_row(str(i), k.name + (" (host)" if host else ""), k.kind, " → ".join(k.ops),
                  fmt.count(k.cycles), fmt.pct(k.cycles / total), "host link" if host else k.bound,
                  Text(fmt.pct(rf, 0), "" if host else _frac_style(rf)), fmt.si(k.flops) if k.flops else "0",
                  fmt.nbytes(k.hbm_bytes), style=style)
    if rest:
        cyc = sum(k.cycles for _, k in rest)
        n_host = sum(1 for _, k in rest if is_host(k))
        note = f" ({n_host} host)" if n_host else ""
        t.add_row("", Text(f"… {len(rest)} more{note}", "italic"), "", "", fmt.count(cyc), fmt.pct(cyc / total), "", "",
                  fmt.si(sum(k.flops for _, k in rest)), fmt.nbytes(sum(k.hbm_bytes for _, k in rest)), style="dim")
    gap = max(profile.cycles - sum(k.cycles for k in profile.kernels), 0.0)
    if gap > 0:
        t.add_row("", Text("(launch gaps)", "italic"), "", "", fmt.count(gap), fmt.pct(gap / total), "", "", "", "",
                  style="dim")
    return t


def numerics_table(num: Numerics, dtype: DType | str) -> Table:
    t = Table(title=f"numerics vs {num.reference}", box=box.SIMPLE_HEAD, show_header=False, title_style="bold",
              pad_edge=False)
    t.add_column("metric", style="bold cyan", no_wrap=True)
    t.add_column("value")
    t.add_row("max |err|", f"{num.max_abs_err:.3e}  (max |ref| {num.max_abs_ref:.3e})")
    t.add_row("max rel err", f"{num.max_rel_err:.3e}  (max |err| / max |ref|)")
    t.add_row("cosine", f"{num.cosine:.7f}")
    if num.top1_agreement is not None:
        t.add_row("top-1 agreement", f"{100 * num.top1_agreement:.1f}% of rows (argmax vs the reference)")
    if num.nonfinite:
        t.add_row("non-finite", Text(f"{num.nonfinite} of {num.elements} elements", "bold red"))
    verdict = Text("PASS", "bold green") if num.passed else Text("FAIL", "bold red")
    t.add_row("result", Text.assemble(verdict, f"  ({DType(dtype).value}: {num.criterion})"))
    return t


# -- chips ------------------------------------------------------------------------------
def chips_table(chips: Iterable[Chip], highlight: str | None = None) -> Table:
    t = Table(title="chips", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    for name, kw in (("name", {"style": "bold"}), ("cores", {"justify": "right"}), ("array", {}), ("dataflow", {}),
                     ("clock", {"justify": "right"}), ("peak bf16", {"justify": "right"}),
                     ("HBM", {"justify": "right"}), ("HBM BW", {"justify": "right"}), ("kind", {})):
        t.add_column(name, **kw)
    for c in chips:
        m = c.core.matrix
        peak = f"{c.peak_flops(DType.bf16) / 1e12:,.1f} TFLOPS" if c.supports(DType.bf16) else "—"
        t.add_row(c.name, str(c.cores), f"{m.rows}×{m.cols}", m.dataflow, f"{c.clock_ghz:g} GHz", peak,
                  f"{c.hbm.bytes / 2**30:,.0f} GiB" if c.hbm.bytes >= 2**30 else fmt.nbytes(c.hbm.bytes), f"{c.hbm.bandwidth_gbs / 1000:,.2f} TB/s", c.kind,
                  style="reverse" if highlight and c.name == highlight else None)
    return t


def _fmt_value(name: str, v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "—"
    if isinstance(v, int) and "bytes" in name and "per_cycle" not in name and v >= 1024:
        return f"{v:,} ({fmt.nbytes(v)})"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(getattr(v, "value", v))


def _walk(model: BaseModel, prefix: str, rows: list[tuple[str, str, str]], skip: set[str]) -> None:
    for fname, finfo in type(model).model_fields.items():
        if fname in skip:
            continue
        path = f"{prefix}{fname}"
        v = getattr(model, fname)
        desc = finfo.description or _MEANING.get(path, "")
        if isinstance(v, BaseModel):
            if desc:
                rows.append((path, "", desc))
            _walk(v, path + ".", rows, set())
        elif isinstance(v, dict):
            rows.append((path, "" if v else "{}", desc))
            for k, x in v.items():
                rows.append((f"{path}.{getattr(k, 'value', k)}", _fmt_value(fname, x), ""))
        else:
            if fname == "dataflow":
                desc = _DATAFLOW.get(v, desc)
            rows.append((path, _fmt_value(fname, v), desc))


def chip_detail(chip: Chip) -> Group:
    """Every field of the chip spec (with the schema's descriptions), derived peaks and sources."""
    rows: list[tuple[str, str, str]] = []
    _walk(chip, "", rows, skip={"sources"})
    spec = Table(title=f"chip {chip.name}", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    spec.add_column("field", style="cyan", no_wrap=True)
    spec.add_column("value", overflow="fold")
    spec.add_column("meaning", style="dim", overflow="fold")
    for r in rows:
        spec.add_row(*r)

    der = Table(title="derived", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    der.add_column("figure", style="cyan", no_wrap=True)
    der.add_column("value")
    m = chip.core.matrix
    der.add_row("MACs per core per cycle", f"{m.rows * m.cols:,} (×rate per dtype)")
    for dt in m.rate:
        der.add_row(f"peak {DType(dt).value}", f"{chip.peak_flops(DType(dt)) / 1e12:,.1f} TFLOPS"
                    f" ({chip.peak_macs_per_cycle(DType(dt)):,.0f} MAC/cycle)")
    der.add_row("HBM bytes per cycle", f"{chip.hbm_bytes_per_cycle:,.1f}")
    dma = chip.core.dma_bytes_per_cycle * chip.clock_hz
    der.add_row("DMA per core", f"{fmt.si(dma, 'B/s')} (cores to saturate HBM: {chip.hbm.bandwidth_gbs * 1e9 / dma:.1f})")
    der.add_row("total scratchpad", fmt.nbytes(chip.core.scratchpad.bytes * chip.cores))
    if chip.supports(DType.bf16):
        ridge = chip.peak_flops(DType.bf16) / (chip.hbm.bandwidth_gbs * 1e9)
        der.add_row("bf16 ridge point", f"{ridge:,.0f} FLOP/byte of HBM traffic")
    parts: list[Any] = [spec, der]
    if chip.sources:
        src = Table(title="sources", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
        src.add_column("figure", style="cyan", no_wrap=True)
        src.add_column("source", overflow="fold")
        for k, v in chip.sources.items():
            src.add_row(k, v)
        parts.append(src)
    return Group(*parts)


# -- workloads ----------------------------------------------------------------------------
def workloads_table(workloads: Iterable[Any]) -> Table:
    t = Table(title="workloads", box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    t.add_column("name", style="bold", no_wrap=True)
    t.add_column("family")
    t.add_column("description", overflow="fold")
    for w in workloads:
        t.add_row(w.name, w.family, w.description)
    return t


def _metric_table(title: str) -> Table:
    """A two-column metric / value table."""
    t = Table(title=title, box=box.SIMPLE_HEAD, show_header=False, title_style="bold", pad_edge=False)
    t.add_column("metric", style="bold cyan", no_wrap=True)
    t.add_column("value")
    return t


def generation_table(rep: Any) -> Table:
    """`vnpu generate`: serving metrics of one generation (a runtime.llm.GenerationReport)."""
    t = _metric_table(f"vnpu generate · {rep.model} on {rep.chip}")
    t.add_row("run", f"batch {rep.batch} · prompt {rep.prompt_len} · {rep.max_new_tokens} new tokens · "
                     f"{rep.dtype}{' · ' + rep.quant if getattr(rep, 'quant', '') else ''} · {rep.mode}")
    top_k = rep.top_k
    t.add_row("sampling", "greedy (argmax on the chip)" if top_k is None else
              f"top-{top_k} at temperature {rep.temperature:g} (Gumbel-max on the chip), seed {rep.seed}")
    t.add_row("time to first token", fmt.seconds(rep.ttft_s))
    t.add_row("time per output token", fmt.seconds(rep.tpot_s))
    t.add_row("tokens/s", f"{rep.tokens_per_s:,.1f} overall · {rep.decode_tokens_per_s:,.1f} in decode")
    t.add_row("decode HBM bandwidth", Text.assemble(
        f"{fmt.pct(rep.decode_hbm_utilization)} of peak · step at ",
        (fmt.pct(rep.decode_bandwidth_bound_fraction), _frac_style(rep.decode_bandwidth_bound_fraction)),
        " of the weights+KV bandwidth bound"))
    def saved(now: int, before: int) -> str:
        return f" (unquantized {fmt.nbytes(before)}: {fmt.pct(1 - now / before)} saved)" if before and before != now else ""

    kv_fmt = getattr(rep, "kv_cache", "") or rep.dtype
    t.add_row("memory", f"weights {fmt.nbytes(rep.weight_bytes)}"
                        f"{saved(rep.weight_bytes, getattr(rep, 'unquantized_weight_bytes', 0))} · KV cache "
                        f"{fmt.nbytes(rep.kv_cache_bytes)} in {kv_fmt}"
                        f"{saved(rep.kv_cache_bytes, getattr(rep, 'unquantized_kv_cache_bytes', 0))} "
                        f"({rep.kv_capacity} tokens x batch {rep.batch})")
    t.add_row("energy", f"{fmt.joules(rep.energy_per_token_j)} per token · {fmt.joules(rep.total_energy_j)} total")
    t.add_row("programs", f"{rep.programs} (prefill + decode length buckets) · {rep.layers} layers"
                          + (f" · {rep.chips} chips" if rep.chips > 1 else ""))
    if rep.chips > 1:
        t.add_row("chip links", (f"{rep.moe_collective} · " if rep.moe_collective else "")
                  + f"{fmt.seconds(rep.prefill_comm_s)} in the prefill · {fmt.seconds(rep.decode_comm_s)} per decode step"
                  f" · {fmt.nbytes(rep.link_bytes_per_token)} per token · {fmt.joules(rep.link_energy_j)} in all")
    if rep.tokens:
        shown = "\n".join(" ".join(map(str, row[:16])) + (" …" if len(row) > 16 else "") for row in rep.tokens[:4])
        t.add_row("tokens", shown)
    if rep.fallback_ops:
        t.add_row("host fallback", ", ".join(f"{k} x{v}" for k, v in sorted(rep.fallback_ops.items())))
    acc = getattr(rep, "quant_accuracy", None)
    if acc:
        t.add_row("quantized vs fp32", f"mean KL {acc['mean_kl']:.4g} (max {acc['max_kl']:.3g}) · same top token "
                  f"{fmt.pct(acc['same_top_token'])} over {acc['positions']} positions (fp32 model on the same tokens)")
    return t


def compare_table(reports: list[Any]) -> Table:
    """`vnpu compare`: one column per chip (GenerationReports of the same generation)."""
    r0 = reports[0]
    t = Table(title=f"vnpu compare · {r0.model} · prompt {r0.prompt_len} + {r0.max_new_tokens} tokens · batch "
                    f"{r0.batch} · {r0.dtype}" + (f" · {r0.quant} (each chip at its own rate for the format)"
                                                   if getattr(r0, "quant", "") else "")
                    + (f" · KV cache {r0.kv_cache}" if getattr(r0, "kv_cache", "") not in ("", r0.dtype) else ""),
              box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False)
    t.add_column("metric", style="bold cyan", no_wrap=True)
    for r in reports:
        t.add_column(f"{r.chips} x {r.chip}" if r.chips > 1 else r.chip, justify="right")
    rows = [
        ("chips", lambda r: str(r.chips)),
        ("time to first token", lambda r: fmt.seconds(r.ttft_s)),
        ("time per output token", lambda r: fmt.seconds(r.tpot_s)),
        ("tokens/s (overall)", lambda r: f"{r.tokens_per_s:,.1f}"),
        ("tokens/s (decode)", lambda r: f"{r.decode_tokens_per_s:,.1f}"),
        ("energy per token", lambda r: fmt.joules(r.energy_per_token_j)),
        ("chip-link time per decode step", lambda r: fmt.seconds(r.decode_comm_s) if r.chips > 1 else "—"),
        ("decode HBM utilization", lambda r: fmt.pct(r.decode_hbm_utilization)),
        ("weights + KV cache", lambda r: fmt.nbytes(r.weight_bytes + r.kv_cache_bytes)),
    ]
    for label, fn in rows:
        t.add_row(label, *(fn(r) for r in reports))
    return t


def serve_table(rep: Any) -> Any:
    """`vnpu serve`: the run and its throughput, then latency percentiles (serving.serve.ServeReport)."""
    from rich.console import Group

    t = _metric_table(f"vnpu serve · {rep.model} on {rep.replicas} x {rep.chip}")
    t.add_row("run", f"{rep.dtype}{' · ' + rep.quant if rep.quant else ''} · KV cache {rep.kv_cache} · "
                     f"{rep.policy} scheduling · {rep.router} router")
    t.add_row("requests", f"{rep.served} served · {rep.rejected} rejected · offered {rep.request_rate:.2f}/s")
    t.add_row("throughput", f"{rep.throughput_rps:.2f} requests/s · {rep.output_tokens_per_s:,.0f} output tokens/s")
    if getattr(rep, "slo", None):
        targets = ", ".join(f"{k} <= {fmt.seconds(v)}" for k, v in rep.slo.items())
        t.add_row("goodput", f"{rep.goodput_rps:.2f} requests/s within {targets} · SLO attainment "
                             f"{fmt.pct(rep.slo_attainment)}")
    t.add_row("KV cache", f"{rep.kv_blocks:,} blocks of {rep.block_size} tokens per replica · peak "
                          f"{fmt.pct(rep.peak_kv_share)} · {rep.preemptions} preemptions · "
                          f"{rep.cached_prompt_tokens:,} prompt tokens from the prefix cache")
    t.add_row("wall", f"step model {rep.step_model_s:.1f} s · event loop {rep.simulate_s:.2f} s")
    if rep.rejected_reasons:
        t.add_row("rejected", f"{rep.rejected} requests, e.g. {rep.rejected_reasons[0]}")
    lat = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    lat.add_column("latency", style="bold cyan", no_wrap=True)
    for c in ("mean", "p50", "p90", "p99"):
        lat.add_column(c, justify="right")
    for label, d in (("TTFT", rep.ttft_s), ("TPOT", rep.tpot_s), ("ITL", rep.itl_s), ("end to end", rep.e2e_s)):
        lat.add_row(label, *(fmt.seconds(d[k]) for k in ("mean", "p50", "p90", "p99")))
    return Group(t, lat)
