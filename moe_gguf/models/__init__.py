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

import importlib
import importlib.util
import os
from typing import Any

from ..gguf import GGUFFile
from .base import ContextFullError, KVCache, ModelLoadError
from .deepseek2 import DeepseekV2Model

# general.architecture -> (module in moe_gguf.models, class).  Modules are imported on first use, so one
# architecture's file cannot break loading another; adding an architecture = adding a file + one line here.
_REGISTRY: dict[str, tuple[str, str]] = {
    "deepseek2": ("deepseek2", "DeepseekV2Model"),
    "llama": ("llama", "LlamaModel"),
    "qwen2": ("qwen2", "Qwen2Model"),
    "qwen2moe": ("qwen2moe", "Qwen2MoeModel"),
    "qwen3": ("qwen3", "Qwen3Model"),
    "qwen3moe": ("qwen3moe", "Qwen3MoeModel"),
    "olmoe": ("olmoe", "OlmoeModel"),
    "gemma3": ("gemma3", "Gemma3Model"),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(
    sorted(a for a, (mod, _) in _REGISTRY.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None)
)


def model_class(arch: str | None) -> type:
    """The class implementing GGUF architecture `arch`; ModelLoadError naming the supported ones otherwise."""
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    mod, cls = _REGISTRY[arch]
    try:
        return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"architecture {arch!r}: its implementation failed to import ({e})") from e


def _available_memory() -> float:
    """Bytes of memory the kernel reports available (MemAvailable: free + reclaimable cache), inf if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("inf")


def load_model(
    path: str | os.PathLike[str], n_ctx: int | None = None, n_threads: int | None = None, populate: bool = True, **kwargs: Any
) -> Any:
    """Opens a GGUF file and builds the model its `general.architecture` names.

    `populate` maps every page of the file up front (GGUFFile.populate, like llama.cpp's default mmap prefetch),
    so the first tokens do not run at page-fault speed, unless the file is larger than the memory the system
    reports available (it would only evict itself); pass False to page weights in lazily instead.

    Raises ModelLoadError (a ValueError) for an unknown architecture (listing the supported ones) or for
    missing/inconsistent metadata and tensors (naming the key or tensor); GGUFError for a malformed file.
    Extra keyword arguments go to the architecture's class (e.g. deepseek2's cache_type, mla)."""
    f = GGUFFile(path)
    try:
        try:
            cls = model_class(f.architecture)
        except ModelLoadError as e:
            raise ModelLoadError(f"{f.path}: {e}") from None
        try:
            model = cls(f, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
        except TypeError as e:
            if kwargs and "unexpected keyword" in str(e):
                raise TypeError(f"architecture {f.architecture!r} does not take {sorted(kwargs)}: {e}") from None
            raise
        if populate and f.size <= _available_memory():
            f.populate()
        return model
    except BaseException:
        f.close()
        raise


__all__ = [
    "load_model",
    "model_class",
    "SUPPORTED_ARCHITECTURES",
    "ContextFullError",
    "ModelLoadError",
    "KVCache",
    "DeepseekV2Model",
]
