"""The hardware, as data: `load_chip("vnpu-v1")` or `load_chip("path/to/chip.toml")`."""
from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from vnpu.chip.schema import Chip

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_CHIP = "vnpu-v1"


class ChipError(ValueError):
    """A chip name or chip file that cannot be used; the message says what to fix."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def _fields_at(loc: tuple) -> list[str]:
    """The field names a table at `loc` accepts (for unknown-field errors)."""
    model: object = Chip
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = fields[part].annotation
        model = next((a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")), model)
    return sorted(getattr(model, "model_fields", {}))


def _describe(err: ValidationError, where: str) -> str:
    lines = [f"invalid chip file {where}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        extra = ""
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(tuple(e["loc"][:-1]))
            extra = f"; allowed: {', '.join(allowed)}" if allowed else ""
        lines.append(f"  field `{field}`: {e['msg']}{got_s}{extra}")
    return "\n".join(lines)


def chip_from_dict(data: dict, where: str = "<dict>") -> Chip:
    try:
        return Chip.model_validate(data)
    except ValidationError as err:
        raise ChipError(_describe(err, where)) from None


def load_chip(name_or_path: str | Path | Chip = DEFAULT_CHIP) -> Chip:
    """A preset name (see `list_presets()`) or a path to a TOML chip file."""
    if isinstance(name_or_path, Chip):
        return name_or_path
    s = str(name_or_path)
    path = Path(s)
    if not (s.endswith(".toml") or path.exists()):
        path = PRESETS_DIR / f"{s}.toml"
        if not path.exists():
            raise ChipError(f"unknown chip {s!r}; presets: {', '.join(list_presets())}, or pass a path to a .toml chip file")
    if not path.exists():
        raise ChipError(f"chip file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ChipError(f"chip file {path} is not valid TOML: {err}") from None
    return chip_from_dict(data, str(path))


__all__ = ["Chip", "ChipError", "load_chip", "list_presets", "chip_from_dict", "DEFAULT_CHIP"]
