"""Compiled programs as plain data: the `.vnpu` artifact format (version 3).

A `.vnpu` file is a zip of
  manifest.json     format and version, vnpu version, chip name, fingerprint and spec, and the
                    SHA-256 and size of every other member (a corruption check, not a trust claim:
                    whoever writes the file writes the hashes)
  program.msgpack   the Program and ModelInfo as a tagged tree of msgpack primitives
  arrays/NNNNN.npy  constants and initial state, read with np.load(allow_pickle=False)

Nothing on the load path can run code: msgpack decodes only primitives, the tree names its
types by index into a table of vnpu's own dataclasses (`ALLOWED`; a name outside it, or a
field list that differs from this vnpu's, refuses the file), arrays are NumPy's header plus
raw bytes in one of the chip's element types. Every size is checked against the zip's
member sizes before it is read, and `verify_program` bounds-checks each memory reference of
the decoded program against its HBM image and the chip's scratchpad, so a crafted file can
at worst be refused. Older formats (version 2 held a pickle) are refused with a message to
recompile; their payload is never decoded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from vnpu.chip import ChipError, chip_from_dict
from vnpu.chip.schema import Chip
from vnpu.dtypes import PACKED_ELEMENTS, DType
from vnpu.ir.graph import TensorType, is_shape_only, shape_only_array
from vnpu.isa.instructions import (CoreStream, DmaGather, DmaLoad, DmaScatter, DmaStore, HbmRef, MatMul, SramRef,
                                   VecOp)
from vnpu.isa.program import CollectiveLaunch, HostLaunch, KernelLaunch, Program

FORMAT = "vnpu-compiled-model"
FORMAT_VERSION = 3  # 3: plain data (msgpack + npy); 2 and older: a pickle, refused
MANIFEST = "manifest.json"
PROGRAM = "program.msgpack"
MAX_MANIFEST_BYTES = 16 << 20


class ArtifactError(ValueError):
    """A saved model that cannot be loaded: corrupt, crafted, from another format version, or for another chip."""


# Tags of the tree. Every container is tagged, so decoding never guesses what a list meant.
_LIST, _TUPLE, _DICT, _OBJ, _DTYPE, _ARRAY, _HBM, _SRAM, _SHAPE_ONLY, _INSTR = range(10)

# Instructions are most of a program (80k in BERT-base): each is stored as a flat row whose
# fields are coded by their declared type, refs as table indices, so decoding one is a few
# list lookups rather than a recursive walk. Field kinds, from the dataclass annotations:
_INSTRUCTIONS = (DmaLoad, DmaGather, DmaScatter, DmaStore, MatMul, VecOp)
_REF_H, _REF_S, _PRIM, _WAITS, _OPERANDS, _GENERIC = range(6)
_KIND_OF_ANNOTATION = {"HbmRef": _REF_H, "SramRef": _REF_S, "int": _PRIM, "bool": _PRIM, "str": _PRIM,
                       "tuple[Wait, ...]": _WAITS, "tuple[Operand, ...]": _OPERANDS}


def _field_kinds(cls: type) -> list[int]:
    return [_KIND_OF_ANNOTATION.get(str(f.type), _GENERIC) for f in dataclasses.fields(cls)]


def _allowed() -> dict[str, type]:
    from vnpu.runtime.compiled import ModelInfo  # compiled.py imports this module

    return {c.__name__: c for c in (Program, KernelLaunch, HostLaunch, CollectiveLaunch, CoreStream, DmaLoad,
                                    DmaGather, DmaScatter, DmaStore, MatMul, VecOp, ModelInfo, TensorType)}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


_DTYPES = list(DType)
_DTYPE_INDEX = {d: i for i, d in enumerate(_DTYPES)}


class _Encoder:
    def __init__(self) -> None:
        self.types: dict[type, int] = {}
        self.hbm: dict[HbmRef, int] = {}
        self.sram: dict[SramRef, int] = {}
        self.arrays: list[tuple[np.ndarray, DType]] = []
        self.allowed = set(_allowed().values())
        self.instr_kinds = {c: _field_kinds(c) for c in _INSTRUCTIONS}

    def enc(self, x: Any) -> Any:
        t = type(x)
        if x is None or t in (bool, int, float, str, bytes):
            return x
        if t is HbmRef:
            i = self.hbm.get(x)
            if i is None:
                i = self.hbm[x] = len(self.hbm)
            return [_HBM, i]
        if t is SramRef:
            i = self.sram.get(x)
            if i is None:
                i = self.sram[x] = len(self.sram)
            return [_SRAM, i]
        if t is DType:
            return [_DTYPE, _DTYPE_INDEX[x]]
        if t is list:
            return [_LIST, *map(self.enc, x)]
        if t is tuple:
            return [_TUPLE, *map(self.enc, x)]
        if t is dict:
            out: list[Any] = [_DICT]
            for k, v in x.items():
                out += [self.enc(k), self.enc(v)]
            return out
        if isinstance(x, np.ndarray):
            from vnpu.dtypes import from_numpy

            dt = from_numpy(x.dtype)
            if is_shape_only(x):
                return [_SHAPE_ONLY, _DTYPE_INDEX[dt], list(x.shape)]
            self.arrays.append((x, dt))
            return [_ARRAY, len(self.arrays) - 1]
        if isinstance(x, np.generic):  # NumPy scalars in attributes: plain Python numbers
            return self.enc(x.item())
        if t in self.instr_kinds:
            i = self.types.setdefault(t, len(self.types))
            row: list[Any] = [_INSTR, i]
            for f, kind in zip(_fields(t), self.instr_kinds[t]):
                v = getattr(x, f)
                if kind == _REF_H:
                    row.append(self.enc(v)[1])
                elif kind == _REF_S:
                    row.append(self.enc(v)[1])
                elif kind == _PRIM:
                    row.append(v)
                elif kind == _WAITS:
                    row.append([n for w in v for n in w])
                elif kind == _OPERANDS:  # a scratchpad tile as its index, a scalar boxed
                    row.append([self.enc(o)[1] if type(o) is SramRef else [o] for o in v])
                else:
                    row.append(self.enc(v))
            return row
        if t in self.allowed:
            i = self.types.setdefault(t, len(self.types))
            return [_OBJ, i, *(self.enc(getattr(x, f)) for f in _fields(t))]
        raise TypeError(f"vnpu artifact: cannot store a {t.__module__}.{t.__qualname__} (not a vnpu program type)")


def _ref_rows_hbm(refs: dict[HbmRef, int]) -> list[list[Any]]:
    return [[r.offset, _DTYPE_INDEX[r.dtype], list(r.shape), list(r.strides)] for r in refs]


def _ref_rows_sram(refs: dict[SramRef, int]) -> list[list[Any]]:
    return [[r.offset, _DTYPE_INDEX[r.dtype], list(r.shape)] for r in refs]


def _npy_bytes(a: np.ndarray, dt: DType) -> bytes:
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
        a = a.view(np.dtype(f"u{a.dtype.itemsize}"))  # NumPy cannot name ml_dtypes types in a header
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_artifact(path: str | Path, program: Program, info: Any, chip: Chip) -> None:
    """Writes `program` and its ModelInfo as a version-3 `.vnpu` file."""
    from vnpu import __version__

    enc = _Encoder()
    tree = enc.enc({"program": program, "info": info})
    allowed = {c: n for n, c in _allowed().items()}
    types = sorted(enc.types.items(), key=lambda kv: kv[1])
    body = msgpack.packb({
        "types": [[allowed[t], _fields(t)] for t, _ in types],
        "dtypes": [d.value for d in _DTYPES],
        "hbm_refs": _ref_rows_hbm(enc.hbm),
        "sram_refs": _ref_rows_sram(enc.sram),
        "arrays": [[dt.value, list(a.shape)] for a, dt in enc.arrays],
        "tree": tree,
    }, use_bin_type=True)
    members = {PROGRAM: body}
    for i, (a, dt) in enumerate(enc.arrays):
        members[f"arrays/{i:05d}.npy"] = _npy_bytes(a, dt)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vnpu_version": __version__,
        "model": getattr(info, "name", ""), "dtype": program.dtype.value, "chip": chip.name,
        "chip_fingerprint": program.chip_fingerprint, "chip_spec": chip.model_dump(mode="json"),
        "members": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members.items()},
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for n, b in members.items():
            z.writestr(n, b)


# -- reading --------------------------------------------------------------------------------
def _host_bytes_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _Decoder:
    def __init__(self, where: str, header: dict, arrays: list[np.ndarray]) -> None:
        self.where = where
        allowed = _allowed()
        self.types: list[type] = []
        for entry in header["types"]:
            name, fields = entry[0], list(entry[1])
            cls = allowed.get(name)
            if cls is None:
                raise ArtifactError(f"{where}: names the type {name!r}, which is not a vnpu program type; "
                                    "the file is corrupt or crafted. Recompile the model.")
            if fields != _fields(cls):
                raise ArtifactError(f"{where}: {name} has fields {fields}, this vnpu's has {_fields(cls)}: written by "
                                    "another vnpu version. Recompile the model with this version.")
            self.types.append(cls)
        self.dtypes = [DType(d) for d in header["dtypes"]]
        self.hbm = [HbmRef(int(o), self.dtypes[d], tuple(map(int, s)), tuple(map(int, st)))
                    for o, d, s, st in header["hbm_refs"]]
        self.sram = [SramRef(int(o), self.dtypes[d], tuple(map(int, s))) for o, d, s in header["sram_refs"]]
        self.arrays = arrays
        self.kinds = {c: _field_kinds(c) for c in self.types if c in _INSTRUCTIONS}

    def instr(self, row: list) -> Any:
        cls = self.types[row[1]]
        kinds = self.kinds.get(cls)
        if kinds is None or len(row) != len(kinds) + 2:
            raise ArtifactError(f"{self.where}: a malformed instruction row (corrupt file)")
        vals = []
        hbm, sram = self.hbm, self.sram
        for v, kind in zip(row[2:], kinds):
            if kind == _REF_S:
                vals.append(sram[v])
            elif kind == _PRIM:
                if type(v) not in (int, bool, str):
                    raise ArtifactError(f"{self.where}: a {type(v).__name__} where {cls.__name__} holds a number (corrupt file)")
                vals.append(v)
            elif kind == _WAITS:
                it = iter(v)
                vals.append(tuple(zip(it, it)))
            elif kind == _REF_H:
                vals.append(hbm[v])
            elif kind == _OPERANDS:
                vals.append(tuple(sram[o] if type(o) is int else _scalar(o[0]) for o in v))
            else:
                vals.append(self.dec(v))
        return cls(*vals)

    def dec(self, x: Any) -> Any:
        if not isinstance(x, list):
            if x is None or isinstance(x, (bool, int, float, str, bytes)):
                return x
            raise ArtifactError(f"{self.where}: unexpected {type(x).__name__} in the program tree (corrupt file)")
        tag = x[0]
        if tag == _HBM:
            return self.hbm[x[1]]
        if tag == _SRAM:
            return self.sram[x[1]]
        if tag == _INSTR:
            return self.instr(x)
        if tag == _OBJ:
            cls = self.types[x[1]]
            if cls in self.kinds:
                raise ArtifactError(f"{self.where}: an instruction stored as a plain object (corrupt file)")
            vals = [self.dec(v) for v in x[2:]]
            return cls(*vals)
        if tag == _LIST:
            return [self.dec(v) for v in x[1:]]
        if tag == _TUPLE:
            return tuple(self.dec(v) for v in x[1:])
        if tag == _DTYPE:
            return self.dtypes[x[1]]
        if tag == _DICT:
            it = iter(x[1:])
            return {self.dec(k): self.dec(v) for k, v in zip(it, it)}
        if tag == _ARRAY:
            return self.arrays[x[1]]
        if tag == _SHAPE_ONLY:
            return shape_only_array(tuple(int(d) for d in x[2]), self.dtypes[x[1]])
        raise ArtifactError(f"{self.where}: unknown tag {tag!r} in the program tree (corrupt file)")


def _scalar(v: Any) -> float | int:
    if type(v) not in (int, float):
        raise ArtifactError(f"a {type(v).__name__} where an instruction takes a number (corrupt file)")
    return v


def _read_array(where: str, name: str, data: bytearray, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """The array in an .npy member, as a view of `data` (no copy). Only NumPy's header is
    parsed; an object dtype (a pickle inside the .npy) or a header that disagrees with the
    program's declared dtype, shape or the member's size is refused."""
    head = io.BytesIO(bytes(data[:1 << 16]))
    try:
        version = np.lib.format.read_magic(head)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran, got_dtype = read_header(head)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ArtifactError(f"{where}: {name} is not a plain array ({e}). Recompile the model.") from None
    if got_dtype.hasobject:
        raise ArtifactError(f"{where}: {name} holds Python objects (a pickle), which vnpu never loads. Recompile the model.")
    raw = dtype.np.kind == "V" or dtype.np.type.__module__.startswith("ml_dtypes")  # as _npy_bytes wrote it
    stored = np.dtype(f"u{dtype.np.itemsize}") if raw else dtype.np
    if got_dtype != stored or tuple(got_shape) != shape or fortran:
        raise ArtifactError(f"{where}: {name} holds {got_dtype}{list(got_shape)}, the program says {dtype.value}{list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - head.tell() != count * stored.itemsize:
        raise ArtifactError(f"{where}: {name} has {len(data) - head.tell()} data bytes; a {dtype.value}{list(shape)} "
                            f"array needs {count * stored.itemsize}. Recompile the model.")
    a = np.frombuffer(data, stored, count, head.tell()).reshape(shape)
    return a.view(dtype.np) if stored != dtype.np else a


def read_artifact(path: str | Path, need_info: bool = True) -> tuple[dict, Program, Any]:
    """(manifest, Program, ModelInfo) from a `.vnpu` file, refusing anything but version-3 plain data."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArtifactError(f"{path} is not a vnpu compiled model, or it is corrupt ({e}). Recompile and save it again.") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if "program.pkl" in infos:
            raise ArtifactError(f"{path}: an old-format vnpu artifact (version 2 or older, a pickle), which this vnpu "
                                "never loads. Recompile the model and save it again.")
        m_info = infos.get(MANIFEST)
        if m_info is None or m_info.file_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path} is not a vnpu compiled model (no manifest). Recompile and save it again.")
        try:
            manifest = json.loads(z.read(MANIFEST))
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            raise ArtifactError(f"{path}: its manifest is corrupt ({e}). Recompile and save it again.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not a vnpu compiled model (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{path}: format version {version}, this vnpu reads {FORMAT_VERSION}. "
                                "Recompile the model with this version.")
        members = manifest.get("members")
        if not isinstance(members, dict) or PROGRAM not in members:
            raise ArtifactError(f"{path}: its manifest lists no program. Recompile and save it again.")
        total = 0
        for name, meta in members.items():
            zi = infos.get(name)
            if zi is None or not isinstance(meta, dict) or zi.file_size != meta.get("bytes"):
                raise ArtifactError(f"{path} is corrupt: member {name!r} is missing or its size differs from the manifest. "
                                    "Recompile it.")
            total += zi.file_size
        avail = _host_bytes_available()
        if total > avail // 2:
            raise ArtifactError(f"{path} unpacks to {total / 2**30:.2f} GiB, more than half the host's available "
                                f"memory ({avail / 2**30:.2f} GiB); load it on a larger machine.")

        def member(name: str) -> bytearray:
            try:
                data = bytearray(infos[name].file_size)  # sizes were checked above; one copy, writable
                with z.open(name) as f:
                    if f.readinto(data) != len(data) or f.read(1):
                        raise EOFError("the member is shorter or longer than the zip says")
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise ArtifactError(f"{path} is corrupt: cannot read {name} ({e}). Recompile it.") from None
            if hashlib.sha256(data).hexdigest() != members[name].get("sha256"):
                raise ArtifactError(f"{path} is corrupt: {name} does not match the manifest checksum. Recompile it.")
            return data

        try:
            header = msgpack.unpackb(member(PROGRAM), raw=False, use_list=True, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise ArtifactError(f"{path}: cannot decode the program ({e}). Recompile the model.") from None
        try:
            arrays = []
            for i, (dt, shape) in enumerate(header["arrays"]):
                name = f"arrays/{i:05d}.npy"
                if name not in members:
                    raise ArtifactError(f"{path} is corrupt: {name} is missing. Recompile it.")
                arrays.append(_read_array(where, name, member(name), DType(dt), tuple(int(d) for d in shape)))
            data = _Decoder(where, header, arrays).dec(header["tree"])
            program, info = data["program"], data["info"]
        except ArtifactError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{path}: the program does not decode ({type(e).__name__}: {e}); the file is corrupt "
                                "or crafted. Recompile the model.") from None
    if not isinstance(program, Program) or (need_info and type(info).__name__ != "ModelInfo"):
        raise ArtifactError(f"{path}: does not hold a program and its model info. Recompile the model.")
    return manifest, program, info


def verify_program(program: Program, chip: Chip, where: str = "program") -> None:
    """Bounds-checks every memory reference of a decoded program: HBM views inside its image,
    scratchpad tiles inside a core's scratchpad, the launches' core counts within the chip, and
    each constant's data the shape of its reference. A crafted file is refused, not run."""
    try:
        _verify(program, chip)
    except _Bad as e:
        raise ArtifactError(f"{where}: {e}; the file is corrupt or crafted. Recompile the model.") from None
    except (TypeError, AttributeError, ValueError) as e:  # a field of the wrong type somewhere in the tree
        raise ArtifactError(f"{where}: malformed program ({type(e).__name__}: {e}); the file is corrupt or crafted. "
                            "Recompile the model.") from None


class _Bad(Exception):
    pass


def _verify(program: Program, chip: Chip) -> None:
    hbm = program.hbm_bytes
    spad = chip.core.scratchpad.bytes
    if not isinstance(hbm, int) or hbm < 0:
        raise _Bad(f"HBM image size {hbm!r}")

    seen_hbm: set[HbmRef] = set()
    seen_sram: set[SramRef] = set()

    def check_hbm(r: Any) -> None:
        if r in seen_hbm:
            return
        if not isinstance(r, HbmRef) or r.offset < 0 or any(d < 0 for d in r.shape) or len(r.shape) != len(r.strides):
            raise _Bad(f"malformed HBM reference {r!r}")
        if r.numel == 0:
            return
        lo = r.offset + sum(s * (d - 1) for d, s in zip(r.shape, r.strides) if s < 0) * r.dtype.itemsize
        hi = r.offset + (sum(s * (d - 1) for d, s in zip(r.shape, r.strides) if s > 0) + 1) * r.dtype.itemsize
        if lo < 0 or hi > hbm:
            raise _Bad(f"HBM reference [{lo}, {hi}) outside the program's {hbm}-byte image")
        seen_hbm.add(r)

    def check_sram(r: Any) -> None:
        if r in seen_sram:
            return
        if not isinstance(r, SramRef) or r.offset < 0 or any(d < 0 for d in r.shape) or r.offset + r.nbytes > spad:
            raise _Bad(f"scratchpad reference {r!r} outside the {spad}-byte scratchpad")
        seen_sram.add(r)

    for ref in program.inputs + program.outputs:
        check_hbm(ref)
    for ref, data in program.constants + program.state_init:
        check_hbm(ref)
        if not isinstance(data, np.ndarray) or tuple(data.shape) != ref.shape:
            raise _Bad(f"constant data of shape {getattr(data, 'shape', None)} for a {ref.shape} reference")
    for _, ref in program.state:
        check_hbm(ref)
    for launch in program.launches:
        if isinstance(launch, (HostLaunch, CollectiveLaunch)):
            for ref in launch.inputs + launch.outputs:
                check_hbm(ref)
            continue
        if not isinstance(launch, KernelLaunch) or len(launch.cores) > chip.cores:
            raise _Bad(f"launch {getattr(launch, 'name', launch)!r} does not fit the chip's {chip.cores} cores")
        for core in launch.cores:
            if not isinstance(core, CoreStream) or not isinstance(core.queues, dict):
                raise _Bad(f"launch {launch.name!r} holds a malformed core stream")
            for instrs in core.queues.values():
                for ins in instrs:
                    if not isinstance(ins, _INSTRUCTIONS):
                        raise _Bad(f"launch {launch.name!r} holds a {type(ins).__name__}, not an instruction")
                    for f in ins.__slots__:
                        v = getattr(ins, f)
                        if isinstance(v, HbmRef):
                            check_hbm(v)
                        elif isinstance(v, SramRef):
                            check_sram(v)
                        elif f == "srcs":
                            for src in v:
                                if isinstance(src, SramRef):
                                    check_sram(src)
                    if isinstance(ins, MatMul) and (ins.block or ins.b_bits):
                        _check_block_scaled(ins, launch.name)


def _check_block_scaled(ins: MatMul, launch: str) -> None:
    """A block-scaled MatMul's operands and scales must form whole blocks (sim.functional.mx_matmul);
    a packed weight-only one's weight bytes and group scales must cover its K."""
    if ins.b_bits:
        ok = (ins.b_bits in (4, 8) and type(ins.block) is int and ins.block > 0 and isinstance(ins.b_scale, SramRef)
              and ins.a_scale is None and len(ins.a.shape) == 2 and len(ins.b.shape) == 2 and not ins.trans_b
              and ins.b.dtype == DType.int8 and ins.b_scale.dtype == DType.fp32)
        if ok:
            k, n = ins.a.shape[1], ins.b.shape[1]
            ok = ins.b.shape[0] * 8 // ins.b_bits == k and ins.b_scale.shape == (-(-k // ins.block), n)
        if not ok:
            raise _Bad(f"launch {launch!r} holds a packed weight-only matmul whose weights and scales do not fit")
        return
    pack = PACKED_ELEMENTS.get(ins.a.dtype, 1)
    ok = (type(ins.block) is int and ins.block > 0 and isinstance(ins.a_scale, SramRef) and isinstance(ins.b_scale, SramRef)
          and len(ins.a.shape) == 2 and len(ins.b.shape) == 2 and not ins.trans_b)
    if ok:
        (m, kp), (kb, n) = ins.a.shape, ins.b.shape
        k = kp * pack
        ok = (kb == kp and k % ins.block == 0 and ins.a_scale.shape == (m, k // ins.block)
              and ins.b_scale.shape == (k // ins.block, n) and ins.a.dtype == ins.b.dtype)
    if not ok:
        raise _Bad(f"launch {launch!r} holds a block-scaled matmul whose operands and scales do not form blocks")


def chip_of(manifest: dict, where: str) -> Chip:
    spec = manifest.get("chip_spec")
    if not isinstance(spec, dict):
        raise ArtifactError(f"{where}: its manifest has no chip spec. Recompile and save it again.")
    try:
        return chip_from_dict(spec, f"{where}:manifest")
    except ChipError as e:
        detail = " ".join(str(e).split())  # the schema's message lists fields on several lines
        raise ArtifactError(f"{where}: the chip spec in its manifest is invalid ({detail}). Recompile and save it again.") from None


def save_program(path: str | Path, program: Program, chip: Chip) -> None:
    """One Program (an LLM session's prefill or decode program, say) as a `.vnpu` file."""
    write_artifact(path, program, None, chip)


def load_program(path: str | Path, chip: Chip) -> Program:
    """A Program saved by save_program (or CompiledModel.save) for `chip`, verified."""
    from vnpu.compiler.lower import chip_fingerprint

    _, program, _ = read_artifact(path, need_info=False)
    if chip_fingerprint(chip) != program.chip_fingerprint:
        raise ArtifactError(f"{path} was compiled for another chip than {chip.name!r} "
                            f"(fingerprint {program.chip_fingerprint}). Recompile it for this chip.")
    verify_program(program, chip, str(path))
    return program
