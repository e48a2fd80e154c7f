"""A corpus of bad input: chip files, model files, CLI flags and API calls.

Every case must be refused cleanly: exit code 2 (usage errors), exactly one stderr line,
starting `error:` and naming the problem, no traceback, nothing written to the working
directory. The huge-size cases also run as real subprocesses under an address-space limit,
and their peak RSS (os.wait4's rusage of that child) must stay near a bare import's.
Most cases run in-process (CliRunner): each subprocess imports torch (3-5 s).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vnpu
from vnpu.chip import PRESETS_DIR
from vnpu.cli import app

runner = CliRunner()
PRESET = (PRESETS_DIR / "vnpu-v1.toml").read_text()
SRC = Path(vnpu.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_empty_dir(tmp_path, monkeypatch):
    """Each case runs in an empty working directory, which must stay empty."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    assert sorted(os.listdir(work)) == [], "a refused command created files in the working directory"


def refused(args: list[str], *needles: str, after_steps: bool = False) -> str:
    """Runs the CLI in-process; asserts a clean refusal and returns its error line. With
    `after_steps`, the refusal may follow completed `✓ step` lines (a check that needs the
    compiled program); otherwise the error is all there is on stderr."""
    r = runner.invoke(app, args)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (args, r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if after_steps:
        assert all(ln.startswith("✓ ") for ln in lines[:-1]), r.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _edit(old: str, new: str) -> str:
    assert old in PRESET, old
    return PRESET.replace(old, new, 1)


# -- chip files: `vnpu chips show FILE` ---------------------------------------------------------------
CHIP_TEXTS = {
    "empty": ("", ["field `name`", "required"]),
    "truncated": (PRESET[: len(PRESET) // 2].rsplit("\n", 1)[0] + "\n[hbm", ["not valid TOML"]),
    "cores-string": (_edit("cores = 32 ", 'cores = "many" '), ["`cores`", "integer", "many"]),
    "table-is-number": (_edit("[hbm]\n", "hbm = 5\n[hbm_gone]\n"), ["hbm"]),
    "negative-cores": (_edit("cores = 32 ", "cores = -1 "), ["`cores`", "greater than 0"]),
    "zero-hbm": (_edit("bytes = 103079215104", "bytes = 0"), ["`hbm.bytes`", "greater than 0"]),
    "huge-cores": (_edit("cores = 32 ", "cores = 1000000000 "), ["`cores`", "less than or equal to 4096"]),
    "huge-scratchpad": (_edit("bytes = 2097152", "bytes = 1000000000000000"),
                        ["`core.scratchpad.bytes`", "less than or equal to 1073741824"]),
    "huge-hbm": (_edit("bytes = 103079215104", "bytes = 1000000000000000000000000000000"), ["`hbm.bytes`"]),
    "huge-array": (_edit("rows = 64", "rows = 65536000"), ["`core.matrix.rows`", "4096"]),
    "inf-bandwidth": (_edit("bandwidth_gbs = 4000.0", "bandwidth_gbs = inf"), ["`hbm.bandwidth_gbs`", "finite"]),
    "nan-clock": (_edit("clock_ghz = 1.5", "clock_ghz = nan"), ["`clock_ghz`", "finite"]),
    "huge-clock": (_edit("clock_ghz = 1.5", "clock_ghz = 1.5e12"), ["`clock_ghz`", "less than or equal to 100"]),
    "unknown-top-key": (_edit("cores = 32 ", "cores = 32\nturbo = true\n"), ["`turbo`", "allowed"]),
    "unknown-nested-key": (_edit("latency_ns = 400.0", "latency_ns = 400.0\nchannels = 8"), ["`hbm.channels`"]),
}


@pytest.mark.parametrize("case", sorted(CHIP_TEXTS))
def test_chip_file_refused(case, tmp_path):
    text, needles = CHIP_TEXTS[case]
    p = tmp_path / f"{case}.toml"
    p.write_text(text)
    refused(["chips", "show", str(p)], str(p), *needles)


def test_chip_file_random_bytes(tmp_path):
    p = tmp_path / "noise.toml"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refused(["chips", "show", str(p)], str(p))


def test_chip_file_too_big_is_not_read(tmp_path):
    p = tmp_path / "big.toml"
    p.write_text(PRESET + "#" * (2 << 20))
    refused(["chips", "--chip", str(p)], "at most 1,048,576 bytes")


def test_chip_path_is_a_directory(tmp_path):
    refused(["zoo", "--chip", str(tmp_path)], "is a directory")


def test_chip_file_missing(tmp_path):
    refused(["version", "--chip", str(tmp_path / "nope.toml")], "does not exist")


def test_bad_chip_refused_before_building_the_llm(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(_edit("cores = 32 ", "cores = 0 "))
    refused(["generate", "qwen3-tiny", "--chip", str(p)], "`cores`")


# -- model files: `vnpu run FILE` -------------------------------------------------------------------
def _onnx_relu(path: Path) -> Path:
    """y = relu(x), x float32 [N, 4] with a dynamic leading dim."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _noise(n: int = 2048) -> bytes:
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


MODEL_FILES = {
    "empty.onnx": (lambda p: p.write_bytes(b""), []),
    "truncated.onnx": (lambda p: p.write_bytes(_onnx_relu(p).read_bytes()[:40]), []),
    "noise.onnx": (lambda p: p.write_bytes(_noise()), []),
    "empty.keras": (lambda p: p.write_bytes(b""), []),
    "noise.keras": (lambda p: p.write_bytes(_noise()), []),
    "noise.h5": (lambda p: p.write_bytes(_noise()), []),
    "model.txt": (lambda p: p.write_bytes(_onnx_relu(p.with_suffix(".onnx")).read_bytes()), ["not a model vnpu can run"]),
}


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_model_file_refused(name, tmp_path):
    make, needles = MODEL_FILES[name]
    p = tmp_path / name
    make(p)
    refused(["run", str(p)], str(p), *needles)


def test_directory_that_is_not_a_savedmodel(tmp_path):
    d = tmp_path / "not_a_model"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    refused(["run", str(d)], str(d), "not a model vnpu can run")


@pytest.mark.parametrize("content", [b"", _noise()], ids=["empty-pb", "noise-pb"])
def test_savedmodel_with_a_broken_pb(content, tmp_path):
    d = tmp_path / "sm"
    d.mkdir()
    (d / "saved_model.pb").write_bytes(content)
    refused(["run", str(d)], str(d))


def test_missing_model_file(tmp_path):
    refused(["run", str(tmp_path / "gone.onnx")], "no such file")


@pytest.mark.parametrize("shape,needle", [
    ("x=a,4", "integer dims"), ("x=0,4", "positive"), ("x=-2,4", "positive"), ("x=", "positive"),
    ("x=4,99999999999", "over the limit"), ("y=2,4", "not inputs"), ("x=2,4,4", "rank"),
])
def test_input_shape_refused(shape, needle, tmp_path):
    p = _onnx_relu(tmp_path / "relu.onnx")
    refused(["run", str(p), "--input-shape", shape], needle)


def test_input_shape_larger_than_hbm_is_refused_before_allocating(tmp_path):
    """x: 2**31 x 4 float32 = 32 GiB: within --input-shape's per-dim limit, over the 16 MiB of HBM of
    this chip; refused before the random input is drawn (tracemalloc sees numpy's allocations)."""
    import tracemalloc

    p = _onnx_relu(tmp_path / "relu.onnx")
    chip = tmp_path / "small.toml"
    chip.write_text(_edit("bytes = 103079215104", f"bytes = {16 << 20}"))
    tracemalloc.start()
    try:
        refused(["run", str(p), "--chip", str(chip), "--input-shape", f"x={1 << 31},4"], "32.00 GiB", "HBM")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


# -- CLI flags --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needles", [
    (["--batch", "-3"], ["--batch", "positive"]),
    (["--batch", "abc"], ["--batch", "valid integer"]),
    (["--batch", "1000000000000"], ["at most batch"]),
    (["--top", "-1"], ["--top"]),
    (["--dtype", ""], ["unsupported dtype"]),
    (["--no-such-flag"], ["No such option"]),
])
def test_run_flags(args, needles):
    refused(["run", "mlp", *args], *needles)


@pytest.mark.parametrize("args,needles", [
    (["--prompt-len", "10000000", "--max-new-tokens", "2"], ["context of 512", "at most 510 prompt tokens"]),
    (["--prompt-len", "0"], ["--prompt-len", "positive"]),
    (["--prompt-len", "-5"], ["--prompt-len", "positive"]),
    (["--prompt-len", "12x"], ["--prompt-len", "valid integer"]),
    (["--max-new-tokens", "600"], ["context of 512", "--max-new-tokens) can be at most 511"]),
    (["--batch", "10000000"], ["limit of 4096"]),
    (["--batch", "0"], ["--batch", "positive"]),
    (["--chips", "3"], ["splits evenly over 1, 2, 4 chips"]),
    (["--chips", "0"], ["--chips", "positive"]),
    (["--chips", "1000000000"], ["splits evenly over 1, 2, 4 chips"]),
    (["--top-k", "1000000000"], ["vocabulary size 512"]),
    (["--top-k", "5", "--temperature", "inf"], ["--temperature", "finite"]),
    (["--top-k", "5", "--temperature", "nan"], ["--temperature"]),
    (["--top-k", "5", "--temperature", "-1"], ["--temperature"]),
    (["--top-k", "5", "--seed", str(2**70)], ["--seed", "2**64-1"]),
    (["--top-k", "5", "--seed", "one"], ["--seed", "valid integer"]),
    (["--dtype", "fp64"], ["unsupported dtype"]),
])
def test_generate_flags(args, needles):
    refused(["generate", "qwen3-tiny", *args], *needles)


def test_generate_refusal_leaves_the_json_path_untouched(tmp_path):
    out = tmp_path / "gen.json"
    out.write_text("previous")
    refused(["generate", "qwen3-tiny", "--prompt-len", "10000000", "--json", str(out)], "context of 512")
    assert out.read_text() == "previous"


def test_generate_kv_cache_too_big_names_what_fits(tmp_path):
    """qwen3-tiny (V 512, H 128, MLP 256, 2 layers, 4 Q / 2 KV heads of 32, untied) has
    2 x 512 x 128 + 2 x (128x128 + 2 x 128x64 + 128x128 + 2 x 32 + 3 x 128x256 + 2 x 128) + 128
    = 426,752 parameters: 853,504 bytes in bf16. On a chip with 4 MiB of HBM that leaves
    3,340,800 bytes. A sequence's KV cache is 2 x 2 layers x 2 heads x 32 x 2 B = 512 B a slot;
    400 + 2 tokens take a 512-slot cache (262,144 B): 12 sequences fit. At batch 64, 64 slots
    (2 MiB) fit and 128 (4 MiB) do not: prompts of at most 64 - 2 = 62 tokens."""
    chip = tmp_path / "small.toml"
    chip.write_text(_edit("bytes = 103079215104", f"bytes = {4 << 20}"))
    line = refused(["generate", "qwen3-tiny", "--prompt-len", "400", "--max-new-tokens", "2", "--batch", "64",
                    "--chip", str(chip)], "KV cache", "of HBM")
    assert "prompts of at most 62 tokens" in line and "a batch of at most 12 " in line, line


@pytest.mark.parametrize("args,needles", [
    (["--prompt-len", "10000000"], ["context of 40960"]),
    (["--batch", "0"], ["--batch", "positive"]),
    (["--batch", "1000000"], ["limit of 4096"]),
    (["--chips", " , "], ["at least one chip"]),
    (["--chips", ",".join(["h20"] * 40)], ["at most 16"]),
    (["--chips", "vnpu-v1,nope"], ["unknown chip 'nope'"]),
    (["--max-new-tokens", "-1"], ["--max-new-tokens", "positive"]),
])
def test_compare_flags(args, needles):
    refused(["compare", "--model", "qwen3-32b", *args], *needles)


CFG = """[general]
run_name = t

[architecture_presets]
ArrayHeight:    {r}
ArrayWidth:     32
IfmapSramSzkB:   64
FilterSramSzkB:  64
OfmapSramSzkB:   64
Bandwidth : 10
Dataflow : os
"""


@pytest.mark.parametrize("csv,cfg,extra,needles", [
    ("", CFG.format(r=32), ["--gemm"], ["no layers"]),
    ("Layer,M,N,K,\ng,-4,8,8,\n", CFG.format(r=32), ["--gemm"], ["`M`", "positive"]),
    ("Layer,M,N,K,\ng,4,8,eight,\n", CFG.format(r=32), ["--gemm"], ["`K`", "eight"]),
    ("Layer,M,N,K,\ng,1000000,1000000,1000000,\n", CFG.format(r=32), ["--gemm"], ["GiB of operands"]),
    ("Layer,M,N,K,\ng,40000,40000,1,\n", CFG.format(r=32), ["--gemm"], ["1,562,500 folds", "at most 1,048,576"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", "", ["--gemm"], ["missing `ArrayHeight`"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", CFG.format(r=10**9), ["--gemm"], ["`core.matrix.rows`", "4096"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", CFG.format(r="tall"), ["--gemm"], ["ArrayHeight", "tall"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", CFG.format(r=32), ["--gemm", "--bandwidth", "-1"], ["--bandwidth"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", CFG.format(r=32), ["--gemm", "--bandwidth", "inf"], ["--bandwidth"]),
    ("Layer,M,N,K,\ng,4,8,8,\n", CFG.format(r=32), [], ["expected 8 columns"]),
    ("name,ih,iw,fh,fw,c,nf,s,\nDPconv,8,8,3,3,10000000,1,1,\n", CFG.format(r=32), [],
     ["10,000,000 channels", "at most 100,000 layers"]),
], ids=["empty-csv", "negative-dim", "malformed-dim", "operands-over-memory", "too-many-folds", "empty-cfg",
        "huge-array", "malformed-array", "negative-bandwidth", "inf-bandwidth", "conv-csv-without-gemm",
        "depthwise-channels-over-layer-limit"])
def test_import_topology_refused(csv, cfg, extra, needles, tmp_path):
    t, c = tmp_path / "t.csv", tmp_path / "a.cfg"
    t.write_text(csv)
    c.write_text(cfg)
    refused(["import-topology", str(t), "--scale-config", str(c), *extra], *needles)


def test_import_topology_output_path_untouched(tmp_path):
    t, c, out = tmp_path / "t.csv", tmp_path / "a.cfg", tmp_path / "out.json"
    t.write_text("Layer,M,N,K,\ng,-1,8,8,\n")
    c.write_text(CFG.format(r=32))
    out.write_text("previous")
    refused(["import-topology", str(t), "--scale-config", str(c), "--gemm", "--json", str(out)], "`M`")
    assert out.read_text() == "previous"


@pytest.mark.parametrize("args,needles", [
    (["chips", "show", "vnpu-v9"], ["unknown chip", "vnpu-v1"]),
    (["chips", "show", "x" * 5000], ["unknown chip"]),
    (["chips", "--chip", ""], []),
])
def test_chips_flags(args, needles):
    if args == ["chips", "--chip", ""]:  # an empty --chip is "no extra chip": lists the presets
        assert runner.invoke(app, args).exit_code == 0
        return
    refused(args, *needles)


# -- API calls --------------------------------------------------------------------------------------
class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture(scope="module")
def linear_cm():
    torch.manual_seed(0)
    return vnpu.compile(_Linear().eval(), (torch.randn(2, 8),))


@pytest.mark.parametrize("args,match", [
    ((), "takes 1 input"),
    ((np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32)), "takes 1 input"),
    ((np.zeros((3, 8), np.float32),), "compiled for"),
    ((np.zeros((2, 9), np.float32),), "compiled for"),
])
def test_compiled_model_wrong_calls(linear_cm, args, match):
    with pytest.raises(ValueError, match=match):
        linear_cm(*args)


def test_compile_with_inputs_the_model_cannot_take():
    from vnpu.frontends.errors import ModelExportError

    with pytest.raises(ModelExportError, match=r"example inputs \[\(2, 7\)\]") as ei:
        vnpu.compile(_Linear().eval(), (torch.randn(2, 7),))
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("x", [np.ones((2, 8), np.complex64), np.full((2, 8), "a"), np.full((2, 8), None)],
                         ids=["complex", "string", "object"])
def test_compiled_model_wrong_dtype(linear_cm, x):
    with pytest.raises(ValueError, match=r"input 0 \(x\).*dtype"):
        linear_cm(x)


@pytest.mark.parametrize("model", [b"", b"\x00garbage\xff" * 10], ids=["empty", "noise"])
def test_from_onnx_bad_bytes(model):
    from vnpu.frontends.onnx.importer import OnnxModelError

    with pytest.raises(OnnxModelError):
        vnpu.from_onnx(model)


def test_from_onnx_dynamic_dim_without_shape(tmp_path):
    from vnpu.frontends.onnx.importer import DynamicShapeError

    with pytest.raises(DynamicShapeError, match="x"):
        vnpu.from_onnx(_onnx_relu(tmp_path / "relu.onnx"))


@pytest.mark.parametrize("kw,match", [
    ({"prompt_len": 10_000_000, "max_new_tokens": 2}, "context of 512"),
    ({"batch": True}, r"batch \(--batch\) must be a positive integer, got True"),
    ({"batch": 2.5}, r"batch \(--batch\) must be a positive integer"),
    ({"max_new_tokens": "3"}, r"max_new_tokens \(--max-new-tokens\) must be a positive integer"),
    ({"top_k": 2.5}, r"top_k \(--top-k\) must be between 1"),
    ({"top_k": 3, "temperature": "hot"}, r"temperature \(--temperature\)"),
    ({"top_k": 3, "seed": 1.5}, r"seed \(--seed\)"),
])
def test_generate_api_refuses(kw, match):
    args = {"prompt_len": 4, "max_new_tokens": 2} | kw
    with pytest.raises(ValueError, match=match):
        vnpu.generate("qwen3-tiny", **args)


@pytest.mark.parametrize("prompt,match", [
    (np.zeros((1, 5), np.int64), r"shape \(1, 4\)"),
    (np.zeros((1, 4), np.float32), "integer token ids"),
    (np.full((1, 4), 512, np.int64), r"0\.\.511"),
])
def test_generate_api_bad_prompt(prompt, match):
    from vnpu.runtime.llm import generate

    with pytest.raises(ValueError, match=match):
        generate("qwen3-tiny", prompt_len=4, max_new_tokens=2, prompt=prompt)


@pytest.mark.parametrize("prompt,new,match", [
    (np.zeros((1, 4), np.int64), 0, "max_new_tokens must be a positive integer"),
    (np.zeros((1, 4), np.float32), 2, "integer token ids"),
    (np.zeros(4, np.int64), 2, "integer token ids"),
])
def test_llm_session_generate_refuses(prompt, new, match):
    from vnpu.chip import load_chip
    from vnpu.runtime.llm import LLMSession
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

    sess = LLMSession(DecoderStep(build_llm(get_llm("qwen3-tiny")), 1, 64), load_chip("vnpu-v1"), "fp32", 1)
    with pytest.raises(ValueError, match=match):
        sess.generate(prompt, new)
    assert sess.programs == {}  # refused before anything was compiled


def test_functional_device_refuses_an_hbm_image_the_host_cannot_hold():
    """A 64 TiB functional image: refused with the host-memory error, not attempted. Timing-only
    devices of the same size allocate nothing."""
    from vnpu.chip import load_chip
    from vnpu.sim.device import Device, HostMemoryError, host_available_bytes

    chip = load_chip("vnpu-v1").model_copy(update={"hbm": load_chip("vnpu-v1").hbm.model_copy(
        update={"bytes": 1 << 46})})
    assert host_available_bytes() < 1 << 46
    with pytest.raises(HostMemoryError, match="--timing-only"):
        Device(chip, 1 << 46, functional=True)
    assert Device(chip, 1 << 46, functional=False).hbm.nbytes == 0


def test_run_functional_image_over_host_memory_says_timing_only(monkeypatch):
    """With the host's available memory pretended to be 64 MiB, a functional `vnpu run mlp` needs
    more (32 cores x 2 MiB of scratchpad alone are 64 MiB): refused, naming --timing-only; the
    timing-only run allocates no image and succeeds."""
    import vnpu.sim.device as device

    monkeypatch.setattr(device, "host_available_bytes", lambda: 64 << 20)
    refused(["run", "mlp"], "host memory", "--timing-only", after_steps=True)
    r = runner.invoke(app, ["run", "mlp", "--timing-only"])
    assert r.exit_code == 0, r.output


# -- real subprocesses: one per command, memory bounded ----------------------------------------------
AS_LIMIT = 12 << 30  # address space: an attempted allocation past it fails loudly (MemoryError) instead
RSS_LIMIT_KB = 1_500_000  # a bare `import torch, transformers` is ~0.5-0.9 GB here


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


# The child reports its own peak (VmHWM of its address space after exec) at exit: getrusage's
# ru_maxrss would also count the pages it inherited from the forked pytest process.
_PEAK_WRAPPER = """
import atexit, runpy, sys
OUT = sys.argv[1]
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(OUT, "w").write(line.split()[1])
atexit.register(_peak)
sys.argv = ["vnpu"] + sys.argv[2:]
runpy.run_module("vnpu.cli", run_name="__main__")
"""


def _subprocess(args: list[str], tmp_path: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of `python -m vnpu.cli ARGS` under RLIMIT_AS."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    err, peak = tmp_path / "stderr.txt", tmp_path / "peak_kb.txt"
    with open(err, "w") as f:
        p = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, str(peak), *args], stdout=subprocess.DEVNULL,
                           stderr=f, env=env, preexec_fn=_limit_memory, timeout=300)
    return p.returncode, err.read_text(), int(peak.read_text())


@pytest.mark.parametrize("args,needle", [
    (["generate", "qwen3-tiny", "--prompt-len", "10000000", "--max-new-tokens", "2"], "context of 512"),
    (["compare", "--model", "qwen3-32b", "--batch", "10000000"], "limit of 4096"),
    (["run", "mlp", "--batch", "1000000000000"], "at most batch"),
    (["chips", "show", "{tmp}/huge.toml"], "less than or equal to 4096"),
    (["import-topology", "{tmp}/t.csv", "--scale-config", "{tmp}/a.cfg", "--gemm"], "GiB of operands"),
], ids=["generate", "compare", "run", "chips", "import-topology"])
def test_huge_sizes_in_a_subprocess_stay_small(args, needle, tmp_path):
    (tmp_path / "huge.toml").write_text(_edit("cores = 32 ", "cores = 1000000000 "))
    (tmp_path / "t.csv").write_text("Layer,M,N,K,\ng,100000000,100000000,100000000,\n")
    (tmp_path / "a.cfg").write_text(CFG.format(r=32))
    code, err, rss_kb = _subprocess([a.format(tmp=tmp_path) for a in args], tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert rss_kb < RSS_LIMIT_KB, rss_kb
