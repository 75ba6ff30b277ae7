"""Which ggml type each tensor gets for a given output type (llama-quantize's recipes).

The rules follow llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the file types offered here:

* only tensors with >= 2 dims whose name ends in ``weight`` are quantized; norms (``*_norm.weight``), expert routers
  (``ffn_gate_inp.weight``) and a few tiny special tensors keep their source type;
* ``output.weight`` (or ``token_embd.weight`` when the embeddings are tied, i.e. there is no ``output.weight``)
  gets Q6_K (Q8_0 if its rows are not a multiple of 256, or if the mix is Q8_0);
* attention-V-like tensors (``attn_v``, fused ``attn_qkv`` and MLA's unsplit ``attn_kv_b``; *not* the split
  ``attn_k_b``/``attn_v_b``) and ``ffn_down`` get Q6_K in the "use_more_bits" layers for the _M mixes; 8-expert
  models (Mixtral) get Q8_0 attn_v/attn_k and Q5_K attn_output in the K mixes;
* finally rows whose length is not a multiple of the block size fall back (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0,
  IQ4_XS->IQ4_NL, else F16), exactly as llama-quantize does.

Plain ``q4_k``/``q5_k`` are llama-quantize's ``--pure`` Q4_K_S/Q5_K_S: every quantizable tensor at that type
(with the row-length fallback only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

from ..ggml_types import TYPE_INFO, GGMLType
from ..ops.quants import fallback_type

__all__ = ["Mix", "MIXES", "ModelShape", "get_mix", "allows_quantization", "plan_types", "use_more_bits"]


@dataclass(frozen=True)
class Mix:
    name: str
    ftype: int  # llama_ftype, written as general.file_type
    default: GGMLType
    pure: bool = False


# llama_ftype ids (llama.h): ALL_F32=0, MOSTLY_F16=1, Q4_0=2, Q8_0=7, Q4_K_S=14, Q4_K_M=15, Q5_K_S=16,
# Q5_K_M=17, Q6_K=18, IQ4_NL=25, IQ4_XS=30, BF16=32
MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("f32", 0, GGMLType.F32),
        Mix("f16", 1, GGMLType.F16),
        Mix("bf16", 32, GGMLType.BF16),
        Mix("q8_0", 7, GGMLType.Q8_0),
        Mix("q4_0", 2, GGMLType.Q4_0),
        Mix("q4_k_s", 14, GGMLType.Q4_K),
        Mix("q4_k_m", 15, GGMLType.Q4_K),
        Mix("q5_k_s", 16, GGMLType.Q5_K),
        Mix("q5_k_m", 17, GGMLType.Q5_K),
        Mix("q6_k", 18, GGMLType.Q6_K),
        Mix("iq4_nl", 25, GGMLType.IQ4_NL),
        Mix("iq4_xs", 30, GGMLType.IQ4_XS),
        Mix("q4_k", 14, GGMLType.Q4_K, pure=True),
        Mix("q5_k", 16, GGMLType.Q5_K, pure=True),
    )
}


def get_mix(name: str) -> Mix:
    m = MIXES.get(name.lower())
    if m is None:
        raise ValueError(f"unknown type {name!r}; choose one of: {', '.join(MIXES)}")
    return m


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters the recipe looks at."""

    arch: str
    n_layer: int
    n_expert: int = 0
    n_head: int = 1
    n_head_kv: int = 1

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv > 0 else 0


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's layers that get more bits in the _M mixes (C integer division; the operands are >= 0)."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or _c_mod(i_layer - n_layer // 8, 3) == 2


def _c_mod(a: int, b: int) -> int:  # C's % (truncates towards zero)
    r = abs(a) % b
    return -r if a < 0 else r


_NO_QUANT_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
    "shortconv.conv.weight", "attn_rel_b.weight", "time_mix_", ".position_embd", ".patch_embd",
)


def allows_quantization(name: str, ne: Sequence[int]) -> bool:
    """Whether llama-quantize would change this tensor's type at all."""
    if len(ne) < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(p in name for p in _NO_QUANT_PARTS)


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                      ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                      ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                      ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def fallback(t: GGMLType, ncols: int) -> GGMLType:
    """llama-quantize's tensor_type_fallback for rows of `ncols` elements (one rule, in ops.quants)."""
    if ncols % TYPE_INFO[t].block_size == 0:
        return t
    return fallback_type(t, ncols)


_LAYER = re.compile(r"blk\.(\d+)\.")


def plan_types(
    mix: Mix | str, tensors: Iterable[tuple[str, Sequence[int], int]], model: ModelShape
) -> dict[str, GGMLType]:
    """The output type of every tensor. `tensors`: (name, ne (ggml order: ne[0] = row length), source type) in
    file order (the attn_v counter, like llama.cpp's, follows file order)."""
    if isinstance(mix, str):
        mix = get_mix(mix)
    tensors = list(tensors)
    names = {n for n, _, _ in tensors}
    tied = "output.weight" not in names
    n_attn_v = sum(1 for n, _, _ in tensors if _category(n) == "attn_v")
    counters = {"attn_v": 0, "ffn_down": 0}
    out: dict[str, GGMLType] = {}
    for name, ne, src in tensors:
        ne = tuple(int(x) for x in ne)
        if not allows_quantization(name, ne):
            out[name] = GGMLType(int(src))
            continue
        t = mix.default
        if TYPE_INFO[t].block_size > 1:  # ggml_is_quantized
            if not mix.pure:
                t = _recipe(mix, name, ne, t, model, tied, counters, n_attn_v)
            t = fallback(t, ne[0])
        out[name] = t
    return out


def _layer_of(name: str, counter: int, model: ModelShape) -> int:
    if model.n_expert <= 1:
        return counter
    m = _LAYER.match(name)
    if m is None:
        raise ValueError(f"cannot find the layer of tensor {name!r}")
    il = int(m.group(1))
    if not 0 <= il < model.n_layer:
        raise ValueError(f"bad layer {il} for tensor {name!r}: must be in [0, {model.n_layer})")
    return il


def _recipe(mix: Mix, name: str, ne: tuple[int, ...], t: GGMLType, model: ModelShape, tied: bool,
            counters: dict[str, int], n_attn_v: int) -> GGMLType:
    f = mix.name
    cat = _category(name)
    Q = GGMLType
    if cat == "output" or (tied and cat == "token_embd"):
        if ne[0] % TYPE_INFO[t].block_size != 0:
            return Q.Q8_0
        return t if t == Q.Q8_0 else Q.Q6_K
    if cat == "token_embd":
        return t
    if cat == "attn_v":
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if f in ("iq4_nl", "iq4_xs") and model.n_gqa >= 4:
            t = Q.Q5_K
        elif f in ("q4_k_m", "q5_k_m") and use_more_bits(i, n_attn_v):
            t = Q.Q6_K
        elif f == "q4_k_s" and i < 4:
            t = Q.Q5_K
        if model.arch == "llama" and model.n_layer == 80 and t == Q.Q4_K:  # LLM_TYPE_70B
            t = Q.Q5_K
        if model.n_expert == 8:
            t = Q.Q8_0
        return t
    if cat == "attn_k":
        return Q.Q8_0 if model.n_expert == 8 else t
    if cat == "ffn_down":
        il = _layer_of(name, counters["ffn_down"], model)
        counters["ffn_down"] += 1
        n = model.n_layer
        if f == "q4_k_m":
            if model.arch == "falcon":
                return Q.Q6_K if il < n // 16 else Q.Q5_K if use_more_bits(il, n) else Q.Q4_K
            return Q.Q6_K if use_more_bits(il, n) else t
        if il < n // 8 and f in ("iq4_nl", "iq4_xs"):  # (no imatrix here)
            return Q.Q5_K
        if f == "q5_k_m" and use_more_bits(il, n):
            return Q.Q6_K
        if f == "q4_k_s" and model.arch != "falcon" and il < n // 8:
            return Q.Q5_K
        return t
    if cat == "attn_output":
        if model.arch != "falcon" and model.n_expert == 8 and f in ("iq4_nl", "q4_k_s", "q4_k_m", "iq4_xs"):
            return Q.Q5_K
        return t
    return t
