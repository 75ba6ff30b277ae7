"""Qwen1.5-MoE / Qwen2-MoE (GGUF architecture `qwen2moe`).

Qwen2 attention (q/k/v biases, NEOX RoPE).  FFN: softmax over all router logits, top-k experts with their
probabilities (not renormalised unless `expert_weights_norm` says so), plus a shared expert whose output is
scaled by sigmoid(x . ffn_gate_inp_shexp).
"""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="qwen2moe", rope_neox=True, moe=True, moe_norm_default=False)


class Qwen2MoeModel(TransformerModel):
    family = FAMILY
