"""Lazy reading of a Hugging Face checkpoint directory: config.json, generation_config.json and safetensors.

Safetensors files (a single `model.safetensors`, or shards listed by `model.safetensors.index.json`) are parsed
here (8-byte header length, JSON header, raw little-endian data); `Checkpoint.read_rows(name, r0, r1)` reads just
those rows with pread (F32 / F16 typed, BF16 as uint16 bits), so nothing is read from disk until a row group of a
tensor is converted and nothing stays mapped. Every offset is checked against the file size when the header is read.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..ggml_types import GGMLType
from .stream import pread_array

__all__ = ["ConvertError", "Checkpoint", "STTensor", "load_json", "load_config"]


class ConvertError(ValueError):
    """A problem with the input checkpoint (missing/invalid files, keys, dtypes or shapes)."""


# safetensors dtype -> (numpy dtype of the view, the ggml type of the data)
_DTYPES: dict[str, tuple[str, GGMLType]] = {
    "F32": ("<f4", GGMLType.F32),
    "F16": ("<f2", GGMLType.F16),
    "BF16": ("<u2", GGMLType.BF16),
}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class STTensor:
    name: str
    file: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def ggml_type(self) -> GGMLType:
        return _DTYPES[self.dtype][1]


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: invalid JSON ({e})") from None


def load_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    d = Path(model_dir)
    if not d.is_dir():
        raise ConvertError(f"model directory not found: {d}")
    cfg = load_json(d / "config.json", "config.json")
    if not isinstance(cfg, dict):
        raise ConvertError(f"{d / 'config.json'}: expected a JSON object")
    return cfg


def _parse_header(path: str) -> tuple[dict[str, STTensor], int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ConvertError(f"{path}: not a safetensors file (header length {n})")
        try:
            hdr = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: bad safetensors header ({e})") from None
    if not isinstance(hdr, dict):
        raise ConvertError(f"{path}: bad safetensors header")
    base = 8 + n
    out: dict[str, STTensor] = {}
    for name, v in hdr.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (s, e) = v["dtype"], tuple(int(x) for x in v["shape"]), v["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path}: bad header entry for {name!r}") from None
        if dtype not in _DTYPES:
            raise ConvertError(
                f"{path}: tensor {name!r} has dtype {dtype}; supported: {', '.join(_DTYPES)} "
                "(quantized/FP8 checkpoints must be dequantized first)"
            )
        itemsize = np.dtype(_DTYPES[dtype][0]).itemsize
        if any(d < 0 for d in shape) or not (0 <= s <= e) or e - s != math.prod(shape) * itemsize or base + e > size:
            raise ConvertError(f"{path}: tensor {name!r} has inconsistent offsets/shape {shape}")
        out[name] = STTensor(name, path, dtype, shape, base + s, base + e)
    return out, size


class Checkpoint:
    """All tensors of a checkpoint directory, lazily mapped."""

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        d = Path(model_dir)
        index = d / "model.safetensors.index.json"
        files: list[str]
        if index.is_file():
            idx = load_json(index, "safetensors index")
            wm = idx.get("weight_map") if isinstance(idx, dict) else None
            if not isinstance(wm, dict) or not wm:
                raise ConvertError(f"{index}: no weight_map")
            files = sorted(set(wm.values()))
        elif (d / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in d.glob("*.safetensors"))
            if not files:
                if any(d.glob("*.bin")) or any(d.glob("*.pt")):
                    raise ConvertError(f"{d}: only PyTorch .bin/.pt weights found; save the model as safetensors "
                                       "(model.save_pretrained(dir, safe_serialization=True))")
                raise ConvertError(f"{d}: no model.safetensors or model.safetensors.index.json")
        self.tensors: dict[str, STTensor] = {}
        self._fds: dict[str, int] = {}
        for fn in files:
            p = d / fn
            if not p.is_file():
                raise ConvertError(f"shard listed in the index is missing: {p}")
            hdr, _ = _parse_header(str(p))
            for k, t in hdr.items():
                if k in self.tensors:
                    raise ConvertError(f"tensor {k!r} appears in two shards")
                self.tensors[k] = t

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a tensor viewed as 2-D (rows, last dim), read with pread into a fresh array: only
        those bytes are read and nothing stays mapped, so resident memory does not grow with the model size."""
        t = self.tensors.get(name)
        if t is None:
            raise ConvertError(f"tensor {name!r} not found in the checkpoint")
        n = t.shape[-1] if t.shape else 1
        rows = math.prod(t.shape[:-1]) if len(t.shape) > 1 else 1
        if not 0 <= r0 <= r1 <= rows:
            raise ValueError(f"rows [{r0}, {r1}) out of range for {name!r} ({rows} rows)")
        dt = np.dtype(_DTYPES[t.dtype][0])
        want = (r1 - r0) * n * dt.itemsize
        fd = self._fds.get(t.file)
        if fd is None:
            fd = os.open(t.file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fds[t.file] = fd
        try:
            a = pread_array(fd, t.start + r0 * n * dt.itemsize, want, dt, repr(name))
        except EOFError as e:
            raise ConvertError(f"{t.file}: {e}") from None
        return a.reshape(r1 - r0, n)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
