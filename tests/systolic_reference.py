"""A register-level, cycle-by-cycle model of one R x C systolic array: the tests' reference.

Independent of vnpu's closed forms: it moves every operand one PE per cycle and reports the
cycle on which the fold's last result is produced, plus the numbers it computed. Timing
does not depend on how many PEs a fold uses (a partial block is zero-padded to R x C), as
in SCALE-Sim.

- OS: A rows enter the left edge skewed by row, B columns the top edge skewed by column;
  PE(i,j) accumulates in place. A fold ends with its last multiply-accumulate.
- WS: the stationary block shifts in from the top, one row per cycle (R cycles); then A
  rows enter the left edge skewed by row, partial sums flow down, and each output row
  leaves the bottom edge. A fold ends when its last output leaves.
- IS: as WS with A^T's block stationary and B's columns streamed.
"""
from __future__ import annotations

import numpy as np


def os_fold(a: np.ndarray, b: np.ndarray, r: int, c: int) -> tuple[np.ndarray, int]:
    """a [m<=R, T], b [T, n<=C] -> (a @ b, cycles)."""
    m, t_len = a.shape
    n = b.shape[1]
    ap = np.zeros((r, t_len)); ap[:m] = a
    bp = np.zeros((t_len, c)); bp[:, :n] = b
    h = np.zeros((r, c)); hv = np.zeros((r, c), bool)
    v = np.zeros((r, c)); vv = np.zeros((r, c), bool)
    acc = np.zeros((r, c))
    last = -1
    cyc = 0
    while True:
        h_new = np.empty_like(h); hv_new = np.empty_like(hv)
        v_new = np.empty_like(v); vv_new = np.empty_like(vv)
        h_new[:, 1:], hv_new[:, 1:] = h[:, :-1], hv[:, :-1]
        v_new[1:, :], vv_new[1:, :] = v[:-1, :], vv[:-1, :]
        for i in range(r):  # row i's stream enters i cycles late
            k = cyc - i
            hv_new[i, 0] = 0 <= k < t_len
            h_new[i, 0] = ap[i, k] if hv_new[i, 0] else 0.0
        for j in range(c):
            k = cyc - j
            vv_new[0, j] = 0 <= k < t_len
            v_new[0, j] = bp[k, j] if vv_new[0, j] else 0.0
        h, hv, v, vv = h_new, hv_new, v_new, vv_new
        fire = hv & vv
        if fire.any():
            acc[fire] += h[fire] * v[fire]
            last = cyc
        elif last >= 0 and not hv.any() and not vv.any():
            break
        cyc += 1
    return acc[:m, :n], last + 1


def _stationary_fold(stream: np.ndarray, w: np.ndarray, r: int, c: int) -> tuple[np.ndarray, int]:
    """stream [T, k<=R] @ w [k, n<=C] with w stationary (preloaded from the top): (result [T, n], cycles)."""
    t_len, k = stream.shape
    n = w.shape[1]
    wp = np.zeros((r, c)); wp[:k, :n] = w
    sp = np.zeros((t_len, r)); sp[:, :k] = stream
    # preload: the block shifts down one row per cycle; after R cycles row i holds wp[i]
    regs = np.zeros((r, c))
    cyc = 0
    for step in range(r):
        regs[1:] = regs[:-1].copy()
        regs[0] = wp[r - 1 - step]
        cyc += 1
    assert np.array_equal(regs, wp)
    h = np.zeros((r, c)); hv = np.zeros((r, c), bool)
    p = np.zeros((r, c))
    out = np.zeros((t_len, c))
    got = 0
    last = -1
    s = 0  # cycles since streaming began
    while got < t_len * c:
        h_new = np.empty_like(h); hv_new = np.empty_like(hv)
        h_new[:, 1:], hv_new[:, 1:] = h[:, :-1], hv[:, :-1]
        for i in range(r):
            t = s - i
            hv_new[i, 0] = 0 <= t < t_len
            h_new[i, 0] = sp[t, i] if hv_new[i, 0] else 0.0
        p_new = np.zeros_like(p)
        p_new[1:] = p[:-1]
        p_new += np.where(hv_new, h_new * regs, 0.0)
        h, hv, p = h_new, hv_new, p_new
        for j in range(c):  # output row t of column j leaves the bottom edge now
            t = s - (r - 1) - j
            if 0 <= t < t_len:
                out[t, j] = p[r - 1, j]
                got += 1
                last = cyc
        s += 1
        cyc += 1
    return out[:, :n], last + 1


def ws_fold(a: np.ndarray, b: np.ndarray, r: int, c: int) -> tuple[np.ndarray, int]:
    """a [T, k<=R] streamed, b [k, n<=C] stationary -> (a @ b, cycles)."""
    return _stationary_fold(a, b, r, c)


def is_fold(a: np.ndarray, b: np.ndarray, r: int, c: int) -> tuple[np.ndarray, int]:
    """a [m<=C, k<=R] stationary (as A^T), b [k, T] streamed -> (a @ b, cycles)."""
    res, cyc = _stationary_fold(b.T, a.T, r, c)
    return res.T, cyc


def fold_by_fold(a: np.ndarray, b: np.ndarray, r: int, c: int, dataflow: str) -> tuple[np.ndarray, int]:
    """The whole product, fold after fold (SCALE-Sim's order), each fold run cycle by cycle."""
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n))
    total = 0
    if dataflow == "os":
        for m0 in range(0, m, r):
            for n0 in range(0, n, c):
                res, cyc = os_fold(a[m0:m0 + r], b[:, n0:n0 + c], r, c)
                out[m0:m0 + r, n0:n0 + c] += res
                total += cyc
    elif dataflow == "ws":
        for n0 in range(0, n, c):
            for k0 in range(0, k, r):
                res, cyc = ws_fold(a[:, k0:k0 + r], b[k0:k0 + r, n0:n0 + c], r, c)
                out[:, n0:n0 + c] += res
                total += cyc
    else:
        for m0 in range(0, m, c):
            for k0 in range(0, k, r):
                res, cyc = is_fold(a[m0:m0 + c, k0:k0 + r], b[k0:k0 + r], r, c)
                out[m0:m0 + c] += res
                total += cyc
    return out, total
