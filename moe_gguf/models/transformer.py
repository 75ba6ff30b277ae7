"""The decoder block the dense and MoE families share (Llama, Mistral, Mixtral, Qwen2/3, Qwen2/3-MoE, OLMoE, Gemma 3).

A family file describes itself with a `Family` (RoPE pair layout, q/k norms, norm placement, FFN activation,
MoE routing defaults, embedding scale, sliding-window pattern); `TransformerModel` reads the `<arch>.*`
metadata and llama.cpp's tensor names and runs

    x = embd(tokens) [* sqrt(n_embd)]
    per layer:  h = attn_norm(x); h = attention(h) [; h = post_attention_norm(h)]; x += h
                h = ffn_norm(x);  h = ffn(h)       [; h = post_ffw_norm(h)];       x += h
    logits = output(output_norm(x))            (output = token_embd when the file has no `output` tensor)

Attention is grouped-query attention with an optional per-head (or whole-projection) q/k RMSNorm, RoPE in
GGML's NORM (adjacent pairs) or NEOX (halves) layout, scaling as the metadata says (none, linear, YaRN, or
per-dimension factors in a `rope_freqs` tensor: Llama 3), and a causal sliding window where the family puts one.
The cache row of one KV head is [v | k]; attention runs on the shared-KV kernel (nn.latent_attention, which
reads value = row[:d_v] and key = row[:d_k]) with queries [0 | q], so value and key live in one row.
The FFN is SwiGLU or GeGLU (tanh GELU), or top-k routed experts (softmax gating, optional renormalisation)
plus an optional shared expert with a sigmoid gate (Qwen2-MoE).

Arithmetic follows llama.cpp's CPU backend (x86 AVX2, llama-cpp-python's defaults) so that a quantized file gives
the same logits bit for bit: an F16 KV cache (`cache_type="f16"`, the default; "f32" keeps float32 rows) with
queries and softmax weights rounded to f16 and llama.cpp's accumulation order (nn.attention_f16_ggml), ggml's
RoPE (nn.rope_ggml_) unless YaRN is on, ggml's f16 GELU table, sqrt(n_embd) rounded as sqrtf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ggml_types import GGMLType
from ..gguf import GGUFFile
from ..ops import nn
from .base import (
    CausalLM,
    ContextFullError,
    KVCache,
    MetadataReader,
    ModelLoadError,
    TensorBinder,
    Weight,
    rope_inv_freq,
    yarn_get_mscale,
    yarn_inv_freq,
)


_Q4_K, _Q5_K, _Q6_K, _IQ4_XS = GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS


@dataclass(frozen=True)
class Family:
    """What distinguishes one architecture from another (everything else comes from the file)."""

    arch: str
    rope_neox: bool  # NEOX: pairs (i, i + n_rot/2); NORM: adjacent pairs (llama.cpp permutes Llama's q/k rows)
    qk_norm: bool = False  # attn_q_norm / attn_k_norm (per head, or over the whole projection: OLMoE)
    post_norms: bool = False  # post_attention_norm / post_ffw_norm (Gemma)
    gelu: bool = False  # GeGLU with tanh GELU instead of SwiGLU
    embd_scale: bool = False  # x *= sqrt(n_embd) after the lookup (Gemma)
    moe: bool = False  # routed experts (ffn_*_exps) possible
    moe_norm_default: bool = False  # renormalise the top-k weights when the file does not say
    swa_pattern: int = 0  # every `swa_pattern`-th layer is global, the others sliding-window (Gemma 3: 6)
    rope_base_swa: float = 10000.0  # RoPE base of sliding-window layers (Gemma 3's local base)
    attn_scale: Callable[["LayerGeometry"], float] | None = None  # default 1/sqrt(key_length)


@dataclass(frozen=True)
class LayerGeometry:
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_layer: int


@dataclass(frozen=True)
class TransformerConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_rot: int
    context_length: int
    rms_eps: float
    rope_freq_base: float
    rope_scaling: str  # none | linear | yarn
    rope_factor: float
    rope_orig_ctx: int
    yarn_beta_fast: float
    yarn_beta_slow: float
    sliding_window: int  # 0: none
    swa_layers: tuple[bool, ...]
    n_expert: int
    n_expert_used: int
    expert_weights_norm: bool
    attn_scale: float
    logit_softcap: float  # 0: none

    @classmethod
    def from_gguf(cls, f: GGUFFile, fam: Family) -> "TransformerConfig":
        m = MetadataReader(f, fam.arch)
        n_embd = m.int("embedding_length")
        n_head = m.int("attention.head_count")
        n_layer = m.int("block_count")
        n_head_kv = m.int("attention.head_count_kv", n_head)
        if n_head <= 0:
            raise ModelLoadError(f"{f.path}: {fam.arch}.attention.head_count must be positive, got {n_head}")
        head_k = m.int("attention.key_length", n_embd // n_head)
        head_v = m.int("attention.value_length", n_embd // n_head)
        n_vocab = m.int("vocab_size", None)
        if n_vocab is None:
            te = f.tensors.get("token_embd.weight")
            if te is None:
                raise ModelLoadError(f"{f.path}: tensor 'token_embd.weight' is missing")
            n_vocab = te.shape[0]
        window = m.int("attention.sliding_window", 0)
        if fam.swa_pattern > 0:
            swa = tuple((il + 1) % fam.swa_pattern != 0 for il in range(n_layer))
        else:
            swa = (window > 0,) * n_layer
        if not window:
            swa = (False,) * n_layer
        geo = LayerGeometry(n_embd, n_head, n_head_kv, head_k, head_v, n_layer)
        default_scale = fam.attn_scale(geo) if fam.attn_scale else 1.0 / math.sqrt(head_k)
        n_expert = m.int("expert_count", 0) if fam.moe else 0
        cfg = cls(
            arch=fam.arch,
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=m.int("feed_forward_length", 0),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_k=head_k,
            head_v=head_v,
            n_rot=m.int("rope.dimension_count", head_k),
            context_length=m.int("context_length"),
            rms_eps=m.float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_freq_base=m.float("rope.freq_base", 10000.0),
            rope_scaling=m.str("rope.scaling.type", "none"),
            rope_factor=m.float("rope.scaling.factor", 1.0),
            rope_orig_ctx=m.int("rope.scaling.original_context_length", 0),
            yarn_beta_fast=m.float("rope.scaling.yarn_beta_fast", 32.0),
            yarn_beta_slow=m.float("rope.scaling.yarn_beta_slow", 1.0),
            sliding_window=window,
            swa_layers=swa,
            n_expert=n_expert,
            n_expert_used=m.int("expert_used_count", 0) if n_expert else 0,
            expert_weights_norm=m.bool("expert_weights_norm", fam.moe_norm_default),
            attn_scale=m.float("attention.scale", default_scale),
            logit_softcap=m.float("final_logit_softcapping", 0.0),
        )
        cfg.validate(f.path)
        return cfg

    def validate(self, path: str) -> None:
        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_k", "head_v", "context_length"):
            if getattr(self, name) <= 0:
                raise ModelLoadError(f"{path}: {self.arch} {name} must be positive, got {getattr(self, name)}")
        if self.n_head % self.n_head_kv:
            raise ModelLoadError(f"{path}: {self.arch}.attention.head_count {self.n_head} is not a multiple of head_count_kv {self.n_head_kv}")
        if self.n_rot <= 0 or self.n_rot % 2 or self.n_rot > self.head_k:
            raise ModelLoadError(f"{path}: {self.arch}.rope.dimension_count {self.n_rot} must be even and <= key_length {self.head_k}")
        if self.rope_scaling not in ("none", "linear", "yarn"):
            raise ModelLoadError(f"{path}: rope scaling type {self.rope_scaling!r} unsupported (none, linear, yarn)")
        if self.rope_scaling == "yarn" and self.rope_factor > 1 and self.rope_orig_ctx <= 0:
            raise ModelLoadError(f"{path}: YaRN needs {self.arch}.rope.scaling.original_context_length")
        if self.n_expert and not 0 < self.n_expert_used <= self.n_expert:
            raise ModelLoadError(f"{path}: {self.arch}.expert_used_count {self.n_expert_used} must be in 1..{self.n_expert}")
        if self.sliding_window < 0:
            raise ModelLoadError(f"{path}: {self.arch}.attention.sliding_window must be >= 0")

    @property
    def cache_width(self) -> int:
        return self.n_head_kv * (self.head_v + self.head_k)


@dataclass
class _Layer:
    attn_norm: np.ndarray
    wq: Weight
    wk: Weight
    wv: Weight
    wo: Weight
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    post_attn_norm: np.ndarray | None
    ffn_norm: np.ndarray
    post_ffw_norm: np.ndarray | None
    swa: bool
    inv_freq: np.ndarray
    rope_mag: float
    ffn_gate: Weight | None = None
    ffn_up: Weight | None = None
    ffn_down: Weight | None = None
    gate_inp: Weight | None = None
    gate_exps: Weight | None = None
    up_exps: Weight | None = None
    down_exps: Weight | None = None
    gate_sh: Weight | None = None
    up_sh: Weight | None = None
    down_sh: Weight | None = None
    gate_inp_sh: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TransformerModel(CausalLM):
    """A loaded GGUF of one of the shared-block families.  See moe_gguf.models for the interface."""

    family: Family  # set by each family's subclass

    def __init__(self, file: GGUFFile, n_ctx: int | None = None, n_threads: int | None = None, cache_type: str = "f16") -> None:
        if cache_type not in ("f16", "f32"):
            raise ValueError(f"cache_type must be 'f16' or 'f32', got {cache_type!r}")
        self.cache_type = cache_type
        self.file = file
        fam = self.family
        self.architecture = fam.arch
        self.config = cfg = TransformerConfig.from_gguf(file, fam)
        if n_ctx is None:
            n_ctx = min(cfg.context_length, 4096)
        if not isinstance(n_ctx, (int, np.integer)) or isinstance(n_ctx, bool) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.n_ctx = int(n_ctx)
        self.n_vocab = cfg.n_vocab
        self.max_batch = 512
        self.pool = _make_pool(n_threads)
        b = TensorBinder(file, self.pool)
        D = cfg.n_embd
        self.tok_embd = b.weight("token_embd.weight", (cfg.n_vocab, D))
        self.output_norm = b.vector("output_norm.weight", D)
        self.output = b.weight("output.weight", (cfg.n_vocab, D)) if b.has("output.weight") else self.tok_embd
        rope_factors = b.vector("rope_freqs.weight", cfg.n_rot // 2) if b.has("rope_freqs.weight") else None
        if rope_factors is not None and np.any(rope_factors <= 0):
            raise ModelLoadError(f"{self.file.path}: tensor 'rope_freqs.weight' must be positive")
        self._rope_factors = rope_factors
        self._rope_global = self._rope_table(cfg.rope_freq_base, True, rope_factors)
        self._rope_local = self._rope_table(fam.rope_base_swa, False, None) if fam.swa_pattern else self._rope_global
        self._gelu_table = nn.gelu_table_f16() if fam.gelu else None
        self.layers = [self._bind_layer(b, il) for il in range(cfg.n_layer)]

    def _rope_table(self, base: float, scaled: bool, factors: np.ndarray | None) -> tuple[np.ndarray, float]:
        cfg = self.config
        mag = 1.0
        if scaled and cfg.rope_scaling == "yarn" and cfg.rope_factor > 1.0:
            inv = yarn_inv_freq(cfg.n_rot, base, cfg.rope_factor, cfg.rope_orig_ctx, cfg.yarn_beta_fast, cfg.yarn_beta_slow)
            mag = yarn_get_mscale(cfg.rope_factor)
        else:
            inv = rope_inv_freq(cfg.n_rot, base)
            if scaled and cfg.rope_scaling == "linear" and cfg.rope_factor > 0:
                inv = (inv / np.float32(cfg.rope_factor)).astype(np.float32)
        if factors is not None:  # Llama 3: per-dimension divisors of the frequency
            inv = (inv / factors).astype(np.float32)
        return np.ascontiguousarray(inv, dtype=np.float32), mag

    def _bind_layer(self, b: TensorBinder, il: int) -> _Layer:
        cfg, fam = self.config, self.family
        D, H, Hkv, hk, hv = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_k, cfg.head_v
        p = f"blk.{il}."

        def opt_vec(name: str, n: int) -> np.ndarray | None:
            return b.vector(p + name, n) if b.has(p + name) else None

        def qk_norm(name: str, n_heads: int, d: int) -> np.ndarray | None:
            if not fam.qk_norm:
                return None
            n = b.info(p + name).shape[0] if b.has(p + name) and len(b.info(p + name).shape) == 1 else d
            if n not in (d, n_heads * d):
                raise ModelLoadError(f"{self.file.path}: tensor {p + name!r} has {n} values; expected {d} (per head) or {n_heads * d}")
            return b.vector(p + name, n)

        swa = cfg.swa_layers[il]
        inv, mag = self._rope_local if swa else self._rope_global
        L = _Layer(
            attn_norm=b.vector(p + "attn_norm.weight", D),
            wq=b.weight(p + "attn_q.weight", (H * hk, D)),
            wk=b.weight(p + "attn_k.weight", (Hkv * hk, D)),
            wv=b.weight(p + "attn_v.weight", (Hkv * hv, D)),
            wo=b.weight(p + "attn_output.weight", (D, H * hv)),
            bq=opt_vec("attn_q.bias", H * hk),
            bk=opt_vec("attn_k.bias", Hkv * hk),
            bv=opt_vec("attn_v.bias", Hkv * hv),
            q_norm=qk_norm("attn_q_norm.weight", H, hk),
            k_norm=qk_norm("attn_k_norm.weight", Hkv, hk),
            post_attn_norm=b.vector(p + "post_attention_norm.weight", D) if fam.post_norms else None,
            ffn_norm=b.vector(p + "ffn_norm.weight", D),
            post_ffw_norm=b.vector(p + "post_ffw_norm.weight", D) if fam.post_norms else None,
            swa=swa,
            inv_freq=inv,
            rope_mag=mag,
        )
        if cfg.n_expert and b.has(p + "ffn_gate_inp.weight"):
            E = cfg.n_expert
            L.gate_inp = b.weight(p + "ffn_gate_inp.weight", (E, D))
            F = b.info(p + "ffn_down_exps.weight").shape[-1] if b.has(p + "ffn_down_exps.weight") else 0
            L.gate_exps = b.weight(p + "ffn_gate_exps.weight", (E, F, D))
            L.up_exps = b.weight(p + "ffn_up_exps.weight", (E, F, D))
            L.down_exps = b.weight(p + "ffn_down_exps.weight", (E, D, F))
            if b.has(p + "ffn_up_shexp.weight"):
                Fs = b.info(p + "ffn_up_shexp.weight").shape[0]
                L.gate_sh = b.weight(p + "ffn_gate_shexp.weight", (Fs, D))
                L.up_sh = b.weight(p + "ffn_up_shexp.weight", (Fs, D))
                L.down_sh = b.weight(p + "ffn_down_shexp.weight", (D, Fs))
                if b.has(p + "ffn_gate_inp_shexp.weight"):
                    L.gate_inp_sh = b.vector(p + "ffn_gate_inp_shexp.weight", D)
        else:
            if cfg.n_ff <= 0:
                raise ModelLoadError(f"{self.file.path}: {fam.arch}.feed_forward_length is missing or 0 for the dense layer {il}")
            L.ffn_gate = b.weight(p + "ffn_gate.weight", (cfg.n_ff, D))
            L.ffn_up = b.weight(p + "ffn_up.weight", (cfg.n_ff, D))
            L.ffn_down = b.weight(p + "ffn_down.weight", (D, cfg.n_ff))
        return L

    # ------------------------------------------------------------------------------------ public API
    def new_cache(self) -> KVCache:
        """One sequence's cache: per layer n_ctx rows of n_head_kv x [v | k], float16 (llama.cpp's default) or
        float32 as the model's cache_type says."""
        return KVCache(self.config.n_layer, self.n_ctx, self.config.cache_width, self.cache_type)

    def shift_cache(self, cache: KVCache, n_keep: int, n_discard: int) -> None:
        """Context shift: drops cached positions [n_keep, n_keep + n_discard) and moves the later ones down,
        re-rotating their keys by -n_discard (values do not depend on the position).  As in llama.cpp, the kept
        rows of deeper layers still carry what they saw of the discarded tokens.  cache.n_past drops by n_discard."""
        cfg = self.config
        n_keep, n_discard = self._check_shift(cache, n_keep, n_discard)
        src0, n_move = n_keep + n_discard, cache.n_past - n_keep - n_discard
        if n_move:
            cache.data[:, n_keep : n_keep + n_move] = cache.data[:, src0 : src0 + n_move]
            pos = np.full(n_move, -n_discard, dtype=np.int32)
            for il, L in enumerate(self.layers):
                rows = cache.data[il, n_keep : n_keep + n_move].reshape(n_move, cfg.n_head_kv, cfg.head_v + cfg.head_k)
                k = rows[:, :, cfg.head_v :].astype(np.float32)
                self._rope(k, pos, L, 1.0)
                rows[:, :, cfg.head_v :] = k  # (rounded to f16 again in an f16 cache, as llama.cpp's K-shift)
        cache.n_past = n_keep + n_move

    def _forward_chunk(self, toks: np.ndarray, cache: KVCache, want_logits: bool, all_rows: bool) -> np.ndarray | None:
        cfg = self.config
        n, p0 = toks.shape[0], cache.n_past
        pos = np.arange(p0, p0 + n, dtype=np.int32)
        x = self.tok_embd.rows(toks)
        if self.family.embd_scale:
            x *= np.sqrt(np.float32(cfg.n_embd))  # sqrtf, as llama.cpp
        for il, L in enumerate(self.layers):
            h = self._attention(L, nn.rms_norm(x, L.attn_norm, cfg.rms_eps), pos, cache.data[il], p0)
            if L.post_attn_norm is not None:
                h = nn.rms_norm(h, L.post_attn_norm, cfg.rms_eps)
            x += h
            h = self._ffn(L, nn.rms_norm(x, L.ffn_norm, cfg.rms_eps))
            if L.post_ffw_norm is not None:
                h = nn.rms_norm(h, L.post_ffw_norm, cfg.rms_eps)
            x += h
        cache.n_past = p0 + n
        if not want_logits:
            return None
        if not all_rows:
            x = x[-1:]
        logits = self._mm(self.output, nn.rms_norm(np.ascontiguousarray(x), self.output_norm, cfg.rms_eps))
        if cfg.logit_softcap > 0:
            c = np.float32(cfg.logit_softcap)
            logits = (np.tanh(logits / c) * c).astype(np.float32)
        return logits

    # ------------------------------------------------------------------------------------ attention
    def _rope(self, x: np.ndarray, pos: np.ndarray, L: _Layer, magnitude: float | None = None) -> None:
        """Rotates the first n_rot dims of x (n, heads, d) in place (cos/sin scaled by the layer's magnitude):
        ggml's arithmetic without YaRN, the frequency table with it."""
        cfg = self.config
        R = cfg.n_rot
        mag = L.rope_mag if magnitude is None else magnitude
        if cfg.rope_scaling != "yarn" or cfg.rope_factor <= 1.0:
            scaled = not L.swa or not self.family.swa_pattern  # sliding-window layers: local base, no scaling
            base = cfg.rope_freq_base if scaled else self.family.rope_base_swa
            fs = 1.0 / cfg.rope_factor if scaled and cfg.rope_scaling == "linear" and cfg.rope_factor > 0 else 1.0
            ff = self._rope_factors if scaled else None
            nn.rope_ggml_(x[:, :, :R], pos, base, self.family.rope_neox, fs, ff, mag)
            return
        if not self.family.rope_neox:
            nn.rope_(x[:, :, :R], pos, L.inv_freq, mag)
            return
        half = R // 2
        ang = pos.astype(np.float32)[:, None] * L.inv_freq[None, :]
        c = (np.cos(ang) * np.float32(mag)).astype(np.float32)[:, None, :]
        s = (np.sin(ang) * np.float32(mag)).astype(np.float32)[:, None, :]
        a = x[:, :, :half].copy()
        b = x[:, :, half:R].copy()
        x[:, :, :half] = a * c - b * s
        x[:, :, half:R] = b * c + a * s

    def _qk_norm(self, t: np.ndarray, w: np.ndarray | None, n: int, heads: int, d: int) -> np.ndarray:
        if w is None:
            return t.reshape(n, heads, d)
        if w.shape[0] == d:
            return nn.rms_norm(np.ascontiguousarray(t.reshape(n, heads, d)), w, self.config.rms_eps)
        return nn.rms_norm(np.ascontiguousarray(t), w, self.config.rms_eps).reshape(n, heads, d)

    def _attention(self, L: _Layer, h: np.ndarray, pos: np.ndarray, kv: np.ndarray, p0: int) -> np.ndarray:
        cfg = self.config
        n, H, Hkv, hk, hv = h.shape[0], cfg.n_head, cfg.n_head_kv, cfg.head_k, cfg.head_v
        q, k, v = self._mm(L.wq, h), self._mm(L.wk, h), self._mm(L.wv, h)
        if L.bq is not None:
            q += L.bq
        if L.bk is not None:
            k += L.bk
        if L.bv is not None:
            v += L.bv
        q = np.ascontiguousarray(self._qk_norm(q, L.q_norm, n, H, hk))
        k = np.ascontiguousarray(self._qk_norm(k, L.k_norm, n, Hkv, hk))
        self._rope(q, pos, L)
        self._rope(k, pos, L)
        w = hv + hk
        rows = kv[p0 : p0 + n].reshape(n, Hkv, w)
        rows[:, :, :hv] = v.reshape(n, Hkv, hv)
        rows[:, :, hv:] = k
        window = cfg.sliding_window if L.swa else 0
        if kv.dtype == np.float16 and hk % 32 == 0 and hv % 32 == 0:  # llama.cpp's arithmetic
            q *= np.float32(cfg.attn_scale)
            out = nn.attention_f16_ggml(q, kv, p0, Hkv, hv, window, self.pool)
            return self._mm(L.wo, out.reshape(n, H * hv))
        qx = np.zeros((n, H, w), dtype=np.float32)  # [0 | q]: the zero half meets the value part of a row
        qx[:, :, hv:] = q
        rep = H // Hkv
        out = np.empty((n, H, hv), dtype=np.float32)
        for g in range(Hkv):
            kvg = kv[:, g * w : (g + 1) * w]
            qg = np.ascontiguousarray(qx[:, g * rep : (g + 1) * rep])
            if not window or p0 + n <= window:
                out[:, g * rep : (g + 1) * rep] = nn.latent_attention(qg, kvg, p0, hv, cfg.attn_scale, self.pool)
                continue
            for i in range(n):  # query at position p sees keys p - window + 1 .. p
                start = max(0, p0 + i - window + 1)
                out[i, g * rep : (g + 1) * rep] = nn.latent_attention(
                    qg[i : i + 1], kvg[start:], p0 + i - start, hv, cfg.attn_scale, self.pool
                )[0]
        return self._mm(L.wo, out.reshape(n, H * hv))

    def _mm(self, W: Weight, x: np.ndarray) -> np.ndarray:
        """x @ W.T.  With llama.cpp's arithmetic on (cache_type f16), batches take the orders of llama.cpp's x86 batch
        kernels, where they differ from its one-token dot (which the regular kernels match): a Q4_K matrix of
        n_out % 8 == 0 rows is repacked there, its first n - n % 4 tokens (n >= 4) go through the 8x8 GEMM;
        other Q4_K and the Q5_K, Q6_K, IQ4_XS matrices take the tiled GEMM (ggml-cpu/tiled) for batches of n >= 8."""
        n, t = x.shape[0], W.ggml_type
        if self.cache_type != "f16" or t not in (_Q4_K, _Q5_K, _Q6_K, _IQ4_XS) or W.shape[-1] % 256:
            return W.mm(x)
        if t == _Q4_K and W.shape[0] % 8 == 0:
            m = n - n % 4 if n >= 4 else 0
            if m == 0:
                return W.mm(x)
            y = nn.kquant_gemm_ggml(W.raw, int(t), W.shape[-1], np.ascontiguousarray(x[:m]), nn.KQ_GEMM_REPACK, self.pool)
            return y if m == n else np.concatenate([y, W.mm(np.ascontiguousarray(x[m:]))])
        if n < 8:
            return W.mm(x)
        return nn.kquant_gemm_ggml(W.raw, int(t), W.shape[-1], np.ascontiguousarray(x), nn.KQ_GEMM_TILED, self.pool)

    # ------------------------------------------------------------------------------------ FFN
    def _glu(self, g: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self._gelu_table is not None:
            return nn.geglu_table(g, u, self._gelu_table)  # ggml's f16 GELU table
        return nn.silu_mul(g, u)

    def _ffn(self, L: _Layer, h: np.ndarray) -> np.ndarray:
        if L.ffn_gate is not None:
            return self._mm(L.ffn_down, self._glu(self._mm(L.ffn_gate, h), self._mm(L.ffn_up, h)))
        cfg = self.config
        ids, wts = nn.moe_route(L.gate_inp.mm(h), cfg.n_expert_used, nn.GATING_SOFTMAX, None, 1, 1, cfg.expert_weights_norm, 1.0)
        a = self._glu(L.gate_exps.mm_id(h, ids), L.up_exps.mm_id(h, ids))
        y = np.einsum("tk,tkd->td", wts, L.down_exps.mm_id(a, ids)).astype(np.float32)
        if L.up_sh is not None:
            s = L.down_sh.mm(self._glu(L.gate_sh.mm(h), L.up_sh.mm(h)))
            if L.gate_inp_sh is not None:
                s *= (1.0 / (1.0 + np.exp(-(h @ L.gate_inp_sh)))).astype(np.float32)[:, None]
            y += s
        return y


def _make_pool(n_threads: int | None) -> Any:
    from . import base

    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads <= 0):
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    if base._HAVE_MATMUL:
        return base._mm.ThreadPool(n_threads)
    return None


# architecture name -> (module, class); imported on first use
FAMILY_MODELS: dict[str, tuple[str, str]] = {
    "gemma3": ("gemma3", "Gemma3Model"),
    "llama": ("llama", "LlamaModel"),
    "olmoe": ("olmoe", "OlmoeModel"),
    "qwen2": ("qwen2", "Qwen2Model"),
    "qwen2moe": ("qwen2moe", "Qwen2MoeModel"),
    "qwen3": ("qwen3", "Qwen3Model"),
    "qwen3moe": ("qwen3moe", "Qwen3MoeModel"),
}


def family_class(arch: str) -> type[TransformerModel] | None:
    """The model class of a shared-block family, or None for another architecture."""
    import importlib

    entry = FAMILY_MODELS.get(arch)
    if entry is None:
        return None
    return getattr(importlib.import_module(f"{__package__}.{entry[0]}"), entry[1])


def load_family(path: Any, n_ctx: int | None = None, n_threads: int | None = None, cache_type: str = "f16") -> TransformerModel:
    """Opens a GGUF of one of the shared-block families (what moe_gguf.models.load_model does for them once
    they are in its registry); ModelLoadError naming the architecture and the supported ones otherwise."""
    f = GGUFFile(path)
    try:
        cls = family_class(f.architecture or "")
        if cls is None:
            raise ModelLoadError(
                f"{f.path}: architecture {f.architecture!r} is not supported (supported: {', '.join(sorted(FAMILY_MODELS))})"
            )
        return cls(f, n_ctx=n_ctx, n_threads=n_threads, cache_type=cache_type)
    except BaseException:
        f.close()
        raise
