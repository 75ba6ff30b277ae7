"""`moe-gguf info`: a summary of a GGUF file (architecture, hyperparameters, tokenizer, tensors, totals per type).

Fast for any file: the file is opened with `lazy_arrays=True` (no array is decoded, numpy is never imported), so
the cost is Python start-up plus one pass over the header.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

from .gguf import VALUE_TYPE_NAMES, ArrayRef, GGUFFile, ValueType

SHORT_ARRAY = 32  # arrays up to this long are shown in full

# llama.cpp's `general.file_type` (enum llama_ftype) names
FILE_TYPES: dict[int, str] = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE",
}


def _type_str(spec: tuple[int, ...]) -> str:
    names = [VALUE_TYPE_NAMES.get(t, f"type{t}") for t in spec]
    return "[" * (len(names) - 1) + names[-1] + "]" * (len(names) - 1)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _short_f32(v: float) -> float:
    """The shortest decimal that reads back as the same float32 (1e-06 rather than 9.999999974752427e-07)."""
    for p in range(1, 10):
        s = float(f"{v:.{p}g}")
        if struct.unpack("<f", struct.pack("<f", s))[0] == v:
            return s
    return v  # nan


def _value(f: GGUFFile, key: str) -> Any:
    """A metadata value for display: scalars as they are, short arrays as lists, long ones as a summary dict."""
    v = f.metadata[key]
    spec = f.type_spec(key)
    if isinstance(v, ArrayRef):
        if v.count > SHORT_ARRAY:
            return {"array": _type_str(spec[1:]), "count": v.count}
        v = f.array(key, as_list=True)
        if spec == (ValueType.ARRAY, ValueType.FLOAT32):
            v = [_short_f32(x) for x in v]
    elif spec == (ValueType.FLOAT32,):
        v = _short_f32(v)
    return _jsonable(v)


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything `moe-gguf info` shows, as plain JSON-able data. Raises GGUFError for a bad file."""
    with GGUFFile(path, lazy_arrays=True) as f:
        md = f.metadata
        arch = f.architecture
        prefix = f"{arch}." if arch else None
        general = {k[len("general."):]: _value(f, k) for k in md if k.startswith("general.")}
        hparams = {k[len(prefix):]: _value(f, k) for k in md if prefix and k.startswith(prefix)}
        ft = md.get("general.file_type")
        if isinstance(ft, int) and not isinstance(ft, bool):
            general["file_type_name"] = FILE_TYPES.get(ft, f"unknown ({ft})")

        tok: dict[str, Any] = {}
        for k in ("model", "pre"):
            if f"tokenizer.ggml.{k}" in md:
                tok[k] = _value(f, f"tokenizer.ggml.{k}")
        for k, name in (("tokens", "vocab_size"), ("merges", "merges")):
            v = md.get(f"tokenizer.ggml.{k}")
            if v is not None:
                tok[name] = len(v)
        for k in md:
            if k.startswith("tokenizer.ggml.") and (k.endswith("_token_id") or k.startswith("tokenizer.ggml.add_")):
                tok[k[len("tokenizer.ggml."):]] = _value(f, k)
        templates = sorted(k for k in md if k == "tokenizer.chat_template" or k.startswith("tokenizer.chat_template."))
        tok["chat_template"] = bool(templates)
        if templates:
            tok["chat_templates"] = {k: len(md[k]) if isinstance(md[k], str) else None for k in templates}

        tensors = []
        totals: dict[str, dict[str, int]] = {}
        n_el_all = n_bytes_all = 0
        for t in f.tensors.values():
            n_el = t.n_elements
            tensors.append({"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.nbytes,
                            "offset": f.data_offset + t.offset})
            tot = totals.setdefault(t.type_name, {"tensors": 0, "elements": 0, "bytes": 0})
            tot["tensors"] += 1
            tot["elements"] += n_el
            tot["bytes"] += t.nbytes
            n_el_all += n_el
            n_bytes_all += t.nbytes
        metadata = {k: {"type": _type_str(f.type_spec(k)), "value": _value(f, k)} for k in md}
        split = {k[len("split."):]: _value(f, k) for k in md if k.startswith("split.")}
        return {
            "file": os.fspath(path),
            "file_bytes": f.size,
            "version": f.version,
            "alignment": f.alignment,
            "data_offset": f.data_offset,
            "architecture": arch,
            "name": md.get("general.name") if isinstance(md.get("general.name"), str) else None,
            "general": general,
            "hyperparameters": hparams,
            "tokenizer": tok,
            "split": split or None,
            "tensor_count": len(tensors),
            "parameters": n_el_all,
            "tensor_bytes": n_bytes_all,
            "bits_per_weight": 8 * n_bytes_all / n_el_all if n_el_all else None,
            "totals_by_type": dict(sorted(totals.items(), key=lambda kv: -kv[1]["bytes"])),
            "tensors": tensors,
            "metadata": metadata,
        }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _show(v: Any, width: int = 100) -> str:
    if isinstance(v, dict) and "array" in v:
        return f"[{v['array']} x {v['count']}]"
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def format_text(s: dict[str, Any], *, tensors: bool = True) -> str:
    """The human-readable report."""
    out: list[str] = []
    add = out.append
    add(f"file          {s['file']}")
    add(f"              GGUF v{s['version']}, {_human(s['file_bytes'])} ({s['file_bytes']} bytes), "
        f"{len(s['metadata'])} metadata keys, {s['tensor_count']} tensors, alignment {s['alignment']}")
    add(f"architecture  {s['architecture'] or '(none)'}")
    g = s["general"]
    if s["name"]:
        add(f"name          {s['name']}")
    if "file_type" in g:
        add(f"file type     {g.get('file_type_name')} ({g['file_type']})")
    other = {k: v for k, v in g.items() if k not in ("architecture", "name", "file_type", "file_type_name")}
    if other:
        add("general")
        w = max(len(k) for k in other)
        for k, v in other.items():
            add(f"  {k:<{w}}  {_show(v)}")
    if s["split"]:
        sp = s["split"]
        add(f"split         file {int(sp.get('no', 0)) + 1} of {sp.get('count', '?')}"
            + (f", {sp['tensors.count']} tensors in all" if "tensors.count" in sp else ""))
    if s["hyperparameters"]:
        add(f"hyperparameters ({s['architecture']}.*)")
        w = max(len(k) for k in s["hyperparameters"])
        for k, v in s["hyperparameters"].items():
            add(f"  {k:<{w}}  {_show(v)}")
    t = s["tokenizer"]
    if len(t) > 1 or t.get("chat_template"):
        parts = []
        for k in ("model", "pre"):
            if k in t:
                parts.append(f"{k} {t[k]}")
        if "vocab_size" in t:
            parts.append(f"{t['vocab_size']} tokens")
        if "merges" in t:
            parts.append(f"{t['merges']} merges")
        add("tokenizer     " + ", ".join(parts))
        ids = [f"{k[:-len('_token_id')]} {v}" for k, v in t.items() if k.endswith("_token_id")]
        if ids:
            add("  special ids " + ", ".join(ids))
        flags = [f"{k} {str(v).lower()}" for k, v in t.items() if k.startswith("add_")]
        if flags:
            add("  flags       " + ", ".join(flags))
        if t.get("chat_template"):
            add("  chat template: " + ", ".join(f"{k} ({n} chars)" for k, n in t["chat_templates"].items()))
        else:
            add("  chat template: none")
    shown = ("general.", "tokenizer.ggml.", "tokenizer.chat_template", "split.", f"{s['architecture']}.")
    others = [k for k in s["metadata"] if not k.startswith(shown)]
    if others:
        add(f"other keys    {', '.join(others[:8])}{', ...' if len(others) > 8 else ''} (values: --json)")
    if tensors and s["tensors"]:
        rows = [(x["name"], x["type"], "x".join(map(str, x["shape"])), f"{x['bytes']:,}") for x in s["tensors"]]
        w = [max(len(r[i]) for r in rows + [("name", "type", "shape", "bytes")]) for i in range(4)]
        add("tensors")
        add(f"  {'name':<{w[0]}}  {'type':<{w[1]}}  {'shape':<{w[2]}}  {'bytes':>{w[3]}}")
        for r in rows:
            add(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}")
    if s["totals_by_type"]:
        add("totals by type")
        for name, tot in s["totals_by_type"].items():
            bpw = 8 * tot["bytes"] / tot["elements"] if tot["elements"] else 0.0
            add(f"  {name:<8} {tot['tensors']:>6} tensors  {_count(tot['elements']):>9} params  "
                f"{_human(tot['bytes']):>12}  {bpw:6.3f} bits/weight")
        bpw = s["bits_per_weight"] or 0.0
        add(f"  {'total':<8} {s['tensor_count']:>6} tensors  {_count(s['parameters']):>9} params  "
            f"{_human(s['tensor_bytes']):>12}  {bpw:6.3f} bits/weight")
    else:
        add("tensors       none")
    return "\n".join(out)


def info(path: str | os.PathLike[str], *, as_json: bool = False, tensors: bool = True) -> str:
    """The `moe-gguf info` output for `path`. Raises GGUFError for a bad file."""
    s = summarize(path)
    if as_json:
        if not tensors:
            del s["tensors"]
        return json.dumps(s, indent=2, ensure_ascii=False)
    return format_text(s, tensors=tensors)


__all__ = ["summarize", "format_text", "info", "FILE_TYPES"]
