"""Artifacts crafted to run code or to read and write outside the simulated memory are refused,
and the code never runs. Each hostile file has its manifest hashes recomputed to match, as
whoever crafts one would do: the checksum is a corruption check, not a trust claim."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

import vnpu
from vnpu import ArtifactError


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4)).eval()
    path = tmp_path_factory.mktemp("hostile") / "net.vnpu"
    vnpu.compile(m, (torch.randn(2, 16),)).save(path)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path: Path, members: dict[str, bytes], manifest: dict) -> Path:
    manifest = dict(manifest)
    manifest["members"] = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members.items()}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for n, b in members.items():
            z.writestr(n, b)
    return path


def _crafted(src: Path, dst: Path, edit_header) -> Path:
    """`src` with its program tree edited by `edit_header(header)` and the hashes recomputed."""
    members = _members(src)
    manifest = json.loads(members.pop("manifest.json"))
    header = msgpack.unpackb(members["program.msgpack"], raw=False)
    edit_header(header)
    members["program.msgpack"] = msgpack.packb(header, use_bin_type=True)
    return _write(dst, members, manifest)


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(ArtifactError) as ei:
        vnpu.load(str(path))
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def test_old_pickle_format_with_code_is_refused_and_never_unpickled(artifact, tmp_path):
    """The issue's attack: a version-2 style file whose pickle runs os.system, with a matching hash."""
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"program": _Payload(marker), "info": None})
    manifest = {"format": "vnpu-compiled-model", "format_version": 2, "model": "x", "dtype": "fp32",
                "chip": "vnpu-v1", "payload_sha256": hashlib.sha256(blob).hexdigest()}
    p = tmp_path / "old.vnpu"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        z.writestr("program.pkl", blob)
    _refused(p, "old-format", "recompile")
    assert not marker.exists()
    # claiming the current version does not get the pickle read either
    manifest["format_version"] = 3
    q = tmp_path / "old_as_v3.vnpu"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        z.writestr("program.pkl", blob)
    _refused(q, "old-format")
    assert not marker.exists()


def test_pickled_object_array_is_refused(artifact, tmp_path):
    """An .npy member holding an object array (a pickle inside NumPy's format)."""
    marker = tmp_path / "pwned_npy"
    members = _members(artifact)
    manifest = json.loads(members.pop("manifest.json"))
    name = next(n for n in members if n.startswith("arrays/"))
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    members[name] = buf.getvalue()
    p = _write(tmp_path / "objarray.vnpu", members, manifest)
    _refused(p, name)
    assert not marker.exists()


def test_a_type_outside_the_allowlist_is_refused(artifact, tmp_path):
    def edit(h):
        h["types"][0][0] = "system"  # the tree's first object now claims to be os.system
    p = _crafted(artifact, tmp_path / "type.vnpu", edit)
    msg = _refused(p, "'system'", "not a vnpu program type")
    assert "recompile" in msg.lower()


def test_fields_of_another_version_are_refused(artifact, tmp_path):
    def edit(h):
        for entry in h["types"]:
            if entry[0] == "MatMul":
                entry[1] = entry[1][:-1]
    p = _crafted(artifact, tmp_path / "fields.vnpu", edit)
    _refused(p, "MatMul", "another vnpu version")


@pytest.mark.parametrize("where", ["offset", "extent", "negative"])
def test_hbm_references_outside_the_image_are_refused(artifact, tmp_path, where):
    """A reference moved past the program's HBM image would read or write host memory beyond it."""
    def edit(h):
        row = h["hbm_refs"][-1]
        if where == "offset":
            row[0] = 1 << 40
        elif where == "extent":
            row[2] = [d * 1000 for d in row[2]]
            row[3] = [s * 1000 for s in row[3]]
        else:
            row[0] = -64
    p = _crafted(artifact, tmp_path / f"hbm_{where}.vnpu", edit)
    _refused(p, "HBM", "corrupt or crafted")


def test_scratchpad_reference_outside_the_scratchpad_is_refused(artifact, tmp_path):
    def edit(h):
        h["sram_refs"][0][0] = 1 << 40
    p = _crafted(artifact, tmp_path / "sram.vnpu", edit)
    _refused(p, "scratchpad", "corrupt or crafted")


def test_a_tree_of_the_wrong_shape_is_refused(artifact, tmp_path):
    def edit(h):
        h["tree"] = [2, "program", [99, 1], "info", None]  # a dict whose program has an unknown tag
    _refused(_crafted(artifact, tmp_path / "tag.vnpu", edit), "unknown tag")

    def edit2(h):
        h["tree"][2] = [3, 0]  # the program object with no fields
    _refused(_crafted(artifact, tmp_path / "nofields.vnpu", edit2), "does not decode")


def test_an_array_whose_header_disagrees_with_the_program_is_refused(artifact, tmp_path):
    members = _members(artifact)
    manifest = json.loads(members.pop("manifest.json"))
    name = next(n for n in members if n.startswith("arrays/"))
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 3), np.float64))
    members[name] = buf.getvalue()
    _refused(_write(tmp_path / "shape.vnpu", members, manifest), name, "the program says")


def test_sizes_that_differ_from_the_manifest_are_refused_before_reading(artifact, tmp_path):
    members = _members(artifact)
    manifest = json.loads(members.pop("manifest.json"))
    p = _write(tmp_path / "size.vnpu", members, manifest)
    m = json.loads(_members(p)["manifest.json"])
    m["members"]["program.msgpack"]["bytes"] += 1
    with zipfile.ZipFile(tmp_path / "size2.vnpu", "w") as z:
        z.writestr("manifest.json", json.dumps(m))
        for n, b in members.items():
            z.writestr(n, b)
    _refused(tmp_path / "size2.vnpu", "program.msgpack", "size")


def test_a_crafted_chip_spec_is_refused(artifact, tmp_path):
    members = _members(artifact)
    manifest = json.loads(members.pop("manifest.json"))
    manifest["chip_spec"]["cores"] = -3
    _refused(_write(tmp_path / "chip.vnpu", members, manifest), "chip spec")


def test_hostile_file_through_the_cli_is_one_error_line(artifact, tmp_path):
    """`vnpu run FILE.vnpu` on the pickle attack: exit 2, one `error:` line, no traceback, no command run."""
    marker = tmp_path / "pwned_cli"
    blob = pickle.dumps(_Payload(marker))
    p = tmp_path / "attack.vnpu"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("manifest.json", json.dumps({"format": "vnpu-compiled-model", "format_version": 3,
                                                "members": {"program.msgpack": {"bytes": len(blob),
                                                                                "sha256": hashlib.sha256(blob).hexdigest()}}}))
        z.writestr("program.msgpack", blob)  # a pickle where the msgpack tree belongs
    r = subprocess.run([sys.executable, "-m", "vnpu.cli", "run", str(p)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(p) in lines[0], out
    assert "Traceback" not in out
    assert not marker.exists()


def test_nothing_on_the_load_path_imports_pickle_for_decoding(artifact, tmp_path):
    """Loading in a fresh process with pickle's loaders poisoned still works: no unpickling anywhere."""
    script = textwrap.dedent(f"""
        import pickle, numpy as np
        def refuse(*a, **k):
            raise AssertionError("pickle used on the load path")
        pickle.loads = pickle.load = refuse
        pickle.Unpickler = refuse
        import vnpu
        cm = vnpu.load({str(artifact)!r})
        print(cm.run_numpy([np.ones((2, 16), np.float32)])[0].shape)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(2, 4)" in r.stdout
