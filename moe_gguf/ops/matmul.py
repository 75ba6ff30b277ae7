"""Quantized matmul: the thread pool, weight views and (expert-indexed) matmul over the C kernels.

    pool = ThreadPool(n_threads=None)          # persistent; None = physical cores
    w = QWeight.from_gguf(gguf_file, name)     # zero-copy over the mmap; 2-D [n_out, n_in] or 3-D [n_expert, n_out, n_in]
    y = matmul(pool, w, x)                     # x float32 (n_tok, n_in) or (n_in,) -> (n_tok, n_out) / (n_out,)
    y = matmul_id(pool, w3, x, ids)            # ids int32 (n_tok, k) -> (n_tok, k, n_out)
    gbs = read_bandwidth(pool, n_threads)      # the machine's read bandwidth (GB/s) by the same threads

Activations are quantized on the fly to the weight type's partner format (Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL,
Q8_0 + block sums for Q4_1/Q5_1, Q8_K for the K-quants and IQ4_XS; float32 for F32/F16/BF16), as llama.cpp
does.  Every argument is checked here before a pointer reaches C.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from .._kernels import ffi, lib
from ..ggml_types import TYPE_INFO, GGMLType, row_bytes, type_name

SUPPORTED_TYPES: frozenset[GGMLType] = frozenset(
    {
        GGMLType.F32, GGMLType.F16, GGMLType.BF16,
        GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
        GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
        GGMLType.IQ4_NL, GGMLType.IQ4_XS,
    }
)  # fmt: skip

# numpy dtype of the raw weight view per type (what GGUFFile.tensor returns)
_FLOAT_DTYPE = {GGMLType.F32: np.dtype("<f4"), GGMLType.F16: np.dtype("<f2"), GGMLType.BF16: np.dtype("<u2")}
_MAX_THREADS = 255
_MAX_ROWS = 2**31 - 1


def physical_cores() -> int:
    """Number of physical cores this process may run on (hyper-thread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        for fname in ("core_cpus_list", "thread_siblings_list"):
            try:
                with open(base + fname, encoding="ascii") as fh:
                    cores.add(fh.read().strip())
                break
            except OSError:
                continue
        else:
            cores.add(str(c))
    return max(1, len(cores))


class ThreadPool:
    """A persistent pool of C worker threads, created once and reused by every matmul call.

    Calls from several Python threads on one pool are serialized.  ``close()`` (or ``with``) frees the threads.
    """

    def __init__(self, n_threads: int | None = None) -> None:
        if n_threads is None:
            n_threads = physical_cores()
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
            raise TypeError(f"n_threads must be an int or None, got {type(n_threads).__name__}")
        n_threads = int(n_threads)
        if not 1 <= n_threads <= _MAX_THREADS:
            raise ValueError(f"n_threads must be in [1, {_MAX_THREADS}], got {n_threads}")
        ptr = lib.mg_pool_create(n_threads)
        if ptr == ffi.NULL:
            raise RuntimeError(f"could not create a thread pool of {n_threads} threads")
        self._ptr: Any = ffi.gc(ptr, lib.mg_pool_destroy)
        self._lock = threading.Lock()
        self._pid = os.getpid()  # worker threads do not survive fork()
        self.n_threads = n_threads

    def close(self) -> None:
        """Stops the worker threads (idempotent); the pool cannot be used afterwards."""
        with self._lock:
            if self._ptr is not None:
                ffi.release(self._ptr)
                self._ptr = None

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def lock(self) -> threading.Lock:
        """Held around every C call on this pool; other ops that pass `handle()` to C should hold it too."""
        return self._lock

    def handle(self) -> Any:
        """The C `mg_pool *` for other kernels (checked: raises if closed or inherited through fork)."""
        return _pool_ptr(self)

    def __enter__(self) -> "ThreadPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ThreadPool(n_threads={self.n_threads}{', closed' if self.closed else ''})"


class QWeight:
    """A weight matrix (2-D [n_out, n_in]) or expert stack (3-D [n_expert, n_out, n_in]) of one ggml type,
    held as a zero-copy view of its raw rows (uint8 rows for quantized types; float32 / float16 / uint16 (BF16)
    arrays for float types)."""

    def __init__(self, data: np.ndarray, ggml_type: int, shape: tuple[int, ...] | list[int]) -> None:
        try:
            t = GGMLType(int(ggml_type))
        except ValueError:
            raise ValueError(f"unknown ggml type id {ggml_type}") from None
        if t not in SUPPORTED_TYPES:
            supported = ", ".join(sorted(x.name for x in SUPPORTED_TYPES))
            raise ValueError(f"matmul does not support weight type {t.name} (supported: {supported})")
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
            raise ValueError(f"weight shape must be 2-D or 3-D with positive sizes, got {shape}")
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
        n_in = shape[-1]
        bs = TYPE_INFO[t].block_size
        if n_in % bs:
            raise ValueError(f"row length {n_in} is not a multiple of {t.name}'s block size {bs}")
        rb = row_bytes(t, n_in)
        n_rows = int(np.prod(shape[:-1]))
        want_dtype = _FLOAT_DTYPE.get(t, np.dtype(np.uint8))
        ok_dtypes = {want_dtype}
        if t == GGMLType.F16:
            ok_dtypes.add(np.dtype("<u2"))  # raw half bits are fine too
        if data.dtype not in ok_dtypes:
            raise TypeError(f"{t.name} weight data must have dtype {want_dtype}, got {data.dtype}")
        if not data.flags.c_contiguous:
            raise ValueError("weight data must be C-contiguous")
        if data.nbytes != n_rows * rb:
            raise ValueError(f"weight data has {data.nbytes} bytes, {t.name} {shape} needs {n_rows * rb}")
        if data.ndim > 1:
            want_shape = shape if t in _FLOAT_DTYPE else (*shape[:-1], rb)
            if data.shape != want_shape:
                raise ValueError(f"weight data shape {data.shape} does not match {want_shape} for {t.name} {shape}")
        align = 4 if t == GGMLType.F32 else 2
        if data.ctypes.data % align:
            raise ValueError(f"{t.name} weight data must be {align}-byte aligned")
        if n_rows > _MAX_ROWS:
            raise ValueError(f"too many weight rows ({n_rows})")
        self.data = data
        self.ggml_type = t
        self.shape = shape
        self.row_bytes = rb
        self._cptr = ffi.cast("const void *", data.ctypes.data)
        self._type_id = int(t)

    @classmethod
    def from_gguf(cls, gguf_file: Any, name: str) -> "QWeight":
        """A zero-copy QWeight over tensor `name` of an open GGUFFile."""
        try:
            info = gguf_file.tensors[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in the GGUF file") from None
        return cls(gguf_file.tensor(name), info.ggml_type, info.shape)

    @property
    def n_in(self) -> int:
        return self.shape[-1]

    @property
    def n_out(self) -> int:
        return self.shape[-2]

    @property
    def n_expert(self) -> int | None:
        return self.shape[0] if len(self.shape) == 3 else None

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __repr__(self) -> str:
        return f"QWeight({type_name(self.ggml_type)}, shape={self.shape})"


def _pool_ptr(pool: ThreadPool | None) -> Any:
    if pool is None:
        return ffi.NULL
    if not isinstance(pool, ThreadPool):
        raise TypeError(f"pool must be a ThreadPool or None, got {type(pool).__name__}")
    if pool._ptr is None:
        raise ValueError("the ThreadPool is closed")
    if pool._pid != os.getpid():
        raise RuntimeError("this ThreadPool was created in another process (threads do not survive fork); make a new one")
    return pool._ptr


def _check_x(x: np.ndarray, n_in: int, what: str) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    if x.shape[-1] != n_in:
        raise ValueError(f"{what} has inner size {x.shape[-1]}, the weight has n_in = {n_in}")
    if not x.flags.aligned:
        raise ValueError(f"{what} must be 4-byte aligned")


def _check_out(out: np.ndarray | None, shape: tuple[int, ...], inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable or not out.flags.aligned:
        raise ValueError("out must be C-contiguous, aligned and writeable")
    if any(np.shares_memory(out, a) for a in inputs):
        raise ValueError("out must not overlap the inputs")
    return out


def _raise_rc(rc: int, what: str) -> None:
    if rc == 0:
        return
    if rc == -3:
        raise MemoryError(f"{what}: out of memory")
    raise ValueError(f"{what}: kernel rejected the arguments (code {rc})")


def matmul(pool: ThreadPool | None, w: QWeight, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y = x @ W.T for a 2-D weight: x float32 (n_tok, n_in) -> (n_tok, n_out); a 1-D x (n_in,) gives (n_out,)."""
    if not isinstance(w, QWeight):
        raise TypeError(f"w must be a QWeight, got {type(w).__name__}")
    if len(w.shape) != 2:
        raise ValueError(f"matmul needs a 2-D weight, got shape {w.shape} (use matmul_id for expert stacks)")
    _check_x(x, w.n_in, "x")
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
    n_tok = 1 if x.ndim == 1 else x.shape[0]
    shape = (w.n_out,) if x.ndim == 1 else (n_tok, w.n_out)
    y = _check_out(out, shape, (x, w.data))
    if n_tok == 0:
        return y
    _pool_ptr(pool)  # type check before any work
    xp = ffi.from_buffer("float[]", x)
    yp = ffi.from_buffer("float[]", y, require_writable=True)
    if pool is None:
        rc = lib.mg_matmul(ffi.NULL, w._type_id, w._cptr, w.n_out, w.n_in, xp, n_tok, yp)
    else:
        with pool._lock:
            rc = lib.mg_matmul(_pool_ptr(pool), w._type_id, w._cptr, w.n_out, w.n_in, xp, n_tok, yp)
    _raise_rc(rc, "matmul")
    return y


def matmul_id(
    pool: ThreadPool | None, w: QWeight, x: np.ndarray, ids: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Expert-indexed matmul: y[t, s] = W[ids[t, s]] @ x[t] for a 3-D weight [n_expert, n_out, n_in].

    x is float32 (n_tok, n_in) (shared by the k chosen experts) or (n_tok, k, n_in) (one row per slot);
    ids is int32 (n_tok, k); the result is float32 (n_tok, k, n_out).  Tokens are grouped per expert so each
    chosen expert's weights stream from memory once per call.
    """
    if not isinstance(w, QWeight):
        raise TypeError(f"w must be a QWeight, got {type(w).__name__}")
    if len(w.shape) != 3:
        raise ValueError(f"matmul_id needs a 3-D weight [n_expert, n_out, n_in], got shape {w.shape}")
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"ids must be a numpy array, got {type(ids).__name__}")
    if ids.dtype != np.int32:
        raise TypeError(f"ids must be int32, got {ids.dtype}")
    if ids.ndim != 2 or not ids.flags.c_contiguous:
        raise ValueError(f"ids must be a C-contiguous (n_tok, k) array, got shape {ids.shape}")
    _pool_ptr(pool)
    n_tok, k = ids.shape
    _check_x(x, w.n_in, "x")
    if x.ndim == 2 and x.shape[0] == n_tok:
        per_slot = 0
    elif x.ndim == 3 and x.shape[:2] == (n_tok, k):
        per_slot = 1
    else:
        raise ValueError(f"x must be ({n_tok}, {w.n_in}) or ({n_tok}, {k}, {w.n_in}) for ids {ids.shape}, got {x.shape}")
    if n_tok * k > _MAX_ROWS:
        raise ValueError(f"too many (token, expert) pairs: {n_tok * k}")
    n_expert = w.shape[0]
    # the kernel checks every id before touching memory; the readable message is built only on failure
    # (ids.min()/max() on a decode-sized array would cost more than a small expert matmul)
    y = _check_out(out, (n_tok, k, w.n_out), (x, w.data, ids))
    if n_tok == 0 or k == 0:
        return y
    args = (
        w._type_id, w._cptr, n_expert, w.n_out, w.n_in,
        ffi.from_buffer("float[]", x), per_slot,
        ffi.from_buffer("int32_t[]", ids), n_tok, k,
        ffi.from_buffer("float[]", y, require_writable=True),
    )  # fmt: skip
    if pool is None:
        rc = lib.mg_matmul_id(ffi.NULL, *args)
    else:
        with pool._lock:
            rc = lib.mg_matmul_id(_pool_ptr(pool), *args)
    if rc != 0 and (int(ids.min()) < 0 or int(ids.max()) >= n_expert):
        raise ValueError(f"expert ids must be in [0, {n_expert}), got range [{ids.min()}, {ids.max()}]")
    _raise_rc(rc, "matmul_id")
    return y


def read_bandwidth(pool: ThreadPool, n_threads: int, nbytes: int = 1 << 28, repeats: int = 3) -> float:
    """The machine's read bandwidth in GB/s (1e9 bytes/s): the best of `repeats` passes of `n_threads` threads of
    `pool` summing an `nbytes` buffer of ones with the kernels' SIMD byte sum (mg_read_sum), the same way the
    GEMV kernels stream weights.  The sum is checked.  Use a buffer far larger than the last-level cache."""
    if not isinstance(pool, ThreadPool):
        raise TypeError(f"pool must be a ThreadPool, got {type(pool).__name__}")
    for name, v in (("n_threads", n_threads), ("nbytes", nbytes), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 1 <= n_threads <= pool.n_threads:
        raise ValueError(f"n_threads must be in [1, {pool.n_threads}] (the pool's size), got {n_threads}")
    if nbytes < 1 << 20:
        raise ValueError(f"nbytes must be >= 1 MiB, got {nbytes}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    buf = np.ones(int(nbytes), dtype=np.uint8)
    ptr = ffi.cast("const void *", buf.ctypes.data)
    best = float("inf")
    for i in range(int(repeats) + 1):  # the first pass faults the pages in and is not timed
        with pool._lock:
            t0 = time.perf_counter()
            total = lib.mg_read_sum(_pool_ptr(pool), int(n_threads), ptr, buf.nbytes)
            dt = time.perf_counter() - t0
        if total != buf.nbytes:
            raise RuntimeError(f"bandwidth probe: wrong sum {total} (expected {buf.nbytes})")
        if i > 0:
            best = min(best, dt)
    return buf.nbytes / best / 1e9
