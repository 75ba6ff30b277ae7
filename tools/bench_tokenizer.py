#!/usr/bin/env python3
"""Tokenizer benchmark: load time and encode/decode throughput on ~1 MB of mixed English, code and unicode text,
optionally side by side with llama.cpp's tokenizer on the same text and vocabulary.

    python tools/bench_tokenizer.py                       # DeepSeek (deepseek-llm) and Llama-3 (llama-bpe) vocabularies
    python tools/bench_tokenizer.py --vocab qwen2 --vocab llama-spm --mb 0.5
    python tools/bench_tokenizer.py --gguf model.gguf     # any GGUF file's tokenizer
    LL=/path/to/llama.cpp/build/bin
    python tools/bench_tokenizer.py --vocab deepseek-llm --llama-tokenize $LL/llama-tokenize \
        --llama-python /path/to/venv/bin/python --rounds 5    # ours vs llama.cpp

The text is built deterministically (seeded) from the repository's own sources (code), the shared docs (English)
and generated multilingual text (CJK, Cyrillic, Arabic, accented Latin, emoji, digits, whitespace runs).

With --llama-tokenize / --llama-python every measurement runs in a fresh process, alternating ours and llama.cpp's
within each round; medians over the rounds are printed with ratios (> 1.00x: ours is faster):
- encode MB/s excluding load: ours = `Tokenizer.encode` (first call after loading), llama.cpp = its Python API
  (`llama_cpp.Llama(vocab, vocab_only=True)`, then one `llama_cpp.llama_tokenize` call on the text bytes with a
  large enough buffer; `llm.tokenize(text_bytes, add_bos=False, special=False)` is shown too, but it tokenizes
  twice when the text is longer than n_ctx_train, which is 0 for a vocab-only load);
- load: ours in-process `Tokenizer.from_gguf` and llama.cpp's `Llama(...)`; and as whole processes on an empty
  file (ours: this script's `--worker` mode; llama.cpp: `llama-tokenize`);
- whole process (start, load, encode, print the ids): `llama-tokenize -m VOCAB -f corpus.txt --ids --log-disable
  --no-bos --no-escape --no-parse-special` vs `python tools/bench_tokenizer.py --worker VOCAB corpus.txt`, which
  prints the ids the same way.
The ids of all sides are compared (a speed comparison of different outputs would mean nothing).
If the llama_cpp package is not installed for --llama-python, it is taken from the llama-cpp-python source tree
around --llama-tokenize (`vendor/llama.cpp/build/bin` -> the tree's root), with LLAMA_CPP_LIB_PATH set to that bin
folder (override with --llama-lib).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _shared_dir() -> Path:
    """../shared beside the checkout, else $MOE_GGUF_SHARED, else /work/shared."""
    for p in (ROOT.parent / "shared", Path(os.environ.get("MOE_GGUF_SHARED", "/nonexistent")), Path("/work/shared")):
        if p.is_dir():
            return p
    return ROOT.parent / "shared"


SHARED = _shared_dir()

_WORDS = {
    "zh": "我们 今天 天气 很好 学习 机器 语言 模型 专家 混合 量化 推理 速度 内存 中文 测试".split(),
    "ja": "これは 日本語の テスト です トークン 化 速い モデル".split(),
    "ru": "Привет мир это тест токенизатора модели скорость память эксперт".split(),
    "ar": "مرحبا بالعالم هذا اختبار سريع للنموذج".split(),
    "fr": "déjà vu élève où ça naïve cœur façade garçon".split(),
    "emoji": ["😀", "🦙", "🚀", "👍🏽", "👩‍💻", "🇯🇵", "✅", "❤️", "🤖"],
    "misc": ["  ", "\t", "\n\n", "    ", "1234567", "3.14159", "0x7fff", "--", "...", "«»", "™", "½"],
}


def build_corpus(n_bytes: int, seed: int = 1234) -> str:
    rng = random.Random(seed)
    code = [p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(list((ROOT / "moe_gguf").rglob("*.py")) + list((ROOT / "csrc").glob("*.[ch]")))]
    english = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((SHARED / "docs").glob("*.md"))]
    english += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(ROOT.glob("*.md"))]
    if not code or not english:
        raise SystemExit("cannot find source files/docs to build the corpus")

    def snippet(texts: list[str], size: int) -> str:
        t = rng.choice(texts)
        if len(t) <= size:
            return t
        i = rng.randrange(0, len(t) - size)
        return t[i : i + size]

    def multilingual(n_words: int) -> str:
        out = []
        for _ in range(n_words):
            lang = rng.choice(list(_WORDS))
            out.append(rng.choice(_WORDS[lang]))
            out.append(rng.choice([" ", " ", " ", "", ", ", "。", "\n"]))
        return "".join(out)

    parts: list[str] = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.4:
            s = snippet(english, rng.randrange(200, 3000))
        elif kind < 0.8:
            s = snippet(code, rng.randrange(200, 3000))
        else:
            s = multilingual(rng.randrange(20, 300))
        parts.append(s)
        size += len(s.encode("utf-8"))
    text = "".join(parts)
    b = text.encode("utf-8")[:n_bytes]
    return b.decode("utf-8", errors="ignore")


def bench(path: Path, text: str, repeat: int, compare_hf: bool) -> None:
    from moe_gguf.gguf import GGUFFile
    from moe_gguf.tokenizer import Tokenizer

    nbytes = len(text.encode("utf-8"))

    def timed(fn: Callable[[], Any]) -> tuple[list[float], Any]:
        times, result = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return times, result

    prompt = text[:2000]

    def load_and_prompt() -> Tokenizer:
        t = Tokenizer.from_gguf(path)
        t.encode(prompt)
        return t

    t_first, _ = timed(load_and_prompt)  # what a run pays before its first forward pass
    t_load, tok = timed(lambda: Tokenizer.from_gguf(path))
    t_read, _ = timed(lambda: GGUFFile(path).close())
    t_enc, ids = timed(lambda: tok.encode(text, add_special=False))  # first run: empty merge cache
    t_dec, out = timed(lambda: tok.decode(ids))
    t0 = time.perf_counter()
    sd = tok.stream_decoder()
    streamed = "".join(sd.feed(i) for i in ids) + sd.flush()
    t_stream = time.perf_counter() - t0
    expected = text if tok.model == "gpt2" else text.replace("\u2581", " ")  # SentencePiece: U+2581 is its space
    ok = out == expected and streamed == expected
    hf = ""
    if compare_hf and tok.model == "gpt2":
        t0 = time.perf_counter()
        ref = tok._encode_reference(text)
        t_hf = time.perf_counter() - t0
        hf = f" | HF-tokenizers-only encode {nbytes / t_hf / 1e6:5.2f} MB/s ({'same ids' if ref == ids else 'DIFFERENT ids'})"
    name = path.name.replace("ggml-vocab-", "").replace(".gguf", "")
    print(
        f"{name:14s} n_vocab={tok.n_vocab:6d} load {min(t_load) * 1e3:5.0f} ms (GGUF read {min(t_read) * 1e3:4.0f} ms, "
        f"+ first 2 kB prompt {min(t_first) * 1e3:5.0f} ms) | "
        f"encode {nbytes / t_enc[0] / 1e6:5.2f} MB/s cold, {nbytes / min(t_enc) / 1e6:5.2f} warm "
        f"({len(ids)} tokens, {nbytes / len(ids):.2f} B/tok) | decode {nbytes / min(t_dec) / 1e6:5.1f} MB/s | stream {len(ids) / t_stream / 1e6:5.2f} Mtok/s | "
        f"round trip {'ok' if ok else 'MISMATCH'}{hf}"
    )


# --------------------------------------------------------------------------- side by side with llama.cpp
_LLAMA_WORKER = r"""
import json, sys, time, array
t0 = time.perf_counter()
import llama_cpp
t1 = time.perf_counter()
vocab, corpus, ids_out = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(corpus, "rb").read()
t2 = time.perf_counter()
llm = llama_cpp.Llama(vocab, vocab_only=True, verbose=False)
t3 = time.perf_counter()
# one llama_tokenize call with a large enough buffer (llm.tokenize calls it twice for texts longer than n_ctx_train,
# which is 0 for vocab_only: that high-level figure is reported too, as "api")
buf = (llama_cpp.llama_token * (len(data) + 16))()
n = llama_cpp.llama_tokenize(llm._model.vocab, data, len(data), buf, len(data) + 16, False, False)
ids = buf[:n]
t4 = time.perf_counter()
ids_api = llm.tokenize(data, add_bos=False, special=False)
t5 = time.perf_counter()
if ids_api != ids:
    raise SystemExit("llm.tokenize and llama_tokenize disagree")
array.array("i", ids).tofile(open(ids_out, "wb"))
print(json.dumps({"import": t1 - t0, "load": t3 - t2, "encode": t4 - t3, "api": t5 - t4}))
"""


def worker(vocab: str, corpus: str) -> None:
    """Our side of the whole-process comparison: load, encode the file, print the ids as llama-tokenize --ids
    does; timings (seconds) as JSON on stderr."""
    t0 = time.perf_counter()
    from moe_gguf.tokenizer import Tokenizer

    t1 = time.perf_counter()
    tok = Tokenizer.from_gguf(vocab)
    t2 = time.perf_counter()
    with open(corpus, encoding="utf-8", newline="") as fh:
        text = fh.read()
    t3 = time.perf_counter()
    ids = tok.encode(text, add_special=False, parse_special=False)
    t4 = time.perf_counter()
    sys.stdout.write("[" + ", ".join(map(str, ids)) + "]\n")
    sys.stdout.flush()
    sys.stderr.write(json.dumps({"import": t1 - t0, "load": t2 - t1, "encode": t4 - t3}) + "\n")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return wall, p.stdout, p.stderr


def _parse_ids(out: str) -> list[int]:
    s = out.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise SystemExit(f"unexpected ids output: {s[:200]!r}")
    body = s[1:-1].strip()
    return [int(x) for x in body.split(",")] if body else []


def _llama_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment for --llama-python: the llama_cpp package and libllama from the llama-cpp-python tree when
    the interpreter does not have them installed."""
    env = dict(os.environ)
    lib = args.llama_lib or (str(Path(args.llama_tokenize).resolve().parent) if args.llama_tokenize else None)
    probe = subprocess.run([args.llama_python, "-c", "import llama_cpp"], capture_output=True, env=env)
    if probe.returncode == 0:
        return env
    if lib is None:
        raise SystemExit(f"{args.llama_python} cannot import llama_cpp; give --llama-lib or --llama-tokenize")
    if "LLAMA_CPP_LIB_PATH" not in env:
        env["LLAMA_CPP_LIB_PATH"] = lib
    for up in Path(lib).parents:
        if (up / "llama_cpp" / "__init__.py").is_file():
            env["PYTHONPATH"] = str(up) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            break
    return env


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def compare(path: Path, text: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Alternating fresh-process runs of ours and llama.cpp's on `text`; prints one block, returns the medians."""
    corpus = tmp / "corpus.txt"
    empty = tmp / "empty.txt"
    ids_bin = tmp / "llama_ids.bin"
    corpus.write_bytes(text.encode("utf-8"))
    empty.write_bytes(b"")
    nbytes = len(text.encode("utf-8"))
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
    lt = ([args.llama_tokenize, "-m", str(path), "--ids", "--log-disable", "--no-bos", "--no-escape",
           "--no-parse-special", "-f"] if args.llama_tokenize else None)
    env = _llama_env(args) if args.llama_python else None
    r: dict[str, list[float]] = {k: [] for k in (
        "ours_whole", "ours_empty", "ours_load", "ours_enc", "ours_import",
        "lt_whole", "lt_empty", "py_load", "py_enc", "py_api")}
    ours_ids: list[int] | None = None
    lt_ids: list[int] | None = None
    py_ids: list[int] | None = None
    for rnd in range(args.rounds):
        steps: list[Callable[[], None]] = []

        def ours() -> None:
            nonlocal ours_ids
            w, out, err = _run(me + [str(corpus)])
            t = json.loads(err.strip().splitlines()[-1])
            r["ours_whole"].append(w)
            r["ours_load"].append(t["load"])
            r["ours_enc"].append(t["encode"])
            r["ours_import"].append(t["import"])
            ours_ids = _parse_ids(out)
            r["ours_empty"].append(_run(me + [str(empty)])[0])

        steps.append(ours)
        if lt is not None:
            def llama_tokenize() -> None:
                nonlocal lt_ids
                w, out, _ = _run(lt + [str(corpus)])
                r["lt_whole"].append(w)
                lt_ids = _parse_ids(out)
                r["lt_empty"].append(_run(lt + [str(empty)])[0])

            steps.append(llama_tokenize)
        if env is not None:
            def llama_python() -> None:
                nonlocal py_ids
                _, out, _ = _run([args.llama_python, "-c", _LLAMA_WORKER, str(path), str(corpus), str(ids_bin)], env)
                t = json.loads(out.strip().splitlines()[-1])
                r["py_load"].append(t["load"])
                r["py_enc"].append(t["encode"])
                r["py_api"].append(t["api"])
                import array

                a = array.array("i")
                a.frombytes(ids_bin.read_bytes())
                py_ids = a.tolist()

            steps.append(llama_python)
        for step in (steps if rnd % 2 == 0 else steps[::-1]):  # alternate the order round by round
            step()
    m = {k: _med(v) for k, v in r.items()}
    name = path.name.replace("ggml-vocab-", "").replace(".gguf", "")
    same = []
    if lt_ids is not None:
        same.append(f"llama-tokenize {'IDENTICAL' if lt_ids == ours_ids else 'DIFFERENT'}")
    if py_ids is not None:
        same.append(f"llama.cpp Python API {'IDENTICAL' if py_ids == ours_ids else 'DIFFERENT'}")
    print(f"\n{name}: {nbytes / 1e6:.2f} MB, {len(ours_ids or [])} tokens; ids vs {', '.join(same) or 'nothing'} "
          f"(medians of {args.rounds} rounds)")

    def ratio(theirs: float, mine: float) -> str:
        return f"{theirs / mine:5.2f}x" if mine > 0 and theirs == theirs else "   - "

    mbs = lambda t: nbytes / t / 1e6  # noqa: E731
    if env is not None:
        print(f"  encode excl. load   ours {mbs(m['ours_enc']):6.2f} MB/s   llama.cpp {mbs(m['py_enc']):6.2f} MB/s   "
              f"{ratio(m['py_enc'], m['ours_enc'])}   (llm.tokenize {mbs(m['py_api']):.2f} MB/s)")
        print(f"  load in-process     ours {m['ours_load'] * 1e3:6.0f} ms     llama.cpp {m['py_load'] * 1e3:6.0f} ms     "
              f"{ratio(m['py_load'], m['ours_load'])}   (ours + {m['ours_import'] * 1e3:.0f} ms imports)")
    else:
        print(f"  encode excl. load   ours {mbs(m['ours_enc']):6.2f} MB/s   load in-process {m['ours_load'] * 1e3:.0f} ms")
    if lt is not None:
        print(f"  process, empty file ours {m['ours_empty']:6.2f} s       llama-tokenize {m['lt_empty']:6.2f} s  "
              f"{ratio(m['lt_empty'], m['ours_empty'])}")
        print(f"  process, corpus     ours {m['ours_whole']:6.2f} s       llama-tokenize {m['lt_whole']:6.2f} s  "
              f"{ratio(m['lt_whole'], m['ours_whole'])}   (llama-tokenize encode ~{mbs(max(1e-3, m['lt_whole'] - m['lt_empty'])):.2f} MB/s)")
    m["ids_identical"] = all(x is None or x == ours_ids for x in (lt_ids, py_ids))
    return m


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", action="append", help="shared vocab name (deepseek-llm, llama-bpe, qwen2, gpt-2, llama-spm)")
    ap.add_argument("--gguf", action="append", type=Path, help="GGUF file whose tokenizer to benchmark")
    ap.add_argument("--mb", type=float, default=1.0, help="corpus size in MB (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best is reported (default 3)")
    ap.add_argument("--compare-hf", action="store_true", help="also time encoding done wholly inside HF tokenizers")
    ap.add_argument("--llama-tokenize", help="llama.cpp's llama-tokenize binary: whole-process comparison")
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python: encode (excl. load) comparison")
    ap.add_argument("--llama-lib", help="folder with libllama.so for --llama-python (default: --llama-tokenize's)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds against llama.cpp (default 5)")
    ap.add_argument("--corpus", type=Path, help="use this UTF-8 file as the text instead of the generated corpus")
    args = ap.parse_args()
    paths = list(args.gguf or [])
    vocabs = args.vocab if args.vocab is not None else ([] if paths else ["deepseek-llm", "llama-bpe"])
    paths += [SHARED / "vocab" / f"ggml-vocab-{v}.gguf" for v in vocabs]
    if args.corpus is not None:
        text = args.corpus.read_bytes().decode("utf-8")
    else:
        text = build_corpus(int(args.mb * 1e6))
    print(f"corpus: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(text)} characters, {text.count(chr(10))} lines")
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"{p} not found")
    if args.llama_tokenize or args.llama_python:
        with tempfile.TemporaryDirectory(prefix="bench_tok_") as d:
            for p in paths:
                compare(p, text, args, Path(d))
        return
    for p in paths:
        bench(p, text, max(1, args.repeat), args.compare_hf)


if __name__ == "__main__":
    main()
