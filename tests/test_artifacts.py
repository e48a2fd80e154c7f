"""Compiled-model artifacts: save/load round trip, corruption, wrong chip, one-time weight upload."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vnpu
from conftest import make_chip
from vnpu import ArtifactError
from vnpu.sim.device import Device


class ArtifactNet(torch.nn.Module):
    """Defined only here: a loader that works without it proves the artifact is self-contained."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 48)
        self.fc2 = torch.nn.Linear(48, 8)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    m = ArtifactNet().eval()
    x = torch.randn(4, 32)
    cm = vnpu.compile(m, (x,))
    path = tmp_path_factory.mktemp("art") / "net.vnpu"
    cm.save(path)
    return m, x, cm, path


def test_round_trip_in_a_fresh_process_without_the_model_code(saved, tmp_path):
    m, x, cm, path = saved
    y = cm(x).numpy()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), m(x), rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import vnpu
        cm = vnpu.load({str(path)!r})
        (y,) = cm.run_numpy([np.load({str(tmp_path / 'x.npy')!r})])
        np.save({str(tmp_path / 'y.npy')!r}, y)
        # nothing of the model's code, nor PyTorch itself, was needed
        assert "torch" not in sys.modules, "loading imported torch"
        assert not any("test_artifacts" in k or "conftest" in k for k in sys.modules)
        print("info", cm.info.name, cm.chip.name)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    assert "info ArtifactNet vnpu-v1" in r.stdout
    y2 = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y2, y)  # bit-identical: same program, same simulator


def test_load_in_process_matches(saved):
    m, x, cm, path = saved
    cm2 = vnpu.load(str(path))
    np.testing.assert_array_equal(cm2(x).numpy(), cm(x).numpy())
    assert cm2.info.name == "ArtifactNet" and cm2.info.dtype == cm.info.dtype
    # loading for the very chip it was compiled for is fine
    vnpu.load(str(path), chip="vnpu-v1")


def _payload_span(path: Path, name: str = "program.msgpack") -> tuple[int, int]:
    """(offset, size) of a member's bytes in the zip (stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        zi = z.getinfo(name)
        assert zi.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    h = zi.header_offset
    name_len = int.from_bytes(raw[h + 26:h + 28], "little")
    extra_len = int.from_bytes(raw[h + 28:h + 30], "little")
    return h + 30 + name_len + extra_len, zi.file_size


def _repack(src: Path, dst: Path, edits: dict[str, bytes], rehash: bool = True,
            manifest_edit: Any = None) -> None:
    """Copies an artifact with members replaced; with `rehash` the manifest's sizes and SHA-256s
    are recomputed to match, as an attacker would (the hashes prove nothing about who wrote them)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members.update(edits)
    manifest = json.loads(members.pop("manifest.json"))
    if rehash:
        manifest["members"] = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members.items()}
    if manifest_edit is not None:
        manifest_edit(manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for n, b in members.items():
            z.writestr(n, b)


def _expect_artifact_error(path: Path, *words: str) -> str:
    with pytest.raises(ArtifactError) as ei:
        vnpu.load(str(path))
    msg = str(ei.value)
    assert str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def test_truncated_file(saved, tmp_path):
    raw = saved[3].read_bytes()
    p = tmp_path / "trunc.vnpu"
    p.write_bytes(raw[: len(raw) // 2])
    _expect_artifact_error(p, "corrupt")


def test_flipped_byte_in_payload(saved, tmp_path):
    raw = bytearray(saved[3].read_bytes())
    off, size = _payload_span(saved[3])
    raw[off + size // 2] ^= 0xFF
    p = tmp_path / "flip.vnpu"
    p.write_bytes(bytes(raw))
    _expect_artifact_error(p, "corrupt")


def test_payload_replaced_with_valid_zip_checksums(saved, tmp_path):
    """A payload edited and re-zipped (so the zip CRCs are right) fails the manifest's sha256."""
    with zipfile.ZipFile(saved[3]) as z:
        blob = bytearray(z.read("program.msgpack"))
    blob[len(blob) // 2] ^= 0x01
    p = tmp_path / "edited.vnpu"
    _repack(saved[3], p, {"program.msgpack": bytes(blob)}, rehash=False)
    _expect_artifact_error(p, "corrupt", "checksum")


def test_random_bytes_and_empty_file(tmp_path):
    p = tmp_path / "random.vnpu"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_artifact_error(p, "not a vnpu compiled model")
    e = tmp_path / "empty.vnpu"
    e.write_bytes(b"")
    _expect_artifact_error(e, "not a vnpu compiled model")


def test_missing_file(tmp_path):
    _expect_artifact_error(tmp_path / "nope.vnpu", "no such file")


def test_other_format_version(saved, tmp_path):
    p = tmp_path / "v999.vnpu"
    _repack(saved[3], p, {}, manifest_edit=lambda m: m.update(format_version=999))
    _expect_artifact_error(p, "999", "recompile")


def test_loading_for_a_different_chip(saved):
    path = saved[3]
    other = make_chip({"name": "vnpu-other", "cores": 16})
    with pytest.raises(ArtifactError) as ei:
        vnpu.load(str(path), chip=other)
    msg = str(ei.value)
    assert "vnpu-v1" in msg and "vnpu-other" in msg and "recompile" in msg.lower()
    # same name, different figures: still refused (the fingerprint covers the whole spec)
    same_name = make_chip({"core.dma_bytes_per_cycle": 128})
    assert same_name.name == "vnpu-v1"
    with pytest.raises(ArtifactError):
        vnpu.load(str(path), chip=same_name)


def test_weights_uploaded_once(saved, monkeypatch):
    """ArtifactNet has 4 weight tensors (2 weights, 2 biases) and one input: the first call
    writes 5 tensors into HBM, every later call only the input (4 x 32 fp32 = 512 bytes)."""
    m, x, cm, path = saved
    writes: list[int] = []
    orig = Device.write

    def counting_write(self, ref, value):
        writes.append(int(np.asarray(value).nbytes))
        return orig(self, ref, value)

    monkeypatch.setattr(Device, "write", counting_write)
    fresh = vnpu.load(str(path))
    y1 = fresh(x)
    weight_bytes = sum(p.numel() * 4 for p in m.parameters())
    assert len(writes) == 5
    assert sum(writes) == weight_bytes + 4 * 32 * 4
    writes.clear()
    y2 = fresh(x * 2)
    assert writes == [4 * 32 * 4]
    writes.clear()
    fresh(x)
    assert writes == [4 * 32 * 4]
    with torch.no_grad():
        torch.testing.assert_close(y1, m(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y2, m(x * 2), rtol=1e-5, atol=1e-5)
    # timing-only profiling touches no data at all
    writes.clear()
    fresh2 = vnpu.load(str(path))
    fresh2.profile()
    assert writes == []
