"""DeepSeek-V2/V3 (`deepseek2`) against transformers, and the nn kernels against numpy references.

Tiny random checkpoints are built with transformers (torch CPU, seeded), written to GGUF in llama.cpp's layout
(tests/tiny_deepseek2.py) and compared logit by logit with the transformers model itself.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import gguf  # noqa: E402
from tiny_deepseek2 import build_hf, gguf_tensors, hf_logits, write_gguf  # noqa: E402

from moe_gguf import _kernels  # noqa: E402
from moe_gguf.models import SUPPORTED_ARCHITECTURES, ContextFullError, ModelLoadError, load_model  # noqa: E402
from moe_gguf.models.base import yarn_inv_freq  # noqa: E402
from moe_gguf.ops import nn  # noqa: E402
from moe_gguf.ops.matmul import ThreadPool  # noqa: E402

VOCAB = 256
TOL = 1e-3  # relative to max |logit|


def _toks(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _stepwise(model, toks: np.ndarray, chunks: list[int] | None = None) -> np.ndarray:
    cache = model.new_cache()
    out, i = [], 0
    for c in chunks or [1] * len(toks):
        out.append(model.forward(toks[i : i + c], cache, all_logits=True))
        i += c
    assert cache.n_past == len(toks)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ds2")


@pytest.fixture(scope="module")
def lite(tmp):
    """V2-Lite style: no Q-LoRA, YaRN with mscale == mscale_all_dim, 2 MoE layers + 1 dense."""
    m = build_hf(seed=1)
    return m, write_gguf(m, tmp / "lite_mla.gguf", "mla"), write_gguf(m, tmp / "lite_legacy.gguf", "legacy")


@pytest.fixture(scope="module")
def v2(tmp):
    """V2 style: Q-LoRA, routed scaling factor, group-limited greedy routing (group max)."""
    m = build_hf(seed=2, q_lora_rank=64, n_group=4, topk_group=2, routed_scaling_factor=1.5)
    return m, write_gguf(m, tmp / "v2_mla.gguf", "mla"), write_gguf(m, tmp / "v2_legacy.gguf", "legacy")


# ------------------------------------------------------------------------------------------- logits vs transformers
@pytest.mark.parametrize("which", ["lite", "v2"])
@pytest.mark.parametrize("n", [8, 40, 130])
def test_logits_match_transformers(request, which, n):
    hf, path, _ = request.getfixturevalue(which)
    toks = _toks(n, seed=n)
    ref = hf_logits(hf, toks)
    model = load_model(path)
    batch = model.forward(toks, model.new_cache(), all_logits=True)
    assert batch.shape == (n, VOCAB) and batch.dtype == np.float32
    assert _rel(batch, ref) < TOL
    steps = _stepwise(model, toks)
    assert _rel(steps, ref) < TOL
    last = model.forward(toks, model.new_cache())
    assert last.shape == (VOCAB,)
    np.testing.assert_allclose(last, batch[-1], rtol=0, atol=1e-5 * np.abs(ref).max())


def test_mixed_chunks_and_truncate(lite):
    hf, path, _ = lite
    toks = _toks(70, seed=5)
    ref = hf_logits(hf, toks)
    model = load_model(path)
    assert _rel(_stepwise(model, toks, [5, 17, 1, 1, 30, 16]), ref) < TOL
    cache = model.new_cache()
    model.forward(toks[:50], cache)
    cache.truncate(20)  # drop positions 20.. and recompute them from a different split
    out = model.forward(toks[20:70], cache, all_logits=True)
    assert _rel(out, ref[20:]) < TOL
    chunked = load_model(path)
    chunked.max_batch = 16  # internal causal chunks give the same logits
    assert _rel(chunked.forward(toks, chunked.new_cache(), all_logits=True), ref) < TOL
    last = chunked.forward(toks, chunked.new_cache())
    assert last.shape == (VOCAB,) and _rel(last, ref[-1]) < TOL
    cache.clear()
    assert cache.n_past == 0
    assert _rel(model.forward(toks[:10], cache, all_logits=True), ref[:10]) < TOL


def test_thread_count_does_not_change_logits(lite, q8):
    toks = _toks(40, seed=16)
    for path in (lite[1], q8[0]):
        models = [load_model(path, n_threads=t) for t in (1, 2, 3)]
        outs = [m.forward(toks, m.new_cache(), all_logits=True) for m in models]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
    with pytest.raises(ValueError):
        load_model(lite[1], n_threads=0)


def test_f16_cache(lite):
    hf, path, _ = lite
    toks = _toks(130, seed=15)
    ref = hf_logits(hf, toks)
    model = load_model(path, cache_type="f16")
    cache = model.new_cache()
    assert cache.data.dtype == np.float16
    batch = model.forward(toks[:100], cache, all_logits=True)
    steps = np.concatenate([model.forward(toks[i : i + 1], cache, all_logits=True) for i in range(100, 130)])
    out = np.concatenate([batch, steps])
    assert _rel(out, ref) < 2e-3  # half-precision latents (measured ~2e-4)
    assert np.mean(np.argmax(out, -1) == np.argmax(ref, -1)) >= 0.95
    model.shift_cache(cache, 10, 20)
    assert cache.n_past == 110 and np.isfinite(model.forward(toks[:3], cache)).all()
    with pytest.raises(ValueError, match="cache_type"):
        load_model(path, cache_type="q8")


def test_context_shift_one_layer_matches_transformers(tmp):
    """With one layer the cache rows depend only on (token, position): after a shift the next logits must equal
    transformers on the kept tokens alone."""
    hf = build_hf(seed=8, n_layer=1)
    model = load_model(write_gguf(hf, tmp / "one.gguf", "mla"), n_ctx=64)
    a, b = _toks(60, seed=20), _toks(4, seed=21)
    cache = model.new_cache()
    model.forward(a, cache)
    model.shift_cache(cache, 10, 20)
    assert cache.n_past == 40
    out = model.forward(b, cache, all_logits=True)
    ref = hf_logits(hf, np.concatenate([a[:10], a[30:], b]))[-4:]
    assert _rel(out, ref) < TOL
    with pytest.raises(ValueError):
        model.shift_cache(cache, 40, 5)


@pytest.mark.parametrize("which", ["lite", "v2"])
def test_mla_layouts_and_forms_agree(request, which):
    """attn_k_b/attn_v_b vs legacy attn_kv_b, absorbed vs naive decompressed: the same logits."""
    _, mla_path, legacy_path = request.getfixturevalue(which)
    toks = _toks(40, seed=9)
    outs = [
        load_model(p, mla=form).forward(toks, load_model(p).new_cache(), all_logits=True)
        for p in (mla_path, legacy_path)
        for form in ("absorbed", "naive")
    ]
    for o in outs[1:]:
        assert _rel(o, outs[0]) < 2e-5


def test_merged_gate_up_exps(tmp, v2):
    hf, path, _ = v2
    merged = load_model(write_gguf(hf, tmp / "v2_merged.gguf", "mla", merge_gate_up=True))
    assert "blk.1.ffn_gate_up_exps.weight" in merged.file.tensors and "blk.1.ffn_up_exps.weight" not in merged.file.tensors
    toks = _toks(40, seed=14)
    assert _rel(merged.forward(toks, merged.new_cache(), all_logits=True), hf_logits(hf, toks)) < TOL


@pytest.mark.parametrize("which", ["lite", "v2"])
def test_greedy_continuation_identical(request, which):
    hf, path, _ = request.getfixturevalue(which)
    prompt = _toks(12, seed=5)
    model = load_model(path)
    cache = model.new_cache()
    logits = model.forward(prompt, cache)
    ours = []
    for _ in range(20):
        t = int(np.argmax(logits))
        ours.append(t)
        logits = model.forward(np.array([t], dtype=np.int32), cache)
    with torch.no_grad():
        gen = hf.generate(torch.as_tensor(prompt[None].astype(np.int64)), max_new_tokens=20, do_sample=False)
    theirs = gen[0, len(prompt) :].tolist()
    assert ours == theirs
    assert len(set(ours)) > 3  # a real continuation, not one repeated token


def test_routing_spreads_over_experts(lite):
    """The test models really exercise routing: many experts chosen, decisive margins."""
    hf, _, _ = lite
    toks = torch.as_tensor(_toks(130, seed=130).astype(np.int64))[None]
    with torch.no_grad():
        out = hf(toks, output_router_logits=True)
    assert len(out.router_logits) >= 2
    for rl in out.router_logits:
        top = torch.topk(rl.float(), 4, dim=-1)
        assert len(torch.unique(top.indices[:, :3])) >= 7  # nearly all 8 experts get used
        assert float((top.values[:, 2] - top.values[:, 3]).median()) > 0.1  # typical 3rd-vs-4th logit margin


# ------------------------------------------------------------------------------------------- quantized
@pytest.fixture(scope="module")
def q8(tmp, lite):
    hf, _, _ = lite
    return (
        write_gguf(hf, tmp / "lite_q8.gguf", "mla", qtype="Q8_0"),
        write_gguf(hf, tmp / "lite_q8deq.gguf", "mla", qtype="Q8_0_DEQ"),
    )


def test_q8_0_vs_transformers_and_dequantized(lite, q8):
    hf, _, _ = lite
    qpath, dpath = q8
    qm, dm = load_model(qpath), load_model(dpath)
    seqs = [_toks(130, seed=s) for s in (11, 12, 13)]  # 390 positions: the agreement rate is not one sequence's luck
    ref = np.concatenate([hf_logits(hf, t) for t in seqs])
    q = np.concatenate([qm.forward(t, qm.new_cache(), all_logits=True) for t in seqs])
    d = np.concatenate([dm.forward(t, dm.new_cache(), all_logits=True) for t in seqs])
    assert np.mean(np.argmax(q, -1) == np.argmax(ref, -1)) >= 0.95
    assert np.mean(np.argmax(q, -1) == np.argmax(d, -1)) >= 0.95
    assert _rel(q, d) < 3e-2  # only activation quantization separates the two
    assert _rel(q, ref) < 1e-1


def test_q8_0_tensors_are_quantized(q8):
    m = load_model(q8[0])
    types = {t.name: t.ggml_type for t in m.file.tensors.values()}
    assert types["blk.1.ffn_gate_exps.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.1.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32


# ------------------------------------------------------------------------------------------- V3 and YaRN variants
@pytest.mark.parametrize("which", ["lite", "v2"])
def test_files_from_moe_gguf_convert(request, tmp, which):
    """Files written by the project's HF->GGUF converter (independent of tests/tiny_deepseek2.py) load and match."""
    conv = pytest.importorskip("moe_gguf.convert")
    hf, _, _ = request.getfixturevalue(which)
    hf.save_pretrained(tmp / f"hf_{which}")
    out = conv.convert(tmp / f"hf_{which}", tmp / f"conv_{which}.gguf", "f32", tokenizer=False)
    toks = _toks(40, seed=17)
    model = load_model(out.path)
    assert _rel(model.forward(toks, model.new_cache(), all_logits=True), hf_logits(hf, toks)) < TOL


def test_v3_sigmoid_bias_groups_vs_transformers(tmp):
    pytest.importorskip("transformers.models.deepseek_v3")  # (the routing math alone is checked by test_moe_route_kernel)
    hf = build_hf(seed=4, version=3, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, mscale_all_dim=1.0)
    path = write_gguf(hf, tmp / "v3.gguf", "mla")
    cfg = load_model(path).config
    assert cfg.gating_func == 2 and cfg.n_group == 4 and cfg.expert_weights_norm
    toks = _toks(40, seed=12)
    ref = hf_logits(hf, toks)
    model = load_model(path)
    assert _rel(model.forward(toks, model.new_cache(), all_logits=True), ref) < TOL
    assert _rel(_stepwise(model, toks), ref) < TOL


@pytest.mark.parametrize("kw", [dict(yarn=False), dict(mscale_all_dim=None)], ids=["no-yarn", "yarn-no-mscale"])
def test_rope_variants_vs_transformers(tmp, kw):
    hf = build_hf(seed=6, **kw)
    path = write_gguf(hf, tmp / f"rope{len(str(kw))}.gguf", "mla")
    toks = _toks(40, seed=13)
    ref = hf_logits(hf, toks)
    model = load_model(path)
    assert _rel(model.forward(toks, model.new_cache(), all_logits=True), ref) < TOL


def test_yarn_constants_match_deepseek_definition():
    # V2-Lite: s=40, orig=4096, base 1e4, 64 rope dims: ramp between dims 10 and 23, kq_scale 0.114721
    inv = yarn_inv_freq(64, 10000.0, 40.0, 4096, 32.0, 1.0)
    extra = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(inv[:11], extra[:11], rtol=1e-6)
    np.testing.assert_allclose(inv[23:], extra[23:] / 40, rtol=1e-6)
    assert np.all((inv[11:23] < extra[11:23]) & (inv[11:23] > extra[11:23] / 40))
    m = 0.1 * 0.707 * np.log(40) + 1
    assert abs(m * m / np.sqrt(192) - 0.114721) < 1e-5


# ------------------------------------------------------------------------------------------- errors
def test_context_full_and_bad_tokens(lite):
    _, path, _ = lite
    model = load_model(path, n_ctx=16)
    assert model.n_ctx == 16 and model.n_vocab == VOCAB
    cache = model.new_cache()
    model.forward(_toks(10), cache)
    with pytest.raises(ContextFullError, match="n_ctx"):
        model.forward(_toks(7), cache)
    assert cache.n_past == 10  # nothing computed
    with pytest.raises(ValueError, match="out of range"):
        model.forward(np.array([VOCAB], dtype=np.int32), cache)
    with pytest.raises(ValueError, match="out of range"):
        model.forward(np.array([-1], dtype=np.int32), cache)
    with pytest.raises(ValueError):
        model.forward(np.zeros((2, 2), dtype=np.int32), cache)
    with pytest.raises(TypeError):
        model.forward(np.array([1.5]), cache)
    assert load_model(path).n_ctx == 512  # min(context_length, 4096)


def test_bad_files(tmp, lite):
    hf, _, _ = lite
    p = write_gguf(hf, tmp / "missing.gguf", "mla", drop=("blk.2.ffn_down_exps.weight",))
    with pytest.raises(ModelLoadError, match="blk.2.ffn_down_exps.weight"):
        load_model(p)
    w = gguf.GGUFWriter(str(tmp / "unknown.gguf"), "nonesuch-arch")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="nonesuch-arch.*supported: .*deepseek2"):
        load_model(tmp / "unknown.gguf")
    assert "deepseek2" in SUPPORTED_ARCHITECTURES
    # inconsistent shape: attn_output from a model with a different v_head_dim
    t = gguf_tensors(hf, "mla")
    t["blk.0.attn_output.weight"] = t["blk.0.attn_output.weight"][:, :96]
    w = gguf.GGUFWriter(str(tmp / "shape.gguf"), "deepseek2")
    src = load_model(write_gguf(hf, tmp / "ok.gguf", "mla")).file
    for k, v in src.metadata.items():
        if k.startswith("deepseek2."):
            if isinstance(v, float):
                w.add_float32(k, v)
            elif isinstance(v, bool):
                w.add_bool(k, v)
            elif isinstance(v, int):
                w.add_uint32(k, v)
            elif isinstance(v, str):
                w.add_string(k, v)
    for k, v in t.items():
        w.add_tensor(k, np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="blk.0.attn_output.weight"):
        load_model(tmp / "shape.gguf")


# ------------------------------------------------------------------------------------------- kernels vs numpy
@pytest.fixture(params=[0, 1], ids=["scalar", "simd"])
def simd(request):
    lvl = _kernels.lib.mg_set_simd_level(request.param)
    if lvl != request.param:
        _kernels.lib.mg_set_simd_level(99)
        pytest.skip("CPU lacks AVX2")
    yield
    _kernels.lib.mg_set_simd_level(99)


def test_rms_norm_kernel(simd):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 67)).astype(np.float32) * 3
    w = rng.standard_normal(67).astype(np.float32)
    ref = x.astype(np.float64) / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(nn.rms_norm(x, w, 1e-6), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        nn.rms_norm(x, w[:5], 1e-6)
    with pytest.raises(TypeError):
        nn.rms_norm(x.astype(np.float64), w, 1e-6)


def test_rope_kernel_vs_complex_rotation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 40)).astype(np.float32)
    pos = np.array([0, 1, 7, 300, 4000], dtype=np.int32)
    inv = yarn_inv_freq(16, 10000.0, 8.0, 64)
    ref = x.copy().astype(np.float64)
    z = ref[..., 24:][..., 0::2] + 1j * ref[..., 24:][..., 1::2]
    z = z * np.exp(1j * (pos[:, None, None] * inv[None, None, :].astype(np.float64))) * 0.9
    ref[..., 24:][..., 0::2], ref[..., 24:][..., 1::2] = z.real, z.imag
    got = x.copy()
    nn.rope_(got[:, :, 24:], pos, inv, 0.9)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3)  # float32 angle at position 4000
    np.testing.assert_array_equal(got[..., :24], x[..., :24])
    with pytest.raises(ValueError):
        nn.rope_(got[:, :, 24:], pos[:3], inv)


def test_softmax_silu_kernels(simd):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 33)).astype(np.float32) * 5
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(nn.softmax(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    g = np.concatenate([x.ravel(), np.array([-200, -90, -87, -30, 0, 30, 87, 90, 200], np.float32)])
    u = rng.standard_normal(g.shape).astype(np.float32)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(nn.silu_mul(g, u), g64 / (1 + np.exp(-g64)) * u, rtol=2e-6, atol=1e-30)


_POOLS = [ThreadPool(2), ThreadPool(3)]


@given(n_tok=st.integers(1, 5), n_kv0=st.integers(0, 20), n_head=st.integers(1, 4), seed=st.integers(0, 10_000))
@settings(max_examples=40)
def test_latent_attention_kernel(n_tok, n_kv0, n_head, seed):
    rng = np.random.default_rng(seed)
    d_k, d_v, width = 24, 16, 28
    kv = rng.standard_normal((40, width)).astype(np.float32)
    q = rng.standard_normal((n_tok, n_head, d_k)).astype(np.float32)
    def reference(kv: np.ndarray) -> np.ndarray:
        ref = np.empty((n_tok, n_head, d_v))
        for t in range(n_tok):
            keys = kv[: n_kv0 + t + 1, :d_k].astype(np.float64)
            s = 0.3 * q[t].astype(np.float64) @ keys.T
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            ref[t] = p @ kv[: n_kv0 + t + 1, :d_v].astype(np.float64)
        return ref

    ref = reference(kv)
    kv16 = kv.astype(np.float16) if seed % 2 else None
    ref16 = reference(kv16) if kv16 is not None else None
    for lvl in (0, 1):
        _kernels.lib.mg_set_simd_level(lvl)
        single = nn.latent_attention(q, kv, n_kv0, d_v, 0.3)
        np.testing.assert_allclose(single, ref, rtol=1e-4, atol=1e-5)
        for pool in _POOLS:  # threads split tokens or head groups: bit-identical to one thread
            np.testing.assert_array_equal(nn.latent_attention(q, kv, n_kv0, d_v, 0.3, pool), single)
        if kv16 is not None:  # an f16 cache: the same math on the half values
            np.testing.assert_allclose(nn.latent_attention(q, kv16, n_kv0, d_v, 0.3, _POOLS[0]), ref16, rtol=1e-4, atol=1e-5)
    _kernels.lib.mg_set_simd_level(99)


@pytest.mark.parametrize(
    "n_tok,n_kv0,dtype,n_head",
    [(17, 1000, np.float32, 16), (1, 3000, np.float32, 16), (1, 3000, np.float16, 16), (3, 2000, np.float16, 16), (1, 3000, np.float32, 6)],
)
def test_latent_attention_threaded_big(n_tok, n_kv0, dtype, n_head):
    """Jobs big enough to use the pool (split by token, or by head group for one token): bit-identical to one thread
    (with 6 heads the groups are not multiples of 4, so the 4-head SIMD kernel must equal the 1-head one exactly)."""
    rng = np.random.default_rng(n_tok + n_kv0)
    d_k, d_v = 576, 512
    kv = rng.standard_normal((n_kv0 + n_tok, d_k)).astype(dtype)
    q = (rng.standard_normal((n_tok, n_head, d_k)) * 0.05).astype(np.float32)
    single = nn.latent_attention(q, kv, n_kv0, d_v, 0.1147)
    for pool in _POOLS:
        np.testing.assert_array_equal(nn.latent_attention(q, kv, n_kv0, d_v, 0.1147, pool), single)
    t = n_tok - 1  # the last query against float64 numpy
    s = 0.1147 * q[t].astype(np.float64) @ kv[: n_kv0 + n_tok].astype(np.float64).T
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(single[t], p @ kv[: n_kv0 + n_tok, :d_v].astype(np.float64), rtol=1e-4, atol=1e-5)


def _route_ref(logits, k, gating, bias, n_group, n_group_used, norm, scale):
    lg = logits.astype(np.float64)
    probs = np.exp(lg - lg.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True) if gating == 1 else 1 / (1 + np.exp(-lg))
    sel = probs + (bias if bias is not None else 0)
    n, E = sel.shape
    if n_group > 1:
        g = sel.reshape(n, n_group, E // n_group)
        gs = g.max(-1) if gating == 1 else np.sort(g, -1)[..., -2:].sum(-1)
        drop = np.argsort(-gs, kind="stable", axis=-1)[:, n_group_used:]
        for t in range(n):
            for gi in drop[t]:
                sel[t, gi * (E // n_group) : (gi + 1) * (E // n_group)] = -np.inf
    ids = np.argsort(-sel, kind="stable", axis=-1)[:, :k]
    w = np.take_along_axis(probs, ids, -1)
    if norm:
        w = w / w.sum(-1, keepdims=True)
    return ids, w * (scale or 1.0)


@given(
    seed=st.integers(0, 10_000),
    gating=st.sampled_from([1, 2]),
    grouped=st.booleans(),
    norm=st.booleans(),
    scale=st.sampled_from([0.0, 1.0, 2.5]),
    use_bias=st.booleans(),
)
@settings(max_examples=60)
def test_moe_route_kernel(seed, gating, grouped, norm, scale, use_bias):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((6, 16)) * 3).astype(np.float32)
    bias = (rng.standard_normal(16) * 0.3).astype(np.float32) if use_bias else None
    G, Gu = (4, 2) if grouped else (1, 1)
    ids, w = nn.moe_route(logits, 4, gating, bias, G, Gu, norm, scale)
    rid, rw = _route_ref(logits, 4, gating, bias, G, Gu, norm, scale)
    np.testing.assert_array_equal(ids, rid)
    np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-7)


def test_moe_route_rejects_bad_args():
    lg = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError):
        nn.moe_route(lg, 9)
    with pytest.raises(ValueError):
        nn.moe_route(lg, 2, gating=3)
    with pytest.raises(ValueError):
        nn.moe_route(lg, 4, n_group=3, n_group_used=1)
    with pytest.raises(ValueError):
        nn.moe_route(lg, 5, n_group=4, n_group_used=2)


@pytest.mark.slow
def test_long_sequence_default_chunking(lite):
    """600 tokens: past YaRN's original context many times over and across the 512-token internal chunk."""
    hf, path, _ = lite
    toks = _toks(600, seed=600)
    ref = hf_logits(hf, toks)
    model = load_model(path, n_ctx=1024)  # past the file's context_length (512): allowed
    cache = model.new_cache()
    out = model.forward(toks, cache, all_logits=True)
    assert cache.n_past == 600 and _rel(out, ref) < TOL
    assert _rel(_stepwise(model, toks), ref) < TOL
