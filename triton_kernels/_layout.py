"""Index arithmetic shared by the launchers: broadcast strides, coalescing.

The kernels address every operand through its own strides, so broadcasting
(stride 0), transposes and slices cost nothing: no operand is ever copied or
expanded in memory. The launchers describe an iteration space of up to four
dims ``(D0, D1, D2, L)``: the kernels split a program id into the three
leading coordinates with scalar arithmetic and vectorise over ``L``. Spaces
with more dims after coalescing are launched once per index of the extra
outer dims (rare: it takes alternating broadcast patterns over five dims).
The spectral kernels add a looped dim in front (``loop_dims``): the samples
that share the kernel spectrum, walked inside one program.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

#: Leading dims a kernel resolves from its program id (the fourth is vectorised).
MAX_LEAD = 3
#: Offsets at or above this many elements need 64-bit vector index arithmetic.
INT32_LIMIT = 2**31 - 1


def broadcast_strides(t: torch.Tensor, shape: Sequence[int]) -> List[int]:
    """Strides (in elements of ``t``) of ``t`` broadcast to ``shape``.

    Missing leading dims and size-1 dims get stride 0, so one element of ``t``
    serves every index along them.
    """
    nd = len(shape)
    out = [0] * nd
    for i in range(1, t.dim() + 1):
        if t.shape[-i] != 1:
            out[nd - i] = t.stride(-i)
    return out


def coalesce(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> Tuple[List[int], List[List[int]]]:
    """Merge adjacent dims that every operand walks as one, drop size-1 dims.

    Parameters
    ----------
    shape : sizes of the iteration space
    strides : one stride list per operand, each ``len(shape)`` long

    Returns
    -------
    (shape, strides) with at least one dim; dim ``j`` and ``j + 1`` were merged
    when ``stride[j] == stride[j + 1] * shape[j + 1]`` for every operand.
    """
    dims = [i for i, s in enumerate(shape) if s != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    sh = [shape[dims[-1]]]
    st = [[s[dims[-1]]] for s in strides]
    for d in reversed(dims[:-1]):
        if all(s[d] == o[0] * sh[0] for s, o in zip(strides, st)):
            sh[0] *= shape[d]
        else:
            sh.insert(0, shape[d])
            for s, o in zip(strides, st):
                o.insert(0, s[d])
    return sh, st


def needs_int64(shape: Sequence[int], strides: Sequence[Sequence[int]], extra: int = 0) -> bool:
    """Whether some operand's largest offset does not fit in int32.

    ``extra`` is added to every offset (e.g. the imaginary part's +1).
    """
    for s in strides:
        top = sum((n - 1) * abs(x) for n, x in zip(shape, s)) + extra
        if top >= INT32_LIMIT:
            return True
    return any(n >= INT32_LIMIT for n in shape)


def split_outer(shape: Sequence[int], strides: Sequence[Sequence[int]], inner: int
                ) -> Iterator[Tuple[List[int], List[int], List[List[int]]]]:
    """Split off outer dims beyond ``inner`` kept dims.

    Yields ``(offsets, shape_in, strides_in)``: one element offset per operand
    for every index of the outer dims, and the inner ``inner`` dims (padded
    with leading size-1 dims) that one launch covers.
    """
    n_outer = max(0, len(shape) - inner)
    shape_in = [1] * max(0, inner - len(shape)) + list(shape[n_outer:])
    strides_in = [[0] * max(0, inner - len(shape)) + list(s[n_outer:]) for s in strides]
    outer = shape[:n_outer]
    for idx in itertools.product(*(range(n) for n in outer)):
        offs = [sum(i * x for i, x in zip(idx, s[:n_outer])) for s in strides]
        yield offs, shape_in, strides_in


def loop_dims(shape: Sequence[int], strides: Sequence[Sequence[int]],
              shared: Sequence[int]) -> List[int]:
    """Dims of the iteration space that one program loops over in registers.

    Candidates are the dims (never the last, vectorised one) along which every
    operand listed in ``shared`` (e.g. the kernel spectrum and the
    regulariser) has stride 0: the samples that share a spectrum. A program
    reading the spectrum once and looping over them reads it from DRAM once
    per block of samples instead of once per sample, and a gradient w.r.t. the
    shared operand is reduced in registers. Of the runs of candidates that
    coalesce into one dim, the largest is returned (ascending dims), or ``[]``.
    """
    nd = len(shape)
    if not shared:
        return []
    cand = [d for d in range(nd - 1) if shape[d] > 1 and all(strides[i][d] == 0 for i in shared)]
    if not cand:
        return []
    groups = [[cand[0]]]
    for d in cand[1:]:
        prev = groups[-1][-1]
        if all(s[prev] == s[d] * shape[d] for s in strides):
            groups[-1].append(d)
        else:
            groups.append([d])
    best = max(groups, key=lambda g: _prod(shape[d] for d in g))
    return best


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def loop_space(shape: Sequence[int], strides: Sequence[Sequence[int]], loop: Sequence[int],
               shared: Sequence[int]) -> Tuple[int, List[int], List[int], List[List[int]]]:
    """Move the ``loop`` dims first and coalesce.

    Returns ``(NS, loop strides, shape, strides)``: the number of samples a
    program loops over (1 when ``loop`` is empty or merged away), each
    operand's stride along them, and the remaining coalesced space.
    """
    order = list(loop) + [d for d in range(len(shape)) if d not in loop]
    sh, st = coalesce([shape[d] for d in order], [[s[d] for d in order] for s in strides])
    if loop and len(sh) >= 2 and all(st[i][0] == 0 for i in shared):
        return sh[0], [s[0] for s in st], sh[1:], [s[1:] for s in st]
    return 1, [0] * len(strides), sh, st


def split_samples(ns: int, programs: int, target: int, per_program: Optional[int] = None
                  ) -> Tuple[int, int]:
    """``(samples per program, chunks)`` for ``ns`` looped samples.

    ``programs`` is the grid without the sample split; it is multiplied by
    the number of chunks until about ``target`` programs keep the device busy
    (each chunk re-reads the shared spectrum once). ``per_program`` forces
    the chunk size (tests).
    """
    ns = max(1, int(ns))
    if per_program is not None:
        spb = max(1, min(ns, int(per_program)))
    elif programs >= target:
        spb = ns
    else:
        chunks = min(ns, -(-target // max(programs, 1)))
        spb = -(-ns // chunks)
    return spb, -(-ns // spb)


def contiguous_strides(shape: Sequence[int]) -> List[int]:
    out, acc = [], 1
    for n in reversed(list(shape)):
        out.insert(0, acc)
        acc *= max(int(n), 1)
    return out


def at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A view of ``t``'s storage starting ``offset`` elements after ``t``'s first one.

    The kernels address it through explicit strides; only its data pointer
    (and dtype) matter.
    """
    if offset == 0:
        return t
    return t.as_strided((1,), (1,), t.storage_offset() + offset)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class on_device:
    """Make ``t``'s CUDA device current for a launch (Triton launches on the current one)."""

    def __init__(self, t: torch.Tensor):
        self.ctx = None
        if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
            self.ctx = torch.cuda.device(t.device)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
