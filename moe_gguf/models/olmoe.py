"""OLMoE (GGUF architecture `olmoe`): q/k RMSNorm over the whole projection (before splitting into heads),
NEOX RoPE, every layer routed (softmax over all experts, top-k probabilities not renormalised)."""
from __future__ import annotations

from .transformer import Family, TransformerModel

FAMILY = Family(arch="olmoe", rope_neox=True, qk_norm=True, moe=True, moe_norm_default=False)


class OlmoeModel(TransformerModel):
    family = FAMILY
