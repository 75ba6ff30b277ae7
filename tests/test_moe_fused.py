"""The fused MoE FFN kernel (ops.moe.MoEFFN, csrc/moe.c) against the unfused path and numpy oracles.

Unfused reference: matmul_id / matmul per expert, silu_mul, then the slot-ordered weighted sum and the shared expert
in numpy float32 -- the same IEEE operations in the same order, so the fused result must match it bit for bit.
Independent oracle: gguf-py's numpy dequantizers and a float64 numpy FFN (up to activation quantization error).
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from moe_gguf import _kernels
from moe_gguf.ggml_types import GGMLType
from moe_gguf.ops import nn
from moe_gguf.ops.matmul import QWeight, ThreadPool, matmul, matmul_id
from moe_gguf.ops.moe import BoundLatentAttention, BoundRmsNorm, GemvBatch, MlaDecodePrep, MoEFFN, MoEWorkspace
from moe_gguf.ops.quants import quantize

D, F, FS, E = 256, 256, 512, 8
TYPES = [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F32]


@pytest.fixture(scope="module")
def pools():
    with ThreadPool(1) as p1, ThreadPool(2) as p2, ThreadPool(4) as p4:
        yield {1: p1, 2: p2, 4: p4}


def _qweight(rng: np.random.Generator, t: GGMLType, shape: tuple[int, ...]) -> QWeight:
    x = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    if t == GGMLType.F32:
        return QWeight(x, t, shape)
    raw = quantize(x.reshape(-1, shape[-1]), t)
    return QWeight(raw.reshape(*shape[:-1], -1), t, shape)


def _dense(w: QWeight) -> np.ndarray:
    """The oracle: gguf-py's numpy dequantizer (float64)."""
    if w.ggml_type == GGMLType.F32:
        return w.data.astype(np.float64)
    return gguf.quants.dequantize(w.data, gguf.GGMLQuantizationType(int(w.ggml_type))).astype(np.float64)


def _layer(seed: int, t_gu: GGMLType, t_down: GGMLType, shared: bool, merged: bool = False):
    rng = np.random.default_rng(seed)
    w: dict = {"down": _qweight(rng, t_down, (E, D, F))}
    if merged:
        w["gate_up"] = _qweight(rng, t_gu, (E, 2 * F, D))
    else:
        w["gate"] = _qweight(rng, t_gu, (E, F, D))
        w["up"] = _qweight(rng, t_gu, (E, F, D))
    if shared:  # the shared expert's down in a different type than the routed one
        w["shared"] = (_qweight(rng, t_gu, (FS, D)), _qweight(rng, t_gu, (FS, D)), _qweight(rng, GGMLType.Q6_K, (D, FS)))
    w["router"] = _qweight(rng, GGMLType.F32, (E, D))
    return w


def _route(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(n)]).astype(np.int32)
    return ids, rng.uniform(0.1, 1.0, (n, k)).astype(np.float32)


def _unfused(pool, w: dict, h: np.ndarray, ids: np.ndarray, wts: np.ndarray) -> np.ndarray:
    if "gate_up" in w:
        gu = matmul_id(pool, w["gate_up"], h, ids)
        a = nn.silu_mul(np.ascontiguousarray(gu[..., :F]), np.ascontiguousarray(gu[..., F:]))
    else:
        a = nn.silu_mul(matmul_id(pool, w["gate"], h, ids), matmul_id(pool, w["up"], h, ids))
    d = matmul_id(pool, w["down"], a, ids)
    y = wts[:, 0:1] * d[:, 0]
    for s in range(1, ids.shape[1]):
        y = y + wts[:, s : s + 1] * d[:, s]
    if "shared" in w:
        sg, su, sd = w["shared"]
        y = y + matmul(pool, sd, nn.silu_mul(matmul(pool, sg, h), matmul(pool, su, h)))
    return y


def _oracle(w: dict, h: np.ndarray, ids: np.ndarray, wts: np.ndarray) -> np.ndarray:
    h64 = h.astype(np.float64)
    down = _dense(w["down"]).reshape(E, D, F)
    if "gate_up" in w:
        gu = _dense(w["gate_up"]).reshape(E, 2 * F, D)
        gate, up = gu[:, :F], gu[:, F:]
    else:
        gate, up = _dense(w["gate"]).reshape(E, F, D), _dense(w["up"]).reshape(E, F, D)
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    y = np.zeros((h.shape[0], D))
    for t in range(h.shape[0]):
        for s in range(ids.shape[1]):
            e = ids[t, s]
            y[t] += wts[t, s] * down[e] @ (silu(gate[e] @ h64[t]) * (up[e] @ h64[t]))
    if "shared" in w:
        sg, su, sd = (_dense(x) for x in w["shared"])
        y += (silu(h64 @ sg.T) * (h64 @ su.T)) @ sd.T
    return y


def _ffn(w: dict, k: int, router: bool = False, **kw) -> MoEFFN:
    args = {n: w[n] for n in ("gate", "up", "gate_up", "shared") if n in w}
    if router:
        args["router"] = w["router"]
    return MoEFFN(w["down"], k, **args, **kw)


def _h(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


@pytest.mark.parametrize("t_gu", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shared", [False, True], ids=["routed", "shared"])
def test_fused_matches_unfused_and_oracle(pools, t_gu, shared):
    t_down = {GGMLType.Q4_K: GGMLType.Q8_0, GGMLType.Q6_K: GGMLType.Q6_K, GGMLType.Q8_0: GGMLType.Q4_K}.get(t_gu, t_gu)
    w = _layer(int(t_gu) * 2 + shared, t_gu, t_down, shared)
    for k, n in ((1, 1), (2, 3), (6, 1), (6, 5)):
        h = _h(n, k + n)
        ids, wts = _route(n, k, k * 10 + n)
        ffn = _ffn(w, k)
        out, _, _ = ffn(pools[2], h, ids, wts)
        np.testing.assert_array_equal(out, _unfused(pools[2], w, h, ids, wts))
        ref = _oracle(w, h, ids, wts)
        tol = 1e-5 if t_gu == GGMLType.F32 and t_down == GGMLType.F32 and not shared else 3e-2
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max(), (k, n)
        for nth in (1, 4):  # bit-identical for any thread count, and without a pool
            np.testing.assert_array_equal(ffn(pools[nth], h, ids, wts)[0], out)
        np.testing.assert_array_equal(ffn(None, h, ids, wts)[0], out)


def test_merged_gate_up(pools):
    w = _layer(7, GGMLType.Q4_K, GGMLType.Q6_K, True, merged=True)
    h = _h(2, 3)
    ids, wts = _route(2, 6, 4)
    out, _, _ = _ffn(w, 6)(pools[2], h, ids, wts)
    np.testing.assert_array_equal(out, _unfused(pools[2], w, h, ids, wts))
    ref = _oracle(w, h, ids, wts)
    assert np.abs(out - ref).max() <= 3e-2 * np.abs(ref).max()


@pytest.mark.parametrize("gating,norm,scale", [(1, False, 1.0), (2, True, 2.5)])
def test_router_inside(pools, gating, norm, scale):
    """Routing folded into the call gives moe_route's ids/weights on the router matmul, and the same output."""
    w = _layer(11, GGMLType.Q4_K, GGMLType.Q8_0, True)
    bias = np.linspace(-0.1, 0.1, E).astype(np.float32) if gating == 2 else None
    kw = dict(gating=gating, norm=norm, scale=scale, bias=bias)
    for n in (1, 4):
        h = _h(n, 20 + n)
        ffn = _ffn(w, 6, router=True, **kw)
        out, ids, wts = ffn(pools[2], h)
        ids_ref, wts_ref = nn.moe_route(matmul(pools[2], w["router"], h), 6, gating, bias, norm=norm, scale=scale)
        np.testing.assert_array_equal(ids, ids_ref)
        np.testing.assert_array_equal(wts, wts_ref)
        np.testing.assert_array_equal(out, _unfused(pools[2], w, h, ids_ref, wts_ref))
        for nth in (1, 4):
            o2, i2, w2 = ffn(pools[nth], h)
            np.testing.assert_array_equal(o2, out)
            np.testing.assert_array_equal(i2, ids)
        # preallocated outputs are filled in place
        o3, i3, w3 = np.empty_like(out), np.empty_like(ids), np.empty_like(wts)
        ffn(pools[2], h, i3, w3, out=o3)
        np.testing.assert_array_equal(o3, out)
        np.testing.assert_array_equal(i3, ids)


def test_grouped_sigmoid_routing(pools):
    w = _layer(12, GGMLType.Q8_0, GGMLType.Q8_0, False)
    bias = np.random.default_rng(0).uniform(-0.2, 0.2, E).astype(np.float32)
    ffn = _ffn(w, 2, router=True, gating=2, bias=bias, n_group=4, n_group_used=2, norm=True)
    h = _h(3, 5)
    out, ids, wts = ffn(pools[2], h)
    ids_ref, wts_ref = nn.moe_route(matmul(pools[2], w["router"], h), 2, 2, bias, 4, 2, True)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(wts, wts_ref)
    np.testing.assert_array_equal(out, _unfused(pools[2], w, h, ids, wts))


def test_shared_workspace_and_zero_tokens(pools):
    ws = MoEWorkspace()
    w1, w2 = _layer(1, GGMLType.Q4_0, GGMLType.Q4_0, True), _layer(2, GGMLType.Q6_K, GGMLType.Q6_K, False)
    f1, f2 = _ffn(w1, 2, workspace=ws), _ffn(w2, 2, workspace=ws)
    h = _h(2, 9)
    ids, wts = _route(2, 2, 1)
    a = f1(pools[2], h, ids, wts)[0].copy()
    f2(pools[2], h, ids, wts)
    np.testing.assert_array_equal(f1(pools[2], h, ids, wts)[0], a)
    assert ws.nbytes >= f1.work_bytes(2)
    out, _, _ = f1(pools[2], np.zeros((0, D), np.float32), np.zeros((0, 2), np.int32), np.zeros((0, 2), np.float32))
    assert out.shape == (0, D)


def test_bad_inputs(pools):
    w = _layer(3, GGMLType.Q4_K, GGMLType.Q8_0, True)
    ffn = _ffn(w, 2)
    h = _h(1, 0)
    ids, wts = _route(1, 2, 0)
    for bad in (np.array([[0, E]], np.int32), np.array([[-1, 0]], np.int32)):
        with pytest.raises(ValueError, match="expert ids"):
            ffn(pools[2], h, bad, wts)
    with pytest.raises(TypeError):
        ffn(pools[2], h, ids.astype(np.int64), wts)
    with pytest.raises(ValueError):
        ffn(pools[2], h, ids[:, :1].copy(), wts)
    with pytest.raises(ValueError, match="required"):
        ffn(pools[2], h)
    with pytest.raises(TypeError):
        ffn(pools[2], h.astype(np.float64), ids, wts)
    with pytest.raises(ValueError):
        ffn(pools[2], _h(1, 0)[:, :128].copy(), ids, wts)
    with pytest.raises(ValueError):
        ffn(pools[2], np.asfortranarray(_h(2, 0)), *_route(2, 2, 0))
    with pytest.raises(ValueError, match="overlap"):
        ffn(pools[2], h, ids, wts, out=h)
    with pytest.raises(TypeError):
        ffn("pool", h, ids, wts)
    # inconsistent weights are refused at construction
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 2, gate=w["gate"], up=_qweight(rng, GGMLType.Q4_K, (E, F, 2 * D)))
    with pytest.raises(ValueError):
        MoEFFN(w["down"], E + 1, gate=w["gate"], up=w["up"])
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 0, gate=w["gate"], up=w["up"])
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 2, gate=w["gate"])
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 2, gate=w["gate"], up=w["up"], shared=(w["shared"][0], w["shared"][1], w["down"]))
    with pytest.raises(TypeError):
        MoEFFN(w["down"], 2, gate=np.zeros((E, F, D), np.float32), up=w["up"])
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 2, gate=w["gate"], up=w["up"], router=w["router"], gating=3)
    with pytest.raises(ValueError):
        MoEFFN(w["down"], 6, gate=w["gate"], up=w["up"], router=w["router"], n_group=4, n_group_used=1)


def test_c_rejects_bad_arguments():
    """The C entry checks what it can on its own (NULL pointers, short scratch, ids out of range)."""
    ffi, lib = _kernels.ffi, _kernels.lib
    w = _layer(4, GGMLType.Q8_0, GGMLType.Q8_0, False)
    c = _ffn(w, 2)._c
    nb = ffi.new("size_t *")
    assert lib.mg_moe_ffn_work_bytes(c, 1, nb) == 0 and nb[0] > 0
    h, out = np.ones(D, np.float32), np.empty(D, np.float32)
    ids, wts = np.array([0, 1], np.int32), np.ones(2, np.float32)
    work = np.empty(nb[0], np.uint8)
    fb = ffi.from_buffer
    args = (fb("float[]", h), 1, fb("int32_t[]", ids), fb("float[]", wts), fb("float[]", out))
    assert lib.mg_moe_ffn(ffi.NULL, c, *args, fb("char[]", work), nb[0]) == 0
    assert lib.mg_moe_ffn(ffi.NULL, c, *args, fb("char[]", work), nb[0] - 1) == -2
    assert lib.mg_moe_ffn(ffi.NULL, c, *args, ffi.NULL, nb[0]) == -2
    ids[1] = E
    assert lib.mg_moe_ffn(ffi.NULL, c, *args, fb("char[]", work), nb[0]) == -2
    bad = ffi.new("mg_moe_weights *", c[0])
    bad.down_type = 99
    assert lib.mg_moe_ffn_work_bytes(bad, 1, nb) == -1


# ------------------------------------------------------------------------------------------- GemvBatch
@pytest.mark.parametrize("n_tok", [1, 3])
def test_gemv_batch_matches_matmul(pools, n_tok):
    """Shared inputs (quantized once per format), per-expert weights over strided head views, a second stage reading
    the first stage's output: every y equals matmul / matmul_id bit for bit, for any thread count."""
    rng = np.random.default_rng(n_tok)
    wa, wb = _qweight(rng, GGMLType.Q4_K, (96, D)), _qweight(rng, GGMLType.Q6_K, (64, D))
    wc = _qweight(rng, GGMLType.F32, (32, D))
    heads = _qweight(rng, GGMLType.Q8_0, (4, 64, 32))  # 4 per-head [64, 32] matrices
    wo = _qweight(rng, GGMLType.Q4_0, (D, 4 * 64))
    x = rng.standard_normal((n_tok, D)).astype(np.float32)
    q = rng.standard_normal((n_tok, 4, 32)).astype(np.float32)  # head h's input is the strided view q[:, h]
    ya, yb, yc = np.empty((n_tok, 96), np.float32), np.empty((n_tok, 64), np.float32), np.empty((n_tok, 32), np.float32)
    yh = np.empty((n_tok, 4, 64), np.float32)
    yo = np.empty((n_tok, D), np.float32)
    flat = yh.reshape(n_tok, 4 * 64)
    items = [(wa, x, ya, 0), (wb, x, yb, 0), (wc, x, yc, 0)]
    items += [((heads, h), q[:, h], yh[:, h], 0) for h in range(4)]
    items += [(wo, flat, yo, 1)]
    gb = GemvBatch(items)
    ref_h = matmul_id(pools[2], heads, q, np.tile(np.arange(4, dtype=np.int32), (n_tok, 1)))
    refs = [matmul(pools[2], wa, x), matmul(pools[2], wb, x), matmul(pools[2], wc, x), ref_h,
            matmul(pools[2], wo, ref_h.reshape(n_tok, -1))]  # fmt: skip
    for pool in (pools[1], pools[2], pools[4], None):
        for y in (ya, yb, yc, yh, yo):
            y.fill(np.nan)
        gb.run(pool)
        for y, ref in zip((ya, yb, yc, yh, yo), refs):
            np.testing.assert_array_equal(y, ref)
    # oracle: numpy dequantization (activation quantization error only)
    ref = x.astype(np.float64) @ _dense(wa).reshape(96, D).T
    assert np.abs(ya - ref).max() <= 2e-2 * np.abs(ref).max()
    # run() rereads the inputs
    x *= 2
    gb.run(pools[2])
    np.testing.assert_array_equal(ya, matmul(pools[2], wa, x))


def test_gemv_batch_bad_items():
    rng = np.random.default_rng(0)
    w2, w3 = _qweight(rng, GGMLType.Q8_0, (32, D)), _qweight(rng, GGMLType.Q8_0, (2, 32, D))
    x, y = np.zeros((1, D), np.float32), np.zeros((1, 32), np.float32)
    with pytest.raises(ValueError):
        GemvBatch([])
    with pytest.raises(ValueError, match="expert index"):
        GemvBatch([(w3, x, y, 0)])
    with pytest.raises(ValueError, match="expert index"):
        GemvBatch([((w3, 2), x, y, 0)])
    with pytest.raises(ValueError, match="shape"):
        GemvBatch([(w2, np.zeros((1, 128), np.float32), y, 0)])
    with pytest.raises(TypeError):
        GemvBatch([(w2, x.astype(np.float64), y, 0)])
    with pytest.raises(ValueError, match="contiguous"):
        GemvBatch([(w2, np.zeros((1, 2 * D), np.float32)[:, ::2], y, 0)])
    with pytest.raises(ValueError, match="stage"):
        GemvBatch([(w2, x, y, 4)])
    with pytest.raises(ValueError, match="overlaps"):
        GemvBatch([(w2, x, y, 0), ((w3, 1), x, y, 0)])
    with pytest.raises(ValueError, match="rows"):
        GemvBatch([(w2, x, y, 0), ((w3, 1), np.zeros((2, D), np.float32), np.zeros((2, 32), np.float32), 0)])
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros((1, 32), np.float32)
        ro.flags.writeable = False
        GemvBatch([(w2, x, ro, 0)])
    with pytest.raises(TypeError):
        GemvBatch([(np.zeros((32, D), np.float32), x, y, 0)])


# ------------------------------------------------------------------------------------------- DeepSeek-V2 decode
@pytest.fixture(scope="module")
def ds2_files(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_deepseek2 import build_hf, hf_logits, write_gguf

    tmp = tmp_path_factory.mktemp("ds2fused")
    lite = build_hf(seed=1)
    v2 = build_hf(seed=2, q_lora_rank=64, n_group=4, topk_group=2, routed_scaling_factor=1.5, version=3)
    files = {
        "lite": (lite, write_gguf(lite, tmp / "lite.gguf", "mla")),
        "lite_q8": (lite, write_gguf(lite, tmp / "lite_q8.gguf", "mla", qtype="Q8_0")),
        "v3_merged": (v2, write_gguf(v2, tmp / "v3.gguf", "mla", merge_gate_up=True)),
    }
    return files, hf_logits


@pytest.mark.parametrize("which", ["lite", "lite_q8", "v3_merged"])
@pytest.mark.parametrize("cache_type", ["f32", "f16"])
def test_deepseek2_lean_decode_equals_general_path(ds2_files, which, cache_type):
    """The lean decode step (fused C calls over preallocated buffers) gives the general path's logits bit for bit,
    and both stay within the parity tolerance of transformers."""
    from moe_gguf.models import load_model

    files, hf_logits = ds2_files
    hf, path = files[which]
    toks = np.random.default_rng(3).integers(0, 256, 24).astype(np.int32)
    lean, general = load_model(path, cache_type=cache_type), load_model(path, cache_type=cache_type)
    general.lean_decode = False
    outs = []
    for m in (lean, general):
        cache = m.new_cache()
        prompt = m.forward(toks[:8], cache, all_logits=True)
        outs.append(np.concatenate([prompt] + [m.forward(toks[i : i + 1], cache, all_logits=True) for i in range(8, 24)]))
    assert lean._decode, "the lean decode path was not used"
    assert general._decode is None
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = hf_logits(hf, toks)
    tol = 1e-3 if cache_type == "f32" and which != "lite_q8" else 3e-2
    assert np.abs(outs[0] - ref).max() <= tol * np.abs(ref).max()


def test_deepseek2_lean_decode_thread_counts(ds2_files):
    from moe_gguf.models import load_model

    files, _ = ds2_files
    toks = np.random.default_rng(4).integers(0, 256, 12).astype(np.int32)
    res = []
    for t in (1, 2, 3):
        m = load_model(files["lite_q8"][1], n_threads=t)
        cache = m.new_cache()
        res.append(np.stack([m.forward(toks[i : i + 1], cache) for i in range(len(toks))]))
    for r in res[1:]:
        np.testing.assert_array_equal(r, res[0])


# ------------------------------------------------------------------------------------------- bound decode ops
def test_bound_decode_ops_match_nn():
    """BoundRmsNorm / MlaDecodePrep / BoundLatentAttention give ops.nn's results bit for bit (f32 and f16 caches)."""
    rng = np.random.default_rng(5)
    H, QH, R, C, n_ctx, p0 = 4, 48, 16, 64, 12, 7
    inv = (1.0 / 10000 ** (np.arange(0, R, 2) / R)).astype(np.float32)
    norm_w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    x, w = rng.standard_normal((1, 96)).astype(np.float32), rng.uniform(0.5, 1.5, 96).astype(np.float32)
    out = np.empty_like(x)
    BoundRmsNorm(x, w, 1e-6, out).run()
    np.testing.assert_array_equal(out, nn.rms_norm(x, w, 1e-6))
    for dt in (np.float32, np.float16):
        q0 = rng.standard_normal((1, H, QH)).astype(np.float32)
        ckv0 = rng.standard_normal((1, C + R)).astype(np.float32)
        kv = rng.standard_normal((n_ctx, C + R)).astype(dt)
        q, ckv, qa = q0.copy(), ckv0.copy(), np.zeros((1, H, C + R), np.float32)
        kv_ref = kv.copy()
        MlaDecodePrep(q, qa, ckv, norm_w, 1e-6, inv, 1.1).run(kv, p0)
        pos = np.array([p0], np.int32)
        q_ref = q0.copy()
        nn.rope_(q_ref[:, :, QH - R :], pos, inv, 1.1)
        kpe = ckv0[:, None, C:].copy()
        nn.rope_(kpe, pos, inv, 1.1)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_array_equal(qa[:, :, C:], q_ref[:, :, QH - R :])
        kv_ref[p0, :C] = nn.rms_norm(ckv0[:, :C].copy(), norm_w, 1e-6)[0]
        kv_ref[p0, C:] = kpe[0, 0]
        np.testing.assert_array_equal(kv, kv_ref)  # the other rows untouched
        # attention over rows 0..p0 (oracle: ops.nn.latent_attention, itself tested against numpy)
        qa = rng.standard_normal((1, H, C + R)).astype(np.float32)
        o = np.empty((1, H, C), np.float32)
        with ThreadPool(2) as pool:
            BoundLatentAttention(qa, o, 0.1).run(pool, kv, p0)
            np.testing.assert_array_equal(o, nn.latent_attention(qa, kv, p0, C, 0.1, pool))
    with pytest.raises(ValueError, match="position"):
        MlaDecodePrep(q, qa, ckv, norm_w, 1e-6, inv, 1.0).run(kv, n_ctx)
    with pytest.raises(ValueError, match="position"):
        BoundLatentAttention(qa, o, 0.1).run(None, kv, -1)
    with pytest.raises(TypeError):
        MlaDecodePrep(q, qa, ckv, norm_w, 1e-6, inv, 1.0).run(kv.astype(np.float64), 0)
    with pytest.raises(ValueError):
        MlaDecodePrep(q, qa, ckv, norm_w, 1e-6, inv, 1.0).run(np.zeros((n_ctx, C), np.float32), 0)
    with pytest.raises(ValueError):
        MlaDecodePrep(q, qa[:, :, :C].copy(), ckv, norm_w, 1e-6, inv, 1.0)
    with pytest.raises(ValueError):
        BoundRmsNorm(x, w[:10].copy(), 1e-6, out)
    with pytest.raises(ValueError):
        BoundRmsNorm(x, w, 1e-6, np.empty((2, 96), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        BoundLatentAttention(qa, qa.reshape(-1)[: H * C].reshape(1, H, C), 0.1)


@pytest.mark.parametrize("t_gate,t_up", [(GGMLType.Q4_0, GGMLType.Q4_K), (GGMLType.Q4_K, GGMLType.Q6_K), (GGMLType.F32, GGMLType.Q8_0)])
def test_gate_up_types_differ(pools, t_gate, t_up):
    """Gate and up (and the shared expert's) in different types, so h is quantized into several formats."""
    rng = np.random.default_rng(int(t_gate) * 31 + int(t_up))
    w = {
        "gate": _qweight(rng, t_gate, (E, F, D)), "up": _qweight(rng, t_up, (E, F, D)),
        "down": _qweight(rng, GGMLType.Q4_K, (E, D, F)),
        "shared": (_qweight(rng, t_up, (FS, D)), _qweight(rng, GGMLType.Q4_1, (FS, D)), _qweight(rng, GGMLType.Q8_0, (D, FS))),
    }  # fmt: skip
    h = _h(2, 1)
    ids, wts = _route(2, 3, 2)
    out = _ffn(w, 3)(pools[2], h, ids, wts)[0]
    np.testing.assert_array_equal(out, _unfused(pools[2], w, h, ids, wts))
    ref = _oracle(w, h, ids, wts)
    assert np.abs(out - ref).max() <= 3e-2 * np.abs(ref).max()
