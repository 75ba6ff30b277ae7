"""Row-group pipeline shared by `moe-gguf quantize` and the HF converter: float rows in, target-type chunks out.

`encode_chunks(n_rows, read_rows, target, pool, window)` yields, in order, the bytes (or arrays) of consecutive
row groups: `read_rows(r0, r1)` returns those rows as float32 (or as raw source data plus a decoder), each group
is decoded and encoded on a worker thread (numpy casts and the C quantizers release the GIL), and at most
`window` groups are in flight, so memory stays at a few groups whatever the tensor size.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..ggml_types import TYPE_INFO, GGMLType
from ..gguf_writer import f32_to_bf16_bits

__all__ = ["CHUNK_ELEMS", "encode_rows", "encode_chunks", "to_f32", "pread_array"]

CHUNK_ELEMS = 1 << 21  # ~8 MB of float32 per row group


def pread_array(fd: int, offset: int, nbytes: int, dtype: "np.dtype[Any] | str", what: str) -> np.ndarray:
    """`nbytes` at `offset` of an open file as a fresh 1-D array: read with pread, nothing stays mapped, so
    resident memory stays at the row groups in flight whatever the file size."""
    buf = bytearray(nbytes)
    mv, got = memoryview(buf), 0
    while got < nbytes:
        k = os.preadv(fd, [mv[got:]], offset + got)
        if k <= 0:
            raise EOFError(f"unexpected end of file reading {what}")
        got += k
    return np.frombuffer(buf, dtype=dtype)


def to_f32(data: np.ndarray, src: GGMLType, n_per_row: int) -> np.ndarray:
    """Source rows (F32 / F16 / BF16 bits / raw Q8_0 etc. blocks) -> float32 (rows, n_per_row)."""
    if src == GGMLType.F32:
        return np.ascontiguousarray(data, dtype=np.float32).reshape(-1, n_per_row)
    if src == GGMLType.F16:
        return np.ascontiguousarray(data).reshape(-1, n_per_row).astype(np.float32)
    if src == GGMLType.BF16:
        u = np.ascontiguousarray(data).view(np.uint16).reshape(-1, n_per_row)
        return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)
    from ..ops.quants import dequantize

    raw = np.ascontiguousarray(data).view(np.uint8)
    rows = raw.size // (n_per_row // TYPE_INFO[src].block_size * TYPE_INFO[src].block_bytes)
    return dequantize(raw.reshape(rows, -1), src, (rows, n_per_row))


def encode_rows(x: np.ndarray, target: GGMLType) -> np.ndarray:
    """float32 rows -> the target type's data (float32/float16/bf16 bits or raw blocks), on the calling thread."""
    if target == GGMLType.F32:
        return x
    if target == GGMLType.F16:
        return x.astype(np.float16)
    if target == GGMLType.BF16:
        return f32_to_bf16_bits(x)
    from ..ops.quants import quantize

    return quantize(np.ascontiguousarray(x, dtype=np.float32), target, n_threads=1)


def encode_chunks(
    n_rows: int,
    n_per_row: int,
    read_rows: Callable[[int, int], np.ndarray],
    target: GGMLType,
    pool: ThreadPoolExecutor | None,
    window: int = 4,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the encoded row groups of one tensor in order. `read_rows(r0, r1)` -> float32 (r1-r0, n_per_row);
    it runs on the worker too. `on_rows(k)` is called (on the consuming thread) after each group of k rows."""
    step = max(1, CHUNK_ELEMS // max(1, n_per_row))

    def job(r0: int, r1: int) -> np.ndarray:
        return encode_rows(read_rows(r0, r1), target)

    bounds = [(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]
    if pool is None:
        for r0, r1 in bounds:
            out = job(r0, r1)
            if on_rows:
                on_rows(r1 - r0)
            yield out
        return
    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    it = iter(bounds)
    try:
        for r0, r1 in it:
            pending.append((r1 - r0, pool.submit(job, r0, r1)))
            if len(pending) >= window:
                k, fut = pending.popleft()
                out = fut.result()
                if on_rows:
                    on_rows(k)
                yield out
        while pending:
            k, fut = pending.popleft()
            out = fut.result()
            if on_rows:
                on_rows(k)
            yield out
    finally:
        for _, fut in pending:
            fut.cancel()
