"""`moe-gguf run` / `chat`: flag wiring and streaming on the fake model, clean errors, and end to end on a tiny
random deepseek2 GGUF when its builder is available."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_gguf import cli

from test_generate import EOG, ORDER, TOK, FakeModel, chain, cycle_next

runner = CliRunner()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}
    nxt = cycle_next(ORDER)
    nxt[17] = EOG
    model = FakeModel(nxt, n_ctx=64)

    def fake_open(path: str, ctx_size: int, threads: int, populate: bool = True):
        seen.update(path=path, ctx_size=ctx_size, threads=threads)
        return model, TOK

    def fake_encode(text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        seen.setdefault("encoded", []).append(text)
        return [1 + (len(text) % 3)]

    def fake_chat_ids(m, tok, messages):
        seen.setdefault("messages", []).append([dict(x) for x in messages])
        return [1, 2 + len(messages) % 3]

    monkeypatch.setattr(TOK, "encode", fake_encode, raising=False)
    monkeypatch.setattr(cli, "_open", fake_open)
    monkeypatch.setattr(cli, "_chat_ids", fake_chat_ids)
    seen["model"] = model
    seen["next"] = nxt
    return seen


def test_run_streams_greedy_text_and_stats(fake: dict) -> None:
    r = runner.invoke(cli.app, ["run", "m.gguf", "-p", "hey!", "-n", "7", "--temp", "0", "-t", "3", "-c", "64"])
    assert r.exit_code == 0, r.output
    start = 1 + len("hey!") % 3
    assert EOG not in chain(start, fake["next"], 7)
    assert r.stdout == TOK.decode(chain(start, fake["next"], 7)) + "\n"
    assert "tokens/s" in r.stderr and "generation: 7 tokens" in r.stderr
    assert fake["threads"] == 3 and fake["ctx_size"] == 64


def test_run_until_eog_and_prompt_file(fake: dict, tmp_path: Path) -> None:
    pf = tmp_path / "p.txt"
    pf.write_text("abcd", encoding="utf-8")
    r = runner.invoke(cli.app, ["run", "m.gguf", "-f", str(pf), "--temp", "0"])
    assert r.exit_code == 0, r.output
    ids = chain(1 + 4 % 3, fake["next"], 100)
    assert ids[-1] == EOG
    assert r.stdout == TOK.decode(ids[:-1]) + "\n"
    assert fake["encoded"] == ["abcd"]


def test_run_chat_and_stop(fake: dict) -> None:
    r = runner.invoke(cli.app, ["run", "m.gguf", "-p", "yo", "--chat", "-sys", "be brief", "--temp", "0", "-n", "9"])
    assert r.exit_code == 0, r.output
    assert fake["messages"] == [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]]
    full = TOK.decode(chain(2 + 1 % 3, fake["next"], 9))  # the fake prompt for one message
    stop = full[5:7]
    r = runner.invoke(cli.app, ["run", "m.gguf", "-p", "yo", "--chat", "--temp", "0", "-n", "9", "--stop", stop])
    assert r.exit_code == 0, r.output
    assert r.stdout == full[: full.find(stop)] + "\n"


def test_run_sampled_is_seeded(fake: dict) -> None:
    args = ["run", "m.gguf", "-p", "x", "-n", "12", "--temp", "1.5", "--top-k", "0", "--top-p", "1", "--min-p", "0"]
    fake["model"].table /= 5.0
    a = runner.invoke(cli.app, args + ["--seed", "5"]).stdout
    b = runner.invoke(cli.app, args + ["--seed", "5"]).stdout
    c = runner.invoke(cli.app, args + ["--seed", "6"]).stdout
    assert a == b and a != c


def test_chat_keeps_conversation(fake: dict) -> None:
    r = runner.invoke(cli.app, ["chat", "m.gguf", "--temp", "0", "-n", "3"], input="hello\n\nagain\n")
    assert r.exit_code == 0, r.output
    msgs = fake["messages"]
    assert len(msgs) == 2
    assert msgs[0] == [{"role": "user", "content": "hello"}]
    assert [m["role"] for m in msgs[1]] == ["user", "assistant", "user"]
    assert msgs[1][2]["content"] == "again"
    first_reply = msgs[1][1]["content"]
    assert first_reply and r.stdout.startswith(first_reply + "\n")
    assert r.stdout.count("\n") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "/nonexistent/x.gguf", "-p", "hi"], "not found"),
        (["run", "m.gguf"], "exactly one of -p"),
        (["run", "m.gguf", "-p", "a", "-f", "b"], "exactly one of -p"),
        (["run", "m.gguf", "-p", "hi", "--top-p", "0"], "top_p"),
        (["run", "m.gguf", "-f", "/nonexistent/prompt.txt"], "No such file"),
    ],
)
def test_run_clean_errors(args: list[str], message: str) -> None:
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output


def test_bad_gguf_is_a_clean_error(tmp_path: Path) -> None:
    import moe_gguf.models

    if not hasattr(moe_gguf.models, "load_model"):
        pytest.skip("moe_gguf.models.load_model has not landed yet")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    r = runner.invoke(cli.app, ["run", str(bad), "-p", "hi"])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.output


def test_prompt_too_long_is_a_clean_error(fake: dict) -> None:
    fake["model"].n_ctx = 1
    r = runner.invoke(cli.app, ["run", "m.gguf", "-p", "hi"])
    assert r.exit_code == 1 and "context" in r.stderr and r.stderr.startswith("error: "), r.output


# ------------------------------------------------------------------------------------------ end to end, real model
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    """A small random-weight deepseek2 GGUF with DeepSeek's real tokenizer (moe_gguf.synth's 'tiny' preset)."""
    synth = pytest.importorskip("moe_gguf.synth", reason="moe_gguf.synth (the synthetic model writer) is missing")
    vocab = shared_dir / "vocab" / "ggml-vocab-deepseek-llm.gguf"
    out = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    synth.write_synth(out, preset="tiny", qtype="q8_0", vocab=vocab)
    return out


def greedy_reference(path: Path, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy continuation recomputed from scratch each step (a fresh cache, the whole sequence in one batch):
    no KV-cache reuse, no sampler, no generate()."""
    import numpy as np

    from moe_gguf.models import load_model

    m = load_model(path, n_ctx=256)
    seq = list(prompt_ids)
    for _ in range(n):
        logits = m.forward(np.asarray(seq, dtype=np.int32), m.new_cache())
        seq.append(int(np.argmax(logits)))
    return seq[len(prompt_ids):]


def test_run_end_to_end_on_a_tiny_model(tiny_gguf: Path) -> None:
    from moe_gguf.generate import encode_text
    from moe_gguf.models import load_model
    from moe_gguf.tokenizer import Tokenizer

    prompt = "The capital of France is"
    tok = Tokenizer.from_gguf(load_model(tiny_gguf, n_ctx=256).file)
    ids = encode_text(tok, prompt)
    ref = greedy_reference(tiny_gguf, ids, 12)
    eog = next((i for i, t in enumerate(ref) if tok.is_eog(t)), len(ref))
    expected = tok.decode(ref[:eog], skip_special=True)
    # a real process, as a user runs it
    r = subprocess.run(
        [sys.executable, "-m", "moe_gguf.cli", "run", str(tiny_gguf), "-p", prompt, "-n", "12", "--temp", "0", "-c", "256", "-t", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"
    assert "prompt:" in r.stderr and "tokens/s" in r.stderr


def test_run_chat_and_errors_on_a_tiny_model(tiny_gguf: Path, tmp_path: Path) -> None:
    r = runner.invoke(cli.app, ["run", str(tiny_gguf), "-p", "Hi!", "--chat", "-n", "4", "--seed", "3", "-c", "256"])
    assert r.exit_code == 0, r.output
    assert "generation: 4 tokens" in r.stderr or "generation:" in r.stderr
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 400, encoding="utf-8")
    r = runner.invoke(cli.app, ["run", str(tiny_gguf), "-f", str(long_prompt), "-c", "64"])
    assert r.exit_code == 1 and "context" in r.stderr and r.stderr.startswith("error: "), r.output
    r = runner.invoke(cli.app, ["chat", str(tiny_gguf), "-n", "3", "--temp", "0", "-c", "256"], input="Hello\nAgain\n")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 2
