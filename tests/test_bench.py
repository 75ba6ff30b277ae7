"""moe_gguf.bench: llama-bench-like tests, the decode roofline, the CLI. No speed assertions: sanity only."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_gguf import bench, synth
from moe_gguf.gguf import GGUFFile


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny-q8_0.gguf"
    synth.write_synth(out, preset="tiny", qtype="q8_0", seed=5, vocab=shared_dir / "vocab" / "ggml-vocab-deepseek-llm.gguf")
    return out


def test_active_bytes_by_hand(tiny: Path) -> None:
    """tiny preset in Q8_0 (34 bytes per 32 values), counted by hand: hidden 256, 4 layers (1 dense), 16 experts
    of which 4 are used, expert FFN 384, 2 shared experts, vocab 102400."""
    q8 = lambda n: n // 32 * 34  # noqa: E731  bytes of n Q8_0 values
    attn = q8(256 * 256) + q8(256 * 288) + q8(32 * 256 * 4) + q8(256 * 32 * 4) + q8(128 * 256)
    norms_per_layer = 4 * (256 + 256 + 256)  # attn_norm, ffn_norm, kv_a_norm (f32)
    dense = 3 * q8(256 * 1056)
    shared = 3 * q8(256 * 768)
    routed = 4 * 3 * q8(256 * 384)  # 4 of 16 experts, gate/up/down
    router = 4 * 256 * 16
    want = {
        "embedding row": q8(256),
        "attention": 4 * attn,
        "dense + shared FFN": dense + 3 * shared,
        "routed experts": 3 * routed,
        "router + norms": 4 * norms_per_layer + 3 * router + 4 * 256,
        "output head": q8(256 * 102400),
    }
    with GGUFFile(tiny) as f:
        total, parts = bench.active_weight_bytes(f)
    assert parts == want
    assert total == sum(want.values())


class _FakeModel:
    """Counts forward calls and token counts; sleeps a little so t/s is finite."""

    def __init__(self, path: str, n_ctx: int, n_threads: int) -> None:
        self.file = GGUFFile(path)
        self.n_vocab = 102400
        self.n_ctx = n_ctx
        self.calls: list[tuple[int, int]] = []  # (n_past, n_tokens)
        _FakeModel.last = self

    def new_cache(self) -> dict[str, int]:
        return {"n_past": 0}

    def forward(self, tokens: np.ndarray, cache: dict[str, int], all_logits: bool = False) -> np.ndarray:
        assert tokens.dtype == np.int32 and tokens.ndim == 1
        assert tokens.min() >= 0 and tokens.max() < self.n_vocab
        assert cache["n_past"] + tokens.size <= self.n_ctx
        self.calls.append((cache["n_past"], tokens.size))
        cache["n_past"] += tokens.size
        x = 0.0
        for _ in range(2000):
            x += 1.0
        return np.zeros(self.n_vocab, np.float32)


def test_test_semantics_with_fake_model(tiny: Path) -> None:
    rep = bench.run_bench(tiny, n_prompt=32, n_gen=5, n_threads=1, repetitions=2, bandwidth=10e9, loader=_FakeModel)
    calls = _FakeModel.last.calls
    # warm-up: one pp32 batch + one decode token; then 2 x pp32 (one batch each); then 2 x 5 single-token steps
    assert calls[:2] == [(0, 32), (0, 1)]
    assert calls[2:4] == [(0, 32), (0, 32)]
    assert calls[4:] == [(i, 1) for i in range(5)] * 2
    assert [t.name for t in rep.tests] == ["pp32", "tg5"]
    assert all(len(t.samples_ts) == 2 and all(s > 0 and math.isfinite(s) for s in t.samples_ts) for t in rep.tests)
    r = rep.roofline
    assert r is not None and r.bandwidth == 10e9
    assert r.max_ts == pytest.approx(10e9 / r.active_bytes)
    assert r.fraction == pytest.approx(rep.tests[1].avg_ts / r.max_ts)


def test_real_model_on_tiny_file(tiny: Path) -> None:
    pytest.importorskip("moe_gguf.models.deepseek2")
    rep = bench.run_bench(tiny, n_prompt=16, n_gen=4, n_threads=2, repetitions=2, bandwidth=None)
    assert [t.name for t in rep.tests] == ["pp16", "tg4"]
    for t in rep.tests:
        assert all(0 < s < 1e6 for s in t.samples_ts)
        assert t.stddev_ts >= 0
    assert rep.size == sum(t.nbytes for t in GGUFFile(tiny).tensors.values())
    assert rep.n_params == 70130944
    assert rep.model_type == "deepseek2 70M Q8_0"
    r = rep.roofline
    assert r is not None and 1e8 < r.bandwidth < 1e13 and 0 < r.fraction < 10
    js = json.loads(json.dumps(rep.to_json()))
    assert js["tests"][1]["avg_ts"] == pytest.approx(rep.tests[1].avg_ts)
    table = bench.format_table(rep)
    assert "| pp16 |" in table.replace("  ", " ") or "pp16" in table
    assert "roofline" in table and "deepseek2 70M Q8_0" in table


@pytest.mark.parametrize("c_probe", [True, False])
def test_bandwidth_probe(c_probe: bool) -> None:
    probe = bench.measure_read_bandwidth if c_probe else bench._numpy_read_bandwidth  # C kernels / numpy fallback
    bw = probe(2, 64 << 20, 2)
    assert 1e8 < bw < 1e13
    with pytest.raises(ValueError):
        bench.measure_read_bandwidth(0)


def test_bad_arguments(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        bench.run_bench(tiny, n_prompt=0, n_gen=0, loader=_FakeModel)
    with pytest.raises(ValueError):
        bench.run_bench(tiny, n_threads=0, loader=_FakeModel)
    with pytest.raises(ValueError):
        bench.run_bench(tiny, repetitions=0, loader=_FakeModel)
    with pytest.raises(FileNotFoundError):
        bench.run_bench(tmp_path / "missing.gguf", loader=_FakeModel)


def test_cli(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("moe_gguf.models.deepseek2")
    from typer.testing import CliRunner

    from moe_gguf.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["bench", str(tiny), "-p", "8", "-n", "2", "-t", "1", "-r", "1", "--json"])
    assert res.exit_code == 0, res.output
    js: dict[str, Any] = json.loads(res.stdout)
    assert [t["name"] for t in js["tests"]] == ["pp8", "tg2"] and js["n_threads"] == 1
    res = runner.invoke(app, ["bench", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 1 and "not found" in res.output
    out = tmp_path / "s.gguf"
    res = runner.invoke(app, ["synth", str(out), "--preset", "tiny", "--type", "q8_0", "--layers", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    with GGUFFile(out) as f:
        assert f.metadata["deepseek2.block_count"] == 2 and "blk.1.ffn_gate_exps.weight" in f.tensors
    res = runner.invoke(app, ["synth", str(out), "--type", "q2_k"])
    assert res.exit_code == 1 and "q4_k_m" in res.output


def test_decode_parts_tool(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tools/decode_parts.py times every part of the lean decode step; the weight bytes it attributes add up to
    the file's per-token weights (active_weight_bytes, counted independently) minus the embedding rows."""
    pytest.importorskip("moe_gguf.models.deepseek2")
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("decode_parts", Path(__file__).parents[1] / "tools" / "decode_parts.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tiny), "-t", "1", "-n", "3"]) == 0
    out = capsys.readouterr().out
    parts = set(re.findall(r"^\s+(\w+)\s+[\d.]+ ms/token", out, re.M))
    assert parts == {"q", "prep", "attn", "v_o", "norm", "moe", "moe0", "head"}, out
    mb = {k: float(v) for k, v in re.findall(r"^\s+(\w+)\s.*%\s+([\d.]+) MB", out, re.M)}
    with GGUFFile(tiny) as f:
        active, _ = bench.active_weight_bytes(f)
        norms = sum(t.nbytes for n, t in f.tensors.items() if n.endswith("norm.weight"))
        embd_row = f.tensors["token_embd.weight"].nbytes // f.tensors["token_embd.weight"].shape[0]
    assert sum(mb.values()) * 1e6 == pytest.approx(active - norms - embd_row, abs=0.1e6 * len(mb))
