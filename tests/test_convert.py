"""HF -> GGUF conversion: tiny random DeepSeek-V2 checkpoints saved by transformers (single file and sharded)
converted and run by moe-gguf (logits vs transformers), tensors/metadata vs the independent llama.cpp-layout
writer in tests/tiny_deepseek2.py, a byte-level BPE tokenizer built with `tokenizers` carried over exactly,
other families' names/shapes vs llama.cpp's conventions, and clear errors that leave no output file."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_deepseek2 as td  # noqa: E402

from moe_gguf.convert import ConvertError, convert  # noqa: E402
from moe_gguf.gguf import GGUFFile  # noqa: E402
from moe_gguf.ops.quants import dequantize  # noqa: E402
from moe_gguf.tokenizer_pre import DEEPSEEK_LLM, LLAMA3  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 320
CORPUS = [
    "Hello world! How are you doing today? I'm fine, thanks.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "def f(x):\n    return x ** 2  # squares\n\n\tindented\ttabs",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский текст, 日本語のテキスト, 中文文本, 한국어",
    "emoji 🙂🚀 and symbols ©®™ ±×÷ ≤≥ «quotes» “smart” — dashes…",
    "   leading and trailing spaces   ",
    "numbers: 3.14159, 2,718, -42, 1e-5, 0x1F, 10000000",
    "mixed\r\nline\nendings\r\n\n\nand   multiple    spaces",
    "it's they're we've I'll he'd SHE'S",
    "<s> literal special-looking text </s> [INST] x [/INST]",
]


def _tokenizer(kind: str) -> "object":
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind == "llama3":
        splits = [pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated")]
    else:
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in DEEPSEEK_LLM]
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 4, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin|>", "<|end|>"], show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A $B", special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))])
    return tok


def _save_tokenizer(d: Path, kind: str) -> "object":
    tok = _tokenizer(kind)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin|>", "eos_token": {"content": "<|end|>"}, "add_bos_token": True,
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }))
    return tok


@pytest.fixture(scope="module")
def ds_model(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("ds")
    model = td.build_hf(n_layer=3, vocab=VOCAB)
    single, sharded = base / "single", base / "sharded"
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="150KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    tok = _save_tokenizer(single, "llama3")
    _save_tokenizer(sharded, "deepseek")
    return model, single, sharded, tok


TOKS = np.array([1, 5, 9, 33, 200, 7, 7, 81, 150, 3, 99, 12, 310, 44])


def _logits(path: Path) -> np.ndarray:
    from moe_gguf.models import load_model

    m = load_model(str(path))
    return m.forward(TOKS, m.new_cache(), all_logits=True)


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_deepseek2_f32_logits_and_layout(ds_model, tmp_path: Path, which: str) -> None:
    model, single, sharded, _ = ds_model
    out = tmp_path / "m.gguf"
    r = convert(single if which == "single" else sharded, out, "f32", n_threads=2)
    assert r.arch == "deepseek2"
    ref = td.hf_logits(model, TOKS)
    got = _logits(out)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    # tensors: identical to the independent llama.cpp-layout writer's, in name, shape and value
    f = GGUFFile(out)
    want = td.gguf_tensors(model)
    assert set(f.tensors) == set(want)
    for name, arr in want.items():
        assert f.tensors[name].shape == arr.shape, name
        assert np.array_equal(f.tensor(name), arr), name
    # metadata: every key the reference writer sets has the same value (general.name aside)
    td.write_gguf(model, tmp_path / "ref.gguf")
    g = GGUFFile(tmp_path / "ref.gguf")
    for k, v in g.metadata.items():
        if k in ("general.name", "general.file_type") or k.startswith("tokenizer."):
            continue
        assert k in f.metadata, k
        assert np.allclose(np.asarray(f.metadata[k], dtype=object).astype(float), np.asarray(v, dtype=object).astype(float)) \
            if not isinstance(v, str) else f.metadata[k] == v, k
    md = f.metadata
    assert md["general.file_type"] == 0
    assert md["deepseek2.rope.scaling.yarn_log_multiplier"] == pytest.approx(0.1 * 0.707)
    assert md["deepseek2.attention.key_length"] == 64 + 16 and md["deepseek2.attention.value_length"] == 64
    assert md["deepseek2.attention.key_length_mla"] == 48 and md["deepseek2.attention.value_length_mla"] == 32
    assert md["deepseek2.expert_gating_func"] == 1 and md["deepseek2.leading_dense_block_count"] == 1
    assert md["tokenizer.ggml.pre"] == ("llama-bpe" if which == "single" else "deepseek-llm")


@pytest.mark.parametrize("outtype,tol", [("q8_0", 0.03), ("q4_k_m", 0.2), ("f16", 0.002), ("bf16", 0.02)])
def test_deepseek2_quantized_outputs(ds_model, tmp_path: Path, outtype: str, tol: float) -> None:
    model, single, _, _ = ds_model
    out = tmp_path / "m.gguf"
    r = convert(single, out, outtype, n_threads=2)
    ref = td.hf_logits(model, TOKS)
    err = float(np.abs(_logits(out) - ref).max() / np.abs(ref).max())
    assert err < tol, err
    f = GGUFFile(out)
    assert f.metadata["general.file_type"] == {"q8_0": 7, "q4_k_m": 15, "f16": 1, "bf16": 32}[outtype]
    want = td.gguf_tensors(model)
    for name, info in f.tensors.items():  # each tensor within its format's error of the source
        x = want[name]
        y = dequantize(np.ascontiguousarray(f.tensor(name)), info.ggml_type, info.shape)
        if x.ndim == 1 or "gate_inp" in name:
            assert info.type_name == "F32" and np.array_equal(x, y), name
            continue
        rel = float(np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2)))
        assert rel < {"F16": 1e-3, "BF16": 5e-3, "Q8_0": 6e-3, "Q6_K": 0.02, "Q5_0": 0.045, "Q5_1": 0.045,
                      "Q4_K": 0.08}[info.type_name], (name, info.type_name, rel)
    assert r.types["output.weight"] in ("Q8_0", "F16", "BF16")


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_tokenizer_carried_over(ds_model, tmp_path: Path, which: str) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    from moe_gguf.tokenizer import Tokenizer

    _, single, sharded, _ = ds_model
    d = single if which == "single" else sharded
    out = tmp_path / "m.gguf"
    convert(d, out, "f32", n_threads=1)
    hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
    ours = Tokenizer.from_gguf(str(out))
    for text in CORPUS + ["".join(CORPUS), "", " ", "\n\n"]:
        assert ours.encode(text) == hf.encode(text).ids, text
    md = GGUFFile(out).metadata
    assert md["tokenizer.ggml.bos_token_id"] == hf.token_to_id("<|begin|>")
    assert md["tokenizer.ggml.eos_token_id"] == hf.token_to_id("<|end|>")
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert len(md["tokenizer.ggml.tokens"]) == VOCAB
    types = np.asarray(md["tokenizer.ggml.token_type"])
    assert types[hf.token_to_id("<|end|>")] == 3 and types[-1] == 5  # control; padding entry unused


def _one_line_error(args: list[str], script: bool = False) -> str:
    if script:  # the tools/convert.py entry point, in a fresh interpreter
        res = subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), *args], capture_output=True,
                             text=True, timeout=120)
        code, err = res.returncode, res.stderr
    else:
        from typer.testing import CliRunner

        from moe_gguf.cli import app

        r = CliRunner().invoke(app, ["convert", *args])
        code, err = r.exit_code, r.output
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_inputs_clear_errors_no_output(ds_model, tmp_path: Path) -> None:
    _, single, sharded, _ = ds_model
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    # unsupported architecture: the supported ones are listed
    d = _copy(single, tmp_path / "arch")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["FooForCausalLM"]}))
    msg = _one_line_error([str(d), "--outfile", str(out)], script=True)
    assert "FooForCausalLM" in msg and "DeepseekV2ForCausalLM" in msg and "Qwen3MoeForCausalLM" in msg
    # a missing config key
    d = _copy(single, tmp_path / "key")
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "kv_lora_rank"}))
    assert "kv_lora_rank" in _one_line_error([str(d), "--outfile", str(out)])
    # config and weights disagree
    d = _copy(single, tmp_path / "shape")
    (d / "config.json").write_text(json.dumps({**cfg, "moe_intermediate_size": 48}))
    assert "shape" in _one_line_error([str(d), "--outfile", str(out)])
    # missing tokenizer
    d = _copy(single, tmp_path / "notok")
    (d / "tokenizer.json").unlink()
    assert "no tokenizer" in _one_line_error([str(d), "--outfile", str(out)])
    # a missing shard
    d = _copy(sharded, tmp_path / "shard")
    next(d.glob("model-00002-*.safetensors")).unlink()
    assert "missing" in _one_line_error([str(d), "--outfile", str(out)])
    # unknown outtype, missing directory
    assert "q4_k_m" in _one_line_error([str(single), "--outfile", str(out), "--outtype", "q3_zz"])
    assert "not found" in _one_line_error([str(tmp_path / "nowhere"), "--outfile", str(out)])
    assert os.listdir(out.parent) == []


def test_unexpected_dtype(ds_model, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    _, single, _, _ = ds_model
    d = _copy(single, tmp_path / "i8")
    sd = load_file(str(d / "model.safetensors"))
    sd["model.norm.weight"] = np.ones(64, np.int8)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ConvertError, match="dtype I8"):
        convert(d, tmp_path / "o.gguf", "f16")
    assert not (tmp_path / "o.gguf").exists()


def test_failure_mid_write_leaves_nothing(ds_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from moe_gguf.convert import stream

    _, single, _, _ = ds_model
    real = stream.encode_rows
    calls = {"n": 0}

    def full_disk(x: np.ndarray, t: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(x, t)

    monkeypatch.setattr(stream, "encode_rows", full_disk)
    out = tmp_path / "sub"
    out.mkdir()
    with pytest.raises(OSError, match="No space"):
        convert(single, out / "o.gguf", "q8_0", n_threads=2)
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------- other families
_COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)
_FAMILIES = {
    # arch: (transformers config class, model class, extra config, gguf arch)
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(intermediate_size=96), "llama"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(intermediate_size=32, num_local_experts=4,
                                                           num_experts_per_tok=2), "llama"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(intermediate_size=96), "qwen2"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(intermediate_size=96, head_dim=32, tie_word_embeddings=True),
              "qwen3"),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(intermediate_size=96, moe_intermediate_size=32,
                 shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                 mlp_only_layers=[]), "qwen2moe"),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(intermediate_size=96, moe_intermediate_size=32,
                 num_experts=4, num_experts_per_tok=2, head_dim=16, norm_topk_prob=True, decoder_sparse_step=1,
                 mlp_only_layers=[]), "qwen3moe"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(intermediate_size=32, num_experts=4, num_experts_per_tok=2),
              "olmoe"),
}


def _expected_names(fam: str, n_layer: int = 2, tied: bool = False) -> set[str]:
    """llama.cpp's tensor names for each family (convert_hf_to_gguf.py / gguf-py's tensor map)."""
    names = {"token_embd.weight", "output_norm.weight"} | (set() if tied else {"output.weight"})
    for i in range(n_layer):
        b = f"blk.{i}."
        names |= {b + n for n in ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                                  "attn_output.weight", "ffn_norm.weight")}
        if fam in ("qwen2", "qwen2moe"):
            names |= {b + "attn_q.bias", b + "attn_k.bias", b + "attn_v.bias"}
        if fam in ("qwen3", "qwen3moe", "olmoe"):
            names |= {b + "attn_q_norm.weight", b + "attn_k_norm.weight"}
        if fam in ("llama", "qwen2", "qwen3"):
            names |= {b + "ffn_gate.weight", b + "ffn_up.weight", b + "ffn_down.weight"}
        else:
            names |= {b + "ffn_gate_inp.weight", b + "ffn_gate_exps.weight", b + "ffn_up_exps.weight",
                      b + "ffn_down_exps.weight"}
        if fam == "qwen2moe":
            names |= {b + "ffn_gate_inp_shexp.weight", b + "ffn_gate_shexp.weight", b + "ffn_up_shexp.weight",
                      b + "ffn_down_shexp.weight"}
    return names


@pytest.mark.parametrize("fam", list(_FAMILIES))
def test_family_names_shapes_logits(fam: str, tmp_path: Path) -> None:
    import torch
    import transformers

    cfg_cls, model_cls, extra, arch = _FAMILIES[fam]
    cfg = getattr(transformers, cfg_cls)(**{**_COMMON, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 5.0 if name.endswith("mlp.gate.weight") else 0.4
            p.copy_(1.0 + 0.1 * torch.randn(p.shape) if p.ndim == 1 and "norm" in name
                    else torch.randn(p.shape) * (scale / p.shape[-1] ** 0.5))
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "m.gguf"
    r = convert(tmp_path / "hf", out, "f32", tokenizer=False)
    assert r.arch == arch
    f = GGUFFile(out)
    tied = bool(extra.get("tie_word_embeddings"))
    assert set(f.tensors) == _expected_names(fam, tied=tied)
    H, HKV, D = 4, 2, 64
    hd = extra.get("head_dim", D // H)
    assert f.tensors["blk.0.attn_q.weight"].shape == (H * hd, D)
    assert f.tensors["blk.0.attn_k.weight"].shape == (HKV * hd, D)
    md = f.metadata
    assert md[f"{arch}.block_count"] == 2 and md[f"{arch}.attention.head_count_kv"] == HKV
    assert md[f"{arch}.rope.dimension_count"] == hd
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    if arch == "llama":  # rows permuted from HF's rotate-half order to llama.cpp's interleaved pairs
        half = hd // 2
        perm = [h * hd + (j // 2) + (j % 2) * half for h in range(H) for j in range(hd)]
        q = q[perm]
    assert np.array_equal(f.tensor("blk.0.attn_q.weight"), q)
    if "ffn_gate_exps.weight" in "".join(f.tensors):
        E = md[f"{arch}.expert_count"]
        assert f.tensors["blk.1.ffn_gate_exps.weight"].shape[0] == E == 4
        assert md[f"{arch}.expert_used_count"] == 2
    from moe_gguf.models import SUPPORTED_ARCHITECTURES

    if arch not in SUPPORTED_ARCHITECTURES:
        pytest.skip(f"moe-gguf cannot run {arch} yet")
    with torch.no_grad():
        ref = model(torch.as_tensor(TOKS[None] % 128), use_cache=False).logits[0].float().numpy()
    got = _logits_any(out, TOKS % 128)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


def _logits_any(path: Path, toks: np.ndarray) -> np.ndarray:
    from moe_gguf.models import load_model

    m = load_model(str(path))
    return m.forward(toks, m.new_cache(), all_logits=True)


def _spm_model(**kw: Any) -> io.BytesIO:
    """A SentencePiece BPE model (byte fallback) trained on CORPUS."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=440, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, minloglevel=2, **kw)
    return buf


def test_sentencepiece_tokenizer_carried_over(tmp_path: Path) -> None:
    """tokenizer.model (SentencePiece BPE with byte fallback) -> tokenizer.ggml.model=llama, same ids as sentencepiece."""
    import sentencepiece as spm

    buf = _spm_model()
    d = tmp_path / "hf"
    td.build_hf(n_layer=2, vocab=448).save_pretrained(d)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    convert(d, tmp_path / "m.gguf", "q8_0")
    from moe_gguf.tokenizer import Tokenizer

    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    ours = Tokenizer.from_gguf(str(tmp_path / "m.gguf"))
    for text in CORPUS + ["".join(CORPUS)]:
        assert ours.encode(text) == [sp.bos_id()] + sp.encode(text), text
    md = GGUFFile(tmp_path / "m.gguf").metadata
    assert md["tokenizer.ggml.model"] == "llama" and len(md["tokenizer.ggml.tokens"]) == 448
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.eos_token_id"] == 2
    assert np.allclose(np.asarray(md["tokenizer.ggml.scores"])[:440], [sp.get_score(i) for i in range(440)])


# ---------------------------------------------------------------------------------------------- gemma3
def test_gemma3_names_norms_metadata_logits(tmp_path: Path) -> None:
    """A tiny random Gemma3ForCausalLM (7 layers: sliding-window layers 0-4 and 6, global layer 5; window 6 <
    14 tokens) saved by transformers, converted to f32: llama.cpp's names, norms stored as 1 + w, gemma3 keys,
    and moe-gguf's logits vs transformers."""
    import tiny_families as tf

    model = tf.build_hf("gemma3", n_layer=7, vocab=320, window=6)
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "g.gguf"
    r = convert(tmp_path / "hf", out, "f32", tokenizer=False)
    assert r.arch == "gemma3"
    f = GGUFFile(out)
    names = {"token_embd.weight", "output_norm.weight"}  # tied: no output.weight
    for i in range(7):
        names |= {f"blk.{i}.{n}.weight" for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
            "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")}
    assert set(f.tensors) == names
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    for ours, hf in (("blk.3.attn_norm", "model.layers.3.input_layernorm"),
                     ("blk.3.attn_q_norm", "model.layers.3.self_attn.q_norm"),
                     ("blk.3.attn_k_norm", "model.layers.3.self_attn.k_norm"),
                     ("blk.3.post_attention_norm", "model.layers.3.post_attention_layernorm"),
                     ("blk.3.ffn_norm", "model.layers.3.pre_feedforward_layernorm"),
                     ("blk.3.post_ffw_norm", "model.layers.3.post_feedforward_layernorm"),
                     ("output_norm", "model.norm")):
        np.testing.assert_allclose(f.tensor(ours + ".weight"), sd[hf + ".weight"] + 1.0, rtol=0, atol=1e-6)
    assert np.array_equal(f.tensor("blk.2.attn_k.weight"), sd["model.layers.2.self_attn.k_proj.weight"])
    md = f.metadata
    assert md["gemma3.block_count"] == 7 and md["gemma3.attention.sliding_window"] == 6
    assert md["gemma3.attention.key_length"] == md["gemma3.attention.value_length"] == 32
    assert md["gemma3.attention.head_count"] == 4 and md["gemma3.attention.head_count_kv"] == 2
    assert md["gemma3.feed_forward_length"] == 96 and md["gemma3.embedding_length"] == 64
    assert md["gemma3.rope.freq_base"] == 10000.0
    toks = TOKS % 320
    ref = tf.hf_logits(model, toks)
    got = _logits_any(out, toks)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


def test_gemma3_refusals(tmp_path: Path) -> None:
    import tiny_families as tf

    model = tf.build_hf("gemma3", n_layer=2, vocab=128)
    d = tmp_path / "hf"
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    for change, msg in ((dict(architectures=["Gemma3ForConditionalGeneration"]), "text-only Gemma3ForCausalLM"),
                        (dict(architectures=["NoSuchForCausalLM"]), "Gemma3ForCausalLM"),
                        (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types"),
                        (dict(query_pre_attn_scalar=64), "query_pre_attn_scalar"),
                        (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping")):
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ConvertError, match=msg):
            convert(d, tmp_path / "o.gguf", "f32", tokenizer=False)
        assert not (tmp_path / "o.gguf").exists()


def test_gemma3_sentencepiece_no_space_prefix(tmp_path: Path) -> None:
    """Gemma 3's SentencePiece vocabulary is written with add_space_prefix = false (as llama.cpp does); ids then
    equal sentencepiece's for a model trained without a dummy prefix."""
    import sentencepiece as spm
    import tiny_families as tf

    buf = _spm_model(add_dummy_prefix=False)
    d = tmp_path / "hf"
    tf.build_hf("gemma3", n_layer=1, vocab=448).save_pretrained(d)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    convert(d, tmp_path / "m.gguf", "f32")
    assert GGUFFile(tmp_path / "m.gguf").metadata["tokenizer.ggml.add_space_prefix"] is False
    from moe_gguf.tokenizer import Tokenizer

    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    ours = Tokenizer.from_gguf(str(tmp_path / "m.gguf"))
    for text in CORPUS:
        assert ours.encode(text) == [sp.bos_id()] + sp.encode(text), text
