#!/usr/bin/env python3
"""Tokenizer benchmark: load time and encode/decode throughput on ~1 MB of mixed English, code and unicode text.

    python tools/bench_tokenizer.py                       # DeepSeek (deepseek-llm) and Llama-3 (llama-bpe) vocabularies
    python tools/bench_tokenizer.py --vocab qwen2 --vocab llama-spm --mb 0.5
    python tools/bench_tokenizer.py --gguf model.gguf     # any GGUF file's tokenizer

The text is built deterministically (seeded) from the repository's own sources (code), the shared docs (English)
and generated multilingual text (CJK, Cyrillic, Arabic, accented Latin, emoji, digits, whitespace runs).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moe_gguf.gguf import GGUFFile  # noqa: E402
from moe_gguf.tokenizer import Tokenizer  # noqa: E402

SHARED = ROOT.parent / "shared"

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", action="append", help="shared vocab name (deepseek-llm, llama-bpe, qwen2, gpt-2, llama-spm)")
    ap.add_argument("--gguf", action="append", type=Path, help="GGUF file whose tokenizer to benchmark")
    ap.add_argument("--mb", type=float, default=1.0, help="corpus size in MB (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best is reported (default 3)")
    ap.add_argument("--compare-hf", action="store_true", help="also time encoding done wholly inside HF tokenizers")
    args = ap.parse_args()
    paths = list(args.gguf or [])
    vocabs = args.vocab if args.vocab is not None else ([] if paths else ["deepseek-llm", "llama-bpe"])
    paths += [SHARED / "vocab" / f"ggml-vocab-{v}.gguf" for v in vocabs]
    text = build_corpus(int(args.mb * 1e6))
    print(f"corpus: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(text)} characters, {text.count(chr(10))} lines")
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"{p} not found")
        bench(p, text, max(1, args.repeat), args.compare_hf)


if __name__ == "__main__":
    main()
