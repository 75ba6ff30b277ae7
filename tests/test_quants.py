"""Quant-format kernels against independent references.

* Decoding: random block bytes (fp16 scale fields forced finite) must decode bit-for-bit as the `gguf`
  package's numpy `dequantize` (Q8_K, absent from gguf-py, against a numpy transcription of its layout),
  on the scalar path and on the SIMD path.
* Legacy quantizers Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: byte-identical with `gguf.quants.quantize`.
* Q8_K activation quantizer: byte-identical with a numpy transcription of ggml's reference convention.
* K-quant / IQ4 quantizers: round-trip RMSE below a stated bound and never worse than naive min/max rounding
  to the same format (implemented here in numpy), on normal, Student-t and outlier-laden rows.
* F16: every one of the 65536 half values and random floats against numpy's conversions.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as GQ
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_gguf._kernels import lib
from moe_gguf.ggml_types import GGMLType
from moe_gguf.ops import quants as Q

HAS_SIMD = lib.mg_cpu_simd_level() >= 1
LEVELS = [0, 1] if HAS_SIMD else [0]

# byte offsets of the fp16 scale fields in each block (ggml-common.h)
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
}
BLOCK_TYPES = list(F16_FIELDS) + ["Q8_K"]
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
SEARCHED = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


@pytest.fixture(params=LEVELS, ids=lambda l: "simd" if l else "scalar")
def simd_level(request):
    prev = lib.mg_get_simd_level()
    assert lib.mg_set_simd_level(request.param) == request.param
    yield request.param
    lib.mg_set_simd_level(prev)


def _with_level(level: int, fn, *args, **kw):
    prev = lib.mg_get_simd_level()
    lib.mg_set_simd_level(level)
    try:
        return fn(*args, **kw)
    finally:
        lib.mg_set_simd_level(prev)


def _finite_f16_fields(raw: np.ndarray, name: str) -> np.ndarray:
    """Clear one exponent bit of any inf/NaN fp16 scale field, so every scale is finite."""
    raw = raw.copy()
    for off in F16_FIELDS.get(name, []):
        h = raw[:, off : off + 2].copy().view(np.uint16)
        bad = (h & 0x7C00) == 0x7C00
        h[bad] &= np.uint16(0xBFFF)
        raw[:, off : off + 2] = h.view(np.uint8)
    return raw


def _q8_K_ref_dequant(raw: np.ndarray) -> np.ndarray:
    d = raw[:, :4].copy().view(np.float32)
    qs = raw[:, 4:260].view(np.int8).astype(np.float32)
    return d * qs


def _ref_dequant(raw: np.ndarray, name: str) -> np.ndarray:
    if name == "Q8_K":
        return _q8_K_ref_dequant(raw)
    return gguf_dequantize(raw, GQ[name])


# ------------------------------------------------------------------------------------------ geometry


def test_block_geometry_matches_gguf():
    for name in BLOCK_TYPES + ["F32", "F16", "BF16"]:
        bs, bb = GGML_QUANT_SIZES[GQ[name]]
        t = int(GGMLType[name])
        assert (lib.mg_type_block_size(t), lib.mg_type_block_bytes(t)) == (bs, bb), name
    assert lib.mg_type_block_size(int(GGMLType.IQ2_XXS)) == 0
    assert lib.mg_type_block_bytes(999) == 0


# ------------------------------------------------------------------------------------ dequantization


@pytest.mark.parametrize("name", BLOCK_TYPES)
@settings(max_examples=40)
@given(data=st.data())
def test_dequant_random_blocks_bit_exact(name, data):
    bs, bb = GGML_QUANT_SIZES[GQ[name]]
    nblocks = data.draw(st.integers(1, 3), label="nblocks")
    raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * bb, max_size=nblocks * bb)), dtype=np.uint8)
    raw = raw.reshape(nblocks, bb)
    if name == "Q8_K":  # f32 scale: force finite
        d = raw[:, :4].copy().view(np.uint32)
        d[(d & 0x7F800000) == 0x7F800000] &= np.uint32(0xBFFFFFFF)
        raw = raw.copy()
        raw[:, :4] = d.view(np.uint8)
    else:
        raw = _finite_f16_fields(raw, name)
    with np.errstate(all="ignore"):
        ref = _ref_dequant(raw, name).reshape(-1)
    for level in LEVELS:
        out = _with_level(level, Q.dequantize, raw, GGMLType[name], (nblocks * bs,))
        assert out.dtype == np.float32 and out.shape == (nblocks * bs,)
        np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32), err_msg=f"{name} level {level}")


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_dequant_many_rows_matches_reference(name, simd_level):
    """A whole multi-row tensor (one C call) against the reference, including odd byte alignment."""
    bs, bb = GGML_QUANT_SIZES[GQ[name]]
    rng = np.random.default_rng(7)
    shape = (3, 5, 4 * bs)
    raw = rng.integers(0, 256, size=(int(np.prod(shape[:-1])) * 4, bb), dtype=np.uint8)
    if name == "Q8_K":
        raw[:, :4] = rng.standard_normal(raw.shape[0]).astype(np.float32).view(np.uint8).reshape(-1, 4)
    else:
        raw = _finite_f16_fields(raw, name)
    with np.errstate(all="ignore"):
        ref = _ref_dequant(raw, name).reshape(shape)
    # misaligned copy of the bytes (offset 1 inside a larger buffer)
    buf = np.empty(raw.size + 1, dtype=np.uint8)[1:]
    buf[:] = raw.reshape(-1)
    out = Q.dequantize(buf, GGMLType[name], shape)
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


def test_f16_all_halves_and_random_floats(simd_level):
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ref = halves.view(np.float16).astype(np.float32)
    out = Q.dequantize(halves.view(np.uint8), GGMLType.F16, (65536,))
    nan = np.isnan(ref)
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(out[nan]).all()
    # f32 -> f16 (quantize to F16): round trip of every half value, and random floats of every magnitude
    back = Q.quantize(ref, GGMLType.F16).view(np.uint16).reshape(-1)
    np.testing.assert_array_equal(back[~nan], halves[~nan])
    assert np.isnan(back[nan].view(np.float16)).all()
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.concatenate([x, np.float32(2.0) ** np.arange(-30, 17, dtype=np.float32) * np.float32(1.0 + 2**-11)])
    with np.errstate(all="ignore"):
        expect = x.astype(np.float16).view(np.uint16)
    got = Q.quantize(x, GGMLType.F16).view(np.uint16).reshape(-1)
    fin = ~np.isnan(x)
    np.testing.assert_array_equal(got[fin], expect[fin])
    assert np.isnan(got[~fin].view(np.float16)).all()


def test_bf16_both_ways():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        expect = gguf_quantize(x.reshape(1, -1), GQ.BF16).view(np.uint16).reshape(-1)
    got = Q.quantize(x, GGMLType.BF16).view(np.uint16).reshape(-1)
    np.testing.assert_array_equal(got, expect)
    back = Q.dequantize(got, GGMLType.BF16, got.shape)
    np.testing.assert_array_equal(back.view(np.uint32), got.astype(np.uint32) << 16)


def test_f32_passthrough():
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    q = Q.quantize(x, GGMLType.F32)
    assert q.shape == (4, 256)
    np.testing.assert_array_equal(Q.dequantize(q, GGMLType.F32, x.shape), x)


# ---------------------------------------------------------------------------------- legacy quantizers


row_strategy = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s))


def _test_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    if kind == 0:
        x = rng.standard_normal((3, n))
    elif kind == 1:
        x = rng.standard_t(2.0, size=(3, n))
    elif kind == 2:
        x = rng.standard_normal((3, n)) * 0.02
        idx = rng.integers(0, n, size=(3, 4))
        np.put_along_axis(x, idx, rng.choice([-1, 1], size=(3, 4)) * rng.uniform(1, 5, size=(3, 4)), axis=1)
    elif kind == 3:  # small integers: exact ties in rounding
        x = rng.integers(-16, 17, size=(3, n)) / 2.0
    else:
        x = rng.uniform(-1, 1, size=(3, n)) * 10.0 ** rng.uniform(-6, 4)
    return x.astype(np.float32)


@pytest.mark.parametrize("name", LEGACY)
@settings(max_examples=60)
@given(rng=row_strategy)
def test_legacy_quantizers_byte_identical_to_gguf(name, rng):
    x = _test_rows(rng, 128)
    expect = gguf_quantize(x, GQ[name])
    for level in LEVELS:
        got = _with_level(level, Q.quantize, x, GGMLType[name])
        np.testing.assert_array_equal(got, expect.reshape(got.shape), err_msg=f"{name} level {level}")


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_edge_rows(name):
    bs = 32
    rows = np.stack([
        np.zeros(bs * 2),
        np.full(bs * 2, 3.25),
        np.full(bs * 2, -7.0),
        np.r_[np.full(bs, 60000.0), -np.full(bs, 65504.0)],  # huge but within MAX_ABS
        np.full(bs * 2, 1e-41),  # subnormal: scale underflows / 1/d overflows
        np.r_[np.full(bs, 3e-39), np.linspace(-1e-30, 1e-30, bs)],
        np.r_[127.0, np.arange(-15, 16) + 0.5, -127.0, np.arange(-15, 16) - 0.5],  # exact .5 ties for Q8_0 (d = 1)
    ]).astype(np.float32)
    with np.errstate(all="ignore"):
        expect = gguf_quantize(rows, GQ[name])
    for level in LEVELS:
        got = _with_level(level, Q.quantize, rows, GGMLType[name])
        np.testing.assert_array_equal(got, expect, err_msg=f"level {level}")
    deq = Q.dequantize(got, GGMLType[name], rows.shape)
    assert np.all(deq[0] == 0)
    if name == "Q8_0":  # ties round half away from zero (roundf), not half to even
        q = got[-1, 2:34].view(np.int8)
        np.testing.assert_array_equal(q[1:], np.trunc(rows[-1, 1:32] + np.copysign(0.5, rows[-1, 1:32])))
    np.testing.assert_allclose(deq[1:3], rows[1:3], rtol=2e-3)


# ------------------------------------------------------------------------------------------------ Q8_K


def _q8_K_ref(x: np.ndarray) -> np.ndarray:
    """numpy transcription of ggml's reference Q8_K convention (independent of our C code)."""
    blocks = x.reshape(-1, 256)
    out = np.zeros((blocks.shape[0], 292), dtype=np.uint8)
    for i, b in enumerate(blocks):
        j = int(np.argmax(np.abs(b)))
        mx = b[j]
        if mx == 0:
            continue
        iscale = np.float32(-127.0) / mx
        q = np.minimum(np.rint(iscale * b), 127).astype(np.int8)  # rint: half to even, as nearest_int
        out[i, :4] = np.array([np.float32(1.0) / iscale], dtype=np.float32).view(np.uint8)
        out[i, 4:260] = q.view(np.uint8)
        out[i, 260:] = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16).view(np.uint8)
    return out.reshape(x.shape[0], -1)


@settings(max_examples=60)
@given(rng=row_strategy)
def test_q8_K_matches_reference_convention(rng):
    x = _test_rows(rng, 512)
    expect = _q8_K_ref(x)
    for level in LEVELS:
        got = _with_level(level, Q.quantize, x, GGMLType.Q8_K)
        np.testing.assert_array_equal(got, expect, err_msg=f"level {level}")


def test_q8_K_ties_and_zero_block():
    x = np.zeros((1, 512), dtype=np.float32)
    x[0, 256:] = np.arange(256) % 9 - 4  # max magnitude 4 at several places, first one negative
    x[0, 300] = 4.0
    for level in LEVELS:
        got = _with_level(level, Q.quantize, x, GGMLType.Q8_K)
        np.testing.assert_array_equal(got, _q8_K_ref(x))
        assert not got[0, :292].any()


# ------------------------------------------------------------------------------------- input checking


def test_quantize_rejects_bad_input():
    x = np.ones((2, 256), dtype=np.float32)
    with pytest.raises(ValueError, match="Q4_K block size 256"):
        Q.quantize(np.ones((2, 100), dtype=np.float32), GGMLType.Q4_K)
    with pytest.raises(TypeError, match="float32"):
        Q.quantize(x.astype(np.float64), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="C-contiguous"):
        Q.quantize(np.ones((256, 2), dtype=np.float32).T, GGMLType.Q8_0)
    with pytest.raises(ValueError, match="supported types"):
        Q.quantize(x, GGMLType.IQ2_XXS)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 7] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            Q.quantize(y, GGMLType.Q4_0)
    with pytest.raises(ValueError, match="exceeds"):
        Q.quantize(x * 1e6, GGMLType.Q8_0)
    with pytest.raises(ValueError, match="takes no imatrix"):
        Q.quantize(x, GGMLType.Q8_0, imatrix=np.ones(256, dtype=np.float32))
    with pytest.raises(ValueError, match="imatrix must have shape"):
        Q.quantize(x, GGMLType.Q4_K, imatrix=np.ones(128, dtype=np.float32))
    with pytest.raises(ValueError, match="imatrix must be finite"):
        Q.quantize(x, GGMLType.Q4_K, imatrix=np.full(256, -1, dtype=np.float32))


def test_dequantize_rejects_bad_input():
    raw = np.zeros((2, 144), dtype=np.uint8)
    with pytest.raises(ValueError, match="needs 288"):
        Q.dequantize(raw[:, :100].copy(), GGMLType.Q4_K, (2, 256))
    with pytest.raises(ValueError, match="block size 256"):
        Q.dequantize(raw, GGMLType.Q4_K, (2, 128))
    with pytest.raises(ValueError, match="supported types"):
        Q.dequantize(raw, GGMLType.IQ2_XXS, (2, 256))
    with pytest.raises(TypeError, match="dtype"):
        Q.dequantize(raw.astype(np.int32), GGMLType.Q4_K, (2, 256))
    with pytest.raises(ValueError, match="C-contiguous"):
        Q.dequantize(np.zeros((144, 2), dtype=np.uint8).T, GGMLType.Q4_K, (2, 256))
    assert Q.dequantize(np.zeros(0, dtype=np.uint8), GGMLType.Q4_K, (0, 256)).shape == (0, 256)


def test_c_entry_points_reject_bad_sizes():
    from moe_gguf._kernels import ffi

    buf = ffi.new("float[]", 64)
    assert lib.mg_dequantize_row(int(GGMLType.Q4_0), buf, buf, 31) == -2
    assert lib.mg_dequantize_row(int(GGMLType.IQ2_XXS), buf, buf, 32) == -1
    assert lib.mg_quantize_row(int(GGMLType.Q8_0), buf, ffi.NULL, 32, ffi.NULL) == -2
    buf[3] = float("nan")
    out = ffi.new("uint8_t[]", 68)
    assert lib.mg_quantize_row(int(GGMLType.Q8_0), buf, out, 64, ffi.NULL) == -4


# ------------------------------------------------------------------ K-quant / IQ4 quantizers (searches)
# Naive baseline: plain min/max (or max-magnitude) rounding into the SAME format (same block layout, same
# sub-block scale bits, fp16 super-block scales), written here in numpy independently of the C code.

F = np.float32
IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def _f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def _signed_absmax(b):
    """value of largest magnitude along the last axis (first occurrence) and the magnitude"""
    i = np.abs(b).argmax(-1)[..., None]
    mx = np.take_along_axis(b, i, -1)[..., 0]
    return mx, np.abs(mx)


def _rint(v):
    """round half to even; non-finite (only when a scale underflows and its inverse overflows) -> 0, whose
    scale is then 0 anyway"""
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.rint(v), nan=0.0, posinf=0.0, neginf=0.0)


def _safe_div(a, b):
    with np.errstate(all="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, F(1)), F(0)).astype(F)


def naive_affine(x, sub, nmax, sbits):
    """x ~ dl*q - dm: per sub-block min/max (min clamped to <= 0), scales and mins rounded to sbits bits
    against fp16 super-block scales (max/(2^sbits - 1)), codes rounded with the final scales."""
    b = x.reshape(-1, 256 // sub, sub).astype(F)
    mn = np.minimum(b.min(-1), F(0))
    mx = b.max(-1)
    with np.errstate(all="ignore"):
        iscale = np.where(mx > mn, F(nmax) / (mx - mn), F(np.inf))
    scale = np.where(mx > mn, F(1) / iscale, F(0)).astype(F)
    mins = -mn
    smax = F((1 << sbits) - 1)
    ms = scale.max(-1, keepdims=True)
    mm = mins.max(-1, keepdims=True)
    with np.errstate(all="ignore"):
        ls = np.clip(_rint(_safe_div(smax, ms) * scale), 0, smax)
        lm = np.clip(_rint(_safe_div(smax, mm) * mins), 0, smax)
    d, dmin = _f16(ms / smax), _f16(mm / smax)
    dl = (d * ls)[..., None]
    dm = (dmin * lm)[..., None]
    q = np.clip(_rint(_safe_div(b + dm, dl)), 0, nmax)
    return (dl * q - dm).reshape(x.shape)


def naive_symmetric(x, sub, nmax, sbits):
    """x ~ dl*q, q in [-nmax, nmax): per sub-block scale max/-nmax, signed scales rounded to sbits bits."""
    b = x.reshape(-1, 256 // sub, sub).astype(F)
    mx, amx = _signed_absmax(b)
    tiny = amx < F(1e-15)
    with np.errstate(all="ignore"):
        iscale = F(-nmax) / np.where(tiny, F(1), mx)
        scale = np.where(tiny, F(0), F(1) / iscale).astype(F)
    half = F(1 << (sbits - 1))
    ms, ams = _signed_absmax(scale)
    with np.errstate(all="ignore"):
        isc = np.where(ams > 0, -half / np.where(ams > 0, ms, F(1)), F(0)).astype(F)[:, None]
        d = _f16(np.where(ams > 0, F(1) / isc[:, 0], F(0)))[:, None]
    with np.errstate(all="ignore"):
        ls = np.clip(_rint(isc * scale), -half, half - 1)
    dl = (d * ls)[..., None]
    q = np.clip(_rint(_safe_div(b, dl)), -nmax, nmax - 1)
    return (dl * q).reshape(x.shape)


def _grid_index(v):
    """nearest IQ4 grid value, ties to the larger one"""
    dist = np.abs(v[..., None] - IQ4_GRID)
    return 15 - dist[..., ::-1].argmin(-1)


def naive_iq4(x, xs):
    """IQ4: the value of largest magnitude of each 32-block maps onto grid[0] = -127; IQ4_XS rounds the block
    scales to signed 6 bits against d = -max_scale/32."""
    b = x.reshape(-1, 32).astype(F)
    mx, amx = _signed_absmax(b)
    s = np.where(amx < F(1e-15), F(0), mx / IQ4_GRID[0]).astype(F)
    if xs:
        s = s.reshape(-1, 8)
        ms, _ = _signed_absmax(s)
        d = (-ms / F(32)).astype(F)[:, None]
        with np.errstate(all="ignore"):
            ls = np.clip(_rint(_safe_div(F(1), d) * s), -32, 31)
        dq = (d * ls).reshape(-1, 1)
        dstore = (_f16(d) * ls).reshape(-1, 1)
    else:
        dq = s[:, None]
        dstore = _f16(dq)
    codes = _grid_index(_safe_div(F(1), dq) * b)
    return (dstore * IQ4_GRID[codes]).reshape(x.shape)


NAIVE = {
    "Q2_K": lambda x: naive_affine(x, 16, 3, 4),
    "Q4_K": lambda x: naive_affine(x, 32, 15, 6),
    "Q5_K": lambda x: naive_affine(x, 32, 31, 6),
    "Q3_K": lambda x: naive_symmetric(x, 16, 4, 6),
    "Q6_K": lambda x: naive_symmetric(x, 16, 32, 8),
    "IQ4_NL": lambda x: naive_iq4(x, False),
    "IQ4_XS": lambda x: naive_iq4(x, True),
}


# Stated bounds on the relative round-trip RMSE, sqrt(mean((x'-x)^2) / mean(x^2)) per row of 512, for rows
# that are normal, Student-t (3 degrees of freedom) and outlier-laden (N(0, 0.02) plus 4 spikes of 1..5).
# Measured maxima over 2000 rows each were Q2_K .29/.35/.27, Q3_K .16/.22/.10, Q4_K .078/.11/.090,
# Q5_K .040/.058/.091, Q6_K .020/.036/.037, IQ4_NL .083/.13/.083, IQ4_XS .083/.13/.10; the bounds add ~25%.
RMSE_BOUND = {
    "Q2_K": (0.36, 0.43, 0.33),
    "Q3_K": (0.20, 0.27, 0.12),
    "Q4_K": (0.098, 0.14, 0.112),
    "Q5_K": (0.05, 0.073, 0.113),
    "Q6_K": (0.025, 0.046, 0.046),
    "IQ4_NL": (0.104, 0.166, 0.104),
    "IQ4_XS": (0.104, 0.165, 0.126),
}
KINDS = ("normal", "student_t", "outliers")


def _kind_rows(rng: np.random.Generator, kind: str, n: int = 3, m: int = 512) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal((n, m)) * 10.0 ** rng.uniform(-3, 3)
    elif kind == "student_t":
        x = rng.standard_t(3.0, size=(n, m))
    else:
        x = rng.standard_normal((n, m)) * 0.02
        k = m // 128
        idx = rng.integers(0, m, size=(n, k))
        np.put_along_axis(x, idx, rng.choice([-1, 1], size=(n, k)) * rng.uniform(1, 5, size=(n, k)), axis=1)
    return x.astype(np.float32)


def _row_rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=-1))


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25)
@given(rng=row_strategy)
def test_searched_quantizers_rmse_bound_and_never_worse_than_naive(name, kind, rng):
    x = _kind_rows(rng, kind)
    q = Q.quantize(x, GGMLType[name])
    # decode with gguf-py's numpy dequantizer: an independent check of the block layout we write
    dec = gguf_dequantize(q, GQ[name]).reshape(x.shape)
    err = _row_rmse(dec, x)
    rel = err / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1))
    bound = RMSE_BOUND[name][KINDS.index(kind)]
    assert np.all(rel <= bound), f"{name} {kind}: relative RMSE {rel.max():.4f} > {bound}"
    naive = _row_rmse(NAIVE[name](x), x)
    assert np.all(err <= naive * (1 + 1e-6)), f"{name} {kind}: {err} worse than naive {naive}"
    # and clearly better on average on non-degenerate data
    if kind != "outliers":
        assert err.mean() < naive.mean()


@pytest.mark.parametrize("name", SEARCHED)
def test_searched_quantizers_same_bytes_on_scalar_and_simd(name):
    rng = np.random.default_rng(11)
    x = _kind_rows(rng, "student_t", 4, 1024)
    imp = rng.lognormal(0.0, 1.0, 1024).astype(np.float32)
    outs = [_with_level(level, Q.quantize, x, GGMLType[name]) for level in LEVELS]
    outs_im = [_with_level(level, Q.quantize, x, GGMLType[name], imatrix=imp) for level in LEVELS]
    for o, oi in zip(outs[1:], outs_im[1:]):
        np.testing.assert_array_equal(o, outs[0])
        np.testing.assert_array_equal(oi, outs_im[0])
    # threads split rows only: same bytes
    big = np.tile(x, (300, 1))
    np.testing.assert_array_equal(Q.quantize(big, GGMLType[name], n_threads=2)[:4], outs[0])


@pytest.mark.parametrize("name", SEARCHED)
def test_imatrix_lowers_the_weighted_error(name):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    imp = rng.lognormal(0.0, 1.5, 512).astype(np.float32)
    with_im = gguf_dequantize(Q.quantize(x, GGMLType[name], imatrix=imp), GQ[name]).reshape(x.shape)
    without = gguf_dequantize(Q.quantize(x, GGMLType[name]), GQ[name]).reshape(x.shape)
    ew = float(np.sum(imp * (with_im - x) ** 2))
    e0 = float(np.sum(imp * (without - x) ** 2))
    assert ew < 0.9 * e0, f"{name}: weighted error {ew} with imatrix vs {e0} without"
    naive = float(np.sum(imp * (NAIVE[name](x) - x) ** 2))
    assert ew <= naive * (1 + 1e-6)


@pytest.mark.parametrize("name", SEARCHED)
def test_searched_quantizers_edge_rows(name):
    bs = 256
    rows = np.stack([
        np.zeros(2 * bs),                                   # all zeros -> exact zeros
        np.full(2 * bs, 0.75),                              # constant
        np.full(2 * bs, -3.0),
        np.r_[np.full(bs, 65504.0), np.linspace(-65504, 65504, bs)],  # largest accepted magnitude
        np.full(2 * bs, 1e-41),                             # subnormal
        np.r_[np.linspace(-1e-39, 1e-39, bs), np.zeros(bs)],
    ]).astype(np.float32)
    q = Q.quantize(rows, GGMLType[name])
    dec = Q.dequantize(q, GGMLType[name], rows.shape)
    np.testing.assert_array_equal(gguf_dequantize(q, GQ[name]).reshape(rows.shape), dec)
    assert np.all(np.isfinite(dec))
    assert np.all(dec[0] == 0)
    np.testing.assert_allclose(dec[1:3], rows[1:3], rtol=0.02)  # one code = the constant, up to scale rounding
    rel = _row_rmse(dec[3], rows[3]) / 65504.0
    assert rel < 2 * max(RMSE_BOUND[name])
    assert np.all(np.abs(dec[4:]) <= 1e-38)  # tiny blocks: scales underflow fp16, decode (near) zero
    assert np.all(_row_rmse(dec, rows) <= _row_rmse(NAIVE[name](rows), rows) * (1 + 1e-6))


# ---------------------------------------------------------------------- with the GGUF reader (views)


def test_dequantize_gguf_file_tensor_views(tmp_path):
    """Tensors written by gguf-py's GGUFWriter, read back as zero-copy (read-only, mmap) views by our reader,
    decode as gguf-py decodes the same bytes."""
    import gguf as gguf_py

    from moe_gguf.gguf import GGUFFile

    rng = np.random.default_rng(21)
    path = tmp_path / "q.gguf"
    w = gguf_py.GGUFWriter(str(path), "test")
    x = rng.standard_normal((3, 512)).astype(np.float32)
    expected = {"f32": x, "f16": x.astype(np.float16).astype(np.float32)}
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    bf = gguf_quantize(x, GQ.BF16)
    w.add_tensor("bf16", bf, raw_dtype=GQ.BF16)
    expected["bf16"] = gguf_dequantize(bf, GQ.BF16).reshape(x.shape)
    for name in BLOCK_TYPES:
        if name == "Q8_K":
            continue  # not a weight type; gguf-py cannot decode it
        q = Q.quantize(x, GGMLType[name])
        w.add_tensor(name.lower(), q, raw_dtype=GQ[name])
        expected[name.lower()] = gguf_dequantize(q, GQ[name]).reshape(x.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(path) as f:
        for tname, exp in expected.items():
            info = f.tensors[tname]
            view = f.tensor(tname)
            out = Q.dequantize(view, info.ggml_type, info.shape)
            assert out.shape == x.shape
            np.testing.assert_array_equal(out.view(np.uint32), exp.view(np.uint32), err_msg=tname)
            del view


# ------------------------------------------------------------------------------------- slow, larger


@pytest.mark.slow
@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_slow_dequant_many_random_blocks(name):
    bs, bb = GGML_QUANT_SIZES[GQ[name]]
    rng = np.random.default_rng(31)
    raw = rng.integers(0, 256, size=(20000, bb), dtype=np.uint8)
    if name == "Q8_K":
        raw[:, :4] = rng.standard_normal(raw.shape[0]).astype(np.float32).view(np.uint8).reshape(-1, 4)
    else:
        raw = _finite_f16_fields(raw, name)
    with np.errstate(all="ignore"):
        ref = _ref_dequant(raw, name).reshape(-1)
    for level in LEVELS:
        out = _with_level(level, Q.dequantize, raw, GGMLType[name], (20000 * bs,))
        np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("kind", KINDS)
def test_slow_searched_quantizers_wide_rows(name, kind):
    x = _kind_rows(np.random.default_rng(32), kind, 64, 4096)
    dec = gguf_dequantize(Q.quantize(x, GGMLType[name]), GQ[name]).reshape(x.shape)
    err = _row_rmse(dec, x)
    rel = err / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1))
    assert np.all(rel <= RMSE_BOUND[name][KINDS.index(kind)])
    assert np.all(err <= _row_rmse(NAIVE[name](x), x) * (1 + 1e-6))


def test_fallback_type_as_llama_quantize():
    T = GGMLType
    assert Q.fallback_type(T.Q4_K, 2048) == T.Q4_K
    # DeepSeek-V2-Lite ffn_down_exps: rows of 1408 = 5.5 * 256
    assert [Q.fallback_type(t, 1408) for t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS)] == [
        T.Q4_0, T.Q4_0, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL]  # llama.cpp's tensor_type_fallback (src/llama-quant.cpp)
    assert Q.fallback_type(T.Q4_K, 100) == T.F16  # not even a multiple of 32
    assert Q.fallback_type(T.Q8_0, 100) == T.F16
    assert Q.fallback_type(T.F32, 7) == T.F32
    for t in (T.Q2_K, T.Q4_K, T.Q6_K, T.IQ4_XS):  # the fallback always quantizes
        x = np.random.default_rng(0).standard_normal((2, 1408)).astype(np.float32)
        fb = Q.fallback_type(t, 1408)
        assert Q.quantize(x, fb).shape == (2, Q.row_bytes(fb, 1408))


# ------------------------------------------------------------------------------------- Q8_0 activations


def _q8_0_act_ref(x: np.ndarray) -> np.ndarray:
    """numpy transcription of llama.cpp's x86 (AVX2) activation quantizer quantize_row_q8_0: d = amax/127 stored
    as f16, multiplier 127/amax (not 1/d), round half to even (np.rint); written from the documented formula."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    out = np.zeros((blocks.shape[0], 34), dtype=np.uint8)
    amax = np.max(np.abs(blocks), axis=1)
    out[:, :2] = (amax / np.float32(127)).astype(np.float16).reshape(-1, 1).view(np.uint8)
    with np.errstate(divide="ignore"):
        mul = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    ok = np.isfinite(mul)
    q = np.rint(blocks * np.where(ok, mul, 0)[:, None]).astype(np.int8)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(x.shape[0], -1)


def _act_q8_0(x: np.ndarray) -> np.ndarray:
    from moe_gguf._kernels import ffi

    n = x.shape[1]
    buf = np.zeros((x.shape[0], n // 32 * 40), np.uint8)
    for r in range(x.shape[0]):
        xr = np.ascontiguousarray(x[r], dtype=np.float32)
        assert lib.mg_quantize_act(int(GGMLType.Q8_0), ffi.cast("float *", xr.ctypes.data), ffi.from_buffer(buf[r]), n) == 0
    # the kernels' block (f32 d, int32 8 * sum, 32 int8) -> the Q8_0 block it carries (f16 d, 32 int8)
    blk = buf.reshape(x.shape[0], -1, 40)
    d = blk[..., :4].copy().view(np.float32)
    qs = blk[..., 8:]
    assert np.array_equal(blk[..., 4:8].copy().view(np.int32)[..., 0], 8 * qs.view(np.int8).astype(np.int64).sum(-1))
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
    assert np.array_equal(d16.astype(np.float32), d)  # an f16 value, exactly
    return np.concatenate([d16.view(np.uint8), qs], -1).reshape(x.shape[0], -1)


@settings(max_examples=60)
@given(rng=row_strategy)
def test_q8_0_activation_quantizer_matches_llamacpp_x86(rng):
    x = _test_rows(rng, 256)
    expect = _q8_0_act_ref(x)
    for level in LEVELS:
        np.testing.assert_array_equal(_with_level(level, _act_q8_0, x), expect, err_msg=f"level {level}")


def test_q8_0_activation_ties_zeros_extremes():
    rows = np.stack([
        np.r_[127.0, np.arange(-15, 16) + 0.5],  # 127/amax = 1: exact .5 ties -> half to even (0.5 -> 0, 1.5 -> 2)
        np.r_[-127.0, np.arange(-15, 16) - 0.5],
        np.zeros(32),
        np.r_[np.full(16, 65504.0), -np.full(16, 3e38)],  # huge, finite
        np.full(32, 1e-38),  # 127/amax overflows: quants 0 (d is 0 in f16 anyway)
        np.r_[2.5, np.full(31, 1.0)] * 50.8,  # x*127/amax vs x/(amax/127) round differently for some x
    ]).astype(np.float32)
    with np.errstate(all="ignore"):
        expect = _q8_0_act_ref(rows)
    for level in LEVELS:
        got = _with_level(level, _act_q8_0, rows)
        np.testing.assert_array_equal(got, expect, err_msg=f"level {level}")
    q = got[0, 2:].view(np.int8)
    np.testing.assert_array_equal(q[1:], np.rint(np.arange(-15, 16) + 0.5))  # half to even, unlike roundf
    assert not got[2].any() and not got[4, 2:].any()
    # the file quantizer (gguf-py's bytes) keeps roundf on the same row: the two conventions really are split
    file_q = Q.quantize(rows[:1], GGMLType.Q8_0)[0, 2:34].view(np.int8)
    np.testing.assert_array_equal(file_q[1:], np.trunc(rows[0, 1:] + np.copysign(0.5, rows[0, 1:])))
