"""Qwen3 dense (GGUF architecture `qwen3`): GQA attention with per-head q/k RMSNorm before RoPE (NEOX), no biases."""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="qwen3", rope_neox=True, qk_norm=True)


class Qwen3Model(TransformerModel):
    family = FAMILY
