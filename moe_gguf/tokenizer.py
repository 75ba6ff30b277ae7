"""Tokenizers built from GGUF metadata, following llama.cpp's semantics (`src/llama-vocab.cpp`).

Two vocabulary kinds (`tokenizer.ggml.model`):

* ``llama`` - SentencePiece-style: text has spaces escaped as U+2581 (and a space prefixed when
  `tokenizer.ggml.add_space_prefix`, default true), then adjacent symbols are merged greedily by the score of the
  merged piece (highest first, leftmost on ties); symbols that are not vocabulary entries come out as `<0xNN>` bytes.
* ``gpt2`` - byte-level BPE: the pre-tokenizer regexes named by `tokenizer.ggml.pre` (see `tokenizer_pre.py`) split
  the text, bytes are mapped to printable characters (GPT-2's byte-to-unicode table) and `tokenizer.ggml.merges`
  ranks drive the merges. The splitting runs over the whole text at once in Python's `re`/`regex` (FastSplitter);
  lines holding characters the engines may class differently (newer than Unicode 14, unassigned) are split by HF
  `tokenizers` (Oniguruma) instead, the rest of the text stays on the fast path. The merges run in C
  (csrc/gguf_strings.c, llama.cpp's algorithm; tables built from the GGUF tokens and merges), every piece of a
  text in one call. Without the compiled kernels a Python merger (with a per-piece cache) and HF tokenizers' Rust
  BPE take over; a pipeline wholly inside HF tokenizers is the reference the fast path is tested against
  (`_encode_reference`).

SentencePiece merging also runs in C, word by word where no vocabulary entry can merge across a word start.

Special tokens (llama.cpp's partition step): before the model runs, the text is split around occurrences of
user-defined tokens (always) and of control/unknown tokens (only with ``parse_special=True``), longest token text
first. With ``parse_special=False`` text such as ``<|im_end|>`` is tokenized as ordinary characters.

Decoding concatenates each token's bytes and decodes them as UTF-8 (invalid sequences become U+FFFD); control and
unknown tokens render as their text unless ``skip_special=True``. Decoding never rewrites spaces, so for the BPE
vocabularies ``decode(encode(s, add_special=False)) == s`` for every string. For ``llama`` vocabularies the space
added in front of the first text piece is removed again (and a literal U+2581 in the input decodes as a space).
"""
from __future__ import annotations

import bisect
import codecs
import heapq
import os
import re
from itertools import accumulate, chain, repeat
from typing import Any, Iterable, Sequence

import numpy as np

from .gguf import ArrayRef, GGUFFile, ValueType
from .tokenizer_pre import FastSplitter, PreTokenizer, resolve_pre

__all__ = ["Tokenizer", "StreamDecoder", "TokenType"]


class TokenType:
    """GGUF `tokenizer.ggml.token_type` values."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# texts llama.cpp treats as end-of-turn when the file names no eot id (checked in this order)
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
# texts that always end generation (llama.cpp's EOG list)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
    "<eos>", "<｜end▁of▁sentence｜>",
))

_SPACE = "\u2581"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out: dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


_BYTE_TO_CHAR = _bytes_to_unicode()
# str.translate table: byte-level character -> the code point equal to its byte, so `.encode("latin-1")` = raw bytes
_CHAR_TO_BYTE_TABLE = {ord(c): b for b, c in _BYTE_TO_CHAR.items()}
# str.translate table: latin-1 character of a raw byte -> its byte-level character
_BYTE_TO_CHAR_TABLE = {b: c for b, c in _BYTE_TO_CHAR.items()}
_BPE_CACHE_MAX = 1 << 18
# more new pieces than this in one call: merge them with HF tokenizers' Rust BPE instead. Building that pipeline
# costs ~1 s (vocabulary + merges handed to Rust), the Python merge loop ~50-100 us per piece, so the Rust BPE only
# pays off for texts with more than ~10k distinct pieces (1 MB of mixed text has ~9k)
_HF_MISSES = 12000
_PY_BPE_MAX = 200  # longer pre-tokenized pieces are merged by HF tokenizers' BPE (the Python loop is quadratic)
_NON_BYTE = re.compile("[^\x00-\xff]")  # characters outside the byte alphabet (after translation)
_SPM_CROSSING = re.compile("[^\u2581]\u2581")  # a vocabulary entry that would merge across a word start
_SPM_CROSSING_JOINED = re.compile("[^\u2581\x00]\u2581")  # the same over NUL-joined tokens
_MARKERS = [chr(c) for c in range(0xF8FF, 0xE000 - 1, -1)]  # private-use characters marking special tokens
_SPM_MAX_CROSSING = 256  # more vocabulary entries across a word start than this: SentencePiece merges whole fragments
_SPM_WORD_START = re.compile("(?<=[^\u2581])(?=\u2581)")  # distinct pre-tokenized pieces remembered per tokenizer


def _latin1_or_utf8(s: str) -> bytes:
    """Byte-level text -> bytes; characters outside the byte alphabet (code >= 256) are kept as UTF-8."""
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in s)


def _split_merges(merges: list[str]) -> list[tuple[str, str]]:
    """'a b' merge strings -> ('a', 'b') pairs, split at the first space after the first character (as llama.cpp;
    entries without such a space can never match and are dropped)."""
    joined = "\n".join(merges)
    if not joined.startswith(" ") and "\n " not in joined:  # no entry starts with a space: partition is exact
        return [(a, b) for a, sep, b in map(str.partition, merges, repeat(" ")) if sep]
    out: list[tuple[str, str]] = []
    for m in merges:
        p = m.find(" ", 1)
        if p >= 0:
            out.append((m[:p], m[p + 1 :]))
    return out


def _kernels() -> Any:
    """The compiled C kernels (moe_gguf._kernels), or None when they are not built."""
    try:
        from . import _kernels as k  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the package is normally built
        return None
    return k


def _string_table(strings: list[str]) -> tuple[bytes, "np.ndarray", "np.ndarray"]:
    """UTF-8 bytes of all strings and each one's (start, length) in them, without a Python loop per string
    (joined by NUL, split where the NULs are; one encode per string only if a string holds a NUL)."""
    blob = "\x00".join(strings).encode("utf-8", "surrogatepass")
    nul = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0)
    if strings and nul.size == len(strings) - 1:
        starts = np.empty(len(strings), dtype=np.int64)
        starts[0] = 0
        starts[1:] = nul + 1
        ends = np.empty(len(strings), dtype=np.int64)
        ends[:-1] = nul
        ends[-1] = len(blob)
        return blob, starts, ends - starts
    parts = [t.encode("utf-8", "surrogatepass") for t in strings]
    lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    return b"".join(parts), np.cumsum(lens) - lens, lens


class _RawStrings:
    """A GGUF string array kept undecoded (the merges of a file opened by path: the C merger reads the bytes);
    `decode()` gives the list of str (invalid UTF-8 replaced, as GGUFFile does) for the Python/HF paths."""

    def __init__(self, data: bytes, starts: "np.ndarray", lens: "np.ndarray") -> None:
        self.data = data
        self.starts = starts
        self.lens = lens
        self._decoded: list[str] | None = None

    def __len__(self) -> int:
        return len(self.lens)

    def decode(self) -> list[str]:
        if self._decoded is None:
            d = self.data
            self._decoded = [d[a : a + n].decode("utf-8", errors="replace")
                             for a, n in zip(self.starts.tolist(), self.lens.tolist())]
        return self._decoded


class _Native:
    """A merger in C (csrc/gguf_strings.c): llama.cpp's byte-level BPE (`bpe`) or SentencePiece (`spm`) algorithm,
    built from the vocabulary strings. `encode_pieces` merges every piece of a text in one call."""

    def __init__(self, k: Any, handle: Any, encode: Any) -> None:
        self._ffi = k.ffi
        self._h = handle
        self._encode = encode

    @classmethod
    def bpe(cls, tokens: list[str], merges: "list[str] | _RawStrings", ignore_merges: bool) -> "_Native | None":
        k = _kernels()
        if k is None or not hasattr(k.lib, "mg_bpe_create"):
            return None
        ffi = k.ffi
        tb, ts, tl = _string_table(tokens)
        if isinstance(merges, _RawStrings):
            mb, ms, ml = merges.data, merges.starts, merges.lens
        else:
            mb, ms, ml = _string_table(merges)
        h = k.lib.mg_bpe_create(
            ffi.from_buffer(tb), ffi.from_buffer("int64_t[]", ts), ffi.from_buffer("int64_t[]", tl), len(tokens),
            ffi.from_buffer(mb), ffi.from_buffer("int64_t[]", ms), ffi.from_buffer("int64_t[]", ml), len(merges),
            int(ignore_merges),
        )
        if h == ffi.NULL:
            raise MemoryError("cannot build the BPE merge tables (out of memory)")
        return cls(k, ffi.gc(h, k.lib.mg_bpe_free), k.lib.mg_bpe_encode)

    @classmethod
    def spm(cls, tokens: list[str], scores: "np.ndarray", byte_tok: list[int]) -> "_Native | None":
        k = _kernels()
        if k is None or not hasattr(k.lib, "mg_spm_create"):
            return None
        ffi = k.ffi
        tb, ts, tl = _string_table(tokens)
        sc = np.ascontiguousarray(scores, dtype=np.float32)
        bt = np.asarray(byte_tok, dtype=np.int32)
        if sc.shape != (len(tokens),) or bt.shape != (256,):
            raise ValueError("SentencePiece tables have the wrong size")
        h = k.lib.mg_spm_create(
            ffi.from_buffer(tb), ffi.from_buffer("int64_t[]", ts), ffi.from_buffer("int64_t[]", tl), len(tokens),
            ffi.from_buffer("float[]", sc), ffi.from_buffer("int32_t[]", bt),
        )
        if h == ffi.NULL:
            raise MemoryError("cannot build the SentencePiece tables (out of memory)")
        return cls(k, ffi.gc(h, k.lib.mg_spm_free), k.lib.mg_spm_encode)

    def encode_pieces(self, text: str, pieces: list[str]) -> tuple[list[int], list[int]]:
        """The ids of `pieces` (non-empty strings that concatenate to `text`) and where each piece's ids start
        in them (len(pieces) + 1 offsets)."""
        raw = text.encode("utf-8")
        off = np.empty(len(pieces) + 1, dtype=np.int64)
        off[0] = 0
        if len(pieces) == 1:
            off[1] = len(raw)
        else:
            char_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
            if len(raw) == len(text):  # ASCII: character offsets are byte offsets
                off[1:] = char_ends
            else:
                cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
                nbytes = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
                off[1:] = np.cumsum(nbytes)[char_ends - 1]
        if off[-1] != len(raw):
            raise AssertionError("pieces do not tile the text")  # pragma: no cover
        ids = np.empty(max(len(raw), 1), dtype=np.int32)
        ids_off = np.empty(len(pieces) + 1, dtype=np.int64)
        ffi = self._ffi
        n = self._encode(
            self._h, ffi.from_buffer(raw), ffi.from_buffer("int64_t[]", off), len(pieces),
            ffi.from_buffer("int32_t[]", ids), ffi.from_buffer("int64_t[]", ids_off),
        )
        if n < 0:
            raise MemoryError("token merge failed (out of memory)") if n == -3 else ValueError("bad piece offsets")
        return ids[:n].tolist(), ids_off.tolist()


def _tokenizer_metadata(f: GGUFFile) -> dict[str, Any]:
    """The tokenizer.ggml.* keys of a file opened with lazy_arrays=True, arrays decoded - except the BPE merges,
    kept as raw bytes for the C merger when the kernels are built (they are decoded only if a Python path needs
    them)."""
    md: dict[str, Any] = {}
    native = _kernels() is not None
    for key, v in f.metadata.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        if isinstance(v, ArrayRef):
            if key == "tokenizer.ggml.merges" and native and v.elem_type == ValueType.STRING:
                v = _RawStrings(*f.string_array_raw(key))
            else:
                v = f.array(key)
        md[key] = v
    return md


def _meta_int(md: dict[str, Any], key: str) -> int | None:
    v = md.get(key)
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    raise ValueError(f"GGUF metadata {key!r} should be an integer, got {type(v).__name__}")


def _meta_bool(md: dict[str, Any], key: str) -> bool | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise ValueError(f"GGUF metadata {key!r} should be a bool, got {type(v).__name__}")


class _SpecialIndex:
    """Finds which special-token texts may occur in a text without scanning the text once per token:
    single-character tokens by a set intersection, longer ones by one substring test per distinct 4-char prefix;
    when many tokens share a prefix (e.g. thousands of "[PAD..]" tokens), the prefix's occurrences are looked up
    instead (each one checked against the group's texts by length). `candidates` returns positions into the
    (length-sorted) special list, in order; a superset of the tokens that occur."""

    _GROUP_SCAN = 8  # groups larger than this are resolved at the prefix's occurrences
    _MAX_HITS = 256  # ... unless the prefix occurs more often than this (then every token of the group is returned)

    def __init__(self, specials: list[tuple[str, int]]) -> None:
        self._single: dict[str, int] = {}
        self._multi: dict[str, list[int]] = {}
        for k, (text, _) in enumerate(specials):
            if len(text) == 1:
                self._single.setdefault(text, k)
            else:
                self._multi.setdefault(text[:4], []).append(k)
        self._single_set = frozenset(self._single)
        # prefix -> {length: {text: position}} for the large groups (first position wins on equal texts)
        self._by_len: dict[str, dict[int, dict[str, int]]] = {}
        for prefix, ks in self._multi.items():
            if len(ks) > self._GROUP_SCAN:
                d: dict[int, dict[str, int]] = {}
                for k in ks:
                    t = specials[k][0]
                    d.setdefault(len(t), {}).setdefault(t, k)
                self._by_len[prefix] = d

    def candidates(self, text: str) -> list[int]:
        if not self._single and not self._multi:
            return []
        chars = set(text)
        out = [self._single[c] for c in self._single_set.intersection(chars)]
        for prefix, ks in self._multi.items():
            if prefix[0] in chars and prefix in text:
                by_len = self._by_len.get(prefix)
                if by_len is None:
                    out.extend(ks)
                    continue
                found: set[int] = set()
                find = text.find
                i = find(prefix)
                hits = 0
                while i >= 0 and hits <= self._MAX_HITS:
                    hits += 1
                    for n, texts in by_len.items():
                        k = texts.get(text[i : i + n])
                        if k is not None:
                            found.add(k)
                    i = find(prefix, i + 1)
                out.extend(ks if i >= 0 else found)
        out.sort()
        return out


class Tokenizer:
    """Encode/decode text with a GGUF file's vocabulary. Build it with `Tokenizer.from_gguf`."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        md = metadata
        model = md.get("tokenizer.ggml.model")
        if model not in ("llama", "gpt2"):
            raise ValueError(
                f"unsupported tokenizer.ggml.model {model!r} (supported: 'llama' = SentencePiece-style, "
                "'gpt2' = byte-level BPE)"
            )
        self.model: str = model
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens[:1]):
            raise ValueError("GGUF has no tokenizer.ggml.tokens string array")
        n = len(tokens)
        self.n_vocab: int = n
        self.tokens: list[str] = tokens

        ttype = md.get("tokenizer.ggml.token_type")
        if ttype is None:
            types = np.full(n, TokenType.NORMAL, dtype=np.int32)
        else:
            types = np.asarray(ttype)
            if types.ndim != 1 or types.shape[0] < n or types.dtype.kind not in "iu":
                raise ValueError(f"tokenizer.ggml.token_type must be an integer array of >= {n} entries")
            types = types[:n].astype(np.int32)
        self.token_type: np.ndarray = types

        scores = md.get("tokenizer.ggml.scores")
        if scores is not None:
            scores = np.asarray(scores)
            if scores.ndim != 1 or scores.shape[0] < n:
                raise ValueError(f"tokenizer.ggml.scores must hold >= {n} entries")
            scores = scores[:n].astype(np.float32)
        self.scores: np.ndarray | None = scores

        # text -> id (first id wins on duplicates, which valid files do not have)
        self._token_to_id: dict[str, int] = dict(zip(reversed(tokens), range(n - 1, -1, -1)))

        def valid(i: int | None) -> int | None:
            return i if i is not None and 0 <= i < n else None

        is_spm = model == "llama"
        self.pre: PreTokenizer | None = None if is_spm else resolve_pre(md.get("tokenizer.ggml.pre"))
        bos = _meta_int(md, "tokenizer.ggml.bos_token_id")
        eos = _meta_int(md, "tokenizer.ggml.eos_token_id")
        self.bos_id: int | None = valid(bos if bos is not None else (1 if is_spm else None))
        self.eos_id: int | None = valid(eos if eos is not None else (2 if is_spm else None))
        unk = _meta_int(md, "tokenizer.ggml.unknown_token_id")
        self.unk_id: int | None = valid(unk if unk is not None else (0 if is_spm else None))
        self.pad_id: int | None = valid(_meta_int(md, "tokenizer.ggml.padding_token_id"))
        eot = valid(_meta_int(md, "tokenizer.ggml.eot_token_id"))
        if eot is None:
            for text in _EOT_TEXTS:
                if text in self._token_to_id:
                    eot = self._token_to_id[text]
                    break
        self.eot_id: int | None = eot
        self.eom_id: int | None = valid(_meta_int(md, "tokenizer.ggml.eom_token_id"))
        if self.eom_id is None:
            self.eom_id = self._token_to_id.get("<|eom_id|>")

        add_bos = _meta_bool(md, "tokenizer.ggml.add_bos_token")
        add_eos = _meta_bool(md, "tokenizer.ggml.add_eos_token")
        default_bos = True if is_spm else bool(self.pre and self.pre.add_bos_default)
        self.add_bos: bool = default_bos if add_bos is None else add_bos
        self.add_eos: bool = False if add_eos is None else add_eos
        if self.add_bos and self.bos_id is None:
            raise ValueError("tokenizer.ggml.add_bos_token is true but the file has no valid bos_token_id")
        if self.add_eos and self.eos_id is None:
            raise ValueError("tokenizer.ggml.add_eos_token is true but the file has no valid eos_token_id")
        asp = _meta_bool(md, "tokenizer.ggml.add_space_prefix")
        self.add_space_prefix: bool = (asp if asp is not None else True) if is_spm else bool(asp)

        # end-of-generation ids
        eog = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        for text in _EOG_TEXTS:
            i = self._token_to_id.get(text)
            if i is not None:
                eog.add(i)
        self._eog: frozenset[int] = frozenset(eog)

        # tokens split out of the text before the model runs, longest text first (stable on equal lengths)
        special_mask = (types == TokenType.CONTROL) | (types == TokenType.USER_DEFINED) | (types == TokenType.UNKNOWN)
        for i in eog:  # llama.cpp marks EOG-text tokens as control
            special_mask[i] = special_mask[i] or types[i] != TokenType.USER_DEFINED
        ids = np.nonzero(special_mask)[0].tolist()
        ids.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special_all: list[tuple[str, int]] = [(tokens[i], i) for i in ids if tokens[i]]
        self._special_user: list[tuple[str, int]] = [
            (t, i) for t, i in self._special_all if types[i] == TokenType.USER_DEFINED
        ]
        self._special_index = (_SpecialIndex(self._special_user), _SpecialIndex(self._special_all))
        self._control_like = np.zeros(n, dtype=bool)
        self._control_like[(types == TokenType.CONTROL) | (types == TokenType.UNKNOWN)] = True
        for i in eog:
            if types[i] != TokenType.USER_DEFINED:
                self._control_like[i] = True

        self._pieces: list[bytes] = self._build_pieces()
        self._skip_pieces: list[bytes] = list(self._pieces)
        for i in np.flatnonzero(self._control_like).tolist():
            self._skip_pieces[i] = b""
        if is_spm:
            self._init_spm()
        else:
            self._init_bpe(md)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, source: GGUFFile | str | os.PathLike[str]) -> "Tokenizer":
        """Build from an open `GGUFFile` or a path to a GGUF file (only its metadata is read)."""
        if isinstance(source, GGUFFile):
            return cls(source.metadata)
        if isinstance(source, (str, os.PathLike)):
            f = GGUFFile(source, lazy_arrays=True)
            try:
                return cls(_tokenizer_metadata(f))
            finally:
                f.close()
        raise TypeError(f"Tokenizer.from_gguf expects a GGUFFile or a path, got {type(source).__name__}")

    def _build_pieces(self) -> list[bytes]:
        """Each token's output bytes (control/unknown/user-defined tokens: their text; unused tokens: nothing)."""
        tokens = self.tokens
        types = self.token_type
        if self.model == "llama":
            # one replace + encode + split over the NUL-joined tokens (per token only if a token holds a NUL)
            raw = "\x00".join(tokens).replace(_SPACE, " ").encode("utf-8", "surrogatepass")
            out = raw.split(b"\x00")
            if len(out) != len(tokens):
                out = [t.replace(_SPACE, " ").encode("utf-8", "surrogatepass") for t in tokens]
        else:
            # every character of a normal byte-level token stands for one byte: translate all tokens at once and
            # slice the result at the (unchanged) character offsets
            joined = "".join(tokens).translate(_CHAR_TO_BYTE_TABLE)
            ends = list(accumulate(map(len, tokens)))
            starts = [0] + ends[:-1]
            # characters outside the byte alphabet become one "?" byte each (offsets unchanged); the few tokens
            # holding such characters are redone one by one
            raw = joined.encode("latin-1", errors="replace")
            out = [raw[a:b] for a, b in zip(starts, ends)]
            if len(raw) != len(joined) or raw.count(b"?") != joined.count("?"):
                for m in _NON_BYTE.finditer(joined):
                    i = bisect.bisect_right(ends, m.start())
                    out[i] = _latin1_or_utf8(tokens[i].translate(_CHAR_TO_BYTE_TABLE))
        special = np.nonzero(types != TokenType.NORMAL)[0].tolist()
        for i in special:
            ty = int(types[i])
            if ty == TokenType.BYTE:
                out[i] = self._byte_token_value(tokens[i])
            elif ty in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
                out[i] = tokens[i].encode("utf-8")
            else:
                out[i] = b""
        return out

    @staticmethod
    def _byte_token_value(text: str) -> bytes:
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                pass
        return text.encode("utf-8")

    def _init_spm(self) -> None:
        scores = self.scores if self.scores is not None else np.zeros(self.n_vocab, dtype=np.float32)
        self._spm_scores: list[float] = scores.tolist()
        byte_ids: list[int | None] = []
        for b in range(256):
            i = self._token_to_id.get(f"<0x{b:02X}>")
            if i is None:
                i = self._token_to_id.get(chr(b)) if b < 128 else None
            byte_ids.append(i)
        self._spm_byte_ids = byte_ids
        # When no vocabulary entry has U+2581 right after another character (SentencePiece's usual
        # split-by-whitespace vocabularies), no merge can cross the start of a "word" (a U+2581 run after other
        # text), so words are merged independently - and each distinct word only once (cached). A merge across a
        # word start makes a token holding the characters on both sides, so when a few entries do (Gemma 3: one,
        # '>▁</'), the text is still cut at every word start that no occurrence of such an entry spans.
        joined = "\x00".join(self.tokens)
        if joined.count("\x00") == len(self.tokens) - 1:  # one search over all tokens
            found = set()
            for m in _SPM_CROSSING_JOINED.finditer(joined):
                a = joined.rfind("\x00", 0, m.start()) + 1
                b = joined.find("\x00", m.end())
                found.add(joined[a : b if b >= 0 else len(joined)])
                if len(found) > _SPM_MAX_CROSSING:
                    break
        else:
            found = {t for t in self.tokens if _SPM_CROSSING.search(t)}
        crossing = sorted(found, key=len, reverse=True)
        self._spm_words = None if len(crossing) > _SPM_MAX_CROSSING else _SPM_WORD_START
        # every occurrence (overlapping ones too) of a crossing entry, longest first at each position
        self._spm_cross = (
            re.compile("(?=(" + "|".join(map(re.escape, crossing)) + "))") if 0 < len(crossing) <= _SPM_MAX_CROSSING
            else None
        )
        self._spm_cache: dict[str, list[int]] = {}
        unk = -1 if self.unk_id is None else self.unk_id
        self._native_spm: _Native | None = _Native.spm(
            self.tokens, scores, [unk if i is None else i for i in byte_ids]
        )

    def _init_bpe(self, md: dict[str, Any]) -> None:
        merges = md.get("tokenizer.ggml.merges")
        if not isinstance(merges, (list, _RawStrings)):
            raise ValueError("gpt2 tokenizer without tokenizer.ggml.merges")
        if isinstance(merges, list) and not all(isinstance(m, str) for m in merges[:1]):
            raise ValueError("tokenizer.ggml.merges must be strings")
        self._merges_src: list[str] | _RawStrings = merges
        self._ranks_dict: dict[str, int] | None = None  # built on first use by the Python merger (see _ranks)
        assert self.pre is not None
        self._ignore_merges = self.pre.ignore_merges
        self._hf_tok: Any = None  # HF tokenizers pipeline, built on first need (see _hf)
        self._hf_pre: Any = None  # its pre-tokenizer alone (see _reference_split)
        # fast path: split over the whole text at once, merge each distinct piece once (cached)
        self._fast: FastSplitter | None = FastSplitter.create(self.pre)
        self._bpe_cache: dict[str, list[int]] = {}
        # the C merger (csrc/gguf_strings.c); None without the compiled kernels: then Python / HF tokenizers merge
        self._native: _Native | None = _Native.bpe(self.tokens, merges, self._ignore_merges)

    @property
    def _merges(self) -> list[str]:
        """The merge strings (decoded on first use when the file's merges were kept undecoded)."""
        m = self._merges_src
        return m.decode() if isinstance(m, _RawStrings) else m

    @property
    def _ranks(self) -> dict[str, int]:
        """Merge rank by its "left right" text, the first entry winning on duplicates as in llama.cpp. Symbols of
        byte-level text never hold a space, so the pair (a, b) has rank ranks[a + " " + b] whatever the entry
        shapes (entries llama.cpp cannot use cannot be hit here either)."""
        r = self._ranks_dict
        if r is None:
            merges = self._merges
            r = self._ranks_dict = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        return r

    @property
    def _hf(self) -> Any:
        """The same tokenizer as an HF `tokenizers` pipeline (Oniguruma splitting + Rust BPE): used for text the
        fast splitter declines, for very long pieces, and as the reference the fast path is tested against."""
        if self._hf_tok is None:
            try:
                from tokenizers import Regex
                from tokenizers import Tokenizer as HFTokenizer
                from tokenizers import models, pre_tokenizers
            except ImportError as e:  # pragma: no cover - tokenizers is a declared dependency
                raise ImportError("this text needs the 'tokenizers' package (pip install tokenizers)") from e
            assert self.pre is not None
            bpe = models.BPE(vocab=self._token_to_id, merges=_split_merges(self._merges),
                             ignore_merges=self._ignore_merges, fuse_unk=False, byte_fallback=False)
            hf = HFTokenizer(bpe)
            steps = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in self.pre.regexes]
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
            hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
            self._hf_tok = hf
        return self._hf_tok

    def _bpe_word(self, word: str) -> list[int]:
        """llama.cpp's BPE on one byte-level piece: merge the lowest-ranked adjacent pair (leftmost on ties) until
        none is left; symbols that are not vocabulary entries come out as their single-byte tokens."""
        vocab = self._token_to_id
        if self._ignore_merges:
            tid = vocab.get(word)
            if tid is not None:
                return [tid]
        if len(word) > _PY_BPE_MAX:  # quadratic below: long pieces go to the Rust BPE
            return [t.id for t in self._hf.model.tokenize(word)]
        rank = self._ranks.get
        none = 1 << 62
        syms = list(word)
        # pair_rank[i]: rank of the pair (syms[i], syms[i + 1]); a merge only changes the two pairs around it
        pair_rank = [rank(a + " " + b, none) for a, b in zip(syms, syms[1:])]
        while pair_rank:
            best_rank = min(pair_rank)
            if best_rank == none:
                break
            i = pair_rank.index(best_rank)  # leftmost on ties
            syms[i : i + 2] = [syms[i] + syms[i + 1]]
            del pair_rank[i]
            if i > 0:
                pair_rank[i - 1] = rank(syms[i - 1] + " " + syms[i], none)
            if i < len(pair_rank):
                pair_rank[i] = rank(syms[i] + " " + syms[i + 1], none)
        out: list[int] = []
        for sym in syms:
            tid = vocab.get(sym)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(t for t in map(vocab.get, sym) if t is not None)
        return out

    # ------------------------------------------------------------------ public API
    def is_eog(self, token_id: int) -> bool:
        """True for tokens that end generation (eos, eot, eom and the known end-of-turn texts)."""
        return int(token_id) in self._eog

    @property
    def eog_ids(self) -> frozenset[int]:
        return self._eog

    def token_to_id(self, text: str) -> int | None:
        return self._token_to_id.get(text)

    def id_to_token(self, token_id: int) -> str:
        return self.tokens[self._check_id(token_id)]

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text`. add_special adds BOS/EOS as the file's add_bos/add_eos flags say; parse_special
        turns control-token texts written in `text` into those tokens (otherwise they are plain text)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not encodable as UTF-8 (lone surrogate at index {e.start})") from None
        out: list[int] = []
        if add_special and self.add_bos:
            assert self.bos_id is not None
            out.append(self.bos_id)
        frags = self._partition(text, parse_special) if text else []
        native = self._native_spm if self.model == "llama" else self._native
        if native is not None:
            self._encode_native(frags, native, out)
        elif self.model == "llama":
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    prev_special = True
                else:
                    s = (" " + f) if (self.add_space_prefix and prev_special) else f
                    self._spm_encode(s.replace(" ", _SPACE), out)
                    prev_special = False
        else:
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                else:
                    self._bpe_encode(f, out)
        if add_special and self.add_eos:
            assert self.eos_id is not None
            out.append(self.eos_id)
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; control/unknown tokens render as their text unless skip_special."""
        return self._decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token contributes to decoded text (control tokens: their text)."""
        return self._pieces[self._check_id(token_id)]

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        """An incremental detokenizer: feed ids one at a time, get text pieces out."""
        return StreamDecoder(self, skip_special)

    # ------------------------------------------------------------------ internals
    def _check_id(self, token_id: int) -> int:
        try:
            i = int(token_id)
        except (TypeError, ValueError):
            raise TypeError(f"token id must be an integer, got {type(token_id).__name__}") from None
        if not 0 <= i < self.n_vocab:
            raise ValueError(f"token id {i} is out of range [0, {self.n_vocab})")
        return i

    def _decode_bytes(self, ids: Iterable[int], skip_special: bool) -> bytes:
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            ids = ids.ravel().tolist()
        seq: Sequence[int] = ids if isinstance(ids, (list, tuple)) else list(ids)
        pieces = self._skip_pieces if skip_special else self._pieces
        try:
            parts = [pieces[i] for i in seq]
            ok = all(i >= 0 for i in seq)
        except (IndexError, TypeError):
            ok = False
        if not ok:
            for i in seq:
                self._check_id(i)
            raise ValueError("invalid token ids")  # pragma: no cover
        if self.model == "llama" and self.add_space_prefix:
            for k, p in enumerate(parts):
                if p:  # the first non-empty piece loses the space the encoder put in front of the text
                    if p[:1] == b" " and not (not skip_special and self._control_like[seq[k]]):
                        parts[k] = p[1:]
                    break
        return b"".join(parts)

    def _encode_native(self, frags: list[str | int], native: "_Native", out: list[int]) -> None:
        """All text fragments' pieces merged by the C merger in one call, special ids in between."""
        texts: list[str] = []
        pieces: list[str] = []
        layout: list[int] = []  # a special id (>= 0), or -(number of pieces of the next text fragment) - 1
        spm = self.model == "llama"
        prev_special = True
        for f in frags:
            if isinstance(f, int):
                layout.append(f)
                prev_special = True
                continue
            if spm:
                f = ((" " + f) if (self.add_space_prefix and prev_special) else f).replace(" ", _SPACE)
                ps = self._spm_pieces(f) or [f]
                prev_special = False
            else:
                ps = self._bpe_pieces(f)
            texts.append(f)
            pieces.extend(ps)
            layout.append(-len(ps) - 1)
        if not pieces:
            out.extend(layout)  # only special ids (every fragment has >= 1 piece)
            return
        ids, offs = native.encode_pieces("".join(texts) if len(texts) > 1 else texts[0], pieces)
        if len(layout) == 1:
            out.extend(ids)
            return
        p = 0
        for item in layout:
            if item >= 0:
                out.append(item)
            else:
                q = p - item - 1
                out.extend(ids[offs[p] : offs[q]])
                p = q

    def _bpe_pieces(self, text: str) -> list[str]:
        """Pre-tokenized pieces of one raw text fragment: the fast splitter's, with the segments it declines
        split by HF tokenizers (Oniguruma)."""
        segs = None
        if self._fast is not None:
            try:
                segs = self._fast.split_segments(text)
            except ValueError:  # no free sentinel character
                segs = None
        if segs is None:
            segs = [(text, None)]
        if len(segs) == 1 and segs[0][1] is not None:
            return segs[0][1]
        pieces: list[str] = []
        for seg, ps in segs:
            pieces.extend(ps if ps is not None else self._reference_split(seg))
        return pieces

    def _bpe_encode(self, text: str, out: list[int], reference: bool = False) -> None:
        """Byte-level BPE of one raw text fragment, appended to out. reference=True: run it entirely inside HF
        tokenizers (its own regex engine and splitting), the path the fast one is checked against."""
        if reference:
            out.extend(self._hf.encode(text, add_special_tokens=False).ids)
            return
        pieces = self._bpe_pieces(text)
        if not pieces:
            return
        cache = self._bpe_cache
        missing = set(pieces).difference(cache)
        if missing:
            if len(cache) + len(missing) > _BPE_CACHE_MAX:
                cache = self._bpe_cache = {}  # a fresh dict: other threads keep using the one they hold
                missing = set(pieces)
            table = _BYTE_TO_CHAR_TABLE
            if self._hf_tok is not None or len(missing) > _HF_MISSES:
                # many new pieces (bulk text): the Rust BPE is worth building once (and is then kept)
                tokenize = self._hf.model.tokenize
                for w in missing:
                    cache[w] = [t.id for t in tokenize(w.encode("utf-8").decode("latin-1").translate(table))]
            else:
                bpe_word = self._bpe_word
                for w in missing:
                    cache[w] = bpe_word(w.encode("utf-8").decode("latin-1").translate(table))
        out.extend(chain.from_iterable(map(cache.__getitem__, pieces)))

    def _reference_split(self, text: str) -> list[str]:
        """Pre-tokenized pieces of `text` by HF tokenizers' splitting alone (Oniguruma; no vocabulary needed)."""
        pre = self._hf_pre
        if pre is None:
            from tokenizers import Regex, pre_tokenizers

            assert self.pre is not None
            pre = self._hf_pre = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in self.pre.regexes]
            )
        return [p for p, _ in pre.pre_tokenize_str(text)]

    def _encode_reference(self, text: str, parse_special: bool = False) -> list[int]:
        """encode(text, add_special=False) with the BPE merges and splitting done wholly by HF tokenizers."""
        if self.model != "gpt2":
            raise ValueError("_encode_reference is for byte-level BPE vocabularies")
        out: list[int] = []
        for f in self._partition(text, parse_special) if text else []:
            if isinstance(f, int):
                out.append(f)
            else:
                self._bpe_encode(f, out, reference=True)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """llama.cpp's special-token partition: split text fragments around special token texts, longest first.
        Done as string replacements: each token that occurs becomes a private-use marker character (absent from
        the text and from every candidate token, so no later token can match across it), and the result is split
        at the markers - the same non-overlapping leftmost occurrences as splitting every fragment in turn."""
        specials = self._special_all if parse_special else self._special_user
        cands = self._special_index[parse_special].candidates(text)
        if not cands:
            return [text]
        avoid = set().union(*(specials[k][0] for k in cands))
        marks = iter(_MARKERS)
        used: dict[str, int] = {}
        s = text
        for k in cands:
            tok_text, tid = specials[k]
            if tok_text not in s:
                continue
            m = next(marks, None)
            while m is not None and (m in avoid or m in text):
                m = next(marks, None)
            if m is None:  # pragma: no cover - the text holds nearly every private-use character
                return self._partition_slow(text, parse_special)
            used[m] = tid
            s = s.replace(tok_text, m)
        if not used:
            return [text]
        frags: list[str | int] = []
        for part in re.split("([" + "".join(used) + "])", s):
            if part:
                tid = used.get(part) if len(part) == 1 else None
                frags.append(part if tid is None else tid)
        return frags

    def _partition_slow(self, text: str, parse_special: bool) -> list[str | int]:
        """_partition by splitting every fragment around each token in turn (the definition)."""
        specials = self._special_all if parse_special else self._special_user
        frags: list[str | int] = [text]
        for k in self._special_index[parse_special].candidates(text):
            tok_text, tid = specials[k]
            new: list[str | int] | None = None
            for j, f in enumerate(frags):
                if isinstance(f, int) or tok_text not in f:
                    if new is not None:
                        new.append(f)
                    continue
                if new is None:
                    new = frags[:j]
                parts = f.split(tok_text)
                for m, part in enumerate(parts):
                    if m:
                        new.append(tid)
                    if part:
                        new.append(part)
            if new is not None:
                frags = new
        return frags

    def _spm_pieces(self, text: str) -> list[str] | None:
        """`text` cut at the word starts no merge can cross (see _init_spm); None: merge it whole."""
        if self._spm_words is None:
            return None
        words = self._spm_words.split(text)
        cross = self._spm_cross
        if cross is None or len(words) < 2 or cross.search(text) is None:
            return words
        ends = list(accumulate(map(len, words)))
        blocked: set[int] = set()  # k: no cut after words[k]
        for m in cross.finditer(text):
            a = m.start()
            b = a + len(m.group(1))
            k = bisect.bisect_right(ends, a)  # first cut after a
            while k < len(ends) - 1 and ends[k] < b:
                blocked.add(k)
                k += 1
        if not blocked:
            return words
        out: list[str] = []
        prev = 0  # words[prev:] not emitted yet
        ks = sorted(blocked)
        i = 0
        while i < len(ks):
            j = i
            while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
                j += 1
            out.extend(words[prev : ks[i]])
            out.append("".join(words[ks[i] : ks[j] + 2]))
            prev = ks[j] + 2
            i = j + 1
        out.extend(words[prev:])
        return out

    def _spm_encode(self, text: str, out: list[int]) -> None:
        """The Python merger (used without the C kernels)."""
        words = self._spm_pieces(text)
        if words is None:
            self._spm_tokenize(text, out)
            return
        cache = self._spm_cache
        missing = set(words).difference(cache)
        if missing:
            if len(cache) + len(missing) > _BPE_CACHE_MAX:
                cache = self._spm_cache = {}
                missing = set(words)
            for w in missing:
                ids: list[int] = []
                self._spm_tokenize(w, ids)
                cache[w] = ids
        out.extend(chain.from_iterable(map(cache.__getitem__, words)))

    def _spm_tokenize(self, text: str, out: list[int]) -> None:
        """SentencePiece-style merge of one escaped text fragment (llama.cpp's SPM algorithm)."""
        n = len(text)
        if n == 0:
            return
        vocab = self._token_to_id
        scores = self._spm_scores
        start = list(range(n))
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []
        push = heapq.heappush

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = text[start[left] : start[left] + length[left] + length[right]]
            tid = vocab.get(s)
            if tid is None:
                return
            push(heap, (-scores[tid], left, right, len(s)))

        for i in range(1, n):
            add(i - 1, i)
        pop = heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue
            length[left] += length[right]
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        i = 0
        byte_ids = self._spm_byte_ids
        while i != -1:
            s = text[start[i] : start[i] + length[i]]
            tid = vocab.get(s)
            if tid is not None:
                out.append(tid)
            else:
                for b in s.encode("utf-8"):
                    bid = byte_ids[b]
                    if bid is None:
                        bid = self.unk_id
                    if bid is not None:
                        out.append(bid)
            i = nxt[i]


class StreamDecoder:
    """Incremental detokenizer. `feed(id)` returns the text that is complete so far (a multi-byte character split
    across tokens is held back until its last byte arrives); `flush()` returns the rest. The concatenation of all
    returned pieces equals `tokenizer.decode(all ids, skip_special)`."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_pending = tokenizer.model == "llama" and tokenizer.add_space_prefix

    def feed(self, token_id: int) -> str:
        tok = self._tok
        i = tok._check_id(token_id)
        p = (tok._skip_pieces if self._skip else tok._pieces)[i]
        if self._strip_pending and p:
            self._strip_pending = False
            if p[:1] == b" " and not (not self._skip and tok._control_like[i]):
                p = p[1:]
        return self._dec.decode(p, False)

    def flush(self) -> str:
        """Return held-back bytes (incomplete UTF-8 becomes U+FFFD) and reset for a new stream."""
        s = self._dec.decode(b"", True)
        self._dec.reset()
        self._strip_pending = self._tok.model == "llama" and self._tok.add_space_prefix
        return s
