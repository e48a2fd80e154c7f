"""Human-readable numbers: SI/binary prefixes, percentages, times."""
from __future__ import annotations

import math

_SI = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def si(x: float, unit: str = "", digits: int = 3) -> str:
    """1.23e9, "FLOP" -> "1.23 GFLOP"."""
    if not _finite(x):
        return "—"
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}".rstrip()


def nbytes(n: float) -> str:
    """Binary prefixes: 1536 -> "1.50 KiB"."""
    if not _finite(n):
        return "—"
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}"
    return f"{int(n)} B"


def seconds(s: float) -> str:
    if not _finite(s):
        return "—"
    a = abs(s)
    if a >= 1:
        return f"{s:.3f} s"
    if a >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    if a >= 1e-6:
        return f"{s * 1e6:.2f} µs"
    return f"{s * 1e9:.1f} ns"


def joules(j: float) -> str:
    if not _finite(j):
        return "—"
    a = abs(j)
    if a >= 1:
        return f"{j:.3f} J"
    if a >= 1e-3:
        return f"{j * 1e3:.3f} mJ"
    if a >= 1e-6:
        return f"{j * 1e6:.3f} µJ"
    return f"{j * 1e9:.3f} nJ"


def pct(f: float, digits: int = 1) -> str:
    if not _finite(f):
        return "—"
    return f"{100 * f:.{digits}f}%"


def count(n: float) -> str:
    if not _finite(n):
        return "—"
    return f"{n:,.0f}"
