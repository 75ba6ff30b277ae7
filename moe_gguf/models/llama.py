"""Llama 1/2/3, Mistral and Mixtral (GGUF architecture `llama`), as llama.cpp stores them.

Pre-norm GQA attention with RoPE in GGML's NORM layout (llama.cpp's converter permutes the q/k rows of the HF
checkpoint so that HF's rotate-half pairs become adjacent pairs), SwiGLU FFN.  Llama 3's RoPE scaling is the
per-dimension `rope_freqs` tensor; linear and YaRN come from `llama.rope.scaling.*`.  Mistral's sliding
window comes from `llama.attention.sliding_window` when present.  Mixtral keeps its experts in the same
architecture as `ffn_{gate,up,down}_exps` with a `ffn_gate_inp` router: softmax over the top-k router logits
(= softmax over all, top-k, renormalised).
"""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="llama", rope_neox=False, moe=True, moe_norm_default=True)


class LlamaModel(TransformerModel):
    family = FAMILY
