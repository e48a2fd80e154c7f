"""Strided views over HBM tensors: how view ops, tiles and broadcasts become DMA descriptors."""
from __future__ import annotations

from vnpu.isa.instructions import HbmRef


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def is_contiguous(ref: HbmRef) -> bool:
    return all(d == 1 or s == cs for d, s, cs in zip(ref.shape, ref.strides, contiguous_strides(ref.shape)))


def permute(ref: HbmRef, perm: tuple[int, ...] | list[int]) -> HbmRef:
    return HbmRef(ref.offset, ref.dtype, tuple(ref.shape[p] for p in perm), tuple(ref.strides[p] for p in perm))


def broadcast_to(ref: HbmRef, shape: tuple[int, ...]) -> HbmRef:
    """Right-aligned NumPy broadcasting: new or size-1 dims get stride 0."""
    lead = len(shape) - len(ref.shape)
    assert lead >= 0, (ref.shape, shape)
    strides = []
    for i, d in enumerate(shape):
        j = i - lead
        if j < 0 or (ref.shape[j] == 1 and d != 1):
            strides.append(0)
        else:
            assert ref.shape[j] == d, (ref.shape, shape)
            strides.append(ref.strides[j])
    return HbmRef(ref.offset, ref.dtype, tuple(shape), tuple(strides))


def slice_dim(ref: HbmRef, axis: int, start: int, end: int, step: int = 1) -> HbmRef:
    shape = list(ref.shape)
    strides = list(ref.strides)
    shape[axis] = len(range(start, end, step))
    off = ref.offset + start * ref.strides[axis] * ref.dtype.itemsize
    strides[axis] *= step
    return HbmRef(off, ref.dtype, tuple(shape), tuple(strides))


def box(ref: HbmRef, starts: tuple[int, ...], sizes: tuple[int, ...]) -> HbmRef:
    off = ref.offset + sum(s * st for s, st in zip(starts, ref.strides)) * ref.dtype.itemsize
    return HbmRef(off, ref.dtype, tuple(sizes), ref.strides)


def reshape(ref: HbmRef, new_shape: tuple[int, ...]) -> HbmRef | None:
    """The same memory seen with a new shape, or None when the strides cannot express it
    (then the data must be copied contiguous first). Splits and merges dim groups the way
    PyTorch's view() does."""
    old = [(d, s) for d, s in zip(ref.shape, ref.strides) if d != 1]
    new_strides: list[int] = [0] * len(new_shape)
    numel = 1
    for d in new_shape:
        numel *= d
    if numel == 0:
        return HbmRef(ref.offset, ref.dtype, tuple(new_shape), contiguous_strides(new_shape))
    oi = 0
    ni = 0
    nd = len(new_shape)
    while ni < nd:
        if new_shape[ni] == 1:
            new_strides[ni] = new_strides[ni - 1] if ni > 0 else 1  # size-1 dims: any stride works
            ni += 1
            continue
        if oi >= len(old):
            return None
        # take a chunk of old dims that is contiguous among itself
        chunk_size = old[oi][0]
        chunk_end = oi
        while True:
            # old dims oi..chunk_end form one contiguous block; extend while new dims need more
            tgt = 1
            nj = ni
            while nj < nd and tgt < chunk_size:
                tgt *= new_shape[nj] if new_shape[nj] != 1 else 1
                nj += 1
            if tgt == chunk_size:
                break
            if tgt > chunk_size or nj >= nd and tgt < chunk_size:
                # need to merge the next old dim into the chunk
                if chunk_end + 1 >= len(old):
                    return None
                nxt_d, nxt_s = old[chunk_end + 1]
                if old[chunk_end][1] != nxt_s * nxt_d:
                    return None
                chunk_end += 1
                chunk_size *= nxt_d
                continue
        # assign strides to new dims ni..nj-1 covering the chunk; innermost stride = last old dim's stride
        inner = old[chunk_end][1]
        acc = inner
        for k in range(nj - 1, ni - 1, -1):
            new_strides[k] = acc
            acc *= new_shape[k]
        ni = nj
        oi = chunk_end + 1
        while ni < nd and new_shape[ni] == 1:
            new_strides[ni] = new_strides[ni - 1] if ni > 0 else 1
            ni += 1
    if oi != len(old):
        return None
    return HbmRef(ref.offset, ref.dtype, tuple(new_shape), tuple(new_strides))
