"""moe_gguf.synth: random-weight GGUFs with DeepSeek-V2(-Lite)'s exact names, shapes, types and metadata.

The expected tables below are written out by hand from the GGUF layout doc (section 2) and llama.cpp's
Q4_K_M rules (section 7), not computed by the code under test. Values are checked with gguf-py's reader
and numpy dequantizers."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from moe_gguf import synth
from moe_gguf.gguf import GGUFFile

F32, F16, Q5_0, Q8_0, Q4_K, Q6_K = "F32", "F16", "Q5_0", "Q8_0", "Q4_K", "Q6_K"


def _have_kquant_quantizer() -> bool:
    try:
        from moe_gguf.ops.quants import quantize

        quantize(np.ones((1, 256), np.float32), 12)
        quantize(np.ones((1, 256), np.float32), 14)
        return True
    except Exception:
        return False


needs_kquants = pytest.mark.skipif(not _have_kquant_quantizer(), reason="moe_gguf.ops.quants cannot quantize Q4_K/Q6_K yet")


@pytest.fixture(scope="module")
def vocab(shared_dir: Path) -> Path:
    return shared_dir / "vocab" / "ggml-vocab-deepseek-llm.gguf"


# ------------------------------------------------------------------------------------------------- expected tables
def tiny_q4_k_m_expected() -> dict[str, tuple[tuple[int, ...], str]]:
    """tiny preset: hidden 256, 4 heads, kv_lora 256, nope 32, rope 32, v 32, 16 experts (4 used), 2 shared,
    expert FFN 384, dense FFN 1056, 4 layers (layer 0 dense), vocab 102400."""
    e: dict[str, tuple[tuple[int, ...], str]] = {
        "token_embd.weight": ((256, 102400), Q4_K),
        "output_norm.weight": ((256,), F32),
        "output.weight": ((256, 102400), Q6_K),
    }
    # ffn_down* of layer i: use_more_bits(i, 4) is true for i = 2, 3; 384 and 1056 are not multiples of 256
    down_exps = {1: Q5_0, 2: Q8_0, 3: Q8_0}
    down_shexp = {1: Q4_K, 2: Q6_K, 3: Q6_K}
    for i in range(4):
        b = f"blk.{i}."
        e[b + "attn_norm.weight"] = ((256,), F32)
        e[b + "attn_q.weight"] = ((256, 256), Q4_K)
        e[b + "attn_kv_a_mqa.weight"] = ((256, 288), Q4_K)
        e[b + "attn_kv_a_norm.weight"] = ((256,), F32)
        e[b + "attn_k_b.weight"] = ((32, 256, 4), Q5_0)
        e[b + "attn_v_b.weight"] = ((256, 32, 4), Q4_K)
        e[b + "attn_output.weight"] = ((128, 256), Q5_0)
        e[b + "ffn_norm.weight"] = ((256,), F32)
        if i == 0:
            e[b + "ffn_gate.weight"] = ((256, 1056), Q4_K)
            e[b + "ffn_up.weight"] = ((256, 1056), Q4_K)
            e[b + "ffn_down.weight"] = ((1056, 256), Q5_0)
        else:
            e[b + "ffn_gate_inp.weight"] = ((256, 16), F32)
            e[b + "ffn_gate_exps.weight"] = ((256, 384, 16), Q4_K)
            e[b + "ffn_up_exps.weight"] = ((256, 384, 16), Q4_K)
            e[b + "ffn_down_exps.weight"] = ((384, 256, 16), down_exps[i])
            e[b + "ffn_gate_shexp.weight"] = ((256, 768), Q4_K)
            e[b + "ffn_up_shexp.weight"] = ((256, 768), Q4_K)
            e[b + "ffn_down_shexp.weight"] = ((768, 256), down_shexp[i])
    return e


V2_LITE_MORE_BITS = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26}  # use_more_bits(i, 27), by hand


def v2_lite_q4_k_m_expected() -> dict[str, tuple[tuple[int, ...], str]]:
    e: dict[str, tuple[tuple[int, ...], str]] = {
        "token_embd.weight": ((2048, 102400), Q4_K),
        "output_norm.weight": ((2048,), F32),
        "output.weight": ((2048, 102400), Q6_K),
    }
    for i in range(27):
        b = f"blk.{i}."
        more = i in V2_LITE_MORE_BITS
        e[b + "attn_norm.weight"] = ((2048,), F32)
        e[b + "attn_q.weight"] = ((2048, 3072), Q4_K)
        e[b + "attn_kv_a_mqa.weight"] = ((2048, 576), Q4_K)
        e[b + "attn_kv_a_norm.weight"] = ((512,), F32)
        e[b + "attn_k_b.weight"] = ((128, 512, 16), Q5_0)
        e[b + "attn_v_b.weight"] = ((512, 128, 16), Q4_K)
        e[b + "attn_output.weight"] = ((2048, 2048), Q4_K)
        e[b + "ffn_norm.weight"] = ((2048,), F32)
        if i == 0:
            e[b + "ffn_gate.weight"] = ((2048, 10944), Q4_K)
            e[b + "ffn_up.weight"] = ((2048, 10944), Q4_K)
            e[b + "ffn_down.weight"] = ((10944, 2048), Q8_0)  # Q6_K, 10944 % 256 != 0
        else:
            e[b + "ffn_gate_inp.weight"] = ((2048, 64), F32)
            e[b + "ffn_gate_exps.weight"] = ((2048, 1408, 64), Q4_K)
            e[b + "ffn_up_exps.weight"] = ((2048, 1408, 64), Q4_K)
            e[b + "ffn_down_exps.weight"] = ((1408, 2048, 64), Q8_0 if more else Q5_0)
            e[b + "ffn_gate_shexp.weight"] = ((2048, 2816), Q4_K)
            e[b + "ffn_up_shexp.weight"] = ((2048, 2816), Q4_K)
            e[b + "ffn_down_shexp.weight"] = ((2816, 2048), Q6_K if more else Q4_K)
    return e


V2_LITE_METADATA = {
    "general.architecture": "deepseek2",
    "general.file_type": 15,
    "general.quantization_version": 2,
    "deepseek2.block_count": 27,
    "deepseek2.context_length": 163840,
    "deepseek2.embedding_length": 2048,
    "deepseek2.feed_forward_length": 10944,
    "deepseek2.attention.head_count": 16,
    "deepseek2.attention.head_count_kv": 1,
    "deepseek2.attention.key_length": 576,
    "deepseek2.attention.value_length": 512,
    "deepseek2.attention.key_length_mla": 192,
    "deepseek2.attention.value_length_mla": 128,
    "deepseek2.attention.kv_lora_rank": 512,
    "deepseek2.attention.layer_norm_rms_epsilon": 1e-6,
    "deepseek2.rope.dimension_count": 64,
    "deepseek2.rope.freq_base": 10000.0,
    "deepseek2.rope.scaling.type": "yarn",
    "deepseek2.rope.scaling.factor": 40.0,
    "deepseek2.rope.scaling.original_context_length": 4096,
    "deepseek2.rope.scaling.yarn_beta_fast": 32.0,
    "deepseek2.rope.scaling.yarn_beta_slow": 1.0,
    "deepseek2.rope.scaling.yarn_log_multiplier": 0.0707,
    "deepseek2.leading_dense_block_count": 1,
    "deepseek2.expert_count": 64,
    "deepseek2.expert_used_count": 6,
    "deepseek2.expert_shared_count": 2,
    "deepseek2.expert_feed_forward_length": 1408,
    "deepseek2.expert_weights_scale": 1.0,
    "deepseek2.expert_gating_func": 1,
    "deepseek2.vocab_size": 102400,
}


def _table(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with GGUFFile(path) as f:
        return {t.name: (t.ne, t.type_name) for t in f.tensors.values()}


# ------------------------------------------------------------------------------------------------- the plan (no I/O)
def test_v2_lite_plan_matches_llama_cpp_recipe_and_published_size() -> None:
    plan = synth.deepseek2_plan("v2-lite", "q4_k_m")
    got = {p.name: (p.ne, gguf.GGMLQuantizationType(p.ggml_type).name) for p in plan}
    assert got == v2_lite_q4_k_m_expected()
    total = sum(p.nbytes for p in plan)
    # published DeepSeek-V2-Lite Q4_K_M: 9.65 GiB (ik_llama.cpp#230); 15.7 B parameters
    assert abs(total / 2**30 - 9.65) < 0.01
    assert abs(sum(p.n_elements for p in plan) / 1e9 - 15.706) < 0.001


def test_v2_lite_metadata_keys() -> None:
    kv = {k: v for k, v, _ in synth.deepseek2_metadata("v2-lite", "q4_k_m")}
    for k, v in V2_LITE_METADATA.items():
        assert kv[k] == pytest.approx(v, rel=1e-6) if isinstance(v, float) else kv[k] == v, k
    assert "deepseek2.attention.q_lora_rank" not in kv  # V2-Lite has no Q-LoRA: key absent as in real files
    # other layer counts: llama.cpp demands the key, 0 = none
    kv5 = {k: v for k, v, _ in synth.deepseek2_metadata("v2-lite", "q4_k_m", n_layers=5)}
    assert kv5["deepseek2.attention.q_lora_rank"] == 0 and kv5["deepseek2.block_count"] == 5


@pytest.mark.parametrize("qtype,weight_type", [("q8_0", Q8_0), ("f16", F16), ("f32", F32)])
def test_plain_types(qtype: str, weight_type: str) -> None:
    for p in synth.deepseek2_plan("v2-lite", qtype, n_layers=2):
        want = F32 if len(p.ne) == 1 or "ffn_gate_inp" in p.name else weight_type
        assert gguf.GGMLQuantizationType(p.ggml_type).name == want, p.name


def test_bad_arguments(tmp_path: Path, vocab: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        synth.deepseek2_plan("v3", "q4_k_m")
    with pytest.raises(ValueError, match="type"):
        synth.deepseek2_plan("tiny", "q3_k_s")
    with pytest.raises(ValueError, match="layers"):
        synth.deepseek2_plan("tiny", "q8_0", n_layers=0)
    with pytest.raises(ValueError, match="architecture"):
        synth.write_synth(tmp_path / "x.gguf", arch="llama", preset="tiny", vocab=vocab)
    with pytest.raises(ValueError, match="tokens"):  # gpt-2 vocab has 50257 tokens, the preset needs 102400
        synth.write_synth(tmp_path / "x.gguf", preset="tiny", qtype="q8_0", vocab=vocab.parent / "ggml-vocab-gpt-2.gguf")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- written files
@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory: pytest.TempPathFactory, vocab: Path) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny-q8_0.gguf"
    synth.write_synth(out, preset="tiny", qtype="q8_0", seed=7, vocab=vocab)
    return out


@needs_kquants
def test_tiny_q4_k_m_file(tmp_path: Path, vocab: Path) -> None:
    out = tmp_path / "tiny.gguf"
    res = synth.write_synth(out, preset="tiny", qtype="q4_k_m", seed=1, vocab=vocab)
    assert _table(out) == tiny_q4_k_m_expected()
    assert res.n_bytes == out.stat().st_size
    r = gguf.GGUFReader(out)  # an independent reader agrees on names, types and shapes
    assert {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in r.tensors} == tiny_q4_k_m_expected()
    _check_values(out)


def test_tiny_q8_0_file(tiny_q8: Path, vocab: Path) -> None:
    exp = {k: (ne, Q8_0 if t != F32 else F32) for k, (ne, t) in tiny_q4_k_m_expected().items()}
    assert _table(tiny_q8) == exp
    _check_values(tiny_q8)
    with GGUFFile(tiny_q8) as f, GGUFFile(vocab) as v:
        md = f.metadata
        assert md["general.file_type"] == 7
        assert md["deepseek2.block_count"] == 4 and md["deepseek2.attention.key_length"] == 288
        assert md["deepseek2.attention.q_lora_rank"] == 0
        for k, val in v.metadata.items():  # the tokenizer is copied verbatim, with its value types
            if k.startswith("tokenizer."):
                assert f.metadata_types[k] == v.metadata_types[k], k
                if isinstance(val, np.ndarray):
                    assert val.dtype == md[k].dtype and np.array_equal(val, md[k]), k
                else:
                    assert md[k] == val, k


def _rows(f: GGUFFile, name: str, n: int | None = 1024) -> np.ndarray:
    """float64 rows of a tensor (the first n), dequantized by gguf-py's numpy reference."""
    t = f.tensors[name]
    data = f.tensor(name)
    data = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data[None, :]
    data = np.asarray(data[:n] if n is not None else data)
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType(t.ggml_type)).astype(np.float64)


def _check_values(path: Path) -> None:
    """Dequantized with gguf-py: finite, weights ~N(0, 1/sqrt(row length)), norms ~1."""
    with GGUFFile(path) as f:
        for name, t in f.tensors.items():
            x = _rows(f, name)
            assert np.isfinite(x).all(), name
            n_in = t.ne[0]
            if name.endswith("norm.weight"):
                assert abs(x.mean() - 1) < 0.01 and 0.005 < x.std() < 0.05, name
            else:
                assert abs(x.std() * np.sqrt(n_in) - 1) < 0.1, (name, x.std() * np.sqrt(n_in))
                assert abs(x.mean()) < 0.1 / np.sqrt(n_in), name


def test_deterministic_and_seeded(tmp_path: Path, tiny_q8: Path, vocab: Path) -> None:
    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    a = tmp_path / "a.gguf"
    synth.write_synth(a, preset="tiny", qtype="q8_0", seed=7, vocab=vocab)
    assert sha(a) == sha(tiny_q8)
    synth.write_synth(a, preset="tiny", qtype="q8_0", seed=8, vocab=vocab)
    assert sha(a) != sha(tiny_q8)


def test_failure_leaves_no_file(tmp_path: Path, vocab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synth._tensor_chunks

    def boom(plan, pools, rng):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError("disk full (simulated)")
        return real(plan, pools, rng)

    monkeypatch.setattr(synth, "_tensor_chunks", boom)
    with pytest.raises(OSError, match="simulated"):
        synth.write_synth(tmp_path / "x.gguf", preset="tiny", qtype="q8_0", vocab=vocab)
    assert os.listdir(tmp_path) == []


def test_router_spreads_over_experts(tiny_q8: Path) -> None:
    """Route 512 real token embeddings (RMS-normed, as the first MoE layer roughly sees them) through each
    router with numpy softmax top-4: every expert gets traffic and none dominates."""
    f = GGUFFile(tiny_q8)
    emb = _rows(f, "token_embd.weight", None)
    rows = emb[np.random.default_rng(0).choice(emb.shape[0], 512, replace=False)]
    h = rows / np.sqrt((rows**2).mean(axis=1, keepdims=True) + 1e-6)
    for il in (1, 2, 3):
        w = _rows(f, f"blk.{il}.ffn_gate_inp.weight", None)  # (16, 256)
        logits = h @ (w * _rows(f, f"blk.{il}.ffn_norm.weight")).T
        top = np.argsort(-logits, axis=1)[:, :4]
        counts = np.bincount(top.ravel(), minlength=16)
        assert (counts > 0).all(), counts
        assert counts.max() < 3 * counts.mean(), counts
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        assert np.median(p.max(axis=1)) < 0.5  # no single expert takes the whole weight


def test_model_runs_on_synth_file(tiny_q8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our deepseek2 model loads the file; logits are finite for a prompt and for decode steps, and the
    routing it actually performs uses most experts."""
    models = pytest.importorskip("moe_gguf.models")
    ds2 = pytest.importorskip("moe_gguf.models.deepseek2")
    seen: list[np.ndarray] = []
    nn = getattr(ds2, "nn", None)
    if nn is not None and hasattr(nn, "moe_route"):
        real = nn.moe_route

        def spy(*a, **k):  # type: ignore[no-untyped-def]
            ids, w = real(*a, **k)
            seen.append(np.asarray(ids).copy())
            return ids, w

        monkeypatch.setattr(nn, "moe_route", spy)
    m = models.load_model(str(tiny_q8), n_ctx=128, n_threads=2)
    cache = m.new_cache()
    toks = np.random.default_rng(3).integers(0, m.n_vocab, 48, dtype=np.int32)
    logits = m.forward(toks, cache, all_logits=True)
    assert logits.shape == (48, 102400) and np.isfinite(logits).all()
    assert 0.1 < float(logits.std()) < 100
    assert not np.allclose(logits[0], logits[1])
    for t in toks[:4]:
        step = m.forward(np.array([t], np.int32), cache)
        assert step.shape == (102400,) and np.isfinite(step).all()
    if seen:
        used = np.unique(np.concatenate([s.ravel() for s in seen]))
        assert used.size >= 14, used  # of 16 experts


LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/scratch/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"))


@pytest.mark.skipif(not (LLAMA_BIN / "llama-simple").exists(), reason="no llama.cpp build (set LLAMA_CPP_BIN)")
def test_llama_cpp_reads_the_file_as_we_do(tiny_q8: Path) -> None:
    """llama.cpp loads the synthetic file, and its greedy continuation equals ours (same tokens, compared as
    ASCII text since partial UTF-8 pieces are printed differently)."""
    import subprocess
    import sys

    prompt = "The capital of France is"
    ref = subprocess.run([str(LLAMA_BIN / "llama-simple"), "-m", str(tiny_q8), "-n", "12", prompt],
                         capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-m", "moe_gguf.cli", "run", str(tiny_q8), "-p", prompt, "-n", "12",
                           "--temp", "0", "-t", "2"], capture_output=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]

    def ascii_text(b: bytes) -> str:
        return "".join(c for c in b.decode("utf-8", "replace") if c.isascii()).strip()

    ref_text = ascii_text(ref.stdout.split(prompt.encode(), 1)[1])
    assert len(ref_text) > 5
    assert ascii_text(ours.stdout) == ref_text
