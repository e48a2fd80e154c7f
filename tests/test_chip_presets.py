"""Reference chip presets reproduce their public datasheet figures.

The constants here are written independently of the TOML files, from the vendors'
datasheets / widely reported specs, so a typo in a preset fails a test.
"""
from __future__ import annotations

import pytest

from vnpu.chip import list_presets, load_chip
from vnpu.dtypes import DType

# name: (bf16 dense FLOPS, HBM bytes, HBM GB/s)
DATASHEET = {
    "h20": (148e12, 96e9, 4000.0),           # NVIDIA H20 product brief
    "h100": (989e12, 80e9, 3350.0),          # NVIDIA H100 SXM5 datasheet
    "h200": (989e12, 141e9, 4800.0),         # NVIDIA H200 SXM datasheet
    "a100": (312e12, 80e9, 2039.0),          # NVIDIA A100 80GB SXM4 datasheet
    "ascend-910b": (313e12, 64e9, 1600.0),   # Ascend 910B3, reported figures
}

# other dtype peaks quoted on the datasheets: name -> {dtype: FLOPS}
OTHER_PEAKS = {
    "h20": {DType.fp8_e4m3: 296e12, DType.fp32: 44e12},
    "h100": {DType.fp8_e4m3: 1979e12, DType.fp32: 67e12},
    "h200": {DType.fp8_e4m3: 1979e12, DType.fp32: 67e12},
    "a100": {DType.fp32: 19.5e12, DType.int8: 624e12},
}


def test_presets_are_listed():
    assert set(DATASHEET) <= set(list_presets())


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_preset_matches_datasheet(name):
    chip = load_chip(name)
    flops, hbm_bytes, hbm_gbs = DATASHEET[name]
    assert chip.name == name
    assert chip.kind == "datasheet-approximation"
    assert chip.peak_flops(DType.bf16) == pytest.approx(flops, rel=0.01)
    assert chip.peak_flops(DType.fp16) == pytest.approx(flops, rel=0.01)
    assert chip.hbm.bytes == hbm_bytes
    assert chip.hbm.bandwidth_gbs == pytest.approx(hbm_gbs, rel=1e-9)
    assert chip.sources and all(v.strip() for v in chip.sources.values())
    # the cores together can outrun HBM, so HBM bandwidth is the shared limit
    assert chip.cores * chip.core.dma_bytes_per_cycle > chip.hbm_bytes_per_cycle


@pytest.mark.parametrize("name", sorted(OTHER_PEAKS))
def test_other_dtype_peaks(name):
    chip = load_chip(name)
    for dtype, flops in OTHER_PEAKS[name].items():
        assert chip.peak_flops(dtype) == pytest.approx(flops, rel=0.01), dtype


def test_fp8_only_where_supported():
    assert load_chip("h100").supports(DType.fp8_e4m3) and load_chip("h20").supports(DType.fp8_e4m3)
    assert not load_chip("a100").supports(DType.fp8_e4m3)
    assert not load_chip("ascend-910b").supports(DType.fp8_e4m3)
