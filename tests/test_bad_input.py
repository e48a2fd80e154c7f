"""Bad input gets a clear error (or a documented fallback), never a crash deep inside."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import vnpu
from conftest import chip_dict, make_chip
from vnpu.chip import PRESETS_DIR, ChipError, chip_from_dict, load_chip
from vnpu.compiler import OutOfMemoryError
from vnpu.frontends.torch import ATEN, FallbackWarning, UnsupportedOpError


# -- unsupported ops: host fallback by default, one error listing them all under strict -----
class LgammaDet(torch.nn.Module):
    """Two ops with no vnpu lowering (aten.special_bessel_y0, a special function, and aten._linalg_det,
    a factorization), each feeding further work."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        y = torch.special.bessel_y0(self.fc(x).abs() + 0.5)
        return torch.linalg.det(y.reshape(-1, 4, 4)) * 2.0 + 1.0


class TwoUnsupportedOutputs(torch.nn.Module):
    """Two single-result ops with no lowering (aten.special_bessel_y0, aten.digamma), returned directly."""

    def forward(self, x):
        return torch.special.bessel_y0(x.abs() + 0.5), torch.digamma(x.abs() + 0.5)


UNLOWERED = ("special_bessel_y0.", "digamma.", "_linalg_det.")


def test_premise_ops_have_no_lowering():
    assert not any(k.startswith(UNLOWERED) for k in ATEN)


def test_unsupported_ops_fall_back_to_host_with_one_warning():
    torch.manual_seed(0)
    m = LgammaDet().eval()
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cm = vnpu.compile(m, (x,))
    fb = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fb) == 1, [str(w.message) for w in caught]
    msg = str(fb[0].message)
    assert "special_bessel_y0" in msg and "_linalg_det" in msg
    assert set(cm.info.fallback_ops) == {"special_bessel_y0.default", "_linalg_det.default"}
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(cm(x), ref, rtol=1e-5, atol=1e-5)
    # the linear layer and the epilogue still run on the chip
    assert any(getattr(l, "kind", "") == "matmul" for l in cm.program.launches)


def test_strict_lists_every_unsupported_op_independent_outputs():
    x = torch.randn(4, 16)
    with pytest.raises(UnsupportedOpError) as ei:
        vnpu.compile(TwoUnsupportedOutputs().eval(), (x,), strict=True)
    msg = str(ei.value)
    assert "special_bessel_y0.default" in msg and "digamma.default" in msg and "strict" in msg
    assert set(ei.value.ops) == {"special_bessel_y0.default", "digamma.default"}


def test_strict_lists_every_unsupported_op_when_their_results_are_used():
    """Under strict=True an unsupported op downstream of another one is still reported:
    the error lists bessel_y0 and det together, so the user learns everything at once."""
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    with pytest.raises(UnsupportedOpError) as ei:
        vnpu.compile(LgammaDet().eval(), (x,), strict=True)
    msg = str(ei.value)
    assert "special_bessel_y0.default" in msg and "_linalg_det.default" in msg


# -- malformed chip files --------------------------------------------------------------------
PRESET_TEXT = (PRESETS_DIR / "vnpu-v1.toml").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "chip.toml"
    p.write_text(text)
    return p


def _edit(old: str, new: str) -> str:
    assert old in PRESET_TEXT, old
    return PRESET_TEXT.replace(old, new, 1)


def test_preset_file_loads(tmp_path):
    assert load_chip(_write(tmp_path, PRESET_TEXT)).name == "vnpu-v1"


def test_bad_dataflow_names_field_and_allowed_values(tmp_path):
    p = _write(tmp_path, _edit('dataflow = "ws"', 'dataflow = "row"'))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    assert str(p) in msg
    assert "core.matrix.dataflow" in msg
    assert "'row'" in msg
    for allowed in ("os", "ws", "is"):
        assert f"'{allowed}'" in msg


def test_missing_field_is_named(tmp_path):
    p = _write(tmp_path, _edit("bandwidth_gbs = 4000.0", ""))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    assert "hbm.bandwidth_gbs" in msg and "required" in msg.lower()


@pytest.mark.parametrize("old,new,field,got", [
    ("cores = 32 ", "cores = -4 ", "cores", "-4"),
    ("clock_ghz = 1.5", "clock_ghz = -1.5", "clock_ghz", "-1.5"),
    ("latency_ns = 400.0", "latency_ns = 0.0", "hbm.latency_ns", "0.0"),
])
def test_non_positive_numbers_are_rejected(tmp_path, old, new, field, got):
    p = _write(tmp_path, _edit(old, new))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    assert f"`{field}`" in msg and "greater than 0" in msg and got in msg


def test_unknown_field_is_named(tmp_path):
    p = _write(tmp_path, _edit("latency_ns = 400.0", "latency_ns = 400.0\nlatency_cycles = 600"))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    assert "hbm.latency_cycles" in msg
    assert "not permitted" in msg or "unknown" in msg.lower()


def test_unknown_field_lists_the_fields_that_are_allowed(tmp_path):
    """GAP (chip/__init__.py, _describe): for an unknown key the message says only "Extra inputs
    are not permitted"; it should list the valid keys of that table (here [hbm]: bytes,
    bandwidth_gbs, latency_ns, burst_bytes) so a typo can be fixed without reading the schema."""
    p = _write(tmp_path, _edit("latency_ns = 400.0", "latency_ns = 400.0\nlatency_cycles = 600"))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    for allowed in ("bytes", "bandwidth_gbs", "latency_ns", "burst_bytes"):
        assert allowed in msg.split("latency_cycles", 1)[1], msg


def test_bad_toml_is_a_chip_error(tmp_path):
    p = _write(tmp_path, _edit("[hbm]", "[hbm"))
    with pytest.raises(ChipError) as ei:
        load_chip(p)
    msg = str(ei.value)
    assert str(p) in msg and "TOML" in msg and "line" in msg


def test_unknown_preset_lists_presets():
    with pytest.raises(ChipError) as ei:
        load_chip("vnpu-v9")
    assert "vnpu-v1" in str(ei.value)


def test_chip_from_dict_reports_every_problem():
    d = chip_dict({"cores": 0, "core.matrix.dataflow": "xx", "hbm.bandwidth_gbs": ...})
    with pytest.raises(ChipError) as ei:
        chip_from_dict(d, "mine")
    msg = str(ei.value)
    for field in ("`cores`", "`core.matrix.dataflow`", "`hbm.bandwidth_gbs`"):
        assert field in msg


# -- a model too big for the chip's HBM --------------------------------------------------------
_UNITS = {"bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def _stated_bytes(text: str) -> list[float]:
    """Every '<number> <unit>' in text, in bytes (commas and underscores in numbers allowed)."""
    out = []
    for num, unit in re.findall(r"([\d][\d,_]*(?:\.\d+)?)\s*(bytes|B|KiB|MiB|GiB|KB|MB|GB)\b", text):
        out.append(float(num.replace(",", "").replace("_", "")) * _UNITS[unit])
    return out


def test_weights_larger_than_hbm_raise_out_of_memory_saying_by_how_much():
    """Linear(2048 -> 1024, no bias), fp32, batch 1, on a chip with 4 MiB of HBM.

    weights 2048 * 1024 * 4 = 8388608 B, input 2048 * 4 = 8192 B, output 1024 * 4 = 4096 B
    (all multiples of the 256-byte alignment): 8400896 B needed, 4194304 B available,
    so the model exceeds the HBM by 4206592 B (4.01 MiB). The message must state that amount
    to within 1% (not rounded away to '0.00 GiB').
    """
    m = torch.nn.Linear(2048, 1024, bias=False).eval()
    x = torch.randn(1, 2048)
    chip = make_chip({"name": "tiny-hbm", "hbm.bytes": 4 * 2**20})
    weights = 2048 * 1024 * 4
    needed = weights + 2048 * 4 + 1024 * 4
    over = needed - 4 * 2**20
    with pytest.raises(OutOfMemoryError) as ei:
        vnpu.compile(m, (x,), chip=chip)
    msg = str(ei.value)
    assert "tiny-hbm" in msg
    tail = msg.split("exceeds it by", 1)[1]
    stated_over = _stated_bytes(tail)
    assert any(abs(v - over) <= 0.01 * over for v in stated_over), msg
    stated_w = _stated_bytes(msg.split("weights", 1)[1])
    assert stated_w and abs(stated_w[0] - weights) <= 0.01 * weights, msg


def test_complex_and_uint64_torch_dtypes_raise_the_named_error() -> None:
    # the class went missing once (a NameError reached users of fft.irfft / stft / hash_tensor)
    import torch

    from vnpu.dtypes import UnsupportedDTypeError, torch_to_dtype

    for tdt in (torch.complex64, torch.uint64):
        with pytest.raises(UnsupportedDTypeError, match="has no vnpu equivalent"):
            torch_to_dtype(tdt)
