"""Element-format codecs shared by the compiler (weights quantized at compile time) and the
simulator (the vector engine's instructions): OCP Microscaling (MX v1.0) block scales and packed
fp4 e2m1. MXFP8 = e4m3 elements, MXFP4 = e2m1 elements, one E8M0 (power-of-two) scale per block of
32 elements along the contraction axis.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
MX_BLOCK = 32  # elements per scale (OCP MX v1.0)


def mx_scale(amax: np.ndarray, emax: int) -> np.ndarray:
    """The E8M0 scale of blocks with max |x| `amax` (fp32): 2^(floor(log2 amax) - emax), the OCP MX
    v1.0 rule (emax = 8 for e4m3, 2 for e2m1), its exponent clamped to E8M0's [-127, 127]; an
    all-zero block gets 2^-127 (its elements quantize to 0 under any scale); inf / NaN give NaN."""
    amax = np.asarray(amax, F32)
    _, e = np.frexp(amax)  # amax = f * 2^e, f in [0.5, 1): floor(log2 amax) = e - 1, exactly
    exp = np.clip(np.where(amax > 0, e.astype(np.int32) - 1 - emax, -127), -127, 127)
    return np.where(np.isfinite(amax), np.ldexp(F32(1), exp).astype(F32), F32(np.nan))


_E2M1_VALUES: np.ndarray | None = None


def e2m1_values() -> np.ndarray:
    """The 16 fp4 e2m1 codes' values (code = sign << 3 | exponent << 1 | mantissa), from ml_dtypes."""
    global _E2M1_VALUES
    if _E2M1_VALUES is None:
        import ml_dtypes

        _E2M1_VALUES = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
    return _E2M1_VALUES


def pack_fp4(x: np.ndarray) -> np.ndarray:
    """fp32 values within +-6 -> e2m1 codes (round to nearest even, as ml_dtypes' cast does for
    in-range values; callers clamp first), packed two per byte along the last axis: element 2i in
    the low nibble, 2i + 1 in the high one. Returns uint8 [..., K / 2]."""
    import ml_dtypes

    codes = np.asarray(x, F32).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x0F
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_fp4(p: np.ndarray, axis: int) -> np.ndarray:
    """Packed fp4x2 bytes -> float64 values, twice as long along `axis` (-1 for an A tile packed
    along K, 0 for a B tile)."""
    u = np.asarray(p).view(np.uint8)
    vals = e2m1_values()
    lo, hi = vals[u & 0x0F], vals[u >> 4]
    ax = axis % u.ndim
    pair = np.stack([lo, hi], axis=ax + 1)
    shape = list(u.shape)
    shape[ax] *= 2
    return pair.reshape(shape)


def mx_quantize(w: np.ndarray, emax: int, qmax: float, block: int = MX_BLOCK, axis: int = 0,
                fp4: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MX-quantizes `w` along `axis` (its contraction axis) in blocks of `block`: (elements,
    E8M0 scales as fp32 powers of two, one per block, the axis shortened to len / block). The
    elements are clamp(w / scale, +-qmax) rounded to the format (fp4: e2m1 codes packed two per byte
    along `axis`, uint8; otherwise fp32 values the caller casts to fp8, which rounds to nearest even)."""
    w = np.moveaxis(np.asarray(w, F32), axis, -1)
    blocks = w.reshape(w.shape[:-1] + (w.shape[-1] // block, block))
    scale = mx_scale(np.abs(blocks).max(axis=-1), emax)
    y = np.clip(blocks / scale[..., None], -qmax, qmax).reshape(w.shape)
    q = pack_fp4(y) if fp4 else y
    return np.moveaxis(q, -1, axis), np.moveaxis(scale, -1, axis)


__all__ = ["MX_BLOCK", "mx_scale", "mx_quantize", "pack_fp4", "unpack_fp4", "e2m1_values"]
