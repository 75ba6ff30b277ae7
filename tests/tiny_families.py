"""Test helper: tiny random transformers checkpoints of the dense/MoE families, written to GGUF as llama.cpp does.

`build_hf(family, ...)` makes a seeded model (weights scaled up so logits and router choices are decisive);
`write_gguf(model, family, path, qtype)` converts its state dict with llama.cpp's tensor names and metadata
keys (the mapping of convert_hf_to_gguf.py, written here from its documented behaviour because the project's
converter has no mapping for these families yet): Llama's q/k rows permuted to GGML's adjacent-pair RoPE,
Gemma's norms stored as 1 + w, fused HF expert tensors split into ffn_{gate,up,down}_exps, Qwen2-MoE's
(1, D) shared-expert gate as a D vector, Llama 3 RoPE scaling as a `rope_freqs` tensor, tied embeddings
without an `output` tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import gguf

FAMILIES = ("llama", "mixtral", "mistral", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe", "gemma3")
GGUF_ARCH = {"mixtral": "llama", "mistral": "llama"}

_MOE = {"mixtral", "qwen2moe", "qwen3moe", "olmoe"}


def build_hf(family: str, *, seed: int = 0, rope: dict[str, Any] | None = None, n_layer: int = 2, tied: bool = False,
             vocab: int = 256, scale: float = 0.5, router_scale: float = 6.0, window: int = 6) -> Any:
    """A tiny random model of `family` (hidden 64, 4 heads / 2 KV heads of 16 (Gemma 32), FFN 96, 4 experts of 32
    with 2 used, every row a multiple of 32).  `rope` is a transformers rope_parameters dict (without rope_theta)."""
    import transformers as T

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layer, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    rp = {"rope_theta": 10000.0, "rope_type": "default"}
    if rope:
        rp = {"rope_theta": 10000.0, **rope}
    moe = dict(num_experts_per_tok=2)
    if family in ("llama", "mistral", "mixtral"):
        cls = {"llama": "Llama", "mistral": "Mistral", "mixtral": "Mixtral"}[family]
        extra: dict[str, Any] = dict(rope_parameters=rp, head_dim=16)
        if family == "mixtral":
            extra.update(num_local_experts=4, **moe)
        if family == "mistral":
            extra.update(sliding_window=window)
        elif family == "mixtral":
            extra.update(sliding_window=None)
        cfg = getattr(T, cls + "Config")(**common, **extra)
        model = getattr(T, cls + "ForCausalLM")(cfg)
    elif family == "qwen2":
        cfg = T.Qwen2Config(**common, rope_parameters=rp)
        model = T.Qwen2ForCausalLM(cfg)
    elif family == "qwen3":
        cfg = T.Qwen3Config(**common, rope_parameters=rp, head_dim=16)
        model = T.Qwen3ForCausalLM(cfg)
    elif family == "qwen2moe":
        cfg = T.Qwen2MoeConfig(**common, rope_parameters=rp, num_experts=4, moe_intermediate_size=32,
                               shared_expert_intermediate_size=64, norm_topk_prob=False, **moe)
        model = T.Qwen2MoeForCausalLM(cfg)
    elif family == "qwen3moe":
        cfg = T.Qwen3MoeConfig(**common, rope_parameters=rp, head_dim=16, num_experts=4, moe_intermediate_size=32,
                               norm_topk_prob=True, **moe)
        model = T.Qwen3MoeForCausalLM(cfg)
    elif family == "olmoe":
        cfg = T.OlmoeConfig(**dict(common, intermediate_size=32), rope_parameters=rp, num_experts=4, norm_topk_prob=False, **moe)
        model = T.OlmoeForCausalLM(cfg)
    elif family == "gemma3":
        c = dict(common, tie_word_embeddings=True)
        cfg = T.Gemma3TextConfig(
            **c, head_dim=32, query_pre_attn_scalar=32, sliding_window=window,
            rope_parameters={"full_attention": rp, "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
            final_logit_softcapping=None, attn_logit_softcapping=None,
        )
        model = T.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(family)
    model.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                base = 0.0 if family == "gemma3" else 1.0  # Gemma's norms multiply by 1 + w
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
                p.copy_(router_scale * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if family == "gemma3" else 1.0))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation: HF rotate-half pairs (i, i + d/2) -> adjacent pairs (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: Any, family: str) -> dict[str, np.ndarray]:
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    gemma = family == "gemma3"
    shift = 1.0 if gemma else 0.0
    out["output_norm.weight"] = sd["model.norm.weight"] + shift
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        a = p + "self_attn."
        q, k = sd[a + "q_proj.weight"], sd[a + "k_proj.weight"]
        if GGUF_ARCH.get(family, family) == "llama":
            q, k = _permute(q, H), _permute(k, Hkv)
        out[b + "attn_q.weight"], out[b + "attn_k.weight"] = q, k
        out[b + "attn_v.weight"] = sd[a + "v_proj.weight"]
        out[b + "attn_output.weight"] = sd[a + "o_proj.weight"]
        for n, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
            if a + n + ".bias" in sd:
                out[b + g + ".bias"] = sd[a + n + ".bias"]
        for n, g in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if a + n + ".weight" in sd:
                out[b + g + ".weight"] = sd[a + n + ".weight"] + shift
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"] + shift
        if gemma:
            out[b + "post_attention_norm.weight"] = sd[p + "post_attention_layernorm.weight"] + 1
            out[b + "ffn_norm.weight"] = sd[p + "pre_feedforward_layernorm.weight"] + 1
            out[b + "post_ffw_norm.weight"] = sd[p + "post_feedforward_layernorm.weight"] + 1
        else:
            out[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        m = p + "mlp."
        if m + "gate.weight" in sd:
            out[b + "ffn_gate_inp.weight"] = sd[m + "gate.weight"]
            gu = sd[m + "experts.gate_up_proj"]
            F = gu.shape[1] // 2
            out[b + "ffn_gate_exps.weight"] = np.ascontiguousarray(gu[:, :F])
            out[b + "ffn_up_exps.weight"] = np.ascontiguousarray(gu[:, F:])
            out[b + "ffn_down_exps.weight"] = sd[m + "experts.down_proj"]
            if m + "shared_expert.up_proj.weight" in sd:
                for n, g in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")):
                    out[b + g + ".weight"] = sd[m + "shared_expert." + n + ".weight"]
                out[b + "ffn_gate_inp_shexp.weight"] = sd[m + "shared_expert_gate.weight"].reshape(-1)
        else:
            for n, g in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                out[b + g + ".weight"] = sd[m + n + ".weight"]
    return out


def write_gguf(model: Any, family: str, path: str | Path, qtype: str = "F32", drop: tuple[str, ...] = (),
               override: dict[str, Any] | None = None) -> Path:
    """Writes `model` as a GGUF of llama.cpp's architecture for `family`; 2-D/3-D weights as F32 or Q8_0 (norms,
    biases and routers F32).  `drop` leaves tensors out, `override` replaces metadata values (error tests)."""
    cfg = model.config
    arch = GGUF_ARCH.get(family, family)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv: dict[str, Any] = {
        "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size,
        "block_count": cfg.num_hidden_layers,
        "feed_forward_length": cfg.intermediate_size,
        "attention.head_count": cfg.num_attention_heads,
        "attention.head_count_kv": cfg.num_key_value_heads,
        "attention.key_length": hd,
        "attention.value_length": hd,
        "rope.dimension_count": hd,
        "attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
    }
    rp = cfg.rope_parameters
    if family == "gemma3":
        rp = rp["full_attention"]
        kv["attention.sliding_window"] = cfg.sliding_window
    elif family == "mistral":
        kv["attention.sliding_window"] = cfg.sliding_window
    kv["rope.freq_base"] = float(rp["rope_theta"])
    rtype = rp.get("rope_type", "default")
    if rtype in ("linear", "yarn"):
        kv["rope.scaling.type"] = rtype
        kv["rope.scaling.factor"] = float(rp["factor"])
        if rtype == "yarn":
            kv["rope.scaling.original_context_length"] = int(rp["original_max_position_embeddings"])
    tensors = _tensors(model, family)
    if rtype == "llama3":  # llama.cpp: per-dimension frequency divisors in `rope_freqs`
        inv_hf = model.model.rotary_emb.inv_freq.float().numpy()
        base = 1.0 / (float(rp["rope_theta"]) ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        tensors["rope_freqs.weight"] = (base / inv_hf).astype(np.float32)
    if family in _MOE:
        kv["expert_count"] = cfg.num_experts if hasattr(cfg, "num_experts") else cfg.num_local_experts
        kv["expert_used_count"] = cfg.num_experts_per_tok
        if family != "mixtral":
            kv["expert_feed_forward_length"] = getattr(cfg, "moe_intermediate_size", cfg.intermediate_size)
        if family == "qwen2moe":
            kv["expert_shared_feed_forward_length"] = cfg.shared_expert_intermediate_size
    kv.update(override or {})
    for k, v in kv.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_string(key, str(v))
    for name, t in tensors.items():
        if name in drop:
            continue
        t = np.ascontiguousarray(t, dtype=np.float32)
        quant = qtype == "Q8_0" and t.ndim >= 2 and t.shape[-1] % 32 == 0 and "gate_inp" not in name
        if quant:
            w.add_tensor(name, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_logits(model: Any, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0].float().numpy()


def hf_greedy(model: Any, ids: np.ndarray, n: int) -> list[int]:
    seq = [int(t) for t in ids]
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]
