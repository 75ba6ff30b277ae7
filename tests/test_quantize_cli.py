"""`moe-gguf quantize`: per-tensor types vs llama-quantize's recipe (written out independently here), values vs
gguf-py's numpy quantizers/dequantizers, a quantized tiny DeepSeek-V2 that still runs, one-line errors."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gguf
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_gguf.cli import app  # noqa: E402
from moe_gguf.gguf import GGUFFile  # noqa: E402
from moe_gguf.quantize import quantize_file  # noqa: E402

runner = CliRunner()

N_LAYER, N_EXP, D, F_EXP, F_DENSE, VOCAB = 8, 4, 256, 384, 512, 512


def _names_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """deepseek2 (MLA split) tensor names with numpy shapes; expert FFN rows of 384 (not a multiple of 256)."""
    H, NP, V, C, R = 4, 32, 64, 256, 32
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (VOCAB, D))]
    for il in range(N_LAYER):
        b = f"blk.{il}."
        out += [(b + "attn_norm.weight", (D,)), (b + "attn_q.weight", (H * (NP + R), D)),
                (b + "attn_kv_a_mqa.weight", (C + R, D)), (b + "attn_kv_a_norm.weight", (C,)),
                (b + "attn_k_b.weight", (H, C, NP)), (b + "attn_v_b.weight", (H, V, C)),
                (b + "attn_output.weight", (D, H * V)), (b + "ffn_norm.weight", (D,))]
        if il == 0:
            out += [(b + "ffn_gate.weight", (F_DENSE, D)), (b + "ffn_up.weight", (F_DENSE, D)),
                    (b + "ffn_down.weight", (D, F_DENSE))]
        else:
            out += [(b + "ffn_gate_inp.weight", (N_EXP, D)), (b + "exp_probs_b.bias", (N_EXP,)),
                    (b + "ffn_gate_exps.weight", (N_EXP, F_EXP, D)), (b + "ffn_up_exps.weight", (N_EXP, F_EXP, D)),
                    (b + "ffn_down_exps.weight", (N_EXP, D, F_EXP)),
                    (b + "ffn_gate_shexp.weight", (F_EXP, D)), (b + "ffn_up_shexp.weight", (F_EXP, D)),
                    (b + "ffn_down_shexp.weight", (D, F_EXP))]
    out += [("output_norm.weight", (D,)), ("output.weight", (VOCAB, D))]
    return out


def _write_src(path: Path, dtype: str = "F32", seed: int = 0, tied: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "deepseek2")
    w.add_block_count(N_LAYER)
    w.add_head_count(4)
    w.add_head_count_kv(1)
    w.add_expert_count(N_EXP)
    w.add_embedding_length(D)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_file_type(0)
    vals = {}
    for name, shape in _names_shapes():
        if tied and name == "output.weight":
            continue
        x = rng.standard_normal(shape).astype(np.float32) * (1.0 if len(shape) > 1 else 0.1) + (len(shape) == 1)
        if dtype == "F16" and len(shape) > 1:
            x16 = x.astype(np.float16)
            vals[name] = x16.astype(np.float32)
            w.add_tensor(name, x16)
        elif dtype == "BF16" and len(shape) > 1:
            bits = gguf.quants.quantize(x, QT.BF16)
            vals[name] = (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
            w.add_tensor(name, bits, raw_dtype=QT.BF16)
        else:
            vals[name] = x
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return vals


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


_BASE = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K, "q6_k": QT.Q6_K,
         "iq4_xs": QT.IQ4_XS, "q4_k": QT.Q4_K}
_FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0, QT.IQ4_XS: QT.IQ4_NL}


def expected_type(name: str, shape: tuple[int, ...], mix: str, tied: bool = False) -> QT:
    """llama-quantize's choice for this test model (deepseek2, 8 layers, 16 experts, MLA split layout)."""
    if len(shape) < 2 or name.endswith("_norm.weight") or "ffn_gate_inp" in name or not name.endswith("weight"):
        return QT.F32
    t = _BASE[mix]
    pure = mix == "q4_k"
    if not pure and (name == "output.weight" or (tied and name == "token_embd.weight")):
        t = QT.Q8_0 if mix == "q8_0" else QT.Q6_K
    elif not pure and "ffn_down" in name:
        il = int(name.split(".")[1])
        if mix in ("q4_k_m", "q5_k_m") and _more_bits(il, N_LAYER):
            t = QT.Q6_K
        elif mix == "iq4_xs" and il < N_LAYER // 8:
            t = QT.Q5_K
    ncols = shape[-1]
    if ncols % gguf.GGML_QUANT_SIZES[t][0]:
        t = _FALLBACK[t]
    return t


# relative RMS error bounds for N(0,1) rows (measured ~ half of these with ggml's reference quantizers)
_RMS_BOUND = {QT.Q8_0: 0.006, QT.Q6_K: 0.02, QT.Q5_K: 0.04, QT.Q5_0: 0.045, QT.Q5_1: 0.045, QT.Q4_K: 0.08,
              QT.Q4_0: 0.1, QT.IQ4_NL: 0.09, QT.IQ4_XS: 0.09, QT.F32: 0.0}


@pytest.fixture(scope="module")
def src_f32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    p = tmp_path_factory.mktemp("q") / "src-f32.gguf"
    return p, _write_src(p)


@pytest.mark.parametrize("mix", ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "iq4_xs", "q4_k"])
def test_recipe_types_and_values(src_f32: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, mix: str) -> None:
    src, vals = src_f32
    out = tmp_path / f"{mix}.gguf"
    quantize_file(src, out, mix, n_threads=2)
    r = gguf.GGUFReader(str(out))
    ftypes = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q8_0": 7, "q4_0": 2, "iq4_xs": 30, "q4_k": 14}
    assert int(r.fields["general.file_type"].parts[-1][0]) == ftypes[mix]
    assert int(r.fields["general.quantization_version"].parts[-1][0]) == 2
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert [t.name for t in r.tensors] == [n for n, _ in _names_shapes()]
    for t in r.tensors:
        shape = vals[t.name].shape
        want = expected_type(t.name, shape, mix)
        assert t.tensor_type == want, (t.name, t.tensor_type.name, want.name)
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        ref = vals[t.name]
        if want == QT.F32:
            assert np.array_equal(got, ref), t.name
            continue
        rel = float(np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref**2)))
        assert rel < _RMS_BOUND[want], (t.name, want.name, rel)
        if want in (QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q5_1):  # byte-exact with gguf-py's reference quantizer
            assert np.array_equal(np.asarray(t.data).reshape(-1), gguf.quants.quantize(ref, want).reshape(-1)), t.name


def test_tied_embeddings_get_output_type(tmp_path: Path) -> None:
    src = tmp_path / "tied.gguf"
    vals = _write_src(src, tied=True)
    quantize_file(src, tmp_path / "o.gguf", "q4_k_m", n_threads=1)
    types = {t.name: t.ggml_type for t in GGUFFile(tmp_path / "o.gguf").tensors.values()}
    assert types["token_embd.weight"] == QT.Q6_K
    assert all(types[n] == expected_type(n, vals[n].shape, "q4_k_m", tied=True) for n in vals)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_sources_q8_0_exact(tmp_path: Path, dtype: str) -> None:
    src = tmp_path / f"{dtype}.gguf"
    vals = _write_src(src, dtype=dtype, seed=3)
    quantize_file(src, tmp_path / "o.gguf", "q8_0", n_threads=2)
    r = gguf.GGUFReader(str(tmp_path / "o.gguf"))
    for t in r.tensors:
        if t.tensor_type == QT.Q8_0:
            assert np.array_equal(np.asarray(t.data).reshape(-1), gguf.quants.quantize(vals[t.name], QT.Q8_0).reshape(-1))


def test_q8_0_source_and_thread_independence(src_f32: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    src, vals = src_f32
    quantize_file(src, tmp_path / "q8.gguf", "q8_0", n_threads=2)
    quantize_file(tmp_path / "q8.gguf", tmp_path / "a.gguf", "q4_k_m", n_threads=1)
    quantize_file(tmp_path / "q8.gguf", tmp_path / "b.gguf", "q4_k_m", n_threads=2)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    q8 = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q8.gguf")).tensors}
    for t in r.tensors:
        assert t.tensor_type == expected_type(t.name, vals[t.name].shape, "q4_k_m")
        if t.tensor_type == QT.Q8_0:  # same type as the source: copied as is
            assert np.array_equal(np.asarray(t.data), np.asarray(q8[t.name].data))


def test_quantized_tiny_deepseek2_runs(tmp_path: Path) -> None:
    import tiny_deepseek2 as td

    from moe_gguf.models import load_model

    m = td.build_hf(n_layer=3)
    td.write_gguf(m, tmp_path / "f32.gguf")
    toks = np.array([1, 5, 9, 33, 200, 7, 7, 81, 150, 3, 99, 12])
    ref = td.hf_logits(m, toks)
    scale = float(np.abs(ref).max())
    for mix, tol in (("q8_0", 0.03), ("q6_k", 0.03), ("q4_k_m", 0.2), ("q5_k_m", 0.1)):
        out = tmp_path / f"{mix}.gguf"
        res = runner.invoke(app, ["quantize", str(tmp_path / "f32.gguf"), str(out), mix, "-t", "2"])
        assert res.exit_code == 0, res.output
        assert "wrote" in res.output
        model = load_model(str(out))
        lg = model.forward(toks, model.new_cache(), all_logits=True)
        err = float(np.abs(lg - ref).max()) / scale
        assert err < tol, (mix, err)


def _one_line_error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_errors(src_f32: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    src, _ = src_f32
    out = tmp_path / "o.gguf"
    assert "not found" in _one_line_error(["quantize", str(tmp_path / "missing.gguf"), str(out), "q4_k_m"])
    msg = _one_line_error(["quantize", str(src), str(out), "q3_xx"])
    assert "unknown type" in msg and "q4_k_m" in msg
    quantize_file(src, tmp_path / "k.gguf", "q4_k_m", n_threads=2)
    msg = _one_line_error(["quantize", str(tmp_path / "k.gguf"), str(out), "q8_0"])
    assert "already quantized" in msg
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    _one_line_error(["quantize", str(tmp_path / "junk.gguf"), str(out), "q8_0"])
    assert not out.exists()


def test_allow_requantize(src_f32: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """--allow-requantize re-encodes quantized tensors from their dequantized values: each Q4_0 / Q8_0 tensor of the
    output is gguf-py's quantization of gguf-py's dequantization of the source tensor, byte for byte."""
    from gguf.quants import dequantize as gdeq
    from gguf.quants import quantize as gq

    src, _ = src_f32
    k = tmp_path / "k.gguf"
    quantize_file(src, k, "q4_k_m", n_threads=2)
    out = tmp_path / "r.gguf"
    assert "--allow-requantize" in _one_line_error(["quantize", str(k), str(out), "q4_0"])
    res = runner.invoke(app, ["quantize", str(k), str(out), "q4_0", "--allow-requantize", "-t", "2"])
    assert res.exit_code == 0, res.output
    checked = 0
    with GGUFFile(k) as fk, GGUFFile(out) as fo:
        for name, t in fo.tensors.items():
            ts = fk.tensors[name]
            got = np.asarray(fo.tensor(name)).view(np.uint8).reshape(-1)
            if t.ggml_type == ts.ggml_type:
                assert np.array_equal(got, np.asarray(fk.tensor(name)).view(np.uint8).reshape(-1)), name
            elif t.ggml_type in (QT.Q4_0, QT.Q8_0):
                x = gdeq(np.asarray(fk.tensor(name)).view(np.uint8), QT(ts.ggml_type))
                assert np.array_equal(got, gq(x.astype(np.float32), QT(t.ggml_type)).reshape(-1)), name
                checked += 1
    assert checked > 0


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.ones((64, 256), np.float32))
    bad = np.ones((64, 256), np.float32)
    bad[40, 3] = np.nan
    w.add_tensor("blk.0.attn_output.weight", bad)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out.gguf"
    msg = _one_line_error(["quantize", str(src), str(out), "q8_0"])
    assert "NaN" in msg
    assert sorted(os.listdir(tmp_path)) == ["nan.gguf"]


def test_recipe_dense_and_8_expert_rules() -> None:
    """attn_v in the use_more_bits positions (counted in file order) for a dense model; Mixtral-style 8-expert
    models: attn_v/attn_k Q8_0 and attn_output Q5_K at q4_k_m (llama.cpp's n_expert == 8 rules)."""
    from moe_gguf.convert.mixes import ModelShape, plan_types

    n = 16
    tensors = []
    for il in range(n):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down"):
            tensors.append((f"blk.{il}.{part}.weight", (512, 512), QT.F32))
    dense = plan_types("q4_k_m", tensors, ModelShape("llama", n, 0, 8, 8))
    more = {0, 1, 4, 7, 10, 13, 14, 15}  # i < 2, i >= 14, (i - 2) % 3 == 2
    for il in range(n):
        want = QT.Q6_K if il in more else QT.Q4_K
        assert dense[f"blk.{il}.attn_v.weight"] == want and dense[f"blk.{il}.ffn_down.weight"] == want, il
        assert dense[f"blk.{il}.attn_k.weight"] == QT.Q4_K and dense[f"blk.{il}.attn_output.weight"] == QT.Q4_K
    moe = plan_types("q4_k_m", tensors, ModelShape("llama", n, 8, 8, 2))
    for il in range(n):
        assert moe[f"blk.{il}.attn_v.weight"] == QT.Q8_0 and moe[f"blk.{il}.attn_k.weight"] == QT.Q8_0
        assert moe[f"blk.{il}.attn_output.weight"] == QT.Q5_K and moe[f"blk.{il}.attn_q.weight"] == QT.Q4_K
