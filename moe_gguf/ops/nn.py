"""Neural-net ops: RMSNorm, RoPE (incl. YaRN tables), softmax, SiLU*mul, latent (MLA) attention, top-k routing, and
llama.cpp's CPU arithmetic for RoPE, GELU and F16-cache attention (bit for bit).

The typed Python face of csrc/nn.c.  Every shape/dtype/contiguity check happens here before a pointer
reaches C; the C kernels know no architecture.  All tensors are float32.
"""
from __future__ import annotations

from typing import Any

import numpy as np

GATING_SOFTMAX = 1
GATING_SIGMOID = 2

try:
    from .. import _kernels as _k  # type: ignore[attr-defined]

    _ffi, _lib = _k.ffi, _k.lib
    _HAVE_C = hasattr(_lib, "mg_rms_norm")
except Exception:  # pragma: no cover - kernels not built
    _ffi = _lib = None
    _HAVE_C = False


def _f32(a: np.ndarray, name: str, ndim: int | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


_ARRAY_OF = {"float *": "float[]", "int32_t *": "int32_t[]", "void *": "char[]"}


def _ptr(a: np.ndarray, ctype: str = "float *"):  # noqa: ANN202
    """A C pointer to a's first element (the array must outlive the call)."""
    if a.flags.c_contiguous:  # ~10x cheaper than going through a.ctypes
        return _ffi.from_buffer(_ARRAY_OF[ctype], a)
    return _ffi.cast(ctype, a.ctypes.data)


def _contig(a: np.ndarray, name: str) -> None:
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


# ------------------------------------------------------------------------------------------------ RMSNorm
def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis.  x (..., d) float32 (rows may be strided), w (d,)."""
    _f32(x, "x")
    _f32(w, "w", 1)
    d = x.shape[-1]
    if w.shape[0] != d:
        raise ValueError(f"rms_norm: weight has {w.shape[0]} elements, rows have {d}")
    if not (eps >= 0.0):
        raise ValueError("rms_norm: eps must be >= 0")
    x2 = x.reshape(-1, d) if x.flags.c_contiguous else None
    if x2 is None or not w.flags.c_contiguous or not _HAVE_C:
        var = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True, dtype=np.float32)
        y = (x / np.sqrt(var + np.float32(eps))).astype(np.float32) * w
        if out is not None:
            out[...] = y
            return out
        return y.astype(np.float32, copy=False)
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    else:
        _f32(out, "out")
        if out.shape != x.shape:
            raise ValueError("rms_norm: out has the wrong shape")
        _contig(out, "out")
    rc = _lib.mg_rms_norm(_ptr(out), _ptr(x2), _ptr(w), x2.shape[0], d, float(eps))
    if rc != 0:
        raise ValueError(f"mg_rms_norm failed ({rc})")
    return out


# ------------------------------------------------------------------------------------------------ RoPE
def _rope_pos(x: np.ndarray, pos: Any) -> np.ndarray:
    pos = np.asarray(pos)
    if pos.dtype != np.int32 or pos.ndim != 1 or pos.shape[0] != x.shape[0]:
        raise ValueError(f"rope: pos must be int32 of shape ({x.shape[0]},), got {pos.dtype} {pos.shape}")
    return pos


def _rope_strides(x: np.ndarray) -> None:
    if x.strides[2] != 4 or x.strides[0] % 4 or x.strides[1] % 4 or x.strides[0] < 0 or x.strides[1] < 0:
        raise ValueError("rope: x's last axis must be contiguous float32 with non-negative strides")
    if not x.flags.writeable:
        raise ValueError("rope: x must be writeable")


def rope_(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, magnitude: float = 1.0) -> np.ndarray:
    """Rotates x (n_tok, n_head, n_rot) in place, GGML "NORM" style (adjacent pairs (x[2i], x[2i+1]) by
    angle pos*inv_freq[i]), cos/sin scaled by `magnitude`.  The last axis must be contiguous; the others may be
    strided (a view into a wider q row is fine).  Returns x."""
    _f32(x, "x", 3)
    _f32(inv_freq, "inv_freq", 1)
    pos = _rope_pos(x, pos)
    n_tok, n_head, n_rot = x.shape
    if n_rot % 2 or inv_freq.shape[0] != n_rot // 2:
        raise ValueError(f"rope: n_rot {n_rot} must be even and inv_freq must have {n_rot // 2} entries")
    if x.size == 0:
        return x
    _rope_strides(x)
    if not _HAVE_C:
        theta = pos.astype(np.float32)[:, None] * inv_freq[None, :]
        c = (np.cos(theta) * np.float32(magnitude)).astype(np.float32)[:, None, :]
        s = (np.sin(theta) * np.float32(magnitude)).astype(np.float32)[:, None, :]
        a = x[..., 0::2].copy()
        b = x[..., 1::2].copy()
        x[..., 0::2] = a * c - b * s
        x[..., 1::2] = a * s + b * c
        return x
    inv = np.ascontiguousarray(inv_freq)
    p = np.ascontiguousarray(pos)
    rc = _lib.mg_rope_norm(
        _ptr(x), n_tok, n_head, n_rot, x.strides[0] // 4, x.strides[1] // 4, _ptr(p, "int32_t *"), _ptr(inv), float(magnitude)
    )
    if rc != 0:
        raise ValueError(f"mg_rope_norm failed ({rc})")
    return x


# ------------------------------------------------------------------------------------------------ softmax, SwiGLU
def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (a new float32 array)."""
    _f32(x, "x")
    if not _HAVE_C or x.size == 0:
        m = np.max(x, axis=-1, keepdims=True)
        e = np.exp(x - m)
        return (e / np.sum(e, axis=-1, keepdims=True)).astype(np.float32)
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    rc = _lib.mg_softmax_rows(_ptr(out), out.size // out.shape[-1], out.shape[-1])
    if rc != 0:
        raise ValueError(f"mg_softmax_rows failed ({rc})")
    return out


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(g) * u elementwise (a new float32 array of g's shape)."""
    _f32(g, "g")
    _f32(u, "u")
    if g.shape != u.shape:
        raise ValueError(f"silu_mul: shapes differ {g.shape} vs {u.shape}")
    g = np.ascontiguousarray(g)
    u = np.ascontiguousarray(u)
    if not _HAVE_C:
        return (g / (1 + np.exp(-g)) * u).astype(np.float32)
    out = np.empty(g.shape, dtype=np.float32)
    rc = _lib.mg_silu_mul(_ptr(out), _ptr(g), _ptr(u), g.size)
    if rc != 0:
        raise ValueError(f"mg_silu_mul failed ({rc})")
    return out


# ------------------------------------------------------------------------------------------------ attention
def latent_attention(q: np.ndarray, kv: np.ndarray, n_kv0: int, d_v: int, scale: float, pool: Any = None) -> np.ndarray:
    """Causal attention of many query heads over ONE shared key/value head (MLA's absorbed form, MQA-like).

    q (n_tok, n_head, d_k) float32; kv (n_ctx, >= d_k) float32 or float16 cache rows: key = row[:d_k],
    value = row[:d_v].
    Query token i sits at position n_kv0 + i and sees rows 0 .. n_kv0 + i.  Returns (n_tok, n_head, d_v).
    `pool` (a moe_gguf.ops.matmul.ThreadPool or None) spreads the work over its threads.
    """
    _f32(q, "q", 3)
    _contig(q, "q")
    if not isinstance(kv, np.ndarray) or kv.ndim != 2 or kv.dtype not in (np.float32, np.float16):
        raise TypeError("latent_attention: kv must be a 2-D float32 or float16 array")
    n_tok, n_head, d_k = q.shape
    if kv.shape[1] < d_k or d_v > d_k or d_v <= 0:
        raise ValueError(f"latent_attention: kv rows {kv.shape[1]} too short for d_k {d_k} / d_v {d_v}")
    isz = kv.dtype.itemsize
    if kv.strides[1] != isz or kv.strides[0] % isz or kv.strides[0] < kv.shape[1] * isz:
        raise ValueError("latent_attention: kv rows must be contiguous")
    if n_kv0 < 0 or n_kv0 + n_tok > kv.shape[0]:
        raise ValueError(f"latent_attention: positions {n_kv0}..{n_kv0 + n_tok} exceed the {kv.shape[0]} cache rows")
    out = np.empty((n_tok, n_head, d_v), dtype=np.float32)
    if not _HAVE_C:
        n_kv = n_kv0 + n_tok
        keys = kv[:n_kv, :d_k].astype(np.float32)
        s = np.einsum("thd,kd->thk", q, keys) * np.float32(scale)
        mask = np.arange(n_kv)[None, :] > (n_kv0 + np.arange(n_tok))[:, None]
        s[np.broadcast_to(mask[:, None, :], s.shape)] = -np.inf
        p = softmax(s.astype(np.float32))
        out[...] = np.einsum("thk,kd->thd", p, kv[:n_kv, :d_v].astype(np.float32))
        return out
    kv_type = 0 if kv.dtype == np.float32 else 1
    args = (_ptr(out), _ptr(q), n_tok, n_head, d_k, d_v, _ptr(kv, "void *"), kv_type, kv.strides[0] // isz, n_kv0, float(scale))
    rc = _on_pool(pool, _lib.mg_latent_attention, args)
    if rc != 0:
        raise ValueError(f"mg_latent_attention failed ({rc})")
    return out


def _on_pool(pool: Any, fn: Any, args: tuple) -> int:
    """fn(pool handle or NULL, *args), holding the pool's lock (a pool runs one job at a time)."""
    if pool is None:
        return fn(_ffi.NULL, *args)
    lock, handle = getattr(pool, "lock", None), getattr(pool, "handle", None)
    if lock is None or handle is None:
        raise TypeError("pool must be a moe_gguf.ops.matmul.ThreadPool or None")
    with lock:
        return fn(handle(), *args)  # handle() raises if the pool is closed


# ------------------------------------------------------------------------------------------------ llama.cpp arithmetic
def attention_f16_ggml(q: np.ndarray, kv: np.ndarray, n_kv0: int, n_head_kv: int, d_v: int, window: int = 0,
                       pool: Any = None) -> np.ndarray:
    """Grouped-query causal attention over an IEEE-half cache with llama.cpp's CPU arithmetic, bit for bit
    (flash attention off, as llama-cpp-python's default; see mg_attention_f16_ggml in csrc/moe_gguf.h).

    q (n_tok, n_head, d_k) float32, already multiplied by the attention scale; kv (n_ctx, n_head_kv*(d_v+d_k))
    float16, row = position, per KV head [value | key].  Query i sits at position n_kv0 + i and sees positions
    max(0, p - window + 1)..p (window 0: all).  d_k and d_v multiples of 32.  Returns (n_tok, n_head, d_v).
    """
    _f32(q, "q", 3)
    _contig(q, "q")
    if not isinstance(kv, np.ndarray) or kv.ndim != 2 or kv.dtype != np.float16:
        raise TypeError("attention_f16_ggml: kv must be a 2-D float16 array")
    n_tok, n_head, d_k = q.shape
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise ValueError(f"attention_f16_ggml: {n_head} query heads are not a multiple of {n_head_kv} KV heads")
    if d_k % 32 or d_v <= 0 or d_v % 32:
        raise ValueError(f"attention_f16_ggml: d_k {d_k} and d_v {d_v} must be positive multiples of 32")
    if kv.shape[1] != n_head_kv * (d_k + d_v):
        raise ValueError(f"attention_f16_ggml: kv rows hold {kv.shape[1]} values, expected {n_head_kv * (d_k + d_v)}")
    if kv.strides[1] != 2 or kv.strides[0] % 2 or kv.strides[0] < kv.shape[1] * 2:
        raise ValueError("attention_f16_ggml: kv rows must be contiguous")
    if window < 0:
        raise ValueError("attention_f16_ggml: window must be >= 0")
    if n_kv0 < 0 or n_kv0 + n_tok > kv.shape[0]:
        raise ValueError(f"attention_f16_ggml: positions {n_kv0}..{n_kv0 + n_tok} exceed the {kv.shape[0]} cache rows")
    if not _HAVE_C:
        raise RuntimeError("attention_f16_ggml needs the C kernels (make build)")
    out = np.empty((n_tok, n_head, d_v), dtype=np.float32)
    args = (_ptr(out), _ptr(q), n_tok, n_head, n_head_kv, d_k, d_v, _ptr(kv, "void *"), kv.strides[0] // 2, int(n_kv0), int(window))
    rc = _on_pool(pool, _lib.mg_attention_f16_ggml, args)
    if rc != 0:
        raise ValueError(f"mg_attention_f16_ggml failed ({rc})")
    return out


def rope_ggml_(x: np.ndarray, pos: np.ndarray, freq_base: float, neox: bool, freq_scale: float = 1.0,
               freq_factors: np.ndarray | None = None, mscale: float = 1.0) -> np.ndarray:
    """Rotates x (n_tok, n_head, n_rot) in place exactly as ggml's CPU RoPE (no YaRN ramp): theta starts at the
    position and is multiplied by freq_base^(-2/n_rot) per pair, angle = freq_scale * theta / freq_factors[i],
    cos/sin times mscale; NEOX pairs (i, i + n_rot/2) or NORM pairs (2i, 2i+1).  Strides as rope_."""
    _f32(x, "x", 3)
    pos = _rope_pos(x, pos)
    n_tok, n_head, n_rot = x.shape
    if n_rot % 2 or n_rot > 4096:
        raise ValueError(f"rope: n_rot {n_rot} must be even and <= 4096")
    if not freq_base > 0:
        raise ValueError("rope: freq_base must be positive")
    if freq_factors is not None:
        _f32(freq_factors, "freq_factors", 1)
        if freq_factors.shape[0] < n_rot // 2:
            raise ValueError(f"rope: freq_factors needs {n_rot // 2} entries")
        freq_factors = np.ascontiguousarray(freq_factors)
    if x.size == 0:
        return x
    _rope_strides(x)
    if not _HAVE_C:
        raise RuntimeError("rope_ggml_ needs the C kernels (make build)")
    p = np.ascontiguousarray(pos)
    rc = _lib.mg_rope_ggml(_ptr(x), n_tok, n_head, n_rot, x.strides[0] // 4, x.strides[1] // 4, _ptr(p, "int32_t *"),
                           float(freq_base), float(freq_scale), _ptr(freq_factors) if freq_factors is not None else _ffi.NULL,
                           float(mscale), int(bool(neox)))
    if rc != 0:
        raise ValueError(f"mg_rope_ggml failed ({rc})")
    return x


def gelu_table_f16() -> np.ndarray:
    """ggml's GELU table: entry h = f16(gelu_tanh(the f16 value with bits h))), 65536 float32 values."""
    if not _HAVE_C:
        raise RuntimeError("gelu_table_f16 needs the C kernels (make build)")
    t = np.empty(65536, dtype=np.float32)
    _lib.mg_gelu_table_f16(_ptr(t))
    return t


def geglu_table(g: np.ndarray, u: np.ndarray, table: np.ndarray) -> np.ndarray:
    """gelu(g) * u as llama.cpp's CPU GEGLU computes it (through `table` from gelu_table_f16: g is rounded to
    f16 for the lookup; g <= -10 gives 0, g >= 10 gives g * u).  A new float32 array of g's shape."""
    _f32(g, "g")
    _f32(u, "u")
    _f32(table, "table", 1)
    if g.shape != u.shape:
        raise ValueError(f"geglu_table: shapes differ {g.shape} vs {u.shape}")
    if table.shape[0] != 65536:
        raise ValueError("geglu_table: table must have 65536 entries (gelu_table_f16())")
    g, u, table = np.ascontiguousarray(g), np.ascontiguousarray(u), np.ascontiguousarray(table)
    out = np.empty(g.shape, dtype=np.float32)
    rc = _lib.mg_geglu_table(_ptr(out), _ptr(g), _ptr(u), g.size, _ptr(table))
    if rc != 0:
        raise ValueError(f"mg_geglu_table failed ({rc})")
    return out


# ------------------------------------------------------------------------------------------------ routing
def moe_route(
    logits: np.ndarray,
    k: int,
    gating: int = GATING_SOFTMAX,
    bias: np.ndarray | None = None,
    n_group: int = 1,
    n_group_used: int = 1,
    norm: bool = False,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k expert routing for router logits (n_tok, n_expert).

    probs = softmax (gating 1) or sigmoid (gating 2) of the logits; the selection score is probs + bias.
    With n_group > 1 only the best n_group_used groups compete: a group scores its max (softmax) or the sum of
    its top-2 (sigmoid).  Weights are probs of the chosen experts, divided by their sum if `norm`, times
    `scale` (0 means 1).  Returns ids int32 (n_tok, k), weights float32 (n_tok, k), ids sorted by selection score.
    """
    _f32(logits, "logits", 2)
    n_tok, n_exp = logits.shape
    if not 0 < k <= n_exp:
        raise ValueError(f"moe_route: k={k} must be in 1..{n_exp}")
    if gating not in (GATING_SOFTMAX, GATING_SIGMOID):
        raise ValueError(f"moe_route: unsupported gating function {gating} (1 softmax, 2 sigmoid)")
    if bias is not None:
        _f32(bias, "bias", 1)
        if bias.shape[0] != n_exp:
            raise ValueError("moe_route: bias must have n_expert entries")
    if n_group > 1:
        if n_exp % n_group or not 0 < n_group_used <= n_group:
            raise ValueError(f"moe_route: {n_exp} experts cannot form {n_group} groups with {n_group_used} used")
        if n_group_used * (n_exp // n_group) < k:
            raise ValueError("moe_route: the used groups hold fewer than k experts")
        if gating == GATING_SIGMOID and n_exp // n_group < 2:
            raise ValueError("moe_route: sigmoid group scoring needs >= 2 experts per group")
    else:
        n_group, n_group_used = 1, 1
    ids = np.empty((n_tok, k), dtype=np.int32)
    w = np.empty((n_tok, k), dtype=np.float32)
    if n_tok == 0:
        return ids, w
    lg = np.ascontiguousarray(logits)
    if not _HAVE_C:
        raise RuntimeError("moe_route needs the C kernels (make build)")
    b = np.ascontiguousarray(bias) if bias is not None else None
    rc = _lib.mg_moe_route(
        _ptr(ids, "int32_t *"), _ptr(w), _ptr(lg), n_tok, n_exp, k, gating,
        _ptr(b) if b is not None else _ffi.NULL, n_group, n_group_used, int(bool(norm)), float(scale),
    )
    if rc != 0:
        raise ValueError(f"mg_moe_route failed ({rc})")
    return ids, w


KQ_GEMM_REPACK = 0  # llama.cpp's repacked Q4_K 8x8 GEMM
KQ_GEMM_TILED = 1  # llama.cpp's tiled K-quant GEMM
_KQ_BLOCK = {12: 144, 13: 176, 14: 210, 23: 136}  # Q4_K, Q5_K, Q6_K, IQ4_XS: bytes per 256 elements


def kquant_gemm_ggml(w_raw: np.ndarray, ggml_type: int, n_in: int, x: np.ndarray, mode: int, pool: Any = None) -> np.ndarray:
    """x (n_tok, n_in) float32 times the K-quant matrix w_raw (n_rows, raw block bytes) with the arithmetic of
    one of llama.cpp's batched x86 kernels: mode KQ_GEMM_REPACK (Q4_K) or KQ_GEMM_TILED (Q4_K, Q6_K); see
    mg_kquant_gemm_ggml.  Returns (n_tok, n_rows) float32."""
    _f32(x, "x", 2)
    if ggml_type not in _KQ_BLOCK or mode not in (KQ_GEMM_REPACK, KQ_GEMM_TILED) or (ggml_type != 12 and mode != KQ_GEMM_TILED):
        raise ValueError(f"kquant_gemm_ggml: type {ggml_type} mode {mode} unsupported (Q4_K: 0, 1; Q5_K, Q6_K, IQ4_XS: 1)")
    if not isinstance(w_raw, np.ndarray) or w_raw.dtype != np.uint8 or w_raw.ndim != 2:
        raise TypeError("kquant_gemm_ggml: w_raw must be a 2-D uint8 array of blocks")
    if n_in <= 0 or n_in % 256 or w_raw.shape[1] != n_in // 256 * _KQ_BLOCK[ggml_type] or x.shape[1] != n_in:
        raise ValueError(f"kquant_gemm_ggml: rows of {w_raw.shape[1]} bytes / x of width {x.shape[1]} do not fit n_in={n_in}")
    if not np.all(np.isfinite(x)):
        raise ValueError("kquant_gemm_ggml: x must be finite")
    if not _HAVE_C:
        raise RuntimeError("kquant_gemm_ggml needs the C kernels (make build)")
    w = np.ascontiguousarray(w_raw)
    xc = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    args = (_ptr(out), int(ggml_type), int(mode), _ptr(w, "void *"), w.shape[0], n_in, _ptr(xc), x.shape[0])
    rc = _on_pool(pool, _lib.mg_kquant_gemm_ggml, args)
    if rc != 0:
        raise ValueError(f"mg_kquant_gemm_ggml failed ({rc})")
    return out
