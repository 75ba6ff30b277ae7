"""tokenizer.json / tokenizer.model / tokenizer_config.json -> llama.cpp's `tokenizer.ggml.*` metadata.

* Byte-level BPE `tokenizer.json` -> `tokenizer.ggml.model = gpt2`: tokens by id (ids the tokenizer does not
  define, up to the model's vocab_size, become `[PAD{id}]` UNUSED entries), token types (added special tokens
  CONTROL, other added tokens USER_DEFINED, the rest NORMAL), merges as "a b" strings, and
  `tokenizer.ggml.pre` found by comparing the pre-tokenizer's split regexes (and the model's ignore_merges flag)
  with the regex sets moe_gguf.tokenizer_pre knows for each llama.cpp pre-tokenizer name.
* SentencePiece `tokenizer.model` (when there is no byte-level tokenizer.json) -> `tokenizer.ggml.model = llama`
  with pieces, scores and types (read with the `sentencepiece` package).
* Special token ids (bos/eos/unk/pad) from tokenizer_config.json (falling back to config.json's ids),
  add_bos/add_eos (tokenizer_config.json, else the tokenizer.json post-processor template), chat template(s)
  (tokenizer_config.json or chat_template.jinja).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..gguf import ValueType
from ..tokenizer_pre import GPT2, PRE_TOKENIZERS
from .hf import ConvertError, load_json

__all__ = ["tokenizer_kv", "detect_pre", "pre_regexes"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
U32, STR, BOOL = ValueType.UINT32, ValueType.STRING, ValueType.BOOL
ARR_STR = (ValueType.ARRAY, ValueType.STRING)
ARR_I32 = (ValueType.ARRAY, ValueType.INT32)
ARR_F32 = (ValueType.ARRAY, ValueType.FLOAT32)

# when several llama.cpp names share one regex set, the name written is the first of these that matches
_PREFERRED = ["llama-bpe", "deepseek-llm", "deepseek-coder", "deepseek-v3", "qwen2", "qwen35", "gpt-2", "starcoder",
              "falcon", "default", "smaug-bpe", "gpt-4o", "tekken", "seed-coder", "bailingmoe", "command-r",
              "stablelm2", "viking", "poro-chat", "chameleon"]


def pre_regexes(pre: Any) -> list[str]:
    """The split regexes of a tokenizer.json `pre_tokenizer`, in order."""
    if pre is None:
        return []
    if not isinstance(pre, dict):
        raise ConvertError("tokenizer.json: bad pre_tokenizer")
    kind = pre.get("type")
    if kind == "Sequence":
        return [r for p in pre.get("pretokenizers", []) for r in pre_regexes(p)]
    if kind == "Split":
        pat = pre.get("pattern") or {}
        if "Regex" in pat:
            return [pat["Regex"]]
        if "String" in pat:
            return [re.escape(pat["String"])]
        raise ConvertError("tokenizer.json: Split pre-tokenizer without a pattern")
    if kind == "ByteLevel":
        return [GPT2] if pre.get("use_regex", True) else []
    if kind == "Digits":
        return [r"\p{N}"] if pre.get("individual_digits") else [r"\p{N}+"]
    raise ConvertError(f"tokenizer.json: unsupported pre-tokenizer {kind!r} for a byte-level BPE vocabulary")


def detect_pre(tok: dict[str, Any]) -> str:
    regs = tuple(pre_regexes(tok.get("pre_tokenizer")))
    ignore_merges = bool((tok.get("model") or {}).get("ignore_merges", False))
    names = _PREFERRED + sorted(n for n in PRE_TOKENIZERS if n not in _PREFERRED)
    matches = [n for n in names if PRE_TOKENIZERS[n].regexes == regs]
    if not matches:
        raise ConvertError(
            "tokenizer.json: the pre-tokenizer's split rules match no pre-tokenizer llama.cpp knows; regexes: "
            + " | ".join(repr(r) for r in regs)
        )
    same_flag = [n for n in matches if PRE_TOKENIZERS[n].ignore_merges == ignore_merges]
    return (same_flag or matches)[0]


def _content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _special_ids(d: Path, cfg: dict[str, Any], tok_ids: dict[str, int], tcfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    gen = {}
    if (d / "generation_config.json").is_file():
        g = load_json(d / "generation_config.json", "generation_config.json")
        gen = g if isinstance(g, dict) else {}
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        tid = None
        name = _content(tcfg.get(f"{kind}_token"))
        if name is not None and name in tok_ids:
            tid = tok_ids[name]
        if tid is None:
            for src in (cfg, gen):
                v = src.get(f"{kind}_token_id")
                if isinstance(v, list) and v:
                    v = v[0]
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    tid = v
                    break
        if tid is not None:
            out.append((f"tokenizer.ggml.{key}", tid, U32))
    return out


def _post_adds(tok: dict[str, Any], token: str | None) -> bool | None:
    """Whether the tokenizer.json post-processor's single-sequence template puts `token` first (bos)."""
    pp = tok.get("post_processor")
    if not isinstance(pp, dict):
        return None
    procs = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if isinstance(p, dict) and p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            return bool(single) and "SpecialToken" in single[0] and single[0]["SpecialToken"].get("id") == token
    return False if procs else None


def _chat_templates(d: Path, tcfg: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    ct = tcfg.get("chat_template")
    if ct is None and (d / "chat_template.jinja").is_file():
        ct = (d / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(ct, str):
        return [("tokenizer.chat_template", ct, STR)]
    out = []
    if isinstance(ct, list):
        for item in ct:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                name = item.get("name", "default")
                key = "tokenizer.chat_template" if name == "default" else f"tokenizer.chat_template.{name}"
                out.append((key, item["template"], STR))
    return out


def _is_byte_level(tok: dict[str, Any]) -> bool:
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        return False
    dec = tok.get("decoder") or {}
    decs = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
    return any(isinstance(x, dict) and x.get("type") == "ByteLevel" for x in decs)


def tokenizer_kv(model_dir: str | Path, cfg: dict[str, Any], n_vocab: int) -> list[tuple[str, Any, Any]]:
    d = Path(model_dir)
    tcfg: dict[str, Any] = {}
    if (d / "tokenizer_config.json").is_file():
        t = load_json(d / "tokenizer_config.json", "tokenizer_config.json")
        tcfg = t if isinstance(t, dict) else {}
    tok = None
    if (d / "tokenizer.json").is_file():
        tok = load_json(d / "tokenizer.json", "tokenizer.json")
        if not isinstance(tok, dict):
            raise ConvertError(f"{d / 'tokenizer.json'}: expected a JSON object")
    if tok is not None and _is_byte_level(tok):
        kv, ids = _bpe(tok, n_vocab)
    elif (d / "tokenizer.model").is_file():
        kv, ids = _spm(d, n_vocab)
    elif tok is not None:
        raise ConvertError("tokenizer.json is not a byte-level BPE tokenizer and there is no tokenizer.model")
    else:
        raise ConvertError(f"no tokenizer found in {d} (tokenizer.json or tokenizer.model)")
    kv += _special_ids(d, cfg, ids, tcfg)
    for kind in ("bos", "eos"):
        flag = tcfg.get(f"add_{kind}_token")
        if not isinstance(flag, bool) and tok is not None and kind == "bos":
            flag = _post_adds(tok, _content(tcfg.get("bos_token")))
        if isinstance(flag, bool):
            kv.append((f"tokenizer.ggml.add_{kind}_token", flag, BOOL))
    kv += _chat_templates(d, tcfg)
    return kv


def _bpe(tok: dict[str, Any], n_vocab: int) -> tuple[list[tuple[str, Any, Any]], dict[str, int]]:
    model = tok["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ConvertError("tokenizer.json: model.vocab missing")
    ids: dict[str, int] = dict(vocab)
    added: dict[int, dict[str, Any]] = {}
    for a in tok.get("added_tokens") or []:
        ids[a["content"]] = int(a["id"])
        added[int(a["id"])] = a
    rev = {i: t for t, i in ids.items()}
    top = max(rev) if rev else -1
    if top >= n_vocab:
        raise ConvertError(f"tokenizer has token id {top} but the model's vocab_size is {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        t = rev.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(t)
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(t)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    kv = [
        ("tokenizer.ggml.model", "gpt2", STR),
        ("tokenizer.ggml.pre", detect_pre(tok), STR),
        ("tokenizer.ggml.tokens", tokens, ARR_STR),
        ("tokenizer.ggml.token_type", types, ARR_I32),
        ("tokenizer.ggml.merges", merges, ARR_STR),
    ]
    return kv, ids


def _spm(d: Path, n_vocab: int) -> tuple[list[tuple[str, Any, Any]], dict[str, int]]:
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConvertError("reading tokenizer.model needs the 'sentencepiece' package (pip install sentencepiece)") from None
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    n = sp.vocab_size()
    if n > n_vocab:
        raise ConvertError(f"tokenizer.model has {n} pieces but the model's vocab_size is {n_vocab}")
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                     else BYTE if sp.is_byte(i) else NORMAL)
    ids = {t: i for i, t in enumerate(tokens)}
    if (d / "added_tokens.json").is_file():
        extra = load_json(d / "added_tokens.json", "added_tokens.json")
        for t, i in sorted(extra.items(), key=lambda kv: kv[1]) if isinstance(extra, dict) else []:
            if i == len(tokens) and i < n_vocab:
                tokens.append(t)
                scores.append(-1000.0)
                types.append(USER_DEFINED)
                ids[t] = i
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    kv = [
        ("tokenizer.ggml.model", "llama", STR),
        ("tokenizer.ggml.tokens", tokens, ARR_STR),
        ("tokenizer.ggml.scores", scores, ARR_F32),
        ("tokenizer.ggml.token_type", types, ARR_I32),
    ]
    return kv, ids
