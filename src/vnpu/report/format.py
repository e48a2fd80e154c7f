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


def _scaled(x: float, ladder: tuple[tuple[float, str, int], ...]) -> str:
    """x in the first (threshold, unit, decimals) step it reaches; the last step always fits."""
    if not _finite(x):
        return "—"
    for i, (threshold, unit, digits) in enumerate(ladder):
        if abs(x) >= threshold or i == len(ladder) - 1:
            return f"{x / threshold:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def seconds(s: float) -> str:
    return _scaled(s, ((1.0, "s", 3), (1e-3, "ms", 3), (1e-6, "µs", 2), (1e-9, "ns", 1)))


def joules(j: float) -> str:
    return _scaled(j, ((1.0, "J", 3), (1e-3, "mJ", 3), (1e-6, "µJ", 3), (1e-9, "nJ", 3)))


def pct(f: float, digits: int = 1) -> str:
    if not _finite(f):
        return "—"
    return f"{100 * f:.{digits}f}%"


def count(n: float) -> str:
    if not _finite(n):
        return "—"
    return f"{n:,.0f}"
