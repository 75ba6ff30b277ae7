"""Typed Python face of the quant-format kernels (csrc/quants.c, csrc/quants_k.c).

``dequantize(data, ggml_type, shape)`` turns the raw bytes of a GGUF tensor into float32;
``quantize(x, ggml_type, imatrix=None)`` turns float32 rows into the bytes of a ggml type.
Both work on whole tensors with a single C call (the row loop runs in C); every argument is checked
here, before any pointer reaches C.

Exactness (tested in tests/test_quants.py):
  * ``dequantize`` is bit-for-bit ggml's reference dequantization (= gguf-py's numpy ``dequantize``) on both
    the scalar and the AVX2 path.
  * Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 quantization gives the same bytes as ``gguf.quants.quantize`` and ggml's
    reference quantizers: they agree with each other.  Q8_0 rounds half away from zero (C ``roundf``; gguf-py's
    ``np_roundf``, *not* ``np.round``, which rounds half to even); the 4/5-bit types truncate ``x/d + offset + 0.5``
    (``(int8_t)`` cast in C, ``np.trunc`` in gguf-py).  Note: llama.cpp's *AVX2* Q8_0 activation quantizer
    rounds half to even with ``id = 127/amax``, so on exact ties it can differ by one code from the reference
    convention used here.
  * Q8_K: ``iscale = -128/max`` (max = first value of largest magnitude), codes rounded half to even
    (ggml's ``nearest_int``) and clamped to 127, ``d = 1/iscale`` (f32), bsums = sums of 16 codes.
  * K-quants and IQ4: no byte-exact oracle exists; per block we keep the encoding with the smallest squared
    error (imatrix-weighted if given) among ggml's weighted scale search, the same search with unit weights,
    and naive min/max rounding, so the result is never worse than naive rounding to the same format.

Edge rows (documented behaviour, tested in tests/test_quants.py):
  * NaN or +-inf input to a block format raises ValueError (there is no meaningful encoding).  F32/F16/BF16
    pass NaN/inf through as IEEE conversions do (F16 rounds to nearest even, overflowing to inf like numpy;
    BF16 rounds to nearest even with NaN kept quiet, like ggml).
  * All-zero blocks encode as zero scales and dequantize to exact zeros.  Constant blocks are reproduced
    up to the format's scale precision.
  * Huge values: block scales are stored as fp16 (Q8_K: f32), so a block whose scale exceeds 65504 encodes
    an inf scale, exactly as ggml and gguf-py do; ``quantize`` therefore rejects input with magnitude above
    ``MAX_ABS`` (65504) for the fp16-scaled block formats with a ValueError.
  * Subnormal / tiny values: a block whose scale underflows fp16 decodes as zeros (as in ggml); if 1/scale
    overflows float32 the codes of that block are 0 (the value numpy's x86 cast gives, so Q4_0..Q8_0 stay
    byte-identical with gguf-py) and Q8_K writes an all-zero block.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from moe_gguf._kernels import ffi, lib
from moe_gguf.ggml_types import GGMLType, TYPE_INFO

__all__ = [
    "SUPPORTED_DEQUANT", "SUPPORTED_QUANT", "MAX_ABS", "dequantize", "quantize", "row_bytes", "fallback_type",
]

SUPPORTED_DEQUANT: frozenset[GGMLType] = frozenset(
    GGMLType[n]
    for n in (
        "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_K Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS".split()
    )
)
SUPPORTED_QUANT: frozenset[GGMLType] = SUPPORTED_DEQUANT
# types whose quantizer accepts an importance matrix (per-column weights)
IMATRIX_TYPES: frozenset[GGMLType] = frozenset(
    GGMLType[n] for n in "Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS".split()
)
# largest magnitude accepted by the block formats whose scales are fp16 (see module docstring)
MAX_ABS = 65504.0
_PASSTHROUGH = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})

_ERRORS = {-1: "unsupported type", -2: "bad size", -3: "out of memory", -4: "non-finite input"}


def _as_type(ggml_type: int | GGMLType, supported: frozenset[GGMLType], what: str) -> GGMLType:
    try:
        t = GGMLType(int(ggml_type))
    except (ValueError, TypeError):
        raise ValueError(f"unknown ggml type {ggml_type!r}") from None
    if t not in supported:
        names = ", ".join(sorted(x.name for x in supported))
        raise ValueError(f"{what} of {t.name} is not supported; supported types: {names}")
    return t


def row_bytes(ggml_type: int | GGMLType, n: int) -> int:
    """Bytes of a row of ``n`` elements of ``ggml_type`` (n must be a multiple of the block size)."""
    t = GGMLType(int(ggml_type))
    info = TYPE_INFO[t]
    if n % info.block_size:
        raise ValueError(
            f"row length {n} is not a multiple of the {t.name} block size {info.block_size}"
        )
    return n // info.block_size * info.block_bytes


# llama-quantize's fallback when a row length is not a multiple of 256 (tensor_type_fallback in mainline
# llama.cpp's llama-quant.cpp): e.g. DeepSeek-V2-Lite's ffn_down_exps rows of 1408 elements.
_FALLBACK: dict[GGMLType, GGMLType] = {
    GGMLType.Q2_K: GGMLType.Q4_0,
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.IQ4_XS: GGMLType.IQ4_NL,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}


def fallback_type(ggml_type: int | GGMLType, n_per_row: int) -> GGMLType:
    """The type llama-quantize actually writes for rows of ``n_per_row`` elements when ``ggml_type`` is asked
    for: the type itself if its block size divides the row, else Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, Q4_K -> Q5_0,
    Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 if even the fallback's block size does not divide the row."""
    t = _as_type(ggml_type, SUPPORTED_QUANT, "quantization")
    if n_per_row < 0:
        raise ValueError(f"bad row length {n_per_row}")
    if n_per_row % TYPE_INFO[t].block_size == 0:
        return t
    fb = _FALLBACK.get(t)
    if fb is None or n_per_row % TYPE_INFO[fb].block_size:
        return GGMLType.F16
    return fb


def _check_rc(rc: int, t: GGMLType) -> None:
    if rc != 0:
        raise RuntimeError(f"quant kernel failed for {t.name}: {_ERRORS.get(rc, rc)}")


def dequantize(data: np.ndarray, ggml_type: int | GGMLType, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Decode a tensor's raw bytes into a float32 array of ``shape`` (numpy order, last axis = row).

    ``data`` is the tensor's bytes: a C-contiguous uint8 array of any shape (as ``GGUFFile.tensor`` returns
    for quantized types), or a typed float32/float16/uint16(BF16) array for F32/F16/BF16.
    """
    t = _as_type(ggml_type, SUPPORTED_DEQUANT, "dequantization")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s < 0 for s in shape):
        raise ValueError(f"bad shape {shape}")
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, not {type(data).__name__}")
    allowed = {np.dtype(np.uint8)}
    if t == GGMLType.F32:
        allowed.add(np.dtype(np.float32))
    elif t == GGMLType.F16:
        allowed.add(np.dtype(np.float16))
    elif t == GGMLType.BF16:
        allowed.add(np.dtype(np.uint16))
    if data.dtype not in allowed:
        raise TypeError(f"{t.name} data must have dtype in {sorted(str(d) for d in allowed)}, not {data.dtype}")
    if not data.flags.c_contiguous:
        raise ValueError("data must be C-contiguous")
    rb = row_bytes(t, shape[-1])
    nrows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if data.nbytes != rb * nrows:
        raise ValueError(
            f"data has {data.nbytes} bytes but a {t.name} tensor of shape {shape} needs {rb * nrows}"
        )
    out = np.empty(shape, dtype=np.float32)
    n = out.size
    if n:
        rc = lib.mg_dequantize_row(int(t), ffi.from_buffer(data), ffi.from_buffer("float[]", out), n)
        _check_rc(rc, t)
    return out


# below this many elements a tensor is quantized on the calling thread only
_PARALLEL_MIN_ELEMS = 1 << 20


def quantize(
    x: np.ndarray, ggml_type: int | GGMLType, imatrix: np.ndarray | None = None, n_threads: int | None = None
) -> np.ndarray:
    """Encode float32 rows (last axis = row) as ``ggml_type``; returns uint8 of shape (rows, row_bytes).

    ``imatrix``: optional per-column importance weights (float32, length = row length, finite, >= 0), used by
    the K-quant and IQ4 quantizers' scale searches.  Raises ValueError for NaN/inf or out-of-range input
    to a block format (see the module docstring), for a row length that is not a multiple of the block size,
    and for unsupported types.  Large tensors are split by rows over ``n_threads`` threads (default: the CPU
    count; the C kernel runs without the GIL); the result does not depend on the thread count.
    """
    t = _as_type(ggml_type, SUPPORTED_QUANT, "quantization")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, not {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, not {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    n_per_row = x.shape[-1]
    rb = row_bytes(t, n_per_row)
    rows = x.reshape(-1, n_per_row) if x.size else x.reshape(-1, max(n_per_row, 1))[:0]
    nrows = int(np.prod(x.shape[:-1], dtype=np.int64)) if x.ndim > 1 else 1
    imp = ffi.NULL
    if imatrix is not None:
        if t not in IMATRIX_TYPES:
            raise ValueError(
                f"{t.name} takes no imatrix (only {', '.join(sorted(s.name for s in IMATRIX_TYPES))} do)"
            )
        if not isinstance(imatrix, np.ndarray) or imatrix.dtype != np.float32:
            raise TypeError("imatrix must be a float32 numpy array")
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix must have shape ({n_per_row},), not {imatrix.shape}")
        imatrix = np.ascontiguousarray(imatrix)
        if not np.all(np.isfinite(imatrix)) or np.any(imatrix < 0):
            raise ValueError("imatrix must be finite and >= 0")
        imp = ffi.from_buffer("float[]", imatrix)
    if t not in _PASSTHROUGH and x.size:
        amax = float(np.max(np.abs(x)))
        if not np.isfinite(amax):
            raise ValueError(f"cannot quantize NaN or inf to {t.name}")
        if t != GGMLType.Q8_K and amax > MAX_ABS:
            raise ValueError(f"|x| up to {amax:g} exceeds {MAX_ABS:g}, the range of {t.name}'s fp16 block scales")
    out = np.empty((nrows, rb), dtype=np.uint8)
    if not x.size:
        return out
    if n_threads is None:
        n_threads = os.cpu_count() or 1
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, not {n_threads}")
    n_threads = min(n_threads, nrows, max(1, x.size // _PARALLEL_MIN_ELEMS))

    def run(r0: int, r1: int) -> int:
        return int(lib.mg_quantize_rows(
            int(t), ffi.from_buffer("float[]", rows[r0:r1]), ffi.from_buffer(out[r0:r1]), r1 - r0, n_per_row, imp
        ))

    if n_threads == 1:
        _check_rc(run(0, nrows), t)
    else:
        bounds = np.linspace(0, nrows, n_threads + 1).astype(int)
        with ThreadPoolExecutor(n_threads) as pool:
            rcs = list(pool.map(run, bounds[:-1], bounds[1:]))
        for rc in rcs:
            _check_rc(rc, t)
    return out
