"""Per-architecture mapping from a Hugging Face checkpoint to llama.cpp's GGUF tensor names, shapes and keys.

Each architecture gives a `ModelPlan`: the GGUF architecture name, the metadata keys (typed) and the ordered
list of output tensors. An output tensor is a lazy row source: `read(r0, r1)` returns rows [r0, r1) of the tensor
(numpy order, last axis = row) as float32, reading only those rows from the safetensors files. Experts
stored one tensor per expert are stacked into one 3-D tensor (E, rows, cols) by reading each expert's rows in
turn; fused HF expert tensors (`experts.gate_up_proj`) are split by rows. Every HF tensor's shape is checked
against the config before anything is written, and every checkpoint tensor must be used (or be a known
ignorable buffer), so a config/weights mismatch is an error rather than a wrong file.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ggml_types import GGMLType
from ..gguf import ValueType
from .hf import Checkpoint, ConvertError
from .stream import to_f32

__all__ = ["OutTensor", "ModelPlan", "SUPPORTED", "plan_model"]


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    parts: list[tuple[int, Callable[[int, int], np.ndarray]]]  # (rows, read(lo, hi) -> 2-D rows), concatenated
    src_type: GGMLType = GGMLType.F32

    @property
    def n_per_row(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    def read(self, r0: int, r1: int) -> np.ndarray:
        out: list[np.ndarray] = []
        base = 0
        for n, rows in self.parts:
            lo, hi = max(r0, base), min(r1, base + n)
            if lo < hi:
                out.append(_f32(rows(lo - base, hi - base), self.n_per_row))
            base += n
            if base >= r1:
                break
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)


def _f32(a: np.ndarray, n: int) -> np.ndarray:
    if a.dtype == np.float32:
        return np.ascontiguousarray(a).reshape(-1, n)
    if a.dtype == np.float16:
        return to_f32(a, GGMLType.F16, n)
    if a.dtype == np.uint16:
        return to_f32(a, GGMLType.BF16, n)
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1, n)


@dataclass
class ModelPlan:
    arch: str
    kv: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, value, ValueType spec or None)
    tensors: list[OutTensor] = field(default_factory=list)
    n_layer: int = 0
    n_expert: int = 0
    n_head: int = 1
    n_head_kv: int = 1

    def add(self, key: str, value: Any, vtype: Any = None) -> None:
        self.kv.append((key.replace("{arch}", self.arch), value, vtype))


U32, F32, BOOL, STR = ValueType.UINT32, ValueType.FLOAT32, ValueType.BOOL, ValueType.STRING


class _Src:
    """The checkpoint plus bookkeeping of which tensors were used and shape checks."""

    def __init__(self, ck: Checkpoint) -> None:
        self.ck = ck
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.ck

    def check(self, name: str, shape: Sequence[int]) -> None:
        t = self.ck.tensors.get(name)
        if t is None:
            raise ConvertError(f"tensor {name!r} is missing from the checkpoint")
        if tuple(t.shape) != tuple(shape):
            raise ConvertError(f"tensor {name!r} has shape {list(t.shape)}, the config implies {list(shape)}")
        self.used.add(name)

    def get(self, name: str, shape: Sequence[int]) -> Callable[[], np.ndarray]:
        """The whole tensor (for the small tensors that are transformed as a whole)."""
        self.check(name, shape)
        ck, rows = self.ck, math.prod(shape[:-1]) if len(shape) > 1 else 1
        return lambda: ck.read_rows(name, 0, rows).reshape(shape)

    def src_type(self, name: str) -> GGMLType:
        return self.ck.tensors[name].ggml_type

    def rows(self, name: str, shape: Sequence[int], first: int = 0, count: int | None = None
             ) -> tuple[int, Callable[[int, int], np.ndarray]]:
        """Rows [first, first + count) of a tensor (viewed as 2-D) as a part: (count, read(lo, hi))."""
        self.check(name, shape)
        n_rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        count = n_rows - first if count is None else count
        ck = self.ck
        return count, lambda lo, hi: ck.read_rows(name, first + lo, first + hi)


def _direct(src: _Src, out: str, hf: str, shape: Sequence[int]) -> OutTensor:
    return OutTensor(out, tuple(shape), [src.rows(hf, shape)], src.src_type(hf) if src.has(hf) else GGMLType.F32)


def _stack(src: _Src, out: str, names: list[str], shape: Sequence[int]) -> OutTensor:
    parts = [src.rows(n, shape) for n in names]
    return OutTensor(out, (len(names), *shape), parts, src.src_type(names[0]))


def _computed(out: str, shape: Sequence[int], fn: Callable[[], np.ndarray]) -> OutTensor:
    n = shape[-1]
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return OutTensor(out, tuple(shape), [(rows, lambda lo, hi: np.ascontiguousarray(fn(), np.float32).reshape(-1, n)[lo:hi])])


def _req(cfg: dict[str, Any], key: str, *alts: str) -> Any:
    for k in (key, *alts):
        if cfg.get(k) is not None:
            return cfg[k]
    raise ConvertError(f"config.json has no {key!r}" + (f" (nor {', '.join(repr(a) for a in alts)})" if alts else ""))


def _int(cfg: dict[str, Any], key: str, *alts: str, default: Any = ...) -> int:
    try:
        v = _req(cfg, key, *alts)
    except ConvertError:
        if default is ...:
            raise
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConvertError(f"config.json: {key} must be a non-negative integer, got {v!r}")
    return v


def _float(cfg: dict[str, Any], key: str, default: Any = ...) -> float:
    v = cfg.get(key)
    if v is None:
        if default is ...:
            raise ConvertError(f"config.json has no {key!r}")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConvertError(f"config.json: {key} must be a number, got {v!r}")
    return float(v)


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 `rope_parameters`, or the older top-level rope_theta + `rope_scaling`."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and rp:
        out = dict(rp)
    else:
        out = dict(cfg.get("rope_scaling") or {})
        if cfg.get("rope_theta") is not None:
            out["rope_theta"] = cfg["rope_theta"]
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out["type"]
    return out


def _common_kv(p: ModelPlan, cfg: dict[str, Any], n_vocab: int) -> None:
    p.add("{arch}.context_length", _int(cfg, "max_position_embeddings"), U32)
    p.add("{arch}.embedding_length", _int(cfg, "hidden_size"), U32)
    p.add("{arch}.block_count", p.n_layer, U32)
    p.add("{arch}.attention.head_count", p.n_head, U32)
    p.add("{arch}.attention.head_count_kv", p.n_head_kv, U32)
    p.add("{arch}.vocab_size", n_vocab, U32)


def _rope_kv(p: ModelPlan, cfg: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    rp = _rope_params(cfg)
    p.add("{arch}.rope.freq_base", float(rp.get("rope_theta", default_theta)), F32)
    rtype = rp.get("rope_type", "default")
    if rtype == "yarn":
        p.add("{arch}.rope.scaling.type", "yarn", STR)
        p.add("{arch}.rope.scaling.factor", float(_req(rp, "factor")), F32)
        p.add("{arch}.rope.scaling.original_context_length", int(_req(rp, "original_max_position_embeddings")), U32)
        for k in ("beta_fast", "beta_slow"):
            if rp.get(k) is not None:
                p.add(f"{{arch}}.rope.scaling.yarn_{k}", float(rp[k]), F32)
    elif rtype == "linear":
        p.add("{arch}.rope.scaling.type", "linear", STR)
        p.add("{arch}.rope.scaling.factor", float(_req(rp, "factor")), F32)
    elif rtype not in ("default", "llama3", None):
        raise ConvertError(f"unsupported rope scaling type {rtype!r}")
    return rp


# ---------------------------------------------------------------------------------------------- deepseek2
def _deepseek2(cfg: dict[str, Any], ck: Checkpoint) -> ModelPlan:
    s = _Src(ck)
    n_layer = _int(cfg, "num_hidden_layers")
    D = _int(cfg, "hidden_size")
    H = _int(cfg, "num_attention_heads")
    NP, R, V = _int(cfg, "qk_nope_head_dim"), _int(cfg, "qk_rope_head_dim"), _int(cfg, "v_head_dim")
    C = _int(cfg, "kv_lora_rank")
    QL = cfg.get("q_lora_rank")
    QL = None if QL in (None, 0) else _int(cfg, "q_lora_rank")
    n_vocab = _int(cfg, "vocab_size")
    n_exp = _int(cfg, "n_routed_experts", default=0)
    F, FE = _int(cfg, "intermediate_size"), _int(cfg, "moe_intermediate_size", default=0)
    n_shared = _int(cfg, "n_shared_experts", default=0)
    first_dense = _int(cfg, "first_k_dense_replace", default=0)
    freq = _int(cfg, "moe_layer_freq", default=1) or 1
    v3 = cfg.get("model_type") == "deepseek_v3"
    p = ModelPlan("deepseek2", n_layer=n_layer, n_expert=n_exp, n_head=H, n_head_kv=1)
    _common_kv(p, cfg, n_vocab)
    p.add("{arch}.feed_forward_length", F, U32)
    p.add("{arch}.attention.layer_norm_rms_epsilon", _float(cfg, "rms_norm_eps", 1e-6), F32)
    p.add("{arch}.rope.dimension_count", R, U32)
    # always written (0 = no q compression): llama.cpp requires the key unless the layer count says "Lite"
    p.add("{arch}.attention.q_lora_rank", QL or 0, U32)
    p.add("{arch}.attention.kv_lora_rank", C, U32)
    p.add("{arch}.attention.key_length", C + R, U32)
    p.add("{arch}.attention.value_length", C, U32)
    p.add("{arch}.attention.key_length_mla", NP + R, U32)
    p.add("{arch}.attention.value_length_mla", V, U32)
    p.add("{arch}.leading_dense_block_count", first_dense, U32)
    if n_exp:
        p.add("{arch}.expert_count", n_exp, U32)
        p.add("{arch}.expert_used_count", _int(cfg, "num_experts_per_tok"), U32)
        p.add("{arch}.expert_shared_count", n_shared, U32)
        p.add("{arch}.expert_feed_forward_length", FE, U32)
        p.add("{arch}.expert_weights_scale", _float(cfg, "routed_scaling_factor", 1.0), F32)
        if cfg.get("norm_topk_prob"):
            p.add("{arch}.expert_weights_norm", True, BOOL)
        scoring = cfg.get("scoring_func", "sigmoid" if v3 else "softmax")
        if scoring not in ("softmax", "sigmoid"):
            raise ConvertError(f"unsupported scoring_func {scoring!r} (softmax or sigmoid)")
        p.add("{arch}.expert_gating_func", 1 if scoring == "softmax" else 2, U32)
        n_group = cfg.get("n_group") or 1
        if n_group > 1 and (v3 or cfg.get("topk_method") == "group_limited_greedy"):
            p.add("{arch}.expert_group_count", int(n_group), U32)
            p.add("{arch}.expert_group_used_count", _int(cfg, "topk_group"), U32)
    rp = _rope_kv(p, cfg)
    if rp.get("rope_type") == "yarn":
        p.add("{arch}.rope.scaling.yarn_log_multiplier", 0.1 * float(rp.get("mscale_all_dim") or 0.0), F32)

    T = p.tensors
    T.append(_direct(s, "token_embd.weight", "model.embed_tokens.weight", (n_vocab, D)))
    for il in range(n_layer):
        a, b, m = f"model.layers.{il}.self_attn.", f"blk.{il}.", f"model.layers.{il}.mlp."
        T.append(_direct(s, b + "attn_norm.weight", f"model.layers.{il}.input_layernorm.weight", (D,)))
        if QL is None:
            T.append(_direct(s, b + "attn_q.weight", a + "q_proj.weight", (H * (NP + R), D)))
        else:
            T.append(_direct(s, b + "attn_q_a.weight", a + "q_a_proj.weight", (QL, D)))
            T.append(_direct(s, b + "attn_q_a_norm.weight", a + "q_a_layernorm.weight", (QL,)))
            T.append(_direct(s, b + "attn_q_b.weight", a + "q_b_proj.weight", (H * (NP + R), QL)))
        T.append(_direct(s, b + "attn_kv_a_mqa.weight", a + "kv_a_proj_with_mqa.weight", (C + R, D)))
        T.append(_direct(s, b + "attn_kv_a_norm.weight", a + "kv_a_layernorm.weight", (C,)))
        kvb = s.get(a + "kv_b_proj.weight", (H * (NP + V), C))

        def k_b(kvb: Callable[[], np.ndarray] = kvb) -> np.ndarray:  # (H, C, NP): K part, transposed per head
            x = _f32(kvb(), C).reshape(H, NP + V, C)
            return x[:, :NP, :].transpose(0, 2, 1)

        def v_b(kvb: Callable[[], np.ndarray] = kvb) -> np.ndarray:  # (H, V, C)
            return _f32(kvb(), C).reshape(H, NP + V, C)[:, NP:, :]

        T.append(_computed(b + "attn_k_b.weight", (H, C, NP), k_b))
        T.append(_computed(b + "attn_v_b.weight", (H, V, C), v_b))
        T.append(_direct(s, b + "attn_output.weight", a + "o_proj.weight", (D, H * V)))
        T.append(_direct(s, b + "ffn_norm.weight", f"model.layers.{il}.post_attention_layernorm.weight", (D,)))
        moe = n_exp > 0 and il >= first_dense and il % freq == 0
        if not moe:
            for nm, hf, shp in (("ffn_gate", "gate_proj", (F, D)), ("ffn_up", "up_proj", (F, D)),
                                ("ffn_down", "down_proj", (D, F))):
                T.append(_direct(s, b + nm + ".weight", m + hf + ".weight", shp))
            continue
        T.append(_direct(s, b + "ffn_gate_inp.weight", m + "gate.weight", (n_exp, D)))
        if s.has(m + "gate.e_score_correction_bias"):
            T.append(_direct(s, b + "exp_probs_b.bias", m + "gate.e_score_correction_bias", (n_exp,)))
        T.extend(_experts(s, m + "experts.", b, n_exp, FE, D))
        if n_shared:
            FS = FE * n_shared
            for nm, hf, shp in (("ffn_gate_shexp", "gate_proj", (FS, D)), ("ffn_up_shexp", "up_proj", (FS, D)),
                                ("ffn_down_shexp", "down_proj", (D, FS))):
                T.append(_direct(s, b + nm + ".weight", m + "shared_experts." + hf + ".weight", shp))
    T.append(_direct(s, "output_norm.weight", "model.norm.weight", (D,)))
    _output(s, p, cfg, n_vocab, D)
    _check_all_used(s)
    return p


def _output(s: _Src, p: ModelPlan, cfg: dict[str, Any], n_vocab: int, D: int) -> None:
    if s.has("lm_head.weight"):
        p.tensors.append(_direct(s, "output.weight", "lm_head.weight", (n_vocab, D)))
    elif not cfg.get("tie_word_embeddings", False):
        raise ConvertError("lm_head.weight is missing and tie_word_embeddings is not set")


def _experts(s: _Src, e: str, b: str, n_exp: int, FE: int, D: int, names: tuple[str, str, str] = (
        "gate_proj", "up_proj", "down_proj"), fused: str = "gate_up_proj", sfx: str = ".weight") -> list[OutTensor]:
    """Expert FFNs merged into (E, FE, D) gate/up and (E, D, FE) down: per-expert tensors or HF's fused ones."""
    if s.has(e + fused) or s.has(e + "down_proj") and not s.has(f"{e}0.{names[2]}{sfx}"):
        gshape = (n_exp, 2 * FE, D)
        gate = OutTensor(b + "ffn_gate_exps.weight", (n_exp, FE, D),
                         [s.rows(e + fused, gshape, 2 * FE * i, FE) for i in range(n_exp)], s.src_type(e + fused))
        up = OutTensor(b + "ffn_up_exps.weight", (n_exp, FE, D),
                       [s.rows(e + fused, gshape, 2 * FE * i + FE, FE) for i in range(n_exp)], s.src_type(e + fused))
        down = OutTensor(b + "ffn_down_exps.weight", (n_exp, D, FE), [s.rows(e + "down_proj", (n_exp, D, FE))],
                         s.src_type(e + "down_proj"))
        return [gate, up, down]
    out = []
    for nm, hf, shp in (("ffn_gate_exps", names[0], (FE, D)), ("ffn_up_exps", names[1], (FE, D)),
                        ("ffn_down_exps", names[2], (D, FE))):
        out.append(_stack(s, b + nm + ".weight", [f"{e}{i}.{hf}{sfx}" for i in range(n_exp)], shp))
    return out


_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.attention\.masked_bias|\.attn\.bias)$")


def _check_all_used(s: _Src) -> None:
    extra = sorted(n for n in s.ck.tensors if n not in s.used and not _IGNORED.search(n))
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        raise ConvertError(f"checkpoint tensors not expected for this config: {', '.join(extra[:5])}{more}")


# ---------------------------------------------------------------------------------------------- llama family
def _llama_like(cfg: dict[str, Any], ck: Checkpoint, arch: str, *, qkv_bias: bool = False, qk_norm: bool = False,
                permute: bool = False, moe: str | None = None) -> ModelPlan:
    """llama / mistral / mixtral (moe='mixtral'), qwen2 (qkv_bias), qwen3 (qk_norm), qwen2moe, qwen3moe, olmoe:
    the decoder layout they share."""
    s = _Src(ck)
    n_layer = _int(cfg, "num_hidden_layers")
    D, H = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    HKV = _int(cfg, "num_key_value_heads", default=H)
    HD = _int(cfg, "head_dim", default=D // H) if cfg.get("head_dim") is not None else D // H
    n_vocab = _int(cfg, "vocab_size")
    n_exp = 0
    if moe is not None:
        n_exp = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    p = ModelPlan(arch, n_layer=n_layer, n_expert=n_exp, n_head=H, n_head_kv=HKV)
    _common_kv(p, cfg, n_vocab)
    F = _int(cfg, "intermediate_size", default=0)
    if F:
        p.add("{arch}.feed_forward_length", F, U32)
    p.add("{arch}.attention.layer_norm_rms_epsilon", _float(cfg, "rms_norm_eps", 1e-6), F32)
    p.add("{arch}.rope.dimension_count", HD, U32)
    if HD != D // H:
        p.add("{arch}.attention.key_length", HD, U32)
        p.add("{arch}.attention.value_length", HD, U32)
    _rope_kv(p, cfg)
    FE = 0
    if n_exp:
        FE = _int(cfg, "moe_intermediate_size", default=F) if moe != "mixtral" else F
        p.add("{arch}.expert_count", n_exp, U32)
        p.add("{arch}.expert_used_count", _int(cfg, "num_experts_per_tok"), U32)
        if moe != "mixtral":
            p.add("{arch}.expert_feed_forward_length", FE, U32)
        if moe != "mixtral" and isinstance(cfg.get("norm_topk_prob"), bool):
            p.add("{arch}.expert_weights_norm", cfg["norm_topk_prob"], BOOL)
        if cfg.get("mlp_only_layers") or _int(cfg, "decoder_sparse_step", default=1) not in (0, 1):
            raise ConvertError("dense layers between MoE layers (mlp_only_layers / decoder_sparse_step) are not "
                               "supported by llama.cpp's layout")
        if moe == "qwen2moe" and cfg.get("shared_expert_intermediate_size"):
            p.add("{arch}.expert_shared_feed_forward_length", _int(cfg, "shared_expert_intermediate_size"), U32)
    T = p.tensors
    T.append(_direct(s, "token_embd.weight", "model.embed_tokens.weight", (n_vocab, D)))
    for il in range(n_layer):
        L, b = f"model.layers.{il}.", f"blk.{il}."
        a = L + "self_attn."
        T.append(_direct(s, b + "attn_norm.weight", L + "input_layernorm.weight", (D,)))
        T.append(_qk(s, b + "attn_q.weight", a + "q_proj.weight", (H * HD, D), H, permute))
        T.append(_qk(s, b + "attn_k.weight", a + "k_proj.weight", (HKV * HD, D), HKV, permute))
        T.append(_direct(s, b + "attn_v.weight", a + "v_proj.weight", (HKV * HD, D)))
        if qkv_bias:
            T.append(_direct(s, b + "attn_q.bias", a + "q_proj.bias", (H * HD,)))
            T.append(_direct(s, b + "attn_k.bias", a + "k_proj.bias", (HKV * HD,)))
            T.append(_direct(s, b + "attn_v.bias", a + "v_proj.bias", (HKV * HD,)))
        if qk_norm:
            shp = (HD,) if s.has(a + "q_norm.weight") and s.ck.tensors[a + "q_norm.weight"].shape == (HD,) else (H * HD,)
            T.append(_direct(s, b + "attn_q_norm.weight", a + "q_norm.weight", shp))
            T.append(_direct(s, b + "attn_k_norm.weight", a + "k_norm.weight", (HD,) if shp == (HD,) else (HKV * HD,)))
        T.append(_direct(s, b + "attn_output.weight", a + "o_proj.weight", (D, H * HD)))
        T.append(_direct(s, b + "ffn_norm.weight", L + "post_attention_layernorm.weight", (D,)))
        if moe == "mixtral":
            m = L + "block_sparse_moe."
            if not s.has(m + "gate.weight"):  # transformers 5 names Mixtral's MoE block `mlp`
                m = L + "mlp."
            T.append(_direct(s, b + "ffn_gate_inp.weight", m + "gate.weight", (n_exp, D)))
            if s.has(m + "experts.0.w1.weight"):
                T.extend(_experts(s, m + "experts.", b, n_exp, FE, D, ("w1", "w3", "w2")))
            else:
                T.extend(_experts(s, m + "experts.", b, n_exp, FE, D))
        elif moe is not None:
            m = L + "mlp."
            T.append(_direct(s, b + "ffn_gate_inp.weight", m + "gate.weight", (n_exp, D)))
            T.extend(_experts(s, m + "experts.", b, n_exp, FE, D))
            if moe == "qwen2moe":
                FS = _int(cfg, "shared_expert_intermediate_size")
                gi = _direct(s, b + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight", (1, D))
                gi.shape = (D,)  # a vector (llama.cpp creates it as {n_embd}; 1-D also keeps it unquantized)
                T.append(gi)
                for nm, hf, shp in (("ffn_gate_shexp", "gate_proj", (FS, D)), ("ffn_up_shexp", "up_proj", (FS, D)),
                                    ("ffn_down_shexp", "down_proj", (D, FS))):
                    T.append(_direct(s, b + nm + ".weight", m + "shared_expert." + hf + ".weight", shp))
        else:
            m = L + "mlp."
            for nm, hf, shp in (("ffn_gate", "gate_proj", (F, D)), ("ffn_up", "up_proj", (F, D)),
                                ("ffn_down", "down_proj", (D, F))):
                T.append(_direct(s, b + nm + ".weight", m + hf + ".weight", shp))
    T.append(_direct(s, "output_norm.weight", "model.norm.weight", (D,)))
    _output(s, p, cfg, n_vocab, D)
    _check_all_used(s)
    return p


def _qk(s: _Src, out: str, hf: str, shape: tuple[int, int], n_head: int, permute: bool) -> OutTensor:
    """llama's q/k rows are permuted from HF's rotate-half order to llama.cpp's interleaved (GPT-J) order."""
    if not permute:
        return _direct(s, out, hf, shape)
    g = s.get(hf, shape)

    def fn() -> np.ndarray:
        w = _f32(g(), shape[1])
        return w.reshape(n_head, 2, shape[0] // n_head // 2, shape[1]).swapaxes(1, 2).reshape(shape)

    t = _computed(out, shape, fn)
    t.src_type = s.src_type(hf)
    return t


def _llama(cfg: dict[str, Any], ck: Checkpoint) -> ModelPlan:
    moe = "mixtral" if cfg.get("num_local_experts") else None
    return _llama_like(cfg, ck, "llama", permute=True, moe=moe)


# ---------------------------------------------------------------------------------------------- gemma3
def _gemma3(cfg: dict[str, Any], ck: Checkpoint) -> ModelPlan:
    """Gemma 3 text (llama.cpp's `gemma3`): every RMSNorm weight stored as 1 + w (Gemma computes x * (1 + w)),
    incl. the per-head q/k norms; post-attention and post-FFN norms; sliding-window layers with the fixed
    5-local : 1-global pattern llama.cpp assumes (other layouts are refused rather than run wrongly)."""
    if cfg.get("attn_logit_softcapping") is not None:
        raise ConvertError("gemma3: attn_logit_softcapping is not supported (Gemma 3 has none; llama.cpp refuses it)")
    s = _Src(ck)
    n_layer = _int(cfg, "num_hidden_layers")
    D, H = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads", default=8)
    HKV = _int(cfg, "num_key_value_heads", default=4)
    HD = _int(cfg, "head_dim", default=256)
    F = _int(cfg, "intermediate_size")
    n_vocab = _int(cfg, "vocab_size")
    act = cfg.get("hidden_activation", cfg.get("hidden_act", "gelu_pytorch_tanh"))
    if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        raise ConvertError(f"gemma3: activation {act!r} is not supported (tanh-approximated GELU only)")
    # attention scale: the runtime (like llama.cpp) uses 1/sqrt(head_dim), or 1/sqrt(D/H) for the 62-layer 27B
    qpa = _float(cfg, "query_pre_attn_scalar", float(HD))
    want = D / H if n_layer == 62 else float(HD)
    if abs(qpa - want) > 1e-6 * want:
        raise ConvertError(f"gemma3: query_pre_attn_scalar {qpa:g} differs from the {want:g} llama.cpp's gemma3 "
                           "assumes for this shape")
    window = _int(cfg, "sliding_window", default=0)
    types = cfg.get("layer_types")
    pattern = ["full_attention" if (il + 1) % 6 == 0 else "sliding_attention" for il in range(n_layer)]
    if types is not None and list(types) != pattern:
        raise ConvertError("gemma3: layer_types must be 5 sliding-window layers then 1 global layer, repeated "
                           "(the pattern llama.cpp's gemma3 assumes)")
    if cfg.get("sliding_window_pattern") not in (None, 6):
        raise ConvertError(f"gemma3: sliding_window_pattern {cfg['sliding_window_pattern']!r} is not supported (6 only)")
    if float(cfg.get("rope_local_base_freq") or 10000.0) != 10000.0:
        raise ConvertError("gemma3: rope_local_base_freq must be 10000 (llama.cpp's sliding-window RoPE base)")
    rp = _rope_params(cfg)
    local = rp.get("sliding_attention") if isinstance(rp.get("sliding_attention"), dict) else None
    if local is not None:
        lt = local.get("rope_type", "default")
        if lt not in ("default", None) or float(local.get("rope_theta", 10000.0)) != 10000.0:
            raise ConvertError("gemma3: sliding-window layers must use plain RoPE with base 10000 (llama.cpp's layout)")
    glob = rp.get("full_attention", rp) if isinstance(rp.get("full_attention"), dict) else rp
    glob = {k: v for k, v in glob.items() if k not in ("full_attention", "sliding_attention")}
    p = ModelPlan("gemma3", n_layer=n_layer, n_head=H, n_head_kv=HKV)
    _common_kv(p, {**cfg, "max_position_embeddings": _int(cfg, "max_position_embeddings", default=131072)}, n_vocab)
    p.add("{arch}.feed_forward_length", F, U32)
    p.add("{arch}.attention.layer_norm_rms_epsilon", _float(cfg, "rms_norm_eps", 1e-6), F32)
    p.add("{arch}.attention.key_length", HD, U32)
    p.add("{arch}.attention.value_length", HD, U32)
    p.add("{arch}.rope.dimension_count", HD, U32)
    _rope_kv(p, {"rope_parameters": glob}, default_theta=1_000_000.0)
    if window:
        p.add("{arch}.attention.sliding_window", window, U32)
    if cfg.get("final_logit_softcapping"):
        p.add("{arch}.final_logit_softcapping", _float(cfg, "final_logit_softcapping"), F32)

    def norm(out: str, hf: str, shape: tuple[int, ...]) -> OutTensor:
        g = s.get(hf, shape)
        return _computed(out, shape, lambda: _f32(g(), shape[-1]).reshape(shape) + np.float32(1.0))

    T = p.tensors
    T.append(_direct(s, "token_embd.weight", "model.embed_tokens.weight", (n_vocab, D)))
    for il in range(n_layer):
        L, b = f"model.layers.{il}.", f"blk.{il}."
        a = L + "self_attn."
        T.append(norm(b + "attn_norm.weight", L + "input_layernorm.weight", (D,)))
        T.append(_direct(s, b + "attn_q.weight", a + "q_proj.weight", (H * HD, D)))
        T.append(_direct(s, b + "attn_k.weight", a + "k_proj.weight", (HKV * HD, D)))
        T.append(_direct(s, b + "attn_v.weight", a + "v_proj.weight", (HKV * HD, D)))
        T.append(norm(b + "attn_q_norm.weight", a + "q_norm.weight", (HD,)))
        T.append(norm(b + "attn_k_norm.weight", a + "k_norm.weight", (HD,)))
        T.append(_direct(s, b + "attn_output.weight", a + "o_proj.weight", (D, H * HD)))
        T.append(norm(b + "post_attention_norm.weight", L + "post_attention_layernorm.weight", (D,)))
        T.append(norm(b + "ffn_norm.weight", L + "pre_feedforward_layernorm.weight", (D,)))
        m = L + "mlp."
        for nm, hf, shp in (("ffn_gate", "gate_proj", (F, D)), ("ffn_up", "up_proj", (F, D)),
                            ("ffn_down", "down_proj", (D, F))):
            T.append(_direct(s, b + nm + ".weight", m + hf + ".weight", shp))
        T.append(norm(b + "post_ffw_norm.weight", L + "post_feedforward_layernorm.weight", (D,)))
    T.append(norm("output_norm.weight", "model.norm.weight", (D,)))
    _output(s, p, {**cfg, "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}, n_vocab, D)
    _check_all_used(s)
    return p


# HF architectures -> (builder, description)
SUPPORTED: dict[str, Callable[[dict[str, Any], Checkpoint], ModelPlan]] = {
    "DeepseekV2ForCausalLM": _deepseek2,
    "DeepseekV3ForCausalLM": _deepseek2,
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _llama,
    "MixtralForCausalLM": _llama,
    "Qwen2ForCausalLM": lambda c, k: _llama_like(c, k, "qwen2", qkv_bias=True),
    "Qwen3ForCausalLM": lambda c, k: _llama_like(c, k, "qwen3", qk_norm=True),
    "Qwen2MoeForCausalLM": lambda c, k: _llama_like(c, k, "qwen2moe", qkv_bias=True, moe="qwen2moe"),
    "Qwen3MoeForCausalLM": lambda c, k: _llama_like(c, k, "qwen3moe", qk_norm=True, moe="qwen3moe"),
    "OlmoeForCausalLM": lambda c, k: _llama_like(c, k, "olmoe", qk_norm=True, moe="olmoe"),
    "Gemma3ForCausalLM": _gemma3,
}


def plan_model(cfg: dict[str, Any], ck: Checkpoint) -> ModelPlan:
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs:
        raise ConvertError("config.json has no 'architectures' list")
    if archs[0] == "Gemma3ForConditionalGeneration":
        raise ConvertError("Gemma3ForConditionalGeneration (vision + text) is not supported; convert a text-only "
                           f"Gemma3ForCausalLM checkpoint (supported: {', '.join(SUPPORTED)})")
    builder = SUPPORTED.get(archs[0])
    if builder is None:
        raise ConvertError(f"unsupported architecture {archs[0]!r}; supported: {', '.join(SUPPORTED)}")
    return builder(cfg, ck)
