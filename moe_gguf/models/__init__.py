"""One file per architecture. `load_model(path)` picks the class named by `general.architecture`.

    model = load_model(path, n_ctx=None, n_threads=None)   # n_ctx None -> min(<arch>.context_length, 4096)
    model.config, model.file, model.n_vocab, model.n_ctx
    cache = model.new_cache()                              # cache.n_past, cache.clear(), cache.truncate(n)
    logits = model.forward(tokens, cache, all_logits=False)  # (n_vocab,) for the last token, or (n, n_vocab)
    model.shift_cache(cache, n_keep, n_discard)            # context shift (deepseek2)

Architecture-specific keyword arguments pass through load_model, e.g. deepseek2's cache_type="f16" (half the
KV memory) and mla="naive" (the decompressed reference attention).  forward raises ContextFullError before
computing anything when the cache would overflow; load errors are ModelLoadError (a ValueError) naming the key
or tensor.
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
