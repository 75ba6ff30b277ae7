"""Tests of moe_gguf.ops.matmul: every weight type against numpy `dequantize(W) @ X` (gguf's numpy quants as
the oracle), SIMD against the plain C reference, thread-count invariance, the expert variant against a
per-token loop, and argument checking."""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_gguf._kernels import ffi, lib
from moe_gguf.ggml_types import TYPE_INFO, GGMLType
from moe_gguf.ops.matmul import QWeight, ThreadPool, matmul, matmul_id, physical_cores, read_bandwidth

GQ = gguf.GGMLQuantizationType
FLOAT_TYPES = ["F32", "F16", "BF16"]
Q8_0_ACT = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]
Q8_K_ACT = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
ALL_TYPES = FLOAT_TYPES + Q8_0_ACT + Q8_K_ACT
# byte offsets of the f16 super-block scales (d, dmin) inside a block, per ggml-common.h
SCALE_OFFSETS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
}  # fmt: skip


@pytest.fixture(scope="module")
def pools():
    ps = {n: ThreadPool(n) for n in (1, 2, 4)}
    yield ps
    for p in ps.values():
        p.close()


@pytest.fixture(autouse=True)
def _restore_simd():
    level = lib.mg_get_simd_level()
    yield
    lib.mg_set_simd_level(level)


def make_weight(tname: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(raw data as QWeight takes it, dequantized float64 matrix of `shape`).

    Quantized weights are random bytes (every bit pattern of the quants, including -128 in Q8_0) with sane f16
    scales written over the d / dmin fields; they are dequantized by gguf's numpy reference."""
    n_in = shape[-1]
    if tname == "F32":
        w = rng.standard_normal(shape).astype(np.float32)
        return w, w.astype(np.float64)
    if tname == "F16":
        w = rng.standard_normal(shape).astype(np.float16)
        return w, w.astype(np.float64)
    if tname == "BF16":
        bits = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    info = TYPE_INFO[GGMLType[tname]]
    nb = n_in // info.block_size
    n_rows = int(np.prod(shape[:-1]))
    raw = rng.integers(0, 256, size=(n_rows * nb, info.block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[tname]:
        scale = rng.uniform(0.002, 0.02, size=n_rows * nb).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(*shape[:-1], nb * info.block_bytes)
    deq = dequantize(raw, GQ[tname]).astype(np.float64).reshape(shape)
    return raw, deq


def kernel_activations(tname: str, x: np.ndarray) -> np.ndarray:
    """The activation rows the kernels multiply with: x converted by the C activation quantizer, decoded here in
    numpy from the documented block layouts (for Q4_0/Q5_0/Q8_0/IQ4_NL: f32 d, int32 8 * sum, 32 int8;
    Q4_1/Q5_1: f32 d, f32 scaled sum (an f16 value), 32 int8;
    Q8_K: f32 d, 256 int8, 16 int16 sums)."""
    if tname in FLOAT_TYPES:
        return x.astype(np.float64)
    t = int(GGMLType[tname])
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    nbytes = lib.mg_act_bytes(t, n)
    buf = np.zeros((len(rows), nbytes), np.uint8)
    for r in range(len(rows)):
        xr = np.ascontiguousarray(rows[r])
        assert lib.mg_quantize_act(t, ffi.cast("float *", xr.ctypes.data), ffi.from_buffer(buf[r]), n) == 0
    if tname in ("Q4_1", "Q5_1"):
        blk = buf.reshape(len(rows), -1, 40)
        d = blk[..., :4].copy().view(np.float32)
        qs = blk[..., 8:].view(np.int8)
        s = blk[..., 4:8].copy().view(np.float32)[..., 0]
        amax = np.abs(rows.reshape(len(rows), -1, 32)).max(-1).astype(np.float32)  # llama.cpp's x86 Q8_1 sum:
        want_s = ((amax / np.float32(127)) * qs.astype(np.int64).sum(-1).astype(np.float32)).astype(np.float16)
        np.testing.assert_array_equal(s, want_s.astype(np.float32))  # f16(amax/127 * sum(q)), unrounded scale
    elif tname in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL"):  # f32 d, int32 8 * sum(qs), 32 int8
        blk = buf.reshape(len(rows), -1, 40)
        d = blk[..., :4].copy().view(np.float32)
        qs = blk[..., 8:].view(np.int8)
        s8 = blk[..., 4:8].copy().view(np.int32)[..., 0]
        assert np.array_equal(s8, 8 * qs.astype(np.int64).sum(axis=-1))
        assert np.array_equal(d, d.astype(np.float16).astype(np.float32))  # the f16 scale, exactly
    elif tname in Q8_0_ACT:
        blk = buf.reshape(len(rows), -1, 34)
        d = blk[..., :2].copy().view(np.float16).astype(np.float32)
        qs = blk[..., 2:].view(np.int8)
    else:
        blk = buf.reshape(len(rows), -1, 292)
        d = blk[..., :4].copy().view(np.float32)
        qs = blk[..., 4:260].view(np.int8)
        bsums = blk[..., 260:].copy().view(np.int16)
        assert np.array_equal(bsums, qs.reshape(*qs.shape[:2], 16, 16).astype(np.int64).sum(-1))
    return (d.astype(np.float64) * qs).reshape(x.shape)


def _q8_1_sum_slack(x: np.ndarray) -> np.ndarray:
    """Per (token, block): |s - d * sum(q)| of the Q4_1/Q5_1 activation blocks (f32 d, f32 s, 32 int8)."""
    n = x.shape[-1]
    buf = np.zeros((len(x), lib.mg_act_bytes(int(GGMLType.Q4_1), n)), np.uint8)
    for r in range(len(x)):
        xr = np.ascontiguousarray(x[r], dtype=np.float32)
        assert lib.mg_quantize_act(int(GGMLType.Q4_1), ffi.cast("float *", xr.ctypes.data), ffi.from_buffer(buf[r]), n) == 0
    blk = buf.reshape(len(x), -1, 40)
    d, s = blk[..., :4].copy().view(np.float32)[..., 0], blk[..., 4:8].copy().view(np.float32)[..., 0]
    return np.abs(s.astype(np.float64) - d.astype(np.float64) * blk[..., 8:].view(np.int8).sum(-1))


def act_reference(tname: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(activations as the kernels see them after quantization, per-element bound of |x - that|: Q8_0 half a
    step of amax/127 plus the f16 rounding of the scale)."""
    xq = kernel_activations(tname, x)
    if tname in FLOAT_TYPES:
        return xq, np.zeros(x.shape)
    bs = 32 if tname in Q8_0_ACT else 256
    amax = np.abs(x.reshape(*x.shape[:-1], -1, bs)).max(axis=-1, keepdims=True).astype(np.float64)
    # half a step (amax/127) plus rounding slack for both Q8_0 and Q8_K (ggml's -127/max convention)
    step = 0.6
    bound = np.broadcast_to(step * amax / 127.0, (*amax.shape[:-1], bs)).reshape(x.shape)
    assert np.all(np.abs(xq - x) <= bound + 1e-30), f"{tname}: activation quantization error too large"
    return xq, bound


def check_against_numpy(tname: str, y: np.ndarray, deq: np.ndarray, x: np.ndarray) -> None:
    """y (n_tok, n_out) vs numpy: tight against the same activation quantization, and within the bound that
    the activation quantization allows against the exact float product."""
    xq, bound = act_reference(tname, x)
    absw = np.abs(deq)
    # float32 accumulation of n products (plus per-block float scale products)
    fl = 4e-6 * np.sqrt(x.shape[-1]) * (np.abs(xq) @ absw.T) + 1e-30
    if tname in ("Q4_1", "Q5_1"):  # the min term uses the block sum s = f16(amax/127 * sum(q)), not d * sum(q):
        fl = fl + _q8_1_sum_slack(x) @ np.abs(deq).reshape(deq.shape[0], -1, 32).max(-1).T  # |m| <= max |w|
    ref_q = xq @ deq.T
    err_q = np.abs(y - ref_q)
    assert np.all(err_q <= fl), f"{tname}: max err vs quantized-activation product {err_q.max()} (tol {fl.max()})"
    ref = x.astype(np.float64) @ deq.T
    tol = bound @ absw.T + fl
    assert np.all(np.abs(y - ref) <= tol), f"{tname}: error beyond the activation-quantization bound"


@pytest.mark.parametrize("tname", ALL_TYPES)
def test_matmul_every_type_vs_numpy(tname: str, pools) -> None:
    rng = np.random.default_rng(abs(hash(tname)) % 2**32)
    n_in = 512 if tname not in FLOAT_TYPES else 200
    raw, deq = make_weight(tname, (37, n_in), rng)
    w = QWeight(raw, GGMLType[tname], (37, n_in))
    x = rng.standard_normal((45, n_in)).astype(np.float32)
    for level in (1, 0):
        lib.mg_set_simd_level(level)
        check_against_numpy(tname, matmul(pools[2], w, x), deq, x)
        y1 = matmul(pools[2], w, x[3])  # 1-D activation: GEMV
        check_against_numpy(tname, y1[None], deq, x[3:4])


@pytest.mark.parametrize("tname", Q8_0_ACT[:5])
def test_matmul_gguf_quantized_weights(tname: str, pools) -> None:
    """Weights from gguf's own numpy quantizer (realistic value distributions)."""
    rng = np.random.default_rng(7)
    wf = rng.standard_normal((48, 256)).astype(np.float32)
    raw = quantize(wf, GQ[tname])
    deq = dequantize(raw, GQ[tname]).astype(np.float64)
    x = rng.standard_normal((9, 256)).astype(np.float32)
    check_against_numpy(tname, matmul(pools[1], QWeight(raw, GGMLType[tname], (48, 256)), x), deq, x)


@pytest.mark.skipif(lib.mg_cpu_simd_level() < 1, reason="CPU has no AVX2")
@pytest.mark.parametrize("tname", ALL_TYPES)
def test_simd_matches_scalar_reference(tname: str, pools) -> None:
    rng = np.random.default_rng(11)
    n_in = 768 if tname not in FLOAT_TYPES else 301
    raw, deq = make_weight(tname, (29, n_in), rng)
    w = QWeight(raw, GGMLType[tname], (29, n_in))
    x = (rng.standard_normal((7, n_in)) * rng.uniform(0.1, 10, size=(7, 1))).astype(np.float32)
    lib.mg_set_simd_level(0)
    y0 = matmul(pools[1], w, x)
    lib.mg_set_simd_level(1)
    y1 = matmul(pools[1], w, x)
    xq, _ = act_reference(tname, x)
    tol = 4e-6 * np.sqrt(n_in) * (np.abs(xq) @ np.abs(deq).T) + 1e-30
    assert np.all(np.abs(y1 - y0) <= tol), f"{tname}: SIMD vs scalar {np.abs(y1 - y0).max()}"


@settings(max_examples=12)
@given(
    tname=st.sampled_from(ALL_TYPES),
    n_out=st.integers(1, 40),
    n_blocks=st.integers(1, 6),
    n_tok=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
def test_matmul_random_shapes(tname: str, n_out: int, n_blocks: int, n_tok: int, seed: int, pools) -> None:
    rng = np.random.default_rng(seed)
    bs = TYPE_INFO[GGMLType[tname]].block_size
    n_in = n_blocks * (bs if bs > 1 else 17)
    raw, deq = make_weight(tname, (n_out, n_in), rng)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    y = matmul(pools[2], QWeight(raw, GGMLType[tname], (n_out, n_in)), x)
    check_against_numpy(tname, y, deq, x)


@pytest.mark.parametrize("tname", ["F16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"])
@pytest.mark.parametrize("n_tok", [1, 3, 40])
def test_thread_counts_bit_identical(tname: str, n_tok: int, pools) -> None:
    rng = np.random.default_rng(3)
    n_out, n_in = 300, 2048  # enough work that 2 and 4 threads really take part
    raw, _ = make_weight(tname, (n_out, n_in), rng)
    w = QWeight(raw, GGMLType[tname], (n_out, n_in))
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    ys = [matmul(pools[n], w, x) for n in (1, 2, 4)]
    ys.append(matmul(None, w, x))
    for y in ys[1:]:
        assert np.array_equal(ys[0], y)


@pytest.mark.parametrize("tname", ["Q8_0", "Q5_1", "Q4_K", "Q6_K", "IQ4_NL", "BF16"])
@pytest.mark.parametrize("per_slot", [False, True])
def test_matmul_id_vs_per_token_loop(tname: str, per_slot: bool, pools) -> None:
    rng = np.random.default_rng(5)
    n_exp, n_out, n_in, n_tok, k = 9, 40, 512, 23, 3
    raw, deq = make_weight(tname, (n_exp, n_out, n_in), rng)
    w3 = QWeight(raw, GGMLType[tname], (n_exp, n_out, n_in))
    ids = np.stack([rng.choice(n_exp - 2, size=k, replace=False) for _ in range(n_tok)]).astype(np.int32)
    x = rng.standard_normal((n_tok, k, n_in) if per_slot else (n_tok, n_in)).astype(np.float32)
    y = matmul_id(pools[2], w3, x, ids)
    assert y.shape == (n_tok, k, n_out)
    for t in range(n_tok):
        for s in range(k):
            e = ids[t, s]
            we = QWeight(raw[e], GGMLType[tname], (n_out, n_in))
            xt = x[t, s] if per_slot else x[t]
            assert np.array_equal(y[t, s], matmul(pools[1], we, np.ascontiguousarray(xt)))
    ys = [matmul_id(pools[n], w3, x, ids) for n in (1, 4)]
    assert all(np.array_equal(y, other) for other in ys)
    # and the numbers themselves, against numpy
    xs = x if per_slot else np.repeat(x[:, None, :], k, axis=1)
    for s in range(k):
        for e in np.unique(ids[:, s]):
            sel = ids[:, s] == e
            check_against_numpy(tname, y[sel, s], deq[e], np.ascontiguousarray(xs[sel, s]))


@pytest.mark.parametrize("tname", ALL_TYPES)
def test_token_grouping_never_changes_results(tname: str, pools) -> None:
    """Each row of a GEMM (tokens in tiles and blocks) equals the GEMV of that token alone, bit for bit."""
    rng = np.random.default_rng(13)
    n_in = 512 if tname not in FLOAT_TYPES else 96
    raw, _ = make_weight(tname, (24, n_in), rng)
    w = QWeight(raw, GGMLType[tname], (24, n_in))
    x = rng.standard_normal((71, n_in)).astype(np.float32)
    y = matmul(pools[2], w, x)
    for t in (0, 3, 4, 7, 8, 31, 32, 33, 63, 64, 70):
        assert np.array_equal(y[t], matmul(pools[1], w, x[t])), t
    assert np.array_equal(y[5:38], matmul(pools[4], w, x[5:38]))


def test_matmul_id_many_tokens_per_expert(pools) -> None:
    """Experts with more tokens than one work block (prefill), x per slot, against per-token matmul."""
    rng = np.random.default_rng(17)
    raw, deq = make_weight("Q4_K", (3, 20, 256), rng)
    w3 = QWeight(raw, GGMLType.Q4_K, (3, 20, 256))
    ids = rng.integers(0, 3, size=(100, 2)).astype(np.int32)
    x = rng.standard_normal((100, 2, 256)).astype(np.float32)
    y = matmul_id(pools[2], w3, x, ids)
    for e in range(3):
        sel = ids == e
        want = matmul(pools[1], QWeight(raw[e], GGMLType.Q4_K, (20, 256)), np.ascontiguousarray(x[sel]))
        assert np.array_equal(y[sel], want)
        check_against_numpy("Q4_K", y[sel], deq[e], np.ascontiguousarray(x[sel]))


def test_matmul_id_decode_shape(pools) -> None:
    """One token, six experts out of 64 (the DeepSeek-V2-Lite decode case), shared x."""
    rng = np.random.default_rng(9)
    raw, deq = make_weight("Q4_K", (64, 48, 256), rng)
    w3 = QWeight(raw, GGMLType.Q4_K, (64, 48, 256))
    x = rng.standard_normal((1, 256)).astype(np.float32)
    ids = np.array([[63, 0, 17, 5, 40, 22]], dtype=np.int32)
    y = matmul_id(pools[2], w3, x, ids)
    for s, e in enumerate(ids[0]):
        check_against_numpy("Q4_K", y[0, s][None], deq[e], x)


@pytest.mark.parametrize("tname", ["Q5_0", "Q8_0", "Q4_K"])
def test_decode_row_chunks_vs_numpy(tname: str, pools) -> None:
    """One activation row against matrices large enough that decode calls take multi-row work items (with a
    partial last item): every row still right against numpy, for 1 and 2 threads, matmul and matmul_id."""
    rng = np.random.default_rng(11)
    n_out, n_in = 600, 512
    raw, deq = make_weight(tname, (8, n_out, n_in), rng)
    w3 = QWeight(raw, GGMLType[tname], (8, n_out, n_in))
    w2 = QWeight(np.ascontiguousarray(raw[3]), GGMLType[tname], (n_out, n_in))
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    ids = np.array([[7, 0, 3, 5, 2, 6]], dtype=np.int32)
    for n in (1, 2):
        y = matmul(pools[n], w2, x)
        check_against_numpy(tname, y, deq[3], x)
        y3 = matmul_id(pools[n], w3, x, ids)
        for s, e in enumerate(ids[0]):
            check_against_numpy(tname, y3[0, s][None], deq[e], x)


@pytest.mark.parametrize(
    "tname,long_rows", [(t, False) for t in ALL_TYPES] + [(t, True) for t in ALL_TYPES if t not in FLOAT_TYPES]
)  # float weights have no multi-row kernel: one row length for them
@pytest.mark.parametrize("n_out", [1, 2, 3, 5, 7, 13, 38])
def test_decode_gemv_odd_row_counts(tname: str, long_rows: bool, n_out: int, pools) -> None:
    """The multi-row decode kernel (2 rows per pass; 4 for rows of at most 512 bytes: 512 inputs are short rows
    for every quantized type but Q8_0, 2048 long ones for all) on row counts that leave rows over: each row equals
    the same token's row of a GEMM (tile kernels) bit for bit, stays within float rounding of the plain C
    reference, and is right against numpy; also through matmul_id (one token, several experts)."""
    rng = np.random.default_rng(100 + n_out + 1000 * long_rows)
    n_in = (2048 if long_rows else 512) if tname not in FLOAT_TYPES else 80
    raw, deq = make_weight(tname, (3, n_out, n_in), rng)
    w = QWeight(np.ascontiguousarray(raw[1]), GGMLType[tname], (n_out, n_in))
    x = (rng.standard_normal((3, n_in)) * rng.uniform(0.1, 10, size=(3, 1))).astype(np.float32)
    y_gemm = matmul(pools[1], w, x)
    for t in range(3):
        y = matmul(pools[2], w, x[t])
        assert np.array_equal(y, y_gemm[t]), t
        check_against_numpy(tname, y[None], deq[1], x[t : t + 1])
    if lib.mg_cpu_simd_level() >= 1:
        lib.mg_set_simd_level(0)
        y_ref = matmul(pools[1], w, x[0])
        lib.mg_set_simd_level(1)
        xq, _ = act_reference(tname, x[:1])
        tol = 4e-6 * np.sqrt(n_in) * (np.abs(xq) @ np.abs(deq[1]).T)[0] + 1e-30
        assert np.all(np.abs(y_gemm[0] - y_ref) <= tol), f"{tname}: decode SIMD vs scalar {np.abs(y_gemm[0] - y_ref).max()}"
    w3 = QWeight(raw, GGMLType[tname], (3, n_out, n_in))
    ids = np.array([[2, 0, 1]], dtype=np.int32)
    y3 = matmul_id(pools[2], w3, x[:1], ids)
    for s, e in enumerate(ids[0]):
        want = matmul(pools[1], QWeight(np.ascontiguousarray(raw[e]), GGMLType[tname], (n_out, n_in)), x[:2])[0]
        assert np.array_equal(y3[0, s], want), (s, e)


@pytest.mark.parametrize("tname", ["Q4_0", "Q5_0", "Q8_0", "Q4_1", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K"])
def test_every_tile_width_matches_gemv(tname: str, pools) -> None:
    """GEMMs of 1..9 tokens (every tile width the kernels have, and one over) give each token the bits of its
    own decode GEMV."""
    rng = np.random.default_rng(21)
    raw, _ = make_weight(tname, (6, 512), rng)
    w = QWeight(raw, GGMLType[tname], (6, 512))
    x = rng.standard_normal((9, 512)).astype(np.float32)
    single = np.stack([matmul(pools[1], w, x[t]) for t in range(9)])
    for k in range(1, 10):
        assert np.array_equal(matmul(pools[1], w, x[:k]), single[:k]), k


def test_read_bandwidth(pools) -> None:
    gbs = read_bandwidth(pools[2], 2, nbytes=8 << 20, repeats=1)
    assert isinstance(gbs, float) and 0.1 < gbs < 10_000
    with pytest.raises(ValueError):
        read_bandwidth(pools[2], 3)  # more threads than the pool has
    with pytest.raises(ValueError):
        read_bandwidth(pools[1], 1, nbytes=1000)
    with pytest.raises(TypeError):
        read_bandwidth(pools[1], 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_bandwidth(None, 1)  # type: ignore[arg-type]


def test_from_gguf_file(tmp_path, pools) -> None:
    """QWeight.from_gguf over a GGUF written by gguf-py's writer: 2-D and 3-D (expert) tensors, zero-copy."""
    from moe_gguf.gguf import GGUFFile

    rng = np.random.default_rng(21)
    raw2, deq2 = make_weight("Q6_K", (24, 512), rng)
    raw3, deq3 = make_weight("IQ4_NL", (4, 16, 64), rng)
    path = tmp_path / "w.gguf"
    wr = gguf.GGUFWriter(str(path), "test")
    wr.add_tensor("mat.weight", raw2, raw_dtype=GQ.Q6_K)
    wr.add_tensor("exps.weight", raw3, raw_dtype=GQ.IQ4_NL)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    f = GGUFFile(path)
    w2 = QWeight.from_gguf(f, "mat.weight")
    w3 = QWeight.from_gguf(f, "exps.weight")
    assert (w2.shape, w2.ggml_type) == ((24, 512), GGMLType.Q6_K)
    assert (w3.shape, w3.n_expert) == ((4, 16, 64), 4)
    assert np.shares_memory(w2.data, f.tensor("mat.weight"))
    x = rng.standard_normal((3, 512)).astype(np.float32)
    check_against_numpy("Q6_K", matmul(pools[2], w2, x), deq2, x)
    x3 = rng.standard_normal((2, 64)).astype(np.float32)
    ids = np.array([[3, 1], [0, 3]], np.int32)
    y3 = matmul_id(pools[2], w3, x3, ids)
    for t in range(2):
        for s in range(2):
            check_against_numpy("IQ4_NL", y3[t, s][None], deq3[ids[t, s]], x3[t : t + 1])
    with pytest.raises(KeyError):
        QWeight.from_gguf(f, "missing.weight")


def test_out_parameter_and_empty(pools) -> None:
    rng = np.random.default_rng(1)
    raw, deq = make_weight("Q8_0", (16, 64), rng)
    w = QWeight(raw, GGMLType.Q8_0, (16, 64))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    out = np.full((4, 16), np.nan, dtype=np.float32)
    assert matmul(pools[2], w, x, out=out) is out
    assert np.array_equal(out, matmul(pools[2], w, x))
    assert matmul(pools[2], w, np.zeros((0, 64), np.float32)).shape == (0, 16)


def test_bad_arguments(pools) -> None:
    rng = np.random.default_rng(2)
    raw, _ = make_weight("Q4_K", (8, 512), rng)
    w = QWeight(raw, GGMLType.Q4_K, (8, 512))
    x = rng.standard_normal((2, 512)).astype(np.float32)
    with pytest.raises(ValueError, match="block size"):
        QWeight(np.zeros((8, 144), np.uint8), GGMLType.Q4_K, (8, 250))
    with pytest.raises(ValueError, match="block size"):
        QWeight(np.zeros((8, 18 * 3), np.uint8), GGMLType.Q4_0, (8, 100))
    with pytest.raises(ValueError, match="bytes"):
        QWeight(raw[:, :-1].copy(), GGMLType.Q4_K, (8, 512))
    with pytest.raises(TypeError):
        QWeight(raw.view(np.int8), GGMLType.Q4_K, (8, 512))
    with pytest.raises(ValueError, match="does not support"):
        QWeight(raw, GGMLType.IQ2_XXS, (8, 512))
    with pytest.raises(ValueError, match="unknown"):
        QWeight(raw, 99, (8, 512))
    with pytest.raises(ValueError, match="C-contiguous"):
        QWeight(np.zeros((8, 64), np.float32)[:, ::2], GGMLType.F32, (8, 32))
    with pytest.raises(TypeError, match="float32"):
        matmul(pools[1], w, x.astype(np.float64))
    with pytest.raises(ValueError, match="n_in"):
        matmul(pools[1], w, x[:, :256].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul(pools[1], w, np.ones((2, 1024), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="out must be"):
        matmul(pools[1], w, x, out=np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        xx = np.zeros((8, 512), np.float32)
        matmul(pools[1], QWeight(np.zeros((512, 512), np.float32), GGMLType.F32, (512, 512)), xx, out=xx)
    with pytest.raises(ValueError, match="2-D"):
        matmul(pools[1], QWeight(np.zeros((2, 8, 144), np.uint8), GGMLType.Q4_K, (2, 8, 256)), x[:, :256].copy())
    w3 = QWeight(np.zeros((4, 8, 144), np.uint8), GGMLType.Q4_K, (4, 8, 256))
    x3 = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="expert ids"):
        matmul_id(pools[1], w3, x3, np.array([[0, 4], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="expert ids"):
        matmul_id(pools[1], w3, x3, np.array([[0, -1], [1, 2]], np.int32))
    with pytest.raises(TypeError, match="int32"):
        matmul_id(pools[1], w3, x3, np.array([[0, 1], [1, 2]], np.int64))
    with pytest.raises(ValueError, match="x must be"):
        matmul_id(pools[1], w3, np.ones((3, 256), np.float32), np.array([[0, 1], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="3-D"):
        matmul_id(pools[1], w, x, np.array([[0], [1]], np.int32))
    with pytest.raises(TypeError):
        matmul("pool", w, x)  # type: ignore[arg-type]


def test_thread_pool_lifecycle() -> None:
    assert physical_cores() >= 1
    with ThreadPool() as p:
        assert p.n_threads == physical_cores()
    with pytest.raises(ValueError):
        ThreadPool(0)
    with pytest.raises(TypeError):
        ThreadPool(2.5)  # type: ignore[arg-type]
    p = ThreadPool(3)
    raw = np.zeros((64, 1024), np.float32)
    w = QWeight(raw, GGMLType.F32, (64, 1024))
    x = np.ones((8, 1024), np.float32)
    for _ in range(200):  # many back-to-back jobs through the same workers
        assert not matmul(p, w, x).any()
    with p.lock:
        assert lib.mg_pool_n_threads(p.handle()) == 3
    p.close()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        matmul(p, w, x)
    with pytest.raises(ValueError, match="closed"):
        p.handle()


def test_pool_from_another_process_is_refused() -> None:
    import os

    p = ThreadPool(2)
    w = QWeight(np.zeros((4, 32), np.float32), GGMLType.F32, (4, 32))
    pid = os.fork()
    if pid == 0:  # child: the workers are gone, so the pool must refuse rather than hang
        try:
            matmul(p, w, np.ones(32, np.float32))
            code = 1
        except RuntimeError:
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not matmul(p, w, np.ones(32, np.float32)).any()
    p.close()


def test_pool_shared_by_python_threads(pools) -> None:
    rng = np.random.default_rng(4)
    raw, _ = make_weight("Q4_0", (256, 1024), rng)
    w = QWeight(raw, GGMLType.Q4_0, (256, 1024))
    xs = [rng.standard_normal((4, 1024)).astype(np.float32) for _ in range(4)]
    want = [matmul(pools[1], w, x) for x in xs]
    got: list[list[np.ndarray]] = [[] for _ in xs]

    def work(i: int) -> None:
        for _ in range(10):
            got[i].append(matmul(pools[2], w, xs[i]))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(4):
        assert len(got[i]) == 10 and all(np.array_equal(g, want[i]) for g in got[i])


LLAMA_CPP_DIR = "/work/scratch/llama_cpp_python-0.3.36/vendor/llama.cpp"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(os.path.join(LLAMA_CPP_DIR, "ggml", "include", "ggml.h")),
                    reason="no llama.cpp tree")
def test_bench_llama_cpp_harness() -> None:
    """tools/ggml_mm_bench.c builds against ggml and times a matmul, a repacked matmul and an expert matmul."""
    spec = importlib.util.spec_from_file_location("bench_kernels", Path(__file__).parents[1] / "tools" / "bench_kernels.py")
    bk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bk)  # type: ignore[union-attr]
    ll = bk.LlamaCpp(LLAMA_CPP_DIR)
    t, repacked = ll.time("Q4_K", (64, 512), 4, 1, 1, 1)
    assert 0 < t < 10 and (repacked or lib.mg_cpu_simd_level() < 1)  # llama.cpp repacks Q4_K on AVX2 CPUs
    t, repacked = ll.time("Q8_0", (4, 24, 256), 1, 2, 1, 2)
    assert 0 < t < 10 and not repacked
