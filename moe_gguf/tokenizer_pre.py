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

import warnings
from dataclasses import dataclass

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


def _p(name: str, regexes: list[str], **kw: bool) -> PreTokenizer:
    return PreTokenizer(name, tuple(regexes), **kw)


_LLAMA3 = _p("llama3", [LLAMA3], ignore_merges=True, add_bos_default=True)
_GPT2 = _p("gpt-2", [GPT2])
_QWEN2 = _p("qwen2", [QWEN2], clean_spaces=False)
_STARCODER = _p("starcoder", [r"\p{N}", GPT2])

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _p("default", DEFAULT),
    **{n: _LLAMA3 for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    "dbrx": _p("dbrx", [LLAMA3]),
    "smaug-bpe": _p("smaug-bpe", [LLAMA3]),
    "deepseek-llm": _p("deepseek-llm", DEEPSEEK_LLM, clean_spaces=False),
    "deepseek-coder": _p("deepseek-coder", DEEPSEEK_CODER, clean_spaces=False),
    **{n: _p(n, DEEPSEEK_V3, clean_spaces=False) for n in ("deepseek-v3", "hunyuan-dense", "joyai-llm")},
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
    "stablelm2": _p("stablelm2", [QWEN2]),
    "qwen35": _p("qwen35", [QWEN35], clean_spaces=False),
    **{n: _p(n, PORO, clean_spaces=(n != "poro-chat")) for n in ("poro-chat", "bloom", "gpt3-finnish")},
    "viking": _p("viking", PORO + [r"\p{N}"], clean_spaces=False),
    **{n: _p(n, [LLAMA3]) for n in ("chatglm-bpe", "glm4")},
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
        return PreTokenizer(f"{name} (fallback: llama3)", (LLAMA3,))
    return pre
