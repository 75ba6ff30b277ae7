"""Tokenizer tests: llama.cpp/HF reference vectors, round trips on random unicode, streaming, special tokens."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_gguf.gguf import GGUFFile
from moe_gguf.tokenizer import Tokenizer, TokenType

VOCABS = ["deepseek-llm", "gpt-2", "llama-bpe", "llama-spm", "qwen2"]
BPE_VOCABS = ["deepseek-llm", "gpt-2", "llama-bpe", "qwen2"]
_cache: dict[str, Tokenizer] = {}


def _path(shared: Path, name: str) -> Path:
    p = shared / "vocab" / f"ggml-vocab-{name}.gguf"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p


def tok_for(shared: Path, name: str) -> Tokenizer:
    if name not in _cache:
        _cache[name] = Tokenizer.from_gguf(_path(shared, name))
    return _cache[name]


def _cases(shared: Path, name: str) -> list[tuple[str, list[int]]]:
    p = _path(shared, name)
    inp = p.with_name(p.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = p.with_name(p.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(inp) == len(out) and len(inp) > 0
    return [(s, [int(x) for x in o.split()]) for s, o in zip(inp, out)]


# ------------------------------------------------------------------------------------------------ reference vectors
@pytest.mark.parametrize("name", VOCABS)
def test_reference_vectors(shared_dir: Path, name: str) -> None:
    tok = tok_for(shared_dir, name)
    bad = []
    for text, expected in _cases(shared_dir, name):
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != expected:
            bad.append((text, expected, got))
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


@pytest.mark.parametrize("name", VOCABS)
def test_reference_vectors_decode(shared_dir: Path, name: str) -> None:
    """Decoding the reference ids gives the input back (BPE: exactly; SPM: the prefix space is removed)."""
    tok = tok_for(shared_dir, name)
    for text, ids in _cases(shared_dir, name):
        assert tok.decode(ids) == text, (text, ids)


# ------------------------------------------------------------------------------------------------ round trips
_ALPHABETS = st.sampled_from([
    st.characters(codec="utf-8", exclude_categories=("Cs",)),  # anything encodable
    st.sampled_from(list("😀🦙🚀👍🏽‍♀️✅🇯🇵")),  # emoji, modifiers, ZWJ, flags
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),  # combining marks
    st.sampled_from(list("aeéüe\u0301n\u0303")),  # letters with combining marks
    st.characters(max_codepoint=0x1F),  # control characters
    st.sampled_from(list(" \t\n\r\u00a0\u3000\u2028\u200b\v\f")),  # whitespace
    st.sampled_from(list("0123456789٣४")),  # digits
    st.sampled_from(list("Hello world 'sll've re?!.,;:()[]{}<|>_-+=*/\\\"")),  # English/code
])


@st.composite
def mixed_text(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        alphabet = draw(_ALPHABETS)
        n = draw(st.integers(1, 40))
        parts.append(draw(st.text(alphabet=alphabet, min_size=1, max_size=n)))
    return "".join(parts)


@pytest.mark.parametrize("name", BPE_VOCABS + ["llama-spm"])
@settings(max_examples=200)
@given(text=mixed_text())
def test_round_trip(shared_dir: Path, name: str, text: str) -> None:
    tok = tok_for(shared_dir, name)
    if tok.model == "llama":
        text = text.replace("\u2581", "_")  # SentencePiece writes spaces as U+2581: a literal one decodes as " "
    ids = tok.encode(text, add_special=False)
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert tok.decode(ids) == text
    # with BOS: skip_special drops it and the text still comes back
    assert tok.decode(tok.encode(text, add_special=True), skip_special=True) == text


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_round_trip_long_runs(shared_dir: Path, name: str) -> None:
    tok = tok_for(shared_dir, name)
    for text in [" " * 1000, "\n" * 513 + "x", "9" * 2000, "\t \n" * 200, "a" * 3000, "😀" * 300, "" ]:
        assert tok.decode(tok.encode(text, add_special=False)) == text


@pytest.mark.parametrize("name", BPE_VOCABS)
@settings(max_examples=200)
@given(text=mixed_text())
def test_fast_path_matches_hf_tokenizers(shared_dir: Path, name: str, text: str) -> None:
    """The whole-text splitter (Python re/regex + cached merges) gives exactly what HF tokenizers computes with
    its own Oniguruma splitting and BPE on the same vocabulary."""
    tok = tok_for(shared_dir, name)
    assert tok.encode(text, add_special=False) == tok._encode_reference(text)


@settings(max_examples=200)
@given(text=mixed_text())
def test_spm_word_cache_matches_whole_text_merge(shared_dir: Path, text: str) -> None:
    """SentencePiece merging word by word (cached) equals llama.cpp's single merge queue over the whole text."""
    tok = tok_for(shared_dir, "llama-spm")
    assert tok._spm_words is not None  # the llama vocabulary never merges across a word start
    whole: list[int] = []
    tok._spm_tokenize((" " + text).replace(" ", "\u2581"), whole)
    assert tok.encode(text, add_special=False) == whole


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_fast_path_sentinel_in_text(shared_dir: Path, name: str) -> None:
    """Text holding the private-use characters the splitter joins pieces with still splits exactly."""
    tok = tok_for(shared_dir, name)
    text = "a\ue000b \ue000\ue001 12\ue000 345\n\ue000\n  x" + "".join(chr(c) for c in range(0xE000, 0xE100))
    assert tok.encode(text, add_special=False) == tok._encode_reference(text)
    assert tok.decode(tok.encode(text, add_special=False)) == text


# ------------------------------------------------------------------------------------------------ streaming
def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    dec = tok.stream_decoder(skip_special=skip_special)
    pieces = [dec.feed(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


@pytest.mark.parametrize("name", VOCABS)
@settings(max_examples=100)
@given(text=mixed_text())
def test_stream_matches_decode_and_keeps_chars_whole(shared_dir: Path, name: str, text: str) -> None:
    tok = tok_for(shared_dir, name)
    ids = tok.encode(text, add_special=True)
    pieces = _stream(tok, ids)
    if tok.model == "llama":
        text = text.replace("\u2581", " ")
    assert "".join(pieces) == tok.decode(ids)
    # valid text in -> no replacement character is ever emitted (split characters come out whole)
    if "\ufffd" not in text:
        assert all("\ufffd" not in p for p in pieces)
    assert "".join(_stream(tok, ids, skip_special=True)) == tok.decode(ids, skip_special=True)


@pytest.mark.parametrize("name", VOCABS)
@settings(max_examples=100)
@given(data=st.data())
def test_stream_random_ids(shared_dir: Path, name: str, data: st.DataObject) -> None:
    """Arbitrary id sequences (invalid UTF-8, control tokens, byte tokens): stream == decode, nothing dropped."""
    tok = tok_for(shared_dir, name)
    ids = data.draw(st.lists(st.integers(0, tok.n_vocab - 1), max_size=30))
    for skip in (False, True):
        assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


def test_stream_split_multibyte_char(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "llama-spm")
    ids = tok.encode("🦙", add_special=False)
    # the llama emoji is not a vocabulary entry: it comes out as its 4 UTF-8 byte tokens
    byte_ids = [tok.token_to_id(f"<0x{b:02X}>") for b in "🦙".encode()]
    assert ids[-4:] == byte_ids
    dec = tok.stream_decoder()
    pieces = [dec.feed(i) for i in ids]
    assert pieces[-4:-1] == ["", "", ""] and pieces[-1].endswith("🦙")
    assert dec.flush() == ""
    # a truncated character is not dropped: flush reports it as U+FFFD, like decode
    dec = tok.stream_decoder()
    assert [dec.feed(i) for i in byte_ids[:2]] == ["", ""]
    assert dec.flush() == "\ufffd" == tok.decode(byte_ids[:2])


# ------------------------------------------------------------------------------------------------ special tokens
def test_parse_special_bpe(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "qwen2")
    im_start = tok.token_to_id("<|im_start|>")
    im_end = tok.token_to_id("<|im_end|>")
    assert im_start is not None and im_end is not None
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(text, add_special=False, parse_special=True)
    assert ids[0] == im_start and ids[-1] == im_end
    assert ids[1:-1] == tok.encode("user\nhi", add_special=False)
    plain = tok.encode(text, add_special=False, parse_special=False)
    assert im_start not in plain and im_end not in plain
    assert tok.decode(plain) == text == tok.decode(ids)
    assert tok.decode(ids, skip_special=True) == "user\nhi"


def test_parse_special_llama3_bos(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "llama-bpe")
    assert tok.add_bos and tok.bos_id == 128000
    ids = tok.encode("<|begin_of_text|>Hi", add_special=True, parse_special=True)
    assert ids[:2] == [128000, 128000] and ids[2:] == tok.encode("Hi", add_special=False)
    # longest special text wins where one contains another
    assert tok.encode("<|eot_id|><|eot_id|>", add_special=False, parse_special=True) == [128009, 128009]


def test_parse_special_spm(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "llama-spm")
    # llama.cpp: raw text after a special token gets the SentencePiece space prefix again
    ids = tok.encode("<s>Hello</s>", add_special=False, parse_special=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[1:-1] == tok.encode("Hello", add_special=False)
    assert 1 not in tok.encode("<s>Hello", add_special=False, parse_special=False)
    assert tok.encode("Hello", add_special=True)[0] == 1
    assert tok.decode(tok.encode("Hello", add_special=True)) == "<s> Hello"  # as llama.cpp and HF render it
    assert tok.decode(tok.encode("Hello", add_special=True), skip_special=True) == "Hello"


def test_user_defined_tokens_always_split(shared_dir: Path) -> None:
    """User-defined tokens are matched in raw text even with parse_special=False (llama.cpp semantics)."""
    tok = tok_for(shared_dir, "deepseek-llm")
    f = GGUFFile(_path(shared_dir, "deepseek-llm"))
    types = f.metadata["tokenizer.ggml.token_type"]
    tokens = f.metadata["tokenizer.ggml.tokens"]
    pad = next(i for i in range(len(tokens)) if types[i] == TokenType.USER_DEFINED and tokens[i].startswith("[PAD"))
    ids = tok.encode(f"x{tokens[pad]}y", add_special=False)
    assert pad in ids
    assert tok.decode(ids) == f"x{tokens[pad]}y"


@pytest.mark.parametrize(
    "name,bos,eos,add_bos,eog_texts",
    [
        ("deepseek-llm", 100000, 100001, True, ["<｜end▁of▁sentence｜>"]),
        ("llama-bpe", 128000, 128001, True, ["<|eot_id|>", "<|end_of_text|>"]),
        ("qwen2", 151643, 151643, False, ["<|im_end|>", "<|endoftext|>"]),
        ("gpt-2", 50256, 50256, False, ["<|endoftext|>"]),
        ("llama-spm", 1, 2, True, ["</s>"]),
    ],
)
def test_special_ids_and_eog(shared_dir: Path, name: str, bos: int, eos: int, add_bos: bool,
                             eog_texts: list[str]) -> None:
    tok = tok_for(shared_dir, name)
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (bos, eos, add_bos, False)
    for t in eog_texts:
        i = tok.token_to_id(t)
        assert i is not None and tok.is_eog(i), t
    assert tok.eot_id is None or tok.is_eog(tok.eot_id)
    assert tok.is_eog(eos)
    assert not tok.is_eog(tok.encode("Hello", add_special=False)[0])
    ids = tok.encode("Hello", add_special=True)
    assert (ids[0] == bos) == add_bos


def test_deepseek_eot(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "deepseek-llm")
    assert tok.eot_id == 100001 and tok.pad_id == 100001


# ------------------------------------------------------------------------------------------------ errors
def test_bad_input(shared_dir: Path) -> None:
    tok = tok_for(shared_dir, "gpt-2")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, tok.n_vocab])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        tok.stream_decoder().feed(tok.n_vocab)
    with pytest.raises(TypeError):
        tok.decode(np.array([1.5]))
    assert tok.decode(np.array([15496, 995])) == tok.decode([15496, 995])
    with pytest.raises(TypeError):
        Tokenizer.from_gguf(123)  # type: ignore[arg-type]


def test_unsupported_model_and_unknown_pre(shared_dir: Path) -> None:
    md = dict(GGUFFile(_path(shared_dir, "gpt-2")).metadata)
    with pytest.raises(ValueError, match="unsupported tokenizer"):
        Tokenizer(dict(md, **{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(ValueError, match="tokens"):
        Tokenizer({"tokenizer.ggml.model": "gpt2"})
    with pytest.warns(UserWarning, match="unknown pre-tokenizer"):
        tok = Tokenizer(dict(md, **{"tokenizer.ggml.pre": "no-such-pre"}))
    text = "Hello world, it's 2024!\n  indented"
    assert tok.decode(tok.encode(text)) == text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tokenizer.from_gguf(_path(shared_dir, "gpt-2"))  # known pre: no warning


# ------------------------------------------------------------------------------------------------ pre-tokenizers
def _hf_split(pre_name: str):  # type: ignore[no-untyped-def]
    from tokenizers import Regex, pre_tokenizers

    from moe_gguf.tokenizer_pre import PRE_TOKENIZERS

    pre = PRE_TOKENIZERS[pre_name]
    seq = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes])
    return lambda text: [p for p, _ in seq.pre_tokenize_str(text)]


@settings(max_examples=300)
@given(data=st.data(), text=mixed_text())
def test_every_pre_tokenizer_fast_split_matches_oniguruma(data: st.DataObject, text: str) -> None:
    """For every pre-tokenizer in the table, the fast splitter cuts text exactly where HF tokenizers' Oniguruma
    splitting does (or declines the text)."""
    from moe_gguf.tokenizer_pre import PRE_TOKENIZERS, FastSplitter

    name = data.draw(st.sampled_from(sorted(PRE_TOKENIZERS)))
    fast = FastSplitter.create(PRE_TOKENIZERS[name])
    if fast is None:
        return
    pieces = fast.split(text)
    if pieces is not None:
        assert pieces == _hf_split(name)(text), name
        assert "".join(pieces) == text


@pytest.mark.parametrize("text", [":\U0003d000", "ab\U0003d000cd 12", "x \U000e0080y", "\U0010fffd!"])
def test_unassigned_code_points_split_as_oniguruma(text: str) -> None:
    """Unassigned code points (category Cn here) may be classed differently by Oniguruma (it counts U+3D000 as a
    letter): the fast splitter must decline such text or cut it exactly where HF tokenizers does."""
    from moe_gguf.tokenizer_pre import PRE_TOKENIZERS, FastSplitter

    for name in sorted(PRE_TOKENIZERS):
        fast = FastSplitter.create(PRE_TOKENIZERS[name])
        if fast is None:
            continue
        pieces = fast.split(text)
        if pieces is not None:
            assert pieces == _hf_split(name)(text), name
