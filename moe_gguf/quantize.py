"""GGUF -> GGUF quantization (`moe-gguf quantize IN OUT TYPE`), with llama-quantize's per-tensor recipes.

Tensors are streamed one at a time in row groups of ~8 MB (read from the input's mmap, decoded to float32 and
re-encoded on a pool of worker threads), so memory stays at a few row groups whatever the model size. The
output is written under a temporary name and renamed when complete: an error or Ctrl-C leaves no file.
Inputs: F32 / F16 / BF16 / Q8_0 tensors (already-quantized 4-6 bit inputs are refused: re-quantizing them
would compound the errors). Tensors the recipe leaves alone (norms, routers, 1-D) are copied byte for byte.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .convert.mixes import ModelShape, get_mix, plan_types
from .convert.stream import CHUNK_ELEMS, encode_chunks, pread_array, to_f32
from .ggml_types import GGMLType
from .gguf import GGUFError, GGUFFile, ValueType
from .gguf_writer import GGUFWriter

__all__ = ["QuantizeResult", "quantize_file", "model_shape", "QUANT_SOURCES"]

QUANT_SOURCES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0})
GGML_QNT_VERSION = 2


@dataclass(frozen=True)
class QuantizeResult:
    path: str
    seconds: float
    bytes_in: int
    bytes_out: int
    types: dict[str, str]  # tensor name -> output type name

    @property
    def gb_per_s(self) -> float:
        """Input bytes processed per second (GB = 1e9 bytes)."""
        return self.bytes_in / 1e9 / self.seconds if self.seconds > 0 else float("inf")


def _first_int(v: Any, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = [int(x) for x in v]
        return max(vals) if vals else default
    return int(v)


def model_shape(f: GGUFFile) -> ModelShape:
    """The hyperparameters the recipes look at, from a GGUF file's metadata."""
    md = f.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError("general.architecture is missing")
    n_layer = md.get(f"{arch}.block_count")
    if n_layer is None:
        raise GGUFError(f"{arch}.block_count is missing")
    n_head = _first_int(md.get(f"{arch}.attention.head_count"), 1)
    return ModelShape(
        arch=arch,
        n_layer=int(n_layer),
        n_expert=_first_int(md.get(f"{arch}.expert_count"), 0),
        n_head=n_head,
        n_head_kv=_first_int(md.get(f"{arch}.attention.head_count_kv"), n_head),
    )


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True, leave=True)


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str,
    *,
    n_threads: int | None = None,
    progress: bool = False,
    allow_requantize: bool = False,
) -> QuantizeResult:
    """Quantize `src` to `dst` with the mix `qtype` (see moe_gguf.convert.mixes.MIXES).  Tensors are re-encoded
    from F32/F16/BF16/Q8_0; with `allow_requantize` (llama-quantize's --allow-requantize) from any type, through
    its dequantized values (which compounds the two formats' rounding)."""
    mix = get_mix(qtype)
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"input file not found: {src}")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError("the output file must differ from the input file")
    if n_threads is None or n_threads <= 0:
        n_threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    with GGUFFile(src) as f:
        if int(_first_int(f.metadata.get("split.count"), 1)) > 1:
            raise ValueError(f"{src} is one part of a split model; merge it first (llama-gguf-split --merge)")
        shape = model_shape(f)
        infos = list(f.tensors.values())
        types = plan_types(mix, ((t.name, t.ne, t.ggml_type) for t in infos), shape)
        for t in infos:
            new = types[t.name]
            if new != t.ggml_type and GGMLType(t.ggml_type) not in QUANT_SOURCES and not allow_requantize:
                raise ValueError(
                    f"{src} is already quantized ({t.name} is {GGMLType(t.ggml_type).name}); "
                    "quantize from an F32, F16, BF16 or Q8_0 file, or pass --allow-requantize"
                )
        bytes_in = sum(t.nbytes for t in infos)
        w = GGUFWriter(dst)
        try:
            for key, value in f.metadata.items():
                if key in ("general.file_type", "general.quantization_version"):
                    continue
                w.add(key, value, f.type_spec(key))
            w.add("general.quantization_version", GGML_QNT_VERSION, ValueType.UINT32)
            w.add("general.file_type", mix.ftype, ValueType.UINT32)
            for t in infos:
                w.add_tensor_info(t.name, t.shape, int(types[t.name]))
            bar = _progress(bytes_in, progress)
            pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
            fd = os.open(src, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                for t in infos:
                    _write_one(w, f, fd, t, types[t.name], pool, n_threads, bar)
            finally:
                os.close(fd)
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
                if bar is not None:
                    bar.close()
            w.finish()
        except BaseException:
            w.abort()
            raise
    dt = time.perf_counter() - t0
    return QuantizeResult(dst, dt, bytes_in, os.path.getsize(dst), {k: v.name for k, v in types.items()})


def _write_one(w: GGUFWriter, f: GGUFFile, fd: int, t: Any, new: GGMLType, pool: ThreadPoolExecutor | None,
               n_threads: int, bar: Any) -> None:
    src = GGMLType(t.ggml_type)
    if bar is not None:
        bar.set_description(f"{t.name} {src.name}->{new.name}"[:48], refresh=False)
    n_per_row = int(t.ne[0])
    n_rows = t.n_elements // n_per_row if n_per_row else 0
    row_bytes = t.nbytes // n_rows if n_rows else 0
    base = f.data_offset + t.offset
    dtype = {GGMLType.F32: "<f4", GGMLType.F16: "<f2", GGMLType.BF16: "<u2"}.get(src, "u1")

    def read(r0: int, r1: int) -> np.ndarray:  # raw rows, pread (nothing of the input stays mapped)
        return pread_array(fd, base + r0 * row_bytes, (r1 - r0) * row_bytes, dtype, t.name)

    def on_rows(k: int) -> None:
        if bar is not None:
            bar.update(k * row_bytes)

    if new == src:  # copied as is, in ~8 MB pieces
        step = max(1, CHUNK_ELEMS * 4 // max(1, row_bytes))

        def copy() -> Any:
            for r0 in range(0, n_rows, step):
                r1 = min(n_rows, r0 + step)
                yield read(r0, r1).view(np.uint8)
                on_rows(r1 - r0)

        w.write_tensor_data(t.name, copy())
        return
    w.write_tensor_data(t.name, encode_chunks(n_rows, n_per_row, lambda r0, r1: to_f32(read(r0, r1), src, n_per_row),
                                              new, pool, 2 * n_threads, on_rows))
