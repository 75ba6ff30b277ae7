"""Pieces every architecture reuses: metadata reading, tensor binding, weights, the KV cache, RoPE/YaRN tables.

Nothing here knows a particular architecture.  An architecture file (e.g. deepseek2.py) reads its config with
`MetadataReader`, binds tensors with `TensorBinder` (clear errors naming the tensor for anything missing or
mis-shaped), wraps them in `Weight` (the ONE place that decides how a matmul runs) and keeps a `KVCache`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ggml_types import GGMLType, type_name
from ..gguf import GGUFFile, TensorInfo

try:  # the quantized matmul engine (moe_gguf/ops/matmul.py); numpy fallback until/unless it is present
    from ..ops import matmul as _mm  # type: ignore[attr-defined]

    _HAVE_MATMUL = all(hasattr(_mm, n) for n in ("ThreadPool", "QWeight", "matmul", "matmul_id"))
except Exception:  # pragma: no cover - depends on what is built
    _mm = None
    _HAVE_MATMUL = False


try:  # C dequantizer (moe_gguf/ops/quants.py) for embedding rows
    from ..ops.quants import dequantize as _dequantize
except Exception:  # pragma: no cover
    _dequantize = None


class ModelLoadError(ValueError):
    """A GGUF file cannot be used as a model: unknown architecture, missing or inconsistent metadata or tensors."""


class ContextFullError(ValueError):
    """`forward` was asked to go past the cache's n_ctx positions."""


# --------------------------------------------------------------------------------------------- metadata
_REQUIRED = object()


class MetadataReader:
    """Typed access to `<arch>.*` metadata keys, with clear errors for missing or mistyped values."""

    def __init__(self, file: GGUFFile, arch: str) -> None:
        self.file = file
        self.arch = arch

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        full = key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}"
        if full in self.file.metadata:
            return self.file.metadata[full]
        if default is _REQUIRED:
            raise ModelLoadError(f"{self.file.path}: required metadata key {full!r} is missing")
        return default

    def _scalar(self, key: str, v: Any) -> Any:
        if isinstance(v, np.ndarray):  # per-layer arrays: accept them when every layer agrees
            if v.size == 0:
                raise ModelLoadError(f"metadata {self.arch}.{key} is an empty array")
            if not np.all(v == v.flat[0]):
                raise ModelLoadError(f"metadata {self.arch}.{key} varies per layer ({v.tolist()}), which is not supported")
            return v.flat[0].item()
        return v

    def int(self, key: str, default: Any = _REQUIRED) -> int:
        v = self._scalar(key, self.raw(key, default))
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if v is default:
                return v
            raise ModelLoadError(f"metadata {self.arch}.{key} should be an integer, got {v!r}")
        return int(v)

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        v = self._scalar(key, self.raw(key, default))
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            if v is default:
                return v
            raise ModelLoadError(f"metadata {self.arch}.{key} should be a number, got {v!r}")
        return float(v)

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        v = self._scalar(key, self.raw(key, default))
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)) and v in (0, 1):
            return bool(v)
        raise ModelLoadError(f"metadata {self.arch}.{key} should be a bool, got {v!r}")

    def str(self, key: str, default: Any = _REQUIRED) -> str:
        v = self.raw(key, default)
        if not isinstance(v, str):
            if v is default:
                return v
            raise ModelLoadError(f"metadata {self.arch}.{key} should be a string, got {v!r}")
        return v


# --------------------------------------------------------------------------------------------- weights
class Weight:
    """One weight tensor of the file, used through the matmul engine (never dequantized whole at run time).

    2-D weights have numpy shape (n_out, n_in); 3-D ones (n_expert, n_out, n_in).  `mm` computes x @ W^T,
    `mm_id` the expert-indexed product, `rows` gathers embedding rows (dequantizing only those rows).
    """

    def __init__(self, file: GGUFFile, info: TensorInfo, pool: Any) -> None:
        self.file = file
        self.info = info
        self.name = info.name
        self.shape = info.shape
        self.ggml_type = info.ggml_type
        self._pool = pool
        self._q = None
        if _HAVE_MATMUL and pool is not None and len(self.shape) in (2, 3):
            try:
                self._q = _mm.QWeight.from_gguf(file, info.name)
            except (TypeError, ValueError, NotImplementedError):
                self._q = None  # type the engine does not take: numpy fallback below
        self._view = file.tensor(info.name)

    # ---------------------------------------------------------------- numpy fallback (per-call, tiny models)
    def _dequant(self, raw: np.ndarray) -> np.ndarray:
        t = self.ggml_type
        if t == GGMLType.F32:
            return np.asarray(raw, dtype=np.float32)
        if t == GGMLType.F16:
            return raw.astype(np.float32)
        if t == GGMLType.BF16:
            return (raw.astype(np.uint32) << 16).view(np.float32)
        from gguf import quants as _gq  # numpy dequantizers of the gguf package

        return _gq.dequantize(np.ascontiguousarray(raw), t).astype(np.float32, copy=False)

    @property
    def raw(self) -> np.ndarray:
        """The tensor's bytes as stored in the file (rows of blocks), read-only."""
        return self._view

    def dense(self) -> np.ndarray:
        """The whole tensor as float32 (copy for non-F32).  Test/reference use and small tensors only."""
        return self._dequant(self._view)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of a 2-D tensor as float32 (n, n_in): embedding lookup, dequantizing only those rows."""
        raw = np.ascontiguousarray(self._view[ids])
        if _dequantize is not None and self.ggml_type != GGMLType.F32:
            try:
                return _dequantize(raw, self.ggml_type, (len(ids), self.shape[-1]))
            except (TypeError, ValueError):
                pass  # a type the C dequantizer lacks: numpy below
        return np.ascontiguousarray(self._dequant(raw), dtype=np.float32)

    def mm(self, x: np.ndarray) -> np.ndarray:
        """x (n_tok, n_in) float32 -> x @ W^T, (n_tok, n_out)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.shape[-1] or len(self.shape) != 2:
            raise ValueError(f"{self.name}: cannot multiply {self.shape} weight by input {x.shape}")
        if self._q is not None:
            return _mm.matmul(self._pool, self._q, x)
        if self.ggml_type == GGMLType.F32:
            return x @ self._view.T
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        step = max(1, (1 << 22) // (4 * self.shape[1]))  # dequantize <= 4 MiB of rows at a time
        for r in range(0, self.shape[0], step):
            out[:, r : r + step] = x @ self._dequant(self._view[r : r + step]).T
        return out

    def mm_id(self, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Expert-indexed product: ids int32 (n_tok, k); x (n_tok, n_in) shared by the k slots or (n_tok, k, n_in)
        one row per slot -> (n_tok, k, n_out), y[t, s] = W[ids[t, s]] @ x[t(, s)]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if (
            len(self.shape) != 3
            or x.ndim not in (2, 3)
            or x.shape[-1] != self.shape[2]
            or ids.ndim != 2
            or x.shape[0] != ids.shape[0]
            or (x.ndim == 3 and x.shape[1] != ids.shape[1])
        ):
            raise ValueError(f"{self.name}: bad mm_id shapes weight {self.shape}, x {x.shape}, ids {ids.shape}")
        if self._q is not None:  # ops.matmul_id (and its kernel) reject out-of-range ids with a clear error
            return _mm.matmul_id(self._pool, self._q, x, ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise ValueError(f"{self.name}: expert id out of range [0, {self.shape[0]})")
        n, k = ids.shape
        out = np.empty((n, k, self.shape[1]), dtype=np.float32)
        for e in np.unique(ids):  # group rows per expert: each expert's weights stream once per batch
            t, s = np.nonzero(ids == e)
            w = self._dequant(self._view[e])
            out[t, s] = (x[t] if x.ndim == 2 else x[t, s]) @ w.T
        return out


class TensorBinder:
    """Looks tensors up by llama.cpp name and checks their shapes, raising ModelLoadError naming the tensor."""

    def __init__(self, file: GGUFFile, pool: Any) -> None:
        self.file = file
        self.pool = pool
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def info(self, name: str, shape: tuple[int, ...] | None = None) -> TensorInfo:
        t = self.file.tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{self.file.path}: tensor {name!r} is missing")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise ModelLoadError(
                f"{self.file.path}: tensor {name!r} has shape {t.shape} (ggml ne {t.ne}), expected {tuple(shape)} "
                f"(ggml ne {tuple(reversed(shape))}) from the metadata"
            )
        self.used.add(name)
        return t

    def weight(self, name: str, shape: tuple[int, ...]) -> Weight:
        return Weight(self.file, self.info(name, shape), self.pool)

    def vector(self, name: str, n: int) -> np.ndarray:
        """A 1-D parameter (norm weight, bias) as a float32 array of length n (small: copied)."""
        t = self.info(name, (n,))
        if t.ggml_type not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
            raise ModelLoadError(f"{self.file.path}: tensor {name!r} has type {type_name(t.ggml_type)}; norms/biases must be F32/F16/BF16")
        return np.ascontiguousarray(Weight(self.file, t, None).dense(), dtype=np.float32)


# --------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """One sequence's cache: per layer, n_ctx rows of `width` values, float32 or float16 (allocated lazily-zeroed).

    `n_past` is the number of positions filled.  `truncate(n)` drops everything from position n on
    (the rows are simply overwritten later); `clear()` is truncate(0).
    """

    def __init__(self, n_layer: int, n_ctx: int, width: int, dtype: str = "f32") -> None:
        if n_layer <= 0 or n_ctx <= 0 or width <= 0:
            raise ValueError(f"bad cache geometry n_layer={n_layer} n_ctx={n_ctx} width={width}")
        if dtype not in ("f32", "f16"):
            raise ValueError(f"cache type must be 'f32' or 'f16', got {dtype!r}")
        self.n_layer = n_layer
        self.n_ctx = n_ctx
        self.width = width
        self.dtype = dtype
        np_dtype = np.float32 if dtype == "f32" else np.float16
        try:  # calloc: pages appear as they are used
            self.data = np.zeros((n_layer, n_ctx, width), dtype=np_dtype)
        except MemoryError:
            raise MemoryError(f"cannot allocate a {dtype} KV cache of {n_layer}x{n_ctx}x{width} values; use a smaller n_ctx") from None
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def clear(self) -> None:
        self.n_past = 0

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.n_past:
            raise ValueError(f"cannot truncate a cache holding {self.n_past} positions to {n}")
        self.n_past = int(n)


# --------------------------------------------------------------------------------------------- RoPE / YaRN


class CausalLM:
    """What every architecture's model shares: the public `forward` (argument and context checks, causal chunking
    of long inputs so scratch stays bounded) and the cache checks. Subclasses set `config` (with `n_layer` and
    `cache_width`), `n_vocab`, `max_batch`, and implement `_forward_chunk`."""

    config: Any
    n_vocab: int
    max_batch: int = 512

    def _forward_chunk(self, toks: np.ndarray, cache: KVCache, want_logits: bool, all_rows: bool) -> np.ndarray | None:
        raise NotImplementedError

    def _check_cache(self, cache: Any) -> None:
        if not isinstance(cache, KVCache) or cache.n_layer != self.config.n_layer or cache.width != self.config.cache_width:
            raise TypeError("cache must come from this model's new_cache()")

    def _check_shift(self, cache: Any, n_keep: int, n_discard: int) -> tuple[int, int]:
        """Validates a context shift; returns (n_keep, n_discard) as ints."""
        self._check_cache(cache)
        n_keep, n_discard = int(n_keep), int(n_discard)
        if n_keep < 0 or n_discard <= 0 or n_keep + n_discard > cache.n_past:
            raise ValueError(f"cannot discard {n_discard} positions after {n_keep} from a cache holding {cache.n_past}")
        return n_keep, n_discard

    def forward(self, tokens: Any, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Runs `tokens` (int array (n,)) at positions cache.n_past.. and advances the cache.
        Returns float32 logits (n, n_vocab) if all_logits else (n_vocab,) for the last token."""
        toks = np.asarray(tokens)
        if toks.ndim != 1 or toks.size == 0:
            raise ValueError(f"tokens must be a non-empty 1-D array, got shape {toks.shape}")
        if not np.issubdtype(toks.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got {toks.dtype}")
        if toks.min() < 0 or toks.max() >= self.n_vocab:
            raise ValueError(f"token id out of range [0, {self.n_vocab}): min {int(toks.min())}, max {int(toks.max())}")
        toks = toks.astype(np.int32)
        self._check_cache(cache)
        n, p0 = toks.shape[0], cache.n_past
        if p0 + n > cache.n_ctx:
            raise ContextFullError(
                f"context full: {p0} cached + {n} new tokens > n_ctx {cache.n_ctx} (truncate or clear the cache, or load with a larger n_ctx)"
            )
        outs = []
        for c0 in range(0, n, self.max_batch):  # bounded scratch: long inputs run in causal chunks
            part = toks[c0 : c0 + self.max_batch]
            last = c0 + len(part) == n
            logits = self._forward_chunk(part, cache, all_logits or last, all_logits)
            if logits is not None:
                outs.append(logits)
        if all_logits:
            return outs[0] if len(outs) == 1 else np.concatenate(outs)
        return outs[-1][0]


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """DeepSeek's / YaRN's magnitude factor 0.1*m*ln(s) + 1 (1 when s <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class RopeTable:
    """Per-pair inverse frequencies (n_rot/2 float32) and the magnitude applied to cos/sin."""

    inv_freq: np.ndarray
    magnitude: float


def rope_inv_freq(n_rot: int, base: float) -> np.ndarray:
    return (1.0 / (base ** (np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot)))).astype(np.float32)


def yarn_inv_freq(n_rot: int, base: float, factor: float, orig_ctx: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> np.ndarray:
    """YaRN frequencies as DeepSeek/transformers define them: a linear ramp between the correction dims of
    beta_fast (floor) and beta_slow (ceil), interpolated (freq/factor) above it, original below it."""

    def corr_dim(n_rotations: float) -> float:
        return (n_rot * math.log(orig_ctx / (n_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), n_rot - 1)
    if low == high:
        high += 0.001
    pos_freqs = (base ** (np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot))).astype(np.float32)
    extra = (1.0 / pos_freqs).astype(np.float32)
    inter = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
    ramp = np.clip((np.arange(n_rot // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1).astype(np.float32)
    extra_factor = (1 - ramp).astype(np.float32)
    return (inter * (1 - extra_factor) + extra * extra_factor).astype(np.float32)
