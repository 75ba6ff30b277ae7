"""Pre-tokenizer regex sets for byte-level BPE vocabularies, keyed by GGUF `tokenizer.ggml.pre`.

A pre-tokenizer is a list of regexes applied one after the other: each regex splits every current piece into its
matches and the (non-empty) text between matches, and the next regex splits those pieces again. BPE merges then run
inside each final piece. The patterns are the splitting rules published with each model's `tokenizer.json` (the same
rules llama.cpp's `src/llama-vocab.cpp` applies per pre-tokenizer name); they are written for the Oniguruma syntax
the HF `tokenizers` library uses, so `\\p{..}` classes, look-aheads, `(?i:..)` and possessive quantifiers work.

Unknown names fall back to FALLBACK_PRE (the Llama-3 / cl100k-style pattern, the most common modern choice) with a
warning; see `resolve_pre`.
"""
from __future__ import annotations

import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

# --- the individual patterns --------------------------------------------------------------------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# DeepSeek LLM (V1/V2/V2-Lite): letters are an explicit list of ranges (Latin, Greek, Cyrillic, Armenian, Georgian,
# Cherokee, letterlike symbols, Glagolitic, Coptic, fullwidth Latin, Deseret, Osage, Old Hungarian, Warang Citi,
# Adlam), so that CJK/Hangul and other scripts fall through to the later rules. The \u escapes are code points whose
# Unicode normalization would silently turn them into other characters (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A).
_DS_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄ"
    "ῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲"
    "𑢠-𑣟𞤀-𞥃"
)
DEEPSEEK_LLM = [
    "[\r\n]",
    r"\s?[" + _DS_LETTERS + "]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
]

DEEPSEEK_CODER = ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"]

DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
]

DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]

FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]

PORO = [r" ?[^(\s|.,!?…。，、।۔،)]+"]

TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)"
    r"|\s+"
)

GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BAILINGMOE = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"

SEED_CODER = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"

MINICPM5 = [
    r"\p{N}{1,3}",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

CHAMELEON = [
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    GPT2,
]


@dataclass(frozen=True)
class PreTokenizer:
    """How a byte-level BPE vocabulary splits text before merging."""

    name: str  # the canonical name the rules were chosen by
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a vocabulary entry is emitted whole (Llama 3 and kin)
    add_bos_default: bool = False  # add_bos when the file has no tokenizer.ggml.add_bos_token
    clean_spaces: bool = True  # llama.cpp's "clean spaces" flag (kept for information; decode never alters text)
    # splitting text between a "\n" and an ASCII letter never changes its pieces (checked for these rules: no match
    # can hold "\n" followed by a letter, and no alternative looks past a newline that ends a whitespace run), so a
    # text can be split piecewise at such places; see FastSplitter.split_segments
    line_cuts: bool = False


def _p(name: str, regexes: list[str], **kw: bool) -> PreTokenizer:
    return PreTokenizer(name, tuple(regexes), **kw)


_LLAMA3 = _p("llama3", [LLAMA3], ignore_merges=True, add_bos_default=True, line_cuts=True)
_GPT2 = _p("gpt-2", [GPT2])
_QWEN2 = _p("qwen2", [QWEN2], clean_spaces=False, line_cuts=True)
_STARCODER = _p("starcoder", [r"\p{N}", GPT2])

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _p("default", DEFAULT),
    **{n: _LLAMA3 for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    "dbrx": _p("dbrx", [LLAMA3], line_cuts=True),
    "smaug-bpe": _p("smaug-bpe", [LLAMA3], line_cuts=True),
    "deepseek-llm": _p("deepseek-llm", DEEPSEEK_LLM, clean_spaces=False, line_cuts=True),
    "deepseek-coder": _p("deepseek-coder", DEEPSEEK_CODER, clean_spaces=False, line_cuts=True),
    **{n: _p(n, DEEPSEEK_V3, clean_spaces=False, line_cuts=True) for n in ("deepseek-v3", "hunyuan-dense", "joyai-llm")},
    "falcon": _p("falcon", FALCON),
    **{
        n: _GPT2
        for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                  "modern-bert", "mpt", "olmo", "jais", "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe")
    },
    **{n: _p(n, [GPT2], clean_spaces=False) for n in ("trillion", "granite-docling")},
    **{n: _STARCODER for n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")},
    **{n: _p(n, [r"\p{N}", GPT2], clean_spaces=False) for n in ("command-r", "smollm")},
    **{n: _QWEN2 for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "hunyuan", "solar-open",
                           "grok-2")},
    "stablelm2": _p("stablelm2", [QWEN2], line_cuts=True),
    "qwen35": _p("qwen35", [QWEN35], clean_spaces=False),
    **{n: _p(n, PORO, clean_spaces=(n != "poro-chat")) for n in ("poro-chat", "bloom", "gpt3-finnish")},
    "viking": _p("viking", PORO + [r"\p{N}"], clean_spaces=False),
    **{n: _p(n, [LLAMA3], line_cuts=True) for n in ("chatglm-bpe", "glm4")},
    "tekken": _p("tekken", [TEKKEN], ignore_merges=True, add_bos_default=True, clean_spaces=False),
    **{n: _p(n, [GPT4O], clean_spaces=False) for n in ("gpt-4o", "llama4", "kanana2", "minimax-m2")},
    **{n: _p(n, [BAILINGMOE], clean_spaces=False) for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
    "seed-coder": _p("seed-coder", [SEED_CODER], clean_spaces=False),
    "minicpm5": _p("minicpm5", MINICPM5, ignore_merges=True),
    "chameleon": _p("chameleon", CHAMELEON, add_bos_default=True, clean_spaces=False),
}

FALLBACK_PRE = "llama3"


def resolve_pre(name: str | None) -> PreTokenizer:
    """The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value. A missing name means llama.cpp's `default` rules;
    an unknown name warns and uses the Llama-3 pattern (without Llama 3's ignore-merges/add-BOS defaults)."""
    if not name:
        warnings.warn("GGUF has no tokenizer.ggml.pre: using the 'default' pre-tokenizer", stacklevel=3)
        return PRE_TOKENIZERS["default"]
    pre = PRE_TOKENIZERS.get(name)
    if pre is None:
        warnings.warn(
            f"unknown pre-tokenizer {name!r}: falling back to the Llama-3 splitting regex; tokenization may differ "
            "from the original model's",
            stacklevel=3,
        )
        return PreTokenizer(f"{name} (fallback: {FALLBACK_PRE})", PRE_TOKENIZERS[FALLBACK_PRE].regexes)
    return pre


# --- fast splitting with the `regex` module ------------------------------------------------------------------------
_SENTINELS = [chr(c) for c in range(0xE000, 0xE100)]  # private-use characters: no rule above can match them
# `\s` spelled out (the Unicode White_Space characters, as Oniguruma's \s): Python's `re` would also match
# U+001C..U+001F, so the rewritten patterns carry the explicit set and both engines agree
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _sentinel_form(pattern: str, s: str) -> str | None:
    """Rewrite `pattern` so that applying it to pieces joined by the sentinel `s` gives the same matches as
    applying it to each piece alone: negated classes exclude `s`, `(?!\\S)` and a final `$` treat `s` as the end
    of a piece. None when the pattern uses something this rewrite cannot vouch for (look-behind, `.`, `^`,
    other anchors, `\\S` elsewhere)."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                return None
            nxt = pattern[i + 1]
            if nxt in "SAzZbBGdDwW" or nxt.isdigit():
                return None
            out.append(_WS if in_class and nxt == "s" else ("[" + _WS + "]" if nxt == "s" else pattern[i : i + 2]))
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif c == "[":
                return None  # nested class / set operation
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^" + s)
                i += 2
            else:
                out.append(c)
                i += 1
            if i < n and pattern[i] == "]":  # a leading ']' is a literal in the class
                out.append("]")
                i += 1
            continue
        if pattern.startswith("(?!\\S)", i):
            out.append("(?![^" + _WS + s + "])")
            i += 6
            continue
        if c == "$":
            if i != n - 1:
                return None
            out.append("(?=" + s + "|\\Z)")
            i += 1
            continue
        if c in ".^" or pattern.startswith("(?<", i):
            return None
        out.append(c)
        i += 1
    return None if in_class else "".join(out)


# Code points assigned after Unicode 14.0 (generated with the `regex` module's tables against Python 3.11's
# unicodedata). Oniguruma inside HF tokenizers may not know them yet, so `\p{..}` classes can disagree about them:
# text holding any of them is split by HF tokenizers itself (see FastSplitter.split).
_NEWER_UNICODE = (
    (0x88F, 0x88F), (0x897, 0x897), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0xCF3, 0xCF3), (0xECE, 0xECE), (0x1ACF, 0x1ADD),
    (0x1AE0, 0x1AEB), (0x1B4E, 0x1B4F), (0x1B7F, 0x1B7F), (0x1C89, 0x1C8A), (0x20C1, 0x20C1), (0x2427, 0x2429),
    (0x2B96, 0x2B96), (0x2FFC, 0x2FFF), (0x31E4, 0x31E5), (0x31EF, 0x31EF), (0xA7CB, 0xA7CF), (0xA7D2, 0xA7D2),
    (0xA7D4, 0xA7D4), (0xA7DA, 0xA7DC), (0xA7F1, 0xA7F1), (0xFBC3, 0xFBD2), (0xFD90, 0xFD91), (0xFDC8, 0xFDCE),
    (0x105C0, 0x105F3), (0x10940, 0x10959), (0x10D40, 0x10D65), (0x10D69, 0x10D85), (0x10D8E, 0x10D8F),
    (0x10EC2, 0x10EC7), (0x10ED0, 0x10ED8), (0x10EFA, 0x10EFF), (0x1123F, 0x11241), (0x11380, 0x11389),
    (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113C0), (0x113C2, 0x113C2),
    (0x113C5, 0x113C5), (0x113C7, 0x113CA), (0x113CC, 0x113D5), (0x113D7, 0x113D8), (0x113E1, 0x113E2),
    (0x116D0, 0x116E3), (0x11B00, 0x11B09), (0x11B60, 0x11B67), (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9),
    (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x11F00, 0x11F10), (0x11F12, 0x11F3A), (0x11F3E, 0x11F5A),
    (0x1342F, 0x1342F), (0x13439, 0x13455), (0x13460, 0x143FA), (0x16100, 0x16139), (0x16D40, 0x16D79),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CFF, 0x18CFF),
    (0x18D09, 0x18D1E), (0x18D80, 0x18DF2), (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1CC00, 0x1CCFC),
    (0x1CD00, 0x1CEB3), (0x1CEBA, 0x1CED0), (0x1CEE0, 0x1CEF0), (0x1D2C0, 0x1D2D3), (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D), (0x1E08F, 0x1E08F), (0x1E4D0, 0x1E4F9), (0x1E5D0, 0x1E5FA), (0x1E5FF, 0x1E5FF),
    (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6F5), (0x1E6FE, 0x1E6FF), (0x1F6D8, 0x1F6D8), (0x1F6DC, 0x1F6DC),
    (0x1F774, 0x1F77F), (0x1F7D9, 0x1F7D9), (0x1F8B2, 0x1F8BB), (0x1F8C0, 0x1F8C1), (0x1F8D0, 0x1F8D8),
    (0x1FA54, 0x1FA57), (0x1FA75, 0x1FA77), (0x1FA87, 0x1FA8A), (0x1FA8E, 0x1FA8F), (0x1FAAD, 0x1FAAF),
    (0x1FABB, 0x1FABF), (0x1FAC6, 0x1FAC6), (0x1FAC8, 0x1FAC8), (0x1FACD, 0x1FACF), (0x1FADA, 0x1FADC),
    (0x1FADF, 0x1FADF), (0x1FAE8, 0x1FAEA), (0x1FAEF, 0x1FAEF), (0x1FAF7, 0x1FAF8), (0x1FBCB, 0x1FBEF),
    (0x1FBFA, 0x1FBFA), (0x2B739, 0x2B73F), (0x2CEA2, 0x2CEAD), (0x2EBF0, 0x2EE5D), (0x31350, 0x33479),
)
_NEWER_UNICODE_CHARS = frozenset(chr(c) for a, b in _NEWER_UNICODE for c in range(a, b + 1))


def _engines_may_disagree(chars: set[str]) -> bool:
    """True when `chars` holds a character newer than Unicode 14 or unassigned (category Cn) in this Python:
    Oniguruma's property tables may class those differently (e.g. it counts unassigned U+3D000 as a letter)."""
    if not _NEWER_UNICODE_CHARS.isdisjoint(chars):
        return True
    return any(c >= "\u088f" and unicodedata.category(c) == "Cn" for c in chars)


def _disagreeing(chars: set[str]) -> list[str]:
    """The characters of `chars` that _engines_may_disagree about."""
    return sorted(c for c in chars if c in _NEWER_UNICODE_CHARS or (c >= "\u088f" and unicodedata.category(c) == "Cn"))


_LINE_CUT = re.compile("(?<=\n)[A-Za-z]")  # a place where a `line_cuts` pre-tokenizer may split the text
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _compile_stage(form: str) -> Any:
    """Compile one rewritten stage, wrapped in a capturing group for split(): Python's `re` (several times faster
    on large character classes) when the pattern needs nothing beyond it, else the `regex` module."""
    import regex

    simple = "\\p" not in form and "\\P" not in form and not any(q in form for q in ("++", "?+", "*+", "}+"))
    if simple:
        try:
            return re.compile("(" + form + ")")
        except re.error:
            pass
    return regex.compile("(" + form + ")")


class FastSplitter:
    """A pre-tokenizer's regex chain run over the whole text at a time: each stage splits the current pieces
    (kept joined by a sentinel character absent from the text) into matches and the text between them. `split`
    returns the final pieces (never empty strings). Build with `FastSplitter.create`, which returns None when a
    pattern is outside what the sentinel rewrite supports."""

    def __init__(self, stages: list[str], line_cuts: bool = False) -> None:
        self._stages = stages
        self._line_cuts = line_cuts
        self._compiled: dict[str, list[Any]] = {}
        # stages run by the `regex` module use its (newer) Unicode property tables
        self._unicode_sensitive = any(_compile_stage(_sentinel_form(r, _SENTINELS[0]) or "").__class__ is not
                                      re.Pattern for r in stages)

    @classmethod
    def create(cls, pre: PreTokenizer) -> "FastSplitter | None":
        try:
            import regex
        except ImportError:  # pragma: no cover - regex is a declared dependency
            return None
        probe = _SENTINELS[0]
        for r in pre.regexes:
            form = _sentinel_form(r, probe)
            if form is None:
                return None
            try:
                if _compile_stage(form).groups != 1:
                    return None  # capturing groups would add items to split()'s output
            except regex.error:
                return None
        return cls(list(pre.regexes), pre.line_cuts)

    def _patterns(self, s: str) -> list[Any]:
        pats = self._compiled.get(s)
        if pats is None:
            pats = []
            for r in self._stages:
                form = _sentinel_form(r, s)
                assert form is not None
                pats.append(_compile_stage(form))
            self._compiled[s] = pats
        return pats

    def _may_disagree(self, text: str) -> set[str] | None:
        """The characters of text when the engines may disagree on some of them, else None."""
        if self._unicode_sensitive and max(text, default=" ") >= "\u088f":
            chars = set(text)
            if _engines_may_disagree(chars):
                return chars
        return None

    def split(self, text: str) -> list[str] | None:
        """The pieces, or None when the text holds characters whose properties the engines may disagree on."""
        if self._may_disagree(text) is not None:
            return None
        return self._split_unchecked(text)

    def _split_unchecked(self, text: str) -> list[str]:
        s = _SENTINELS[0]
        if s in text:
            s = next((c for c in _SENTINELS if c not in text), "")
            if not s:
                raise ValueError("text holds all 256 sentinel characters U+E000..U+E0FF")  # caller falls back
        pats = self._patterns(s)
        if len(pats) == 1:
            return [p for p in pats[0].split(text) if p]
        joined = text
        for pat in pats:
            joined = s.join(pat.split(joined))
        return [p for p in joined.split(s) if p]

    def split_segments(self, text: str) -> list[tuple[str, list[str] | None]]:
        """`text` as consecutive segments, each with its pieces, or None for a segment the caller must split with
        the reference engine (HF tokenizers). Without `line_cuts` a declined text is one None segment; with it,
        only the lines around the characters the engines may disagree on are (the text is cut between a newline
        and an ASCII letter, which never changes the pieces of such a pre-tokenizer)."""
        chars = self._may_disagree(text)
        if chars is None:
            return [(text, self._split_unchecked(text))]
        if not self._line_cuts:
            return [(text, None)]
        bad = re.compile("[" + "".join(re.escape(c) for c in _disagreeing(chars)) + "]")
        segs: list[tuple[str, list[str] | None]] = []
        pos = 0
        letters = _LETTERS
        for m in bad.finditer(text):
            x = m.start()
            if x < pos:
                continue  # inside the segment just declined
            j = text.rfind("\n", pos, x)
            while j >= 0 and text[j + 1] not in letters:
                j = text.rfind("\n", pos, j)
            a = j + 1 if j >= 0 else pos
            nxt = _LINE_CUT.search(text, x + 1)
            b = nxt.start() if nxt is not None else len(text)
            if a > pos:  # holds no disputed character
                part = text[pos:a]
                segs.append((part, self._split_unchecked(part)))
            segs.append((text[a:b], None))
            pos = b
        if pos < len(text):
            part = text[pos:]
            segs.append((part, self._split_unchecked(part)))
        return segs
