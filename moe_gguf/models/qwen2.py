"""Qwen2 / Qwen2.5 (GGUF architecture `qwen2`): Llama's block with q/k/v biases and NEOX-layout RoPE."""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="qwen2", rope_neox=True)


class Qwen2Model(TransformerModel):
    family = FAMILY
