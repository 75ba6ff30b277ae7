"""One file per architecture. `load_model(path)` picks the class named by `general.architecture`.

    model = load_model(path, n_ctx=None, n_threads=None)   # n_ctx None -> min(<arch>.context_length, 4096)
    cache = model.new_cache()                              # cache.n_past, cache.clear(), cache.truncate(n)
    logits = model.forward(tokens, cache, all_logits=False)
"""
from __future__ import annotations

import os
from typing import Any

from ..gguf import GGUFFile
from .base import ContextFullError, KVCache, ModelLoadError
from .deepseek2 import DeepseekV2Model

_REGISTRY: dict[str, type] = {
    "deepseek2": DeepseekV2Model,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(_REGISTRY))


def load_model(path: str | os.PathLike[str], n_ctx: int | None = None, n_threads: int | None = None, **kwargs: Any) -> Any:
    """Opens a GGUF file and builds the model its `general.architecture` names.

    Raises ModelLoadError (a ValueError) for an unknown architecture (listing the supported ones) or for
    missing/inconsistent metadata and tensors (naming the key or tensor); GGUFError for a malformed file."""
    f = GGUFFile(path)
    try:
        arch = f.architecture
        cls = _REGISTRY.get(arch or "")
        if cls is None:
            raise ModelLoadError(
                f"{f.path}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        return cls(f, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
    except BaseException:
        f.close()
        raise


__all__ = ["load_model", "SUPPORTED_ARCHITECTURES", "ContextFullError", "ModelLoadError", "KVCache", "DeepseekV2Model"]
