"""Compensation: applying spillover matrices (read by ``tilpheno.io.spill``, re-exported here).

Convention (as FlowJo, FlowKit and flowutils): the spillover matrix ``S`` has one row per
*fluorochrome* and one column per *detector*, ``S[i, j]`` = fraction of fluorochrome ``i``'s
signal seen in detector ``j`` (diagonal 1). Observed detector values are ``raw = true @ S``, so
compensated values are ``raw @ inv(S)``. Only the detectors named in the matrix are changed;
scatter and time channels pass through.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from tilpheno.errors import CompensationError
from tilpheno.io.spill import (  # noqa: F401  (re-exported)
    COMPENSATED_PREFIXES, Spillover, exported_compensated, parse_spill_keyword, read_spillover_csv,
)


_CHUNK_EVENTS = 8192   # events per block in compensate_columns (source rows and products stay in cache)
SINGULAR_CONDITION = 1e6
"""Condition number above which a matrix is refused as singular: its inverse would amplify noise
a million-fold (a repeated row, rounded to a few digits, still inverts to values of 1e13 and
more). Real matrices are near 1-10 (the public FCS files' ``$SPILLOVER``: at most 8.3)."""


class BlockPool:
    """Float64 blocks for :func:`compensate_columns` (and ``read_fcs``'s events), lent again once
    no array uses them.

    A fresh block of several MB is zeroed by the kernel page by page (2 MB pages, numpy asks for
    them) on its first write; a block lent again is not. One pool serves one thread (not
    thread-safe): the files of a product, or of the products a worker gates one after the other.
    A block is lent as an array over a memoryview of it (``np.frombuffer``): numpy makes that array
    the base of every view derived from it (rows, slices, reshapes), so once the pool's weak
    reference to it is dead, no array reads or writes the block. A new block is made only when
    every free one is too small, and those are released then: the pool holds at most as many
    blocks as were in use at once.
    """

    def __init__(self) -> None:
        self._blocks: list[tuple[np.ndarray, weakref.ref]] = []   # (block, weak reference to its lent array)
        self.allocated = 0   # blocks made (the others lent again)

    def take(self, rows: int, columns: int) -> np.ndarray:
        """An uninitialised C-contiguous ``rows x columns`` float64 array: a free block at least as
        large lent again, else a new one."""
        size = rows * columns
        fits = [i for i, (b, ref) in enumerate(self._blocks) if ref() is None and b.size >= size]
        if fits:   # the smallest that fits: the larger stay free for larger files
            block = self._blocks.pop(min(fits, key=lambda i: self._blocks[i][0].size))[0]
        else:      # the free blocks are all too small: released, one new block made
            self._blocks = [(b, ref) for b, ref in self._blocks if ref() is not None]
            block = np.empty(max(size, 1), dtype=np.float64)
            self.allocated += 1
        lent = np.frombuffer(block.data, dtype=np.float64, count=size)   # block.data: a memoryview
        self._blocks.append((block, weakref.ref(lent)))
        return lent.reshape(rows, columns)


def _inverse(spillover: Spillover) -> np.ndarray:
    condition = float(np.linalg.cond(spillover.matrix))
    if not condition <= SINGULAR_CONDITION:
        raise CompensationError(f"{spillover.source or 'spillover'}: matrix is singular "
                                f"(condition number {condition:.3g} > {SINGULAR_CONDITION:.0e})")
    return np.linalg.inv(spillover.matrix)


def _matrix_columns(channel_names: Sequence[str], spillover: Spillover) -> list[int]:
    index = {name: i for i, name in enumerate(channel_names)}
    missing = [d for d in spillover.detectors if d not in index]
    if missing:
        exported = [p + d for d in missing for p in COMPENSATED_PREFIXES if p + d in index]
        hint = (f"; the file holds compensated export parameters ({', '.join(exported[:3])}): its events are "
                "already compensated, use it without a matrix") if exported else ""
        raise CompensationError(
            f"{spillover.source or 'spillover'}: detector(s) {missing} not among the file's channels {list(channel_names)}{hint}"
        )
    return [index[d] for d in spillover.detectors]


def compensate_columns(
    events: np.ndarray, channel_names: Sequence[str], spillover: Spillover | None, wanted: Sequence[str],
    pool: BlockPool | None = None,
) -> dict[str, np.ndarray]:
    """Compensated values of the channels ``wanted`` only: channel name -> contiguous float64 array.

    Equal bit for bit to the same columns of :func:`compensate` (same fixed-order sums), without
    the full-size copy: the work is proportional to the wanted detectors. The arrays are rows of
    one ``len(wanted) x n_events`` block, new or lent again by ``pool`` (:class:`BlockPool`), never
    views of ``events`` or of arrays still in use, so the caller may transform them in place.
    Channels the matrix does not name (scatter, time), or every channel when ``spillover`` is
    None, are copied as they are.
    """
    index = {name: i for i, name in enumerate(channel_names)}
    wanted = list(dict.fromkeys(wanted))
    absent = [w for w in wanted if w not in index]
    if absent:
        raise CompensationError(f"channel(s) {absent} not among the file's channels {list(channel_names)}")
    position: dict[str, int] = {}
    cols: list[int] = []
    if spillover is not None:
        cols = _matrix_columns(channel_names, spillover)
        position = {d: j for j, d in enumerate(spillover.detectors)}
    compensated = [w for w in wanted if w in position]
    if not compensated:
        cols = []
    passthrough = [w for w in wanted if w not in position]
    inverse = _inverse(spillover) if compensated and spillover is not None else np.empty((0, 0))
    events = np.asarray(events)
    n = events.shape[0]
    # rows: the compensated detectors first (one contiguous block the sums accumulate into), then
    # the channels copied as they are
    order = compensated + passthrough
    out = pool.take(len(order), n) if pool is not None else np.empty((len(order), n), dtype=np.float64)
    gather = cols + [index[w] for w in passthrough]
    k, t, step = len(cols), len(compensated), max(1, _CHUNK_EVENTS)
    # coefficient[r, i] = inverse[i, j] for the r-th compensated detector j
    coefficient = inverse[:, [position[d] for d in compensated]].T.copy() if t else np.empty((0, 0))
    tmp = np.empty((t, min(n, step)), dtype=np.float64) if t else np.empty((0, 0))
    for start in range(0, n, step):
        stop = min(n, start + step)
        # One gather of the needed columns of a block of events into rows (a strided copy per
        # channel would read a cache line per event and channel); the products below then read
        # contiguous, cache-resident memory, and no full-size temporary is made.
        source = np.ascontiguousarray(events[start:stop, gather].T, dtype=np.float64)
        if t:
            # A fixed-order sum of products instead of a BLAS matrix product: each output is
            # s_0 * inv[0, j] + s_1 * inv[1, j] + ... added left to right, the same bit for bit
            # on every CPU and thread count (BLAS kernels may reassociate or fuse).
            acc, product = out[:t, start:stop], tmp[:, : stop - start]
            np.multiply(source[0], coefficient[:, 0:1], out=acc)
            for i in range(1, k):
                np.multiply(source[i], coefficient[:, i : i + 1], out=product)
                acc += product
        if passthrough:
            out[t:, start:stop] = source[k:]
    return {w: out[order.index(w)] for w in wanted}


def compensate(events: np.ndarray, channel_names: Sequence[str], spillover: Spillover) -> np.ndarray:
    """Return a compensated copy of ``events`` (n_events x n_channels, columns named by ``channel_names``).

    Raises ``CompensationError`` naming the missing detector when the matrix refers to a channel
    the file does not have. Computation as :func:`compensate_columns` (fixed order, no BLAS).
    """
    cols = _matrix_columns(channel_names, spillover)
    _inverse(spillover)  # singular matrix -> CompensationError before any copy
    out = np.array(events, dtype=np.float64, copy=True)
    names = list(channel_names)
    wanted = [names[c] for c in cols]
    for c, values in zip(cols, compensate_columns(events, names, spillover, wanted).values()):
        out[:, c] = values
    return out
