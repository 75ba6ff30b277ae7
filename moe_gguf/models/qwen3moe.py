"""Qwen3-MoE (GGUF architecture `qwen3moe`): per-head q/k RMSNorm, NEOX RoPE, routed experts only (softmax,
top-k renormalised as llama.cpp does for this architecture), no shared expert."""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="qwen3moe", rope_neox=True, qk_norm=True, moe=True, moe_norm_default=True)


class Qwen3MoeModel(TransformerModel):
    family = FAMILY
