"""Test helper: tiny random DeepSeek-V2/V3 checkpoints built with transformers, written to GGUF in llama.cpp's layout.

`build_hf(...)` makes a seeded `DeepseekV2ForCausalLM` (or `DeepseekV3ForCausalLM`) with weights scaled so that
logits and router choices are decisive; `write_gguf(model, path, layout="mla"|"legacy", qtype="F32"|"Q8_0")`
converts it the way llama.cpp's convert_hf_to_gguf.py does for `deepseek2` (tensor names, ne order, the
kv_b -> k_b/v_b split with k_b transposed, metadata keys), using gguf.GGUFWriter and gguf's numpy quantizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import gguf

ARCH = "deepseek2"


def build_hf(
    *,
    seed: int = 0,
    version: int = 2,
    q_lora_rank: int | None = None,
    yarn: bool = True,
    mscale_all_dim: float | None = 0.707,
    n_layer: int = 3,
    n_group: int | None = None,
    topk_group: int | None = None,
    norm_topk_prob: bool = False,
    routed_scaling_factor: float = 1.0,
    vocab: int = 256,
    layer_scale: float = 0.35,
    router_scale: float = 5.0,
) -> Any:
    """A tiny random model. Dims: hidden 64, 4 heads, nope 32 + rope 16, v 32, kv_lora 64, 8 experts (3 used),
    2 shared, first layer dense, so every row length is a multiple of 32 (Q8_0-able)."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
    if yarn:
        rope = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32,
            "beta_slow": 1,
        }
        if mscale_all_dim is not None:
            rope["mscale"] = mscale_all_dim
            rope["mscale_all_dim"] = mscale_all_dim
    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=n_layer,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=2,
        n_routed_experts=8,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        kv_lora_rank=64,
        q_lora_rank=q_lora_rank,
        qk_rope_head_dim=16,
        v_head_dim=32,
        qk_nope_head_dim=32,
        max_position_embeddings=512,
        rope_parameters=rope,
        routed_scaling_factor=routed_scaling_factor,
        norm_topk_prob=norm_topk_prob,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    if version == 2:
        if n_group:
            common.update(topk_method="group_limited_greedy", n_group=n_group, topk_group=topk_group)
        cfg = DeepseekV2Config(**common)
        cls = DeepseekV2ForCausalLM
    else:
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        common.update(n_group=n_group or 1, topk_group=topk_group or 1, rope_interleave=True)
        cfg = DeepseekV3Config(**common)
        cls = DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms: around 1, not exactly 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):  # decisive routers that still spread over experts
                p.copy_(torch.randn(p.shape, generator=g) * (router_scale / p.shape[1] ** 0.5))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))
            else:  # layers: strong enough to matter, calm enough that Q8_0 noise does not snowball
                p.copy_(torch.randn(p.shape, generator=g) * (layer_scale / p.shape[-1] ** 0.5))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=g))
    return model


def hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None], use_cache=False)
    return out.logits[0].float().numpy()


def _q(arr: np.ndarray, qtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == "F32" or arr.ndim == 1 or arr.shape[-1] % 32:
        return arr, gguf.GGMLQuantizationType.F32
    if qtype.endswith("_DEQ"):  # quantize then dequantize: the same numbers as the quantized file, stored F32
        t = getattr(gguf.GGMLQuantizationType, qtype[: -len("_DEQ")])
        return gguf.quants.dequantize(gguf.quants.quantize(arr, t), t).astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == "F16":
        return arr.astype(np.float16), gguf.GGMLQuantizationType.F16
    t = getattr(gguf.GGMLQuantizationType, qtype)
    return gguf.quants.quantize(arr, t), t


def gguf_tensors(model: Any, layout: str = "mla", merge_gate_up: bool = False) -> dict[str, np.ndarray]:
    """HF state dict -> llama.cpp deepseek2 tensor names (numpy order, float32)."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    H, NP, V, C = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    out: dict[str, np.ndarray] = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for il in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{il}.", f"blk.{il}."
        a = p + "self_attn."
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        if cfg.q_lora_rank is None:
            out[b + "attn_q.weight"] = sd[a + "q_proj.weight"]
        else:
            out[b + "attn_q_a.weight"] = sd[a + "q_a_proj.weight"]
            out[b + "attn_q_a_norm.weight"] = sd[a + "q_a_layernorm.weight"]
            out[b + "attn_q_b.weight"] = sd[a + "q_b_proj.weight"]
        out[b + "attn_kv_a_mqa.weight"] = sd[a + "kv_a_proj_with_mqa.weight"]
        out[b + "attn_kv_a_norm.weight"] = sd[a + "kv_a_layernorm.weight"]
        kvb = sd[a + "kv_b_proj.weight"]  # (H*(NP+V), C)
        if layout == "mla":
            kvb3 = kvb.reshape(H, NP + V, C)
            out[b + "attn_k_b.weight"] = np.ascontiguousarray(kvb3[:, :NP, :].transpose(0, 2, 1))  # (H, C, NP)
            out[b + "attn_v_b.weight"] = np.ascontiguousarray(kvb3[:, NP:, :])  # (H, V, C)
        else:
            out[b + "attn_kv_b.weight"] = kvb
        out[b + "attn_output.weight"] = sd[a + "o_proj.weight"]
        m = p + "mlp."
        if il < cfg.first_k_dense_replace:
            out[b + "ffn_gate.weight"] = sd[m + "gate_proj.weight"]
            out[b + "ffn_up.weight"] = sd[m + "up_proj.weight"]
            out[b + "ffn_down.weight"] = sd[m + "down_proj.weight"]
        else:
            F = cfg.moe_intermediate_size
            gu = sd[m + "experts.gate_up_proj"]  # (E, 2F, D): gate rows then up rows
            out[b + "ffn_gate_inp.weight"] = sd[m + "gate.weight"]
            if m + "gate.e_score_correction_bias" in sd:
                out[b + "exp_probs_b.bias"] = sd[m + "gate.e_score_correction_bias"]
            if merge_gate_up:  # newer llama.cpp files: one (E, 2F, D) tensor, gate rows first
                out[b + "ffn_gate_up_exps.weight"] = np.ascontiguousarray(gu)
            else:
                out[b + "ffn_gate_exps.weight"] = np.ascontiguousarray(gu[:, :F])
                out[b + "ffn_up_exps.weight"] = np.ascontiguousarray(gu[:, F:])
            out[b + "ffn_down_exps.weight"] = sd[m + "experts.down_proj"]
            out[b + "ffn_gate_shexp.weight"] = sd[m + "shared_experts.gate_proj.weight"]
            out[b + "ffn_up_shexp.weight"] = sd[m + "shared_experts.up_proj.weight"]
            out[b + "ffn_down_shexp.weight"] = sd[m + "shared_experts.down_proj.weight"]
    return out


_KEEP_F32 = ("_norm.weight", "ffn_gate_inp.weight", "exp_probs_b.bias")


def write_gguf(
    model: Any, path: str | Path, layout: str = "mla", qtype: str = "F32", drop: tuple[str, ...] = (), merge_gate_up: bool = False
) -> Path:
    """Writes `model` as a llama.cpp-style deepseek2 GGUF. `drop` removes tensors (to test error paths)."""
    cfg = model.config
    H, NP, R, V, C = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_name("tiny-deepseek2-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_vocab_size(cfg.vocab_size)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rp = cfg.rope_parameters
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_rope_dimension_count(R)
    if cfg.q_lora_rank is not None:
        w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(C)
    if layout == "mla":
        w.add_head_count_kv(1)
        w.add_key_length(C + R)
        w.add_value_length(C)
        w.add_uint32(f"{ARCH}.attention.key_length_mla", NP + R)
        w.add_uint32(f"{ARCH}.attention.value_length_mla", V)
    else:
        w.add_head_count_kv(H)
        w.add_key_length(NP + R)
        w.add_value_length(V)
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    n_exp = getattr(cfg, "n_routed_experts", None) or cfg.num_local_experts
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_shared_count(cfg.n_shared_experts)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_weights_scale(float(cfg.routed_scaling_factor))
    if cfg.norm_topk_prob and cfg.model_type == "deepseek_v3":
        w.add_expert_weights_norm(True)
    w.add_uint32(f"{ARCH}.expert_gating_func", 2 if cfg.model_type == "deepseek_v3" else 1)
    n_group = cfg.n_group or 1
    if n_group > 1 and (cfg.model_type == "deepseek_v3" or getattr(cfg, "topk_method", "") == "group_limited_greedy"):
        w.add_uint32(f"{ARCH}.expert_group_count", n_group)
        w.add_uint32(f"{ARCH}.expert_group_used_count", cfg.topk_group)
    if rp.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        w.add_float32(f"{ARCH}.rope.scaling.yarn_log_multiplier", 0.1 * float(rp.get("mscale_all_dim") or 0.0))
    for name, arr in gguf_tensors(model, layout, merge_gate_up).items():
        if name in drop:
            continue
        qt = "F32" if name.endswith(_KEEP_F32) else qtype
        data, t = _q(arr, qt)
        if t in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
