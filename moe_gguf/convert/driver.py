"""Hugging Face checkpoint directory -> GGUF (`convert(model_dir, outfile, outtype)`).

Memory stays bounded: the checkpoint is memory-mapped, each output tensor is produced in row groups of ~8 MB
(read, converted to float32, encoded to the output type on a worker pool) and written as it is produced; the
output goes to a temporary name and is renamed only when complete, so any error (bad input found late, a full
disk, Ctrl-C) leaves no output file behind. Types follow moe_gguf.convert.mixes (llama-quantize's recipes for
the quantized outtypes, applied to the float32 weights directly).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ggml_types import GGMLType
from ..gguf import ValueType
from ..gguf_writer import GGUFWriter
from .hf import Checkpoint, ConvertError, load_config
from .mixes import ModelShape, get_mix, plan_types
from .stream import encode_chunks
from .tensor_map import ModelPlan, plan_model
from .tokenizer_meta import tokenizer_kv

__all__ = ["OUTTYPES", "ConvertResult", "convert", "ConvertError"]

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q4_k_s", "q5_k_s", "iq4_nl", "iq4_xs")


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    arch: str
    n_tensors: int
    n_params: int
    bytes_out: int
    seconds: float
    types: dict[str, str]


def _plan_types(plan: ModelPlan, outtype: str) -> dict[str, GGMLType]:
    shape = ModelShape(plan.arch, plan.n_layer, plan.n_expert, plan.n_head, plan.n_head_kv)
    infos = [(t.name, tuple(reversed(t.shape)), GGMLType.F32) for t in plan.tensors]
    return plan_types(outtype, infos, shape)


def convert(
    model_dir: str | os.PathLike[str],
    outfile: str | os.PathLike[str],
    outtype: str = "f16",
    *,
    n_threads: int | None = None,
    progress: bool = False,
    tokenizer: bool = True,
    name: str | None = None,
) -> ConvertResult:
    """Convert the HF checkpoint in `model_dir` to `outfile`. `tokenizer=False` writes no tokenizer metadata
    (the file can then not be used for text generation)."""
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}")
    mix = get_mix(outtype)
    t0 = time.perf_counter()
    d = Path(model_dir)
    cfg = load_config(d)
    ck = Checkpoint(d)
    try:
        plan = plan_model(cfg, ck)
        n_vocab = int(cfg["vocab_size"])
        tok = tokenizer_kv(d, cfg, n_vocab) if tokenizer else []
        if plan.arch == "gemma3" and ("tokenizer.ggml.model", "llama") in [(k, v) for k, v, _ in tok]:
            tok.append(("tokenizer.ggml.add_space_prefix", False, ValueType.BOOL))  # as llama.cpp writes Gemma 3
        types = _plan_types(plan, outtype)
        out = Path(outfile)
        if out.resolve().parent == d.resolve() and out.suffix != ".gguf":
            raise ConvertError(f"refusing to write {out} inside the model directory without a .gguf suffix")
        w = GGUFWriter(out)
        try:
            w.add("general.architecture", plan.arch, ValueType.STRING)
            w.add("general.name", name or d.resolve().name, ValueType.STRING)
            w.add("general.file_type", mix.ftype, ValueType.UINT32)
            if TYPE_QUANTIZED(mix.default):
                w.add("general.quantization_version", 2, ValueType.UINT32)
            for key, value, vtype in plan.kv:
                w.add(key, value, vtype)
            for key, value, vtype in tok:
                w.add(key, value, vtype)
            for t in plan.tensors:
                w.add_tensor_info(t.name, t.shape, int(types[t.name]))
            _write_all(w, plan, types, n_threads, progress)
            w.finish()
        except BaseException:
            w.abort()
            raise
    finally:
        ck.close()
    n_params = sum(t.n_rows * t.n_per_row for t in plan.tensors)
    return ConvertResult(out, plan.arch, len(plan.tensors), n_params, out.stat().st_size, time.perf_counter() - t0,
                         {k: v.name for k, v in types.items()})


def TYPE_QUANTIZED(t: GGMLType) -> bool:  # noqa: N802 - reads like the ggml macro
    return t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _write_all(w: GGUFWriter, plan: ModelPlan, types: dict[str, GGMLType], n_threads: int | None,
               progress: bool) -> None:
    if n_threads is None or n_threads <= 0:
        n_threads = os.cpu_count() or 1
    total = sum(t.n_rows * t.n_per_row for t in plan.tensors)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="w", unit_scale=True, dynamic_ncols=True)
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        for t in plan.tensors:
            new = types[t.name]
            if bar is not None:
                bar.set_description(f"{t.name} {new.name}"[:48], refresh=False)
            n = t.n_per_row

            def on_rows(k: int, n: int = n) -> None:
                if bar is not None:
                    bar.update(k * n)

            w.write_tensor_data(t.name, encode_chunks(t.n_rows, n, t.read, new, pool, 2 * n_threads, on_rows))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
