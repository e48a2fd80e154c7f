"""The `vnpu` command.

    vnpu chips                      chip presets
    vnpu chips show NAME_OR_PATH    every field of one chip, with derived peaks and sources
    vnpu zoo                        built-in workloads
    vnpu run MODEL [options]        compile, simulate, check numerics against the source framework, report
                                    (MODEL: a zoo name, a .onnx file, a .keras file or a SavedModel directory)
    vnpu import-topology FILE.csv --scale-config FILE.cfg [--gemm] [--json OUT]
                                    rerun a SCALE-Sim study: per-layer cycles
    vnpu generate LLM [options]     LLM generation on the chip (greedy, or --top-k sampling): TTFT, TPOT,
                                    tokens/s, energy
    vnpu compare --chips A,B --model LLM   the same generation on several chips, side by side
    vnpu version

Exit codes: 0 success; 1 numerics FAIL; 2 bad input (unknown model or chip, malformed chip
or model file, dynamic input dims without --input-shape, missing extra, unsupported dtype,
model too large for the chip, unsupported ops under --strict, bad sampling options, a size past
a limit: see README "Limits"; malformed flags too).
Errors are one line on stderr, `error: ...`, without a traceback.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, NoReturn, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from vnpu.chip import DEFAULT_CHIP, ChipError, list_presets, load_chip
from vnpu.chip.schema import Chip
from vnpu.dtypes import DType

RUN_DTYPES = ("fp32", "bf16")
MAX_COMPARE_CHIPS = 16  # chips compared side by side in one table
MAX_CHIP_FILE_BYTES = 1 << 20  # a chip .toml is a few KiB; anything past 1 MiB is not one
MAX_STUDY_FILE_BYTES = 16 << 20  # SCALE-Sim topology / .cfg files
MAX_STUDY_LAYERS = 100_000  # rows of a GEMM topology (read_topology bounds depthwise expansion alike)
MAX_STUDY_FOLDS = 1 << 20  # per layer: ~1 min of simulation (16384 folds take ~1 s)
MAX_BANDWIDTH_WORDS = 1e6
EXIT_FAIL = 1
EXIT_USAGE = 2

class _OneLineErrors(typer.core.TyperGroup):
    """Click's usage errors (a malformed number, an unknown option, a missing argument) as one
    `error:` line with exit code 2, like every other bad input, instead of a usage block."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:  # typer 0.29 carries its own copy of click
            from typer._click import exceptions as cx
        except ImportError:  # pragma: no cover - typer on the click package
            from click import exceptions as cx

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as e:
            if not standalone_mode:
                raise
            e.show()
            sys.exit(e.exit_code)
        except cx.ClickException as e:
            if not standalone_mode:
                raise
            hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
            typer.echo(f"error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    name="vnpu",
    cls=_OneLineErrors,
    help="vnpu: a simulated AI inference chip, its compiler from PyTorch and its simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
chips_app = typer.Typer(help="Chip presets: list them, or `show` one in full.", invoke_without_command=True,
                        rich_markup_mode=None)
app.add_typer(chips_app, name="chips")

ChipOpt = Annotated[str, typer.Option("--chip", "-c", help="chip preset name or path to a chip .toml file",
                                      metavar="NAME_OR_PATH")]
KvCacheOpt = Annotated[Optional[str], typer.Option(
    "--kv-cache", help="KV-cache format: fp8 (e4m3, an fp32 scale per token and head; attention reads it "
    "directly); default: the program's dtype", metavar="FORMAT")]


def _check_kv_cache(kv_cache: str | None) -> None:
    from vnpu.compiler.kv_cache import KVCacheError, kv_cache_format

    try:
        kv_cache_format(kv_cache)
    except KVCacheError as e:
        _die(e)


# -- plumbing ------------------------------------------------------------------------------
class _Fail(Exception):
    """Bad input: reported as one line, exit code 2."""


def _one_line(msg: object) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _die(msg: object, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"error: {_one_line(msg)}", err=True)
    raise typer.Exit(code)


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    # Piped or captured output: wide enough for the kernel table instead of rich's 80 columns.
    width = None if tty or os.environ.get("COLUMNS") else 140
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


def _chip(name_or_path: str) -> Chip:
    if len(name_or_path) > 4096:  # past PATH_MAX: neither a preset name nor a path
        _die(f"unknown chip {name_or_path[:40]!r}... ({len(name_or_path):,} characters); presets: "
             f"{', '.join(list_presets())}, or pass a path to a .toml chip file")
    path = Path(name_or_path)
    try:
        if path.is_dir():
            _die(f"chip file {path} is a directory; give a chip .toml file or a preset name")
        if path.is_file() and path.stat().st_size > MAX_CHIP_FILE_BYTES:
            _die(f"chip file {path} is {path.stat().st_size:,} bytes; a chip file is at most "
                 f"{MAX_CHIP_FILE_BYTES:,} bytes of TOML")
        return load_chip(name_or_path)
    except ChipError as e:
        _die(e)
    except UnicodeDecodeError:
        _die(f"chip file {path} is not text (not UTF-8); a chip file is TOML")
    except OSError as e:
        _die(f"cannot read chip file {path}: {e.strerror or e}")


def _write_json(path: Path, data: Any) -> None:
    """Writes a --json output, or fails with one line naming the path."""
    import json

    try:
        path.write_text(json.dumps(data, indent=1))
    except OSError as e:
        _die(f"cannot write {path}: {e.strerror or e}")


def _check_output(path: Path | None, option: str) -> None:
    """Fail before the (possibly long) run when an output path cannot be written."""
    if path is None:
        return
    if path.is_dir():
        _die(f"{option} {path}: is a directory; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        _die(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        _die(f"{option} {path}: {parent} is not writable")


class _Step:
    seconds: float = 0.0


@contextmanager
def _step(console: Console, label: str) -> Iterator[_Step]:
    """A spinner while the step runs, then `✓ label (1.23 s)`."""
    st = _Step()
    t0 = time.perf_counter()
    with console.status(escape(label) + "…"):
        yield st
    st.seconds = time.perf_counter() - t0
    console.print(f"[green]✓[/] {escape(label)} [dim]({st.seconds:.2f} s)[/]")


@contextmanager
def _quiet_warnings() -> Iterator[None]:
    """torch.export and transformers chatter (Future/Deprecation warnings) is not for CLI users;
    host fallback is reported by the CLI itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from vnpu.frontends.errors import FallbackWarning

            warnings.simplefilter("ignore", FallbackWarning)
        except ImportError:  # pragma: no cover - frontend unavailable
            pass
        yield


# -- vnpu chips ----------------------------------------------------------------------------
@chips_app.callback()
def chips(ctx: typer.Context, chip: ChipOpt = "") -> None:
    """List the chip presets (with --chip PATH, a chip file is listed too)."""
    if ctx.invoked_subcommand is not None:
        return
    from vnpu.report.tables import chips_table

    listed: list[Chip] = []
    for name in list_presets():
        try:
            listed.append(load_chip(name))
        except ChipError as e:
            typer.echo(f"warning: preset {name} is broken: {_one_line(e)}", err=True)
    extra = _chip(chip) if chip else None
    if extra is not None and all(c.name != extra.name for c in listed):
        listed.append(extra)
    out = _console()
    out.print(chips_table(listed, highlight=extra.name if extra else None))
    out.print("[dim]vnpu chips show NAME_OR_PATH for every field; --chip PATH.toml takes a custom chip.[/]")


@chips_app.command("show")
def chips_show(
    name_or_path: Annotated[Optional[str], typer.Argument(help="preset name or path to a chip .toml file",
                                                          metavar="NAME_OR_PATH")] = None,
    chip: ChipOpt = DEFAULT_CHIP,
) -> None:
    """Every field of one chip, with the schema's descriptions, derived peaks and sources."""
    from vnpu.report.tables import chip_detail

    c = _chip(name_or_path or chip)
    _console().print(chip_detail(c))


# -- vnpu zoo ------------------------------------------------------------------------------
@app.command()
def zoo(chip: ChipOpt = DEFAULT_CHIP) -> None:
    """List the built-in workloads."""
    from vnpu.report.tables import workloads_table

    c = _chip(chip)
    from vnpu.workloads.zoo import list_workloads

    out = _console()
    out.print(workloads_table(list_workloads()))
    out.print(f"[dim]run one: vnpu run NAME --chip {escape(c.name if chip == DEFAULT_CHIP else chip)}[/]")


# -- vnpu version --------------------------------------------------------------------------
@app.command()
def version(chip: ChipOpt = DEFAULT_CHIP) -> None:
    """Print the vnpu version (and the chip's fingerprint)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    from vnpu import __version__
    from vnpu.compiler.lower import chip_fingerprint

    c = _chip(chip)
    try:
        torch_v = pkg_version("torch")
    except PackageNotFoundError:  # pragma: no cover
        torch_v = "not installed"
    typer.echo(f"vnpu {__version__} (python {sys.version.split()[0]}, torch {torch_v})")
    typer.echo(f"chip {c.name} (fingerprint {chip_fingerprint(c)})")


# -- vnpu run ------------------------------------------------------------------------------
@app.command()
def run(
    model: Annotated[str, typer.Argument(help="workload name (see `vnpu zoo`), .onnx file, .keras file, "
                                              "SavedModel directory or saved .vnpu artifact", metavar="MODEL")],
    chip: ChipOpt = DEFAULT_CHIP,
    dtype: Annotated[str, typer.Option("--dtype", help="compute dtype: fp32 or bf16", metavar="DTYPE")] = "fp32",
    batch: Annotated[int, typer.Option("--batch", "-b", help="batch size", metavar="N")] = 1,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the JSON report here",
                                                      metavar="PATH")] = None,
    trace_path: Annotated[Optional[Path], typer.Option("--trace", help="write a Chrome/Perfetto trace here",
                                                       metavar="PATH")] = None,
    timing_only: Annotated[bool, typer.Option("--timing-only", help="timing simulation only: no data, "
                                              "no numerics check (fast for big models)")] = False,
    show_ir: Annotated[bool, typer.Option("--show-ir", help="print the optimized IR")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="fail if any op would run on the host CPU")] = False,
    top: Annotated[int, typer.Option("--top", help="kernels listed individually (the rest are summed)", metavar="N")] = 15,
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", help="model files: the shape of an input with dynamic dims, NAME=D0,D1,... (repeatable); "
        "a dynamic leading dim takes --batch", metavar="NAME=DIMS")] = None,
    quant: Annotated[Optional[str], typer.Option(
        "--quant", help="post-training quantization scheme (w8a8-int8, w8a8-fp8, ...-static: calibrated on this "
        "run's inputs); the report adds its accuracy against the fp32 reference", metavar="SCHEME")] = None,
) -> None:
    """Compile a model, simulate it, compare with the source framework (PyTorch eager,
    onnxruntime or TensorFlow, fp32) and report.

    Exit code 1 when the numerics check fails (fp32: max|err| <= 1e-4 * max|ref|;
    bf16: cosine >= 0.999; --quant: cosine >= 0.99), 2 on bad input.
    """
    dt_name = dtype.strip().lower()
    if dt_name not in RUN_DTYPES:
        _die(f"unsupported dtype {dtype!r}; vnpu run takes {' or '.join(RUN_DTYPES)}")
    dt = DType(dt_name)
    if batch < 1:
        _die(f"--batch must be a positive integer, got {batch}")
    if top < 0:
        _die(f"--top must be 0 or a positive integer (kernels listed individually), got {top}")
    _check_output(json_path, "--json")
    _check_output(trace_path, "--trace")
    c = _chip(chip)
    if not c.supports(dt):
        _die(f"chip {c.name} has no matrix rate for {dt.value}; it supports "
             f"{', '.join(DType(d).value for d in c.core.matrix.rate)}")
    if quant is not None:
        from vnpu.compiler.quantize import QuantError, check_chip, get_scheme

        try:
            check_chip(get_scheme(quant), c)
        except QuantError as e:
            _die(e)
    from vnpu.run_sources import SourceError, open_source, parse_input_shapes
    from vnpu.workloads.zoo import UnknownWorkloadError

    try:
        source = open_source(model, parse_input_shapes(input_shape or []))
    except (UnknownWorkloadError, SourceError) as e:
        _die(e)
    if source.family == "artifact":  # runs on the chip and at the precision it was compiled for
        from click.core import ParameterSource

        given = typer.get_current_context().get_parameter_source
        saved = source.cm
        if given("chip") != ParameterSource.DEFAULT and c.name != saved.chip.name:
            _die(f"{model} was compiled for chip {saved.chip.name}, not {c.name}; recompile it for {c.name}")
        if given("dtype") != ParameterSource.DEFAULT and dt != saved.info.dtype:
            _die(f"{model} was compiled for {saved.info.dtype.value}, not {dt.value}; recompile it")
        c, dt = saved.chip, saved.info.dtype

    try:
        code = _run(source, c, dt, batch, json_path, trace_path, timing_only, show_ir, strict, top, quant)
    except _Fail as e:
        _die(e)
    if code:
        raise typer.Exit(code)


def _run(source: Any, chip: Chip, dt: DType, batch: int, json_path: Path | None, trace_path: Path | None,
         timing_only: bool, show_ir: bool, strict: bool, top: int, quant: str | None = None) -> int:
    from vnpu.compiler import CompileError, OutOfMemoryError
    from vnpu.compiler.lower import chip_fingerprint
    from vnpu.frontends.errors import MissingExtraError, UnsupportedOpError
    from vnpu.report import tables
    from vnpu.report.json_report import build_report, write_report
    from vnpu.report.numerics import compare
    from vnpu.run_sources import model_errors
    from vnpu.report.trace import timing_trace, write_trace
    from vnpu.sim.device import HostMemoryError

    out, err = _console(), _console(stderr=True)

    workload = source
    try:
        with _quiet_warnings(), _step(err, f"building {workload.name} (batch {batch})") as s_build:
            source.build(batch, chip)
        label = f"{dt.value}, {quant}" if quant else dt.value
        with _quiet_warnings(), _step(err, f"exporting and compiling for {chip.name} ({label})") as s_comp:
            cm = source.compile(chip, dt, strict, quant)
    except (MissingExtraError, *model_errors()) as e:
        raise _Fail(f"{e}") from None
    except UnsupportedOpError as e:
        ops = ", ".join(f"{op} (x{n}{': ' + ', '.join(e.nodes[op][:3]) if e.nodes.get(op) else ''})"
                        for op, n in sorted(e.ops.items()))
        raise _Fail(f"--strict: {len(e.ops)} op(s) of {workload.name} have no vnpu lowering: {ops}; "
                    "drop --strict to run them on the host CPU") from None
    except OutOfMemoryError as e:
        raise _Fail(f"{workload.name} (batch {batch}, {dt.value}) is too large: {e}") from None
    except CompileError as e:
        raise _Fail(f"cannot compile {workload.name} for {chip.name}: {e}") from None

    fallback = dict(cm.info.fallback_ops)
    if fallback:
        listing = ", ".join(f"{op} ×{n}" for op, n in sorted(fallback.items()))
        err.print(f"[yellow]⚠ {sum(fallback.values())} op(s) run on the host CPU: {escape(listing)} "
                  "(--strict makes this an error)[/]")
    if show_ir:
        out.print(cm.info.ir_text, markup=False, highlight=False, soft_wrap=True)

    numerics = None
    eager_s = None
    events: list[dict] | None = None
    try:
        if timing_only:
            with _step(err, "simulating (timing only)") as s_sim:
                if trace_path is not None:
                    profile, events = timing_trace(cm.program, chip)
                else:
                    profile = cm.profile()
        else:
            with _step(err, "simulating (functional + timing)") as s_sim:
                outs = cm.run_numpy(source.inputs, trace=trace_path is not None)
            profile = cm.last_profile
            events = getattr(cm, "last_trace", None)
            if source.reference_label:
                with _quiet_warnings(), _step(err, f"running the {source.reference_label} reference") as s_eager:
                    ref = source.reference()
                eager_s = s_eager.seconds
                numerics = compare(outs, ref, dt, quant or "")
                numerics.reference = source.reference_label
    except HostMemoryError as e:  # the simulated HBM image fits the chip, not this host
        raise _Fail(f"{workload.name} (batch {batch}, {dt.value}): {e}") from None
    except MemoryError as e:  # the simulated HBM image does not fit the chip
        raise _Fail(f"{workload.name} (batch {batch}, {dt.value}) is too large for {chip.name}: {e}") from None
    assert profile is not None

    out.print(tables.summary_table(profile, chip, model=workload.name, dtype=dt, batch=batch,
                                   fallback_ops=fallback, timing_only=timing_only))
    out.print(tables.kernel_table(profile, top=top))
    if numerics is not None:
        out.print(tables.numerics_table(numerics, dt))

    p = cm.program
    model_info = {
        "family": workload.family, "description": workload.description,
        "input_shapes": [list(s) for s in cm.info.input_shapes],
        "weight_bytes": p.weight_bytes, "activation_bytes": p.activation_bytes, "hbm_image_bytes": p.hbm_bytes,
        "launches": len(p.launches), "instructions": p.instruction_count(),
        "quant": cm.info.quant, "quantized_weight_bytes": list(cm.info.quant_bytes) or None,
    }
    try:
        if json_path is not None:
            report = build_report(profile, chip, model=workload.name, dtype=dt, batch=batch, numerics=numerics,
                                  timing_only=timing_only, fallback_ops=fallback, model_info=model_info,
                                  chip_fingerprint=chip_fingerprint(chip), build_s=s_build.seconds,
                                  compile_s=s_comp.seconds, simulate_s=s_sim.seconds, eager_s=eager_s)
            with _step(err, f"JSON report → {json_path}"):
                write_report(report, json_path)
        if trace_path is not None:
            meta = {"chip": chip.name, "model": workload.name, "dtype": dt.value, "batch": batch,
                    "timing_only": timing_only}
            with _step(err, f"trace ({len(events or []):,} events) → {trace_path}"):
                write_trace(trace_path, events or [], profile=profile, cores=chip.cores, metadata=meta)
            err.print("[dim]  open it in https://ui.perfetto.dev or chrome://tracing[/]")
    except OSError as e:
        raise _Fail(f"cannot write {e.filename or ''}: {e.strerror or e}") from None

    if numerics is None:
        out.print("[dim]timing only: numerics not checked[/]" if timing_only else
                  "[dim]a compiled artifact carries no model to compare with: numerics not checked[/]")
        return 0
    if numerics.passed:
        out.print(f"[bold green]PASS[/] numerics ({dt.value}: {escape(numerics.criterion)})")
        return 0
    out.print(f"[bold red]FAIL[/] numerics ({dt.value}: {escape(numerics.criterion)})")
    return EXIT_FAIL


# -- vnpu import-topology -----------------------------------------------------------------
@app.command("import-topology")
def import_topology(
    topology: Annotated[Path, typer.Argument(help="SCALE-Sim topology CSV (conv, or M,N,K with --gemm)",
                                             metavar="FILE.csv")],
    scale_config: Annotated[Path, typer.Option("--scale-config", help="SCALE-Sim architecture file",
                                               metavar="FILE.cfg")],
    gemm: Annotated[bool, typer.Option("--gemm", help="the CSV lists GEMMs (Layer, M, N, K)")] = False,
    bandwidth: Annotated[Optional[float], typer.Option("--bandwidth", help="DRAM words/cycle (default: the "
                                                       ".cfg's Bandwidth)", metavar="WORDS")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write per-layer cycles here (a list of "
                                                      "objects)", metavar="PATH")] = None,
) -> None:
    """Rerun a SCALE-Sim study on vnpu: per-layer compute and total cycles.

    The .cfg becomes one R x C array with SCALE-Sim's dataflow, fold-by-fold timing and
    mapping (docs/timing.md); each layer is compiled and simulated in timing-only mode.
    """
    import math

    from vnpu.chip.scalesim_cfg import WORD_BYTES, chip_from_scalesim, read_scalesim_cfg
    from vnpu.compiler import CompileError
    from vnpu.frontends.scalesim import TopologyError, read_topology
    from vnpu.topology_study import run_topology, spatio_temporal

    _check_output(json_path, "--json")
    if bandwidth is not None and not (0 < bandwidth <= MAX_BANDWIDTH_WORDS):
        _die(f"--bandwidth must be a positive number of words per cycle up to {MAX_BANDWIDTH_WORDS:g}, got {bandwidth}")
    for what, path in (("topology", topology), ("--scale-config", scale_config)):
        if path.is_file() and path.stat().st_size > MAX_STUDY_FILE_BYTES:
            _die(f"{what} {path} is {path.stat().st_size:,} bytes; vnpu reads study files of at most "
                 f"{MAX_STUDY_FILE_BYTES:,} bytes")
    t0 = time.perf_counter()
    try:
        arch = read_scalesim_cfg(scale_config)
        chip = chip_from_scalesim(arch, bandwidth)
        layers = read_topology(topology, gemm)
        if len(layers) > MAX_STUDY_LAYERS:
            _die(f"{topology} has {len(layers):,} layers; a study takes at most {MAX_STUDY_LAYERS:,}")
        mx = chip.core.matrix
        for layer in layers:  # sizes before anything is compiled
            operands = (layer.m * layer.k + layer.k * layer.n + layer.m * layer.n) * WORD_BYTES
            sr, sc, _ = spatio_temporal(layer, mx.dataflow)
            folds = math.ceil(sr / mx.rows) * math.ceil(sc / mx.cols)
            if operands > chip.hbm.bytes:
                _die(f"{topology}: layer {layer.name} (M={layer.m}, N={layer.n}, K={layer.k}) needs "
                     f"{operands / 2**30:.1f} GiB of operands; the study's memory holds {chip.hbm.bytes / 2**30:.0f} GiB")
            if folds > MAX_STUDY_FOLDS:
                _die(f"{topology}: layer {layer.name} (M={layer.m}, N={layer.n}, K={layer.k}) takes {folds:,} folds "
                     f"of the {mx.rows}x{mx.cols} array; a layer may take at most {MAX_STUDY_FOLDS:,}")
        rows = run_topology(layers, chip)
    except (ChipError, TopologyError) as e:
        _die(e)
    except CompileError as e:
        _die(f"cannot compile a layer of {topology}: {e}")
    wall = time.perf_counter() - t0
    from rich.table import Table

    out = _console()
    t = Table(title=f"{topology.name} on {escape(chip.description)}", title_justify="left")
    for col in ("layer", "Sr", "Sc", "T", "folds", "compute cycles", "total cycles", "stall", "map eff", "util"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        t.add_row(escape(r.layer), str(r.sr), str(r.sc), str(r.t), str(r.folds), f"{r.compute_cycles:,}",
                  f"{r.total_cycles:,}", f"{r.stall_cycles:,}", f"{100 * r.mapping_efficiency:.1f}%",
                  f"{100 * r.compute_util:.1f}%")
    out.print(t)
    compute = sum(r.compute_cycles for r in rows)
    total = sum(r.total_cycles for r in rows)
    out.print(f"{len(rows)} layers: {compute:,} compute cycles, {total:,} total cycles "
              f"({arch.dataflow.upper()}, {arch.rows}x{arch.cols}, {chip.hbm.bandwidth_gbs / 4:g} words/cycle); "
              f"simulated in {wall:.2f} s")
    if arch.bandwidth_mode == "CALC" and bandwidth is None:
        out.print("[dim]the .cfg asks SCALE-Sim for CALC bandwidth (no stalls); vnpu prices memory at its "
                  "Bandwidth figure, so compare compute cycles[/]")
    if json_path is not None:
        _write_json(json_path, [r.as_dict() for r in rows])


# -- vnpu generate -------------------------------------------------------------------------
@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="LLM name (qwen3-tiny, llama-tiny, qwen3-moe-tiny, qwen3-0.6b, "
                                               "qwen3-8b, qwen3-32b, qwen3-235b-a22b, llama-3.1-8b)", metavar="MODEL")],
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="prompt tokens (random ids, fixed seed)",
                                            metavar="N")] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate", metavar="M")] = 32,
    batch: Annotated[int, typer.Option("--batch", "-b", help="sequences generated together", metavar="B")] = 1,
    chips: Annotated[int, typer.Option("--chips", help="chips to serve on: tensor parallel attention and MLPs, "
                                                       "expert parallel MoE (real tokens for the small models, greedy; "
                                                       "timing-only for the big ones)", metavar="C")] = 1,
    chip: ChipOpt = DEFAULT_CHIP,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 or bf16", metavar="DTYPE")] = "bf16",
    timing_only: Annotated[Optional[bool], typer.Option("--timing-only/--functional",
                                                        help="timing simulation from meta-device weights (default "
                                                             "for the big models) or real tokens (default for the "
                                                             "small variants)")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the metrics (and tokens) here",
                                                      metavar="PATH")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="sample each token from the K most likely (on the chip, "
                                                       "Gumbel-max); 0: greedy", metavar="K")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", help="sampling temperature (with --top-k)",
                                               metavar="T")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="seed of the host's sampling noise (with --top-k)",
                                      metavar="S")] = 0,
    quant: Annotated[Optional[str], typer.Option("--quant", help="quantize every linear layer: w8a8-int8 or "
                                                 "w8a8-fp8 (functional runs report KL divergence vs fp32)",
                                                 metavar="SCHEME")] = None,
    kv_cache: KvCacheOpt = None,
) -> None:
    """Generation of a zoo LLM on the chip, greedy or top-k sampling: prefill and decode programs
    with the KV cache resident in simulated HBM. Reports time to first token, time per output
    token, tokens/s, decode HBM utilization, KV-cache and weight memory, and energy per token."""
    from vnpu.workloads.llm_specs import UnknownLLMError, check_generation, check_sampling, get_llm  # no torch yet

    dt_name = dtype.strip().lower()
    if dt_name not in RUN_DTYPES:
        _die(f"unsupported dtype {dtype!r}; vnpu generate takes {' or '.join(RUN_DTYPES)}")
    if top_k < 0:
        _die(f"--top-k must be 0 (greedy) or a positive integer, got {top_k}")
    try:
        spec = get_llm(model)
    except UnknownLLMError as e:
        _die(e)
    try:  # every size before anything is built: context, batch, chips, sampling
        check_generation(spec, prompt_len, max_new_tokens, batch, chips)
        check_sampling(top_k or None, temperature, spec.config["vocab_size"], seed)
    except ValueError as e:
        _die(e)
    _check_output(json_path, "--json")
    _check_kv_cache(kv_cache)
    c = _chip(chip)
    from vnpu.runtime.llm import generate as llm_generate  # torch and transformers: only for a valid request

    err, out = _console(stderr=True), _console()
    where = f"{chips} x {c.name}" if chips > 1 else c.name
    try:
        with _quiet_warnings(), _step(err, f"{model}: export, compile and simulate on {where} ({dt_name})"):
            rep = llm_generate(model, prompt_len, max_new_tokens, batch, c, dt_name, timing_only, chips=chips,
                               top_k=top_k or None, temperature=temperature, seed=seed, quant=quant,
                               kv_cache=kv_cache)
    except (ValueError, MemoryError) as e:  # bad options; ModelTooLargeError (a MemoryError) names the chips needed
        _die(e)
    from vnpu.report.tables import generation_table

    out.print(generation_table(rep))
    if json_path is not None:
        _write_json(json_path, rep.to_dict())
        err.print(f"[green]✓[/] metrics → {escape(str(json_path))}")


# -- vnpu compare --------------------------------------------------------------------------
@app.command()
def compare(
    chips: Annotated[str, typer.Option("--chips", help="comma-separated chip presets or .toml paths",
                                       metavar="A,B,...")] = "vnpu-v1,h20",
    model: Annotated[str, typer.Option("--model", help="LLM name (see vnpu generate)", metavar="MODEL")] = "qwen3-32b",
    prompt_len: Annotated[int, typer.Option("--prompt-len", metavar="N")] = 512,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="M")] = 32,
    batch: Annotated[int, typer.Option("--batch", "-b", metavar="B")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE")] = "bf16",
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="PATH")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="every chip serves quantized: w8a8-int8 or "
                                                 "w8a8-fp8 (each at its own rate for the format)",
                                                 metavar="SCHEME")] = None,
    kv_cache: KvCacheOpt = None,
) -> None:
    """Serve one LLM on several chips (timing only) and print TTFT, TPOT, tokens/s and energy per
    token side by side. Each chip gets the fewest chips of its kind that hold the model.
    (GPU-like presets have many small cores: their prefill programs have many more
    instructions; a 2048-token prompt takes about a minute to simulate on h20.)"""
    from vnpu.workloads.llm_specs import UnknownLLMError, check_generation, get_llm, valid_chip_counts  # no torch yet

    dt_name = dtype.strip().lower()
    if dt_name not in RUN_DTYPES:
        _die(f"unsupported dtype {dtype!r}; vnpu compare takes {' or '.join(RUN_DTYPES)}")
    names = [n.strip() for n in chips.split(",") if n.strip()]
    if not names:
        _die("--chips: give at least one chip")
    if len(names) > MAX_COMPARE_CHIPS:
        _die(f"--chips lists {len(names)} chips; compare takes at most {MAX_COMPARE_CHIPS}")
    try:
        spec = get_llm(model)
    except UnknownLLMError as e:
        _die(e)
    try:
        check_generation(spec, prompt_len, max_new_tokens, batch)
    except ValueError as e:
        _die(e)
    _check_output(json_path, "--json")
    _check_kv_cache(kv_cache)
    chip_objs = [_chip(n) for n in names]
    qfmt = None
    if quant is not None:
        from vnpu.compiler.quantize import QuantError, check_chip, get_scheme

        try:
            scheme = get_scheme(quant)
            for c in chip_objs:
                check_chip(scheme, c)
        except QuantError as e:
            _die(e)
        qfmt = scheme
    from vnpu.runtime.llm import chips_needed
    from vnpu.runtime.llm import generate as llm_generate  # torch and transformers: only for a valid request

    err, out = _console(stderr=True), _console()
    reports = []
    for c in chip_objs:
        try:
            n = chips_needed(model, prompt_len, max_new_tokens, batch, c, dt_name, qfmt, kv_cache)
            if n not in valid_chip_counts(spec):  # more than the model splits over: generate says what fits
                n = max(valid_chip_counts(spec))
            with _quiet_warnings(), _step(err, f"{model} on {n} x {c.name}"):
                reports.append(llm_generate(model, prompt_len, max_new_tokens, batch, c, dt_name, True, chips=n,
                                            quant=quant, kv_cache=kv_cache))
        except (ValueError, MemoryError) as e:
            _die(f"{c.name}: {e}")
    from vnpu.report.tables import compare_table

    out.print(compare_table(reports))
    if json_path is not None:
        _write_json(json_path, [r.to_dict() for r in reports])


# -- vnpu serve ----------------------------------------------------------------------------
@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="LLM name (see vnpu generate)")],
    chip: ChipOpt = DEFAULT_CHIP,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 or bf16", metavar="DTYPE")] = "bf16",
    quant: Annotated[Optional[str], typer.Option("--quant", help="post-training scheme of every linear layer",
                                                 metavar="SCHEME")] = None,
    kv_cache: KvCacheOpt = None,
    replicas: Annotated[int, typer.Option("--replicas", help="replicas of one chip each", metavar="R")] = 1,
    rate: Annotated[float, typer.Option("--rate", help="synthetic arrivals, requests per second", metavar="RPS")] = 2.0,
    requests: Annotated[int, typer.Option("--requests", help="synthetic requests", metavar="N")] = 200,
    arrivals: Annotated[str, typer.Option("--arrivals", help="poisson or gamma:cv=C", metavar="PROCESS")] = "poisson",
    prompt_len: Annotated[str, typer.Option("--prompt-len", help="tokens, or a distribution such as "
                                            "lognormal:mean=600,sigma=0.8", metavar="LEN")] = "lognormal:mean=1155,sigma=0.985,max=8192",
    output_len: Annotated[str, typer.Option("--output-len", help="tokens, or a distribution",
                                            metavar="LEN")] = "lognormal:mean=211,sigma=0.859,max=1000",
    trace: Annotated[Optional[str], typer.Option("--trace", help="a CSV / JSONL trace file (arrival_s, prompt_tokens, "
                                                 "output_tokens[, prefix_id, prefix_tokens]), or 'sample'",
                                                 metavar="FILE")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the synthetic trace", metavar="S")] = 0,
    policy: Annotated[str, typer.Option("--policy", help="chunked, prefill_first or orca", metavar="POLICY")] = "chunked",
    router: Annotated[str, typer.Option("--router", help="round_robin or least_outstanding", metavar="ROUTER")] = "round_robin",
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching",
                                                 help="reuse the KV blocks of shared prompt prefixes")] = False,
    slo: Annotated[Optional[str], typer.Option("--slo", help="latency targets of goodput, seconds: e.g. "
                                               "ttft=0.5,tpot=0.05 (also e2e=)", metavar="TARGETS")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the report (and every request) here",
                                                      metavar="PATH")] = None,
) -> None:
    """Serve an LLM under request traffic on the chip: continuous batching over a paged KV cache,
    step times from the chip's own programs (fitted once, cached on disk). Reports throughput and
    TTFT / TPOT / ITL / end-to-end latency percentiles."""
    from vnpu.serving.trace import SAMPLE_TRACE, TraceError, read_trace, synthetic_trace  # no torch yet
    from vnpu.workloads.llm_specs import UnknownLLMError, get_llm

    dt_name = dtype.strip().lower()
    if dt_name not in RUN_DTYPES:
        _die(f"unsupported dtype {dtype!r}; vnpu serve takes {' or '.join(RUN_DTYPES)}")
    try:
        get_llm(model)
    except UnknownLLMError as e:
        _die(e)
    try:
        tr = (read_trace(SAMPLE_TRACE if trace == "sample" else trace) if trace is not None
              else synthetic_trace(rate, requests, prompt_len, output_len, arrivals, seed))
    except TraceError as e:
        _die(e)
    _check_output(json_path, "--json")
    _check_kv_cache(kv_cache)
    from vnpu.serving.serve import ServeError, parse_slo
    from vnpu.serving.serve import serve as run_serve

    try:
        targets = parse_slo(slo)
    except ServeError as e:
        _die(e)
    c = _chip(chip)
    if quant is not None:
        from vnpu.compiler.quantize import QuantError, check_chip, get_scheme

        try:
            check_chip(get_scheme(quant), c)
        except QuantError as e:
            _die(e)

    err, out = _console(stderr=True), _console()
    try:
        with _quiet_warnings(), _step(err, f"{model}: step model on {c.name} ({dt_name}) and {len(tr)} requests"):
            rep = run_serve(model, tr, c, dt_name, replicas, quant, kv_cache, policy, router,
                            prefix_caching=prefix_caching, slo=targets)
    except (ServeError, ValueError, MemoryError) as e:
        _die(e)
    from vnpu.report.tables import serve_table

    out.print(serve_table(rep))
    if json_path is not None:
        _write_json(json_path, rep.to_dict())
        err.print(f"[green]✓[/] report → {escape(str(json_path))}")


def main() -> None:  # pragma: no cover - console entry point alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
