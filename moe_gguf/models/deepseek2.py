"""DeepSeek-V2 / V2-Lite / V2.5 / V3 (GGUF architecture `deepseek2`), exactly as llama.cpp stores it.

Attention is MLA.  The cache holds, per token and layer, only [c_kv (kv_lora_rank) | k_pe (rope dims)]; the
default ("absorbed") path folds W_UK into the query and applies W_UV after attending over the latent rows.
`mla="naive"` decompresses K/V per head from the same cache (the textbook form; kept as the test reference).
Both tensor layouts load: `attn_k_b` + `attn_v_b` (current files) and `attn_kv_b` (files converted before the
MLA split; their W_UK/W_UV are unpacked to float32 at load, H*(nope+v)*kv_lora*4 bytes per layer).
MoE (split `ffn_{gate,up}_exps` or merged `ffn_gate_up_exps`): softmax (V2) or sigmoid + selection bias (V3) gating, greedy or group-limited top-k, norm_topk, the
routed scaling factor and always-on shared experts.  RoPE is GGML "NORM" (adjacent pairs) with YaRN
frequencies; the YaRN attention magnitude is folded into the softmax scale as DeepSeek defines it.

Decoding (one token per forward, absorbed MLA, matmul engine present) runs a lean path over per-model buffers
allocated once: per layer two fused C calls for attention's projections (wq/wkv_a on one quantized h, then W_UK
per head; W_UV per head, then W_O), the latent attention, and ONE fused MoE call (routing, gate/up + SwiGLU,
down + weighted sum, shared experts; the dense layer as a one-expert MoE) -- four pool dispatches per layer,
results equal to the general path's bit for bit.  Prefill and the `mla="naive"` reference keep the general path
(expert-grouped matmul_id).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gguf import GGUFFile
from ..ops import nn
from ..ops.moe import BoundLatentAttention, BoundMoEFFN, BoundRmsNorm, GemvBatch, MlaDecodePrep, MoEFFN, MoEWorkspace
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

ARCH = "deepseek2"


@dataclass(frozen=True)
class DeepseekV2Config:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    context_length: int
    rms_eps: float
    q_lora_rank: int  # 0: no Q-LoRA (attn_q)
    kv_lora_rank: int
    n_rot: int  # qk_rope_head_dim
    qk_nope: int
    v_head: int
    mla_split: bool  # attn_k_b/attn_v_b (True) or attn_kv_b (False)
    n_leading_dense: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    expert_weights_scale: float
    expert_weights_norm: bool
    gating_func: int  # 1 softmax, 2 sigmoid
    n_group: int
    n_group_used: int
    rope_freq_base: float
    rope_scaling: str  # "none" | "yarn" | "linear"
    rope_factor: float
    rope_orig_ctx: int
    yarn_beta_fast: float
    yarn_beta_slow: float
    yarn_mscale_all_dim: float  # GGUF yarn_log_multiplier / 0.1

    @property
    def qk_head(self) -> int:
        return self.qk_nope + self.n_rot

    @property
    def cache_width(self) -> int:
        return self.kv_lora_rank + self.n_rot

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "DeepseekV2Config":
        m = MetadataReader(f, ARCH)
        n_head = m.int("attention.head_count")
        n_rot = m.int("rope.dimension_count")
        kv_lora = m.int("attention.kv_lora_rank")
        q_lora = m.int("attention.q_lora_rank", 0)
        k_mla = m.int("attention.key_length_mla", None)
        v_mla = m.int("attention.value_length_mla", None)
        mla_split = "blk.0.attn_k_b.weight" in f.tensors
        if mla_split:
            if k_mla is None or v_mla is None:
                raise ModelLoadError(f"{f.path}: attn_k_b/attn_v_b present but {ARCH}.attention.key_length_mla/value_length_mla missing")
            k_len, v_len = k_mla, v_mla
        else:
            k_len = m.int("attention.key_length", None)
            v_len = m.int("attention.value_length", None)
            if k_mla is not None and v_mla is not None:  # MLA metadata with a legacy kv_b tensor
                k_len, v_len = k_mla, v_mla
            if k_len is None or v_len is None:
                raise ModelLoadError(f"{f.path}: {ARCH}.attention.key_length/value_length missing")
        if k_len <= n_rot:
            raise ModelLoadError(f"{f.path}: key length {k_len} must exceed rope.dimension_count {n_rot}")
        n_vocab = m.int("vocab_size", None)
        if n_vocab is None:
            te = f.tensors.get("token_embd.weight")
            if te is None:
                raise ModelLoadError(f"{f.path}: tensor 'token_embd.weight' is missing")
            n_vocab = te.shape[0]
        n_expert = m.int("expert_count", 0)
        scaling = m.str("rope.scaling.type", "none")
        n_layer = m.int("block_count")
        # absent -> softmax (the V2 rule), except GLM-4.7-Lite (47/48 layers, vocab 154880): sigmoid, as llama.cpp does
        glm_lite = n_layer in (47, 48) and n_vocab == 154880
        gating = m.int("expert_gating_func", 2 if glm_lite else 1)
        if gating not in (1, 2):
            raise ModelLoadError(f"{f.path}: {ARCH}.expert_gating_func {gating} unsupported (1 softmax, 2 sigmoid)")
        cfg = cls(
            n_vocab=n_vocab,
            n_embd=m.int("embedding_length"),
            n_layer=n_layer,
            n_ff=m.int("feed_forward_length", 0),
            n_head=n_head,
            context_length=m.int("context_length"),
            rms_eps=m.float("attention.layer_norm_rms_epsilon", 1e-6),
            q_lora_rank=q_lora,
            kv_lora_rank=kv_lora,
            n_rot=n_rot,
            qk_nope=k_len - n_rot,
            v_head=v_len,
            mla_split=mla_split,
            n_leading_dense=m.int("leading_dense_block_count", 0),
            n_expert=n_expert,
            n_expert_used=m.int("expert_used_count", 0),
            n_expert_shared=m.int("expert_shared_count", 0),
            n_ff_exp=m.int("expert_feed_forward_length", 0),
            expert_weights_scale=m.float("expert_weights_scale", 1.0),
            expert_weights_norm=m.bool("expert_weights_norm", False),
            gating_func=gating,
            n_group=m.int("expert_group_count", 1),
            n_group_used=m.int("expert_group_used_count", 1),
            rope_freq_base=m.float("rope.freq_base", 10000.0),
            rope_scaling=scaling,
            rope_factor=m.float("rope.scaling.factor", 1.0),
            rope_orig_ctx=m.int("rope.scaling.original_context_length", 0),
            yarn_beta_fast=m.float("rope.scaling.yarn_beta_fast", 32.0),
            yarn_beta_slow=m.float("rope.scaling.yarn_beta_slow", 1.0),
            yarn_mscale_all_dim=m.float("rope.scaling.yarn_log_multiplier", 0.0) / 0.1,
        )
        cfg.validate(f.path)
        return cfg

    def validate(self, path: str) -> None:
        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "kv_lora_rank", "n_rot", "context_length"):
            if getattr(self, name) <= 0:
                raise ModelLoadError(f"{path}: {name} must be positive, got {getattr(self, name)}")
        if self.n_rot % 2:
            raise ModelLoadError(f"{path}: rope.dimension_count {self.n_rot} must be even")
        if self.rope_scaling not in ("none", "yarn", "linear"):
            raise ModelLoadError(f"{path}: rope scaling type {self.rope_scaling!r} unsupported (none, linear, yarn)")
        if self.rope_scaling == "yarn" and self.rope_factor > 1 and self.rope_orig_ctx <= 0:
            raise ModelLoadError(f"{path}: YaRN needs rope.scaling.original_context_length")
        if self.n_layer > self.n_leading_dense:
            if self.n_expert <= 0 or not 0 < self.n_expert_used <= self.n_expert or self.n_ff_exp <= 0:
                raise ModelLoadError(
                    f"{path}: MoE layers need expert_count > 0, 0 < expert_used_count <= expert_count and expert_feed_forward_length"
                )
            if self.n_group > 1 and (self.n_expert % self.n_group or not 0 < self.n_group_used <= self.n_group):
                raise ModelLoadError(f"{path}: {self.n_expert} experts do not split into {self.n_group} groups / {self.n_group_used} used")

    # ---- derived rope / attention constants (DeepSeek's definition, as in transformers)
    def rope_table(self) -> tuple[np.ndarray, float]:
        """(inv_freq, cos/sin magnitude)."""
        if self.rope_scaling == "yarn" and self.rope_factor > 1.0:
            inv = yarn_inv_freq(self.n_rot, self.rope_freq_base, self.rope_factor, self.rope_orig_ctx, self.yarn_beta_fast, self.yarn_beta_slow)
            # GGUF keeps only mscale_all_dim; DeepSeek configs have mscale == mscale_all_dim, so the cos/sin factor
            # mscale(s, mscale)/mscale(s, mscale_all_dim) is 1.  Without it, YaRN's default 1 + 0.1 ln s applies.
            mag = 1.0 if self.yarn_mscale_all_dim else yarn_get_mscale(self.rope_factor)
            return inv, mag
        inv = rope_inv_freq(self.n_rot, self.rope_freq_base)
        if self.rope_scaling == "linear" and self.rope_factor > 0:
            inv = (inv / np.float32(self.rope_factor)).astype(np.float32)
        return inv, 1.0

    def kq_scale(self) -> float:
        s = 1.0 / math.sqrt(self.qk_head)
        if self.rope_scaling == "yarn" and self.yarn_mscale_all_dim:
            m = yarn_get_mscale(self.rope_factor, self.yarn_mscale_all_dim)
            s *= m * m
        return s


@dataclass
class _Layer:
    attn_norm: np.ndarray
    wq: Weight | None
    wq_a: Weight | None
    q_a_norm: np.ndarray | None
    wq_b: Weight | None
    wkv_a: Weight
    kv_a_norm: np.ndarray
    wk_b: Weight | None  # (H, kv_lora, nope)
    wv_b: Weight | None  # (H, v, kv_lora)
    uk: np.ndarray | None  # legacy: (H, nope, kv_lora) float32
    uv: np.ndarray | None  # legacy: (H, v, kv_lora) float32
    wo: Weight
    ffn_norm: np.ndarray
    # dense
    ffn_gate: Weight | None = None
    ffn_up: Weight | None = None
    ffn_down: Weight | None = None
    # moe
    gate_inp: Weight | None = None
    probs_b: np.ndarray | None = None
    gate_exps: Weight | None = None
    up_exps: Weight | None = None
    gate_up_exps: Weight | None = None  # newer files: merged (E, 2F, D), gate rows then up rows
    down_exps: Weight | None = None
    gate_sh: Weight | None = None
    up_sh: Weight | None = None
    down_sh: Weight | None = None


class DeepseekV2Model(CausalLM):
    """A loaded `deepseek2` GGUF.  See moe_gguf.models for the interface (forward / new_cache)."""

    architecture = ARCH

    def __init__(
        self, file: GGUFFile, n_ctx: int | None = None, n_threads: int | None = None, mla: str = "absorbed", cache_type: str = "f32"
    ) -> None:
        if mla not in ("absorbed", "naive"):
            raise ValueError(f"mla must be 'absorbed' or 'naive', got {mla!r}")
        if cache_type not in ("f32", "f16"):
            raise ValueError(f"cache_type must be 'f32' or 'f16', got {cache_type!r}")
        self.cache_type = cache_type
        self.file = file
        self.config = cfg = DeepseekV2Config.from_gguf(file)
        if n_ctx is None:
            n_ctx = min(cfg.context_length, 4096)
        if not isinstance(n_ctx, (int, np.integer)) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.n_ctx = int(n_ctx)
        self.n_vocab = cfg.n_vocab
        self.mla = mla
        self.max_batch = 512  # tokens per internal forward chunk (bounds activation scratch)
        self.pool = _make_pool(n_threads)
        self.inv_freq, self.rope_mag = cfg.rope_table()
        self.kq_scale = cfg.kq_scale()
        b = TensorBinder(file, self.pool)
        D, H = cfg.n_embd, cfg.n_head
        self.tok_embd = b.weight("token_embd.weight", (cfg.n_vocab, D))
        self.output_norm = b.vector("output_norm.weight", D)
        self.output = b.weight("output.weight", (cfg.n_vocab, D)) if b.has("output.weight") else self.tok_embd
        self.layers = [self._bind_layer(b, il) for il in range(cfg.n_layer)]
        self._head_ids = np.zeros((0, cfg.n_head), dtype=np.int32)
        self._decode: _Decoder | None = None  # built on the first decode step (see _Decoder)
        self._decode_lock = threading.Lock()  # one decode at a time on the shared buffers; others take the general path
        self.lean_decode = True  # False: decode through the general path too (tests compare the two)

    def _bind_layer(self, b: TensorBinder, il: int) -> _Layer:
        cfg = self.config
        D, H, R, C = cfg.n_embd, cfg.n_head, cfg.n_rot, cfg.kv_lora_rank
        p = f"blk.{il}."
        qk = cfg.qk_head
        if b.has(p + "attn_q_a.weight"):
            ql = b.info(p + "attn_q_a.weight").shape[0]
            if cfg.q_lora_rank and ql != cfg.q_lora_rank:
                raise ModelLoadError(f"tensor {p}attn_q_a.weight has {ql} rows but q_lora_rank is {cfg.q_lora_rank}")
            wq, wq_a = None, b.weight(p + "attn_q_a.weight", (ql, D))
            q_a_norm = b.vector(p + "attn_q_a_norm.weight", ql)
            wq_b = b.weight(p + "attn_q_b.weight", (H * qk, ql))
        else:
            wq, wq_a, q_a_norm, wq_b = b.weight(p + "attn_q.weight", (H * qk, D)), None, None, None
        wk_b = wv_b = uk = uv = None
        if cfg.mla_split:
            wk_b = b.weight(p + "attn_k_b.weight", (H, C, cfg.qk_nope))
            wv_b = b.weight(p + "attn_v_b.weight", (H, cfg.v_head, C))
            if self.mla == "naive":
                uk = np.ascontiguousarray(wk_b.dense().transpose(0, 2, 1))
                uv = np.ascontiguousarray(wv_b.dense())
        else:
            kvb = b.weight(p + "attn_kv_b.weight", (H * (cfg.qk_nope + cfg.v_head), C)).dense()
            kvb = kvb.reshape(H, cfg.qk_nope + cfg.v_head, C)
            uk = np.ascontiguousarray(kvb[:, : cfg.qk_nope])
            uv = np.ascontiguousarray(kvb[:, cfg.qk_nope :])
        L = _Layer(
            attn_norm=b.vector(p + "attn_norm.weight", D),
            wq=wq,
            wq_a=wq_a,
            q_a_norm=q_a_norm,
            wq_b=wq_b,
            wkv_a=b.weight(p + "attn_kv_a_mqa.weight", (C + R, D)),
            kv_a_norm=b.vector(p + "attn_kv_a_norm.weight", C),
            wk_b=wk_b,
            wv_b=wv_b,
            uk=uk,
            uv=uv,
            wo=b.weight(p + "attn_output.weight", (D, H * cfg.v_head)),
            ffn_norm=b.vector(p + "ffn_norm.weight", D),
        )
        if il < cfg.n_leading_dense:
            L.ffn_gate = b.weight(p + "ffn_gate.weight", (cfg.n_ff, D))
            L.ffn_up = b.weight(p + "ffn_up.weight", (cfg.n_ff, D))
            L.ffn_down = b.weight(p + "ffn_down.weight", (D, cfg.n_ff))
        else:
            E, F = cfg.n_expert, cfg.n_ff_exp
            L.gate_inp = b.weight(p + "ffn_gate_inp.weight", (E, D))
            if b.has(p + "exp_probs_b.bias"):
                L.probs_b = b.vector(p + "exp_probs_b.bias", E)
            if b.has(p + "ffn_gate_up_exps.weight"):
                L.gate_up_exps = b.weight(p + "ffn_gate_up_exps.weight", (E, 2 * F, D))
            else:
                L.gate_exps = b.weight(p + "ffn_gate_exps.weight", (E, F, D))
                L.up_exps = b.weight(p + "ffn_up_exps.weight", (E, F, D))
            L.down_exps = b.weight(p + "ffn_down_exps.weight", (E, D, F))
            if cfg.n_expert_shared > 0:
                Fs = F * cfg.n_expert_shared
                L.gate_sh = b.weight(p + "ffn_gate_shexp.weight", (Fs, D))
                L.up_sh = b.weight(p + "ffn_up_shexp.weight", (Fs, D))
                L.down_sh = b.weight(p + "ffn_down_shexp.weight", (D, Fs))
        return L

    # ------------------------------------------------------------------------------------ public API
    def new_cache(self) -> KVCache:
        """One sequence's latent cache: n_ctx rows of [c_kv | k_pe] per layer, of the model's cache_type."""
        return KVCache(self.config.n_layer, self.n_ctx, self.config.cache_width, self.cache_type)

    def shift_cache(self, cache: KVCache, n_keep: int, n_discard: int) -> None:
        """Context shift: drops cached positions [n_keep, n_keep + n_discard) and moves the later ones down.

        Only k_pe (the last n_rot values of each cache row) depends on the position, so the moved rows are
        re-rotated by -n_discard; c_kv stays as it is.  As in llama.cpp, the kept rows still carry what they
        saw of the discarded tokens in deeper layers.  cache.n_past drops by n_discard."""
        n_keep, n_discard = self._check_shift(cache, n_keep, n_discard)
        C = self.config.kv_lora_rank
        src0, n_move = n_keep + n_discard, cache.n_past - n_keep - n_discard
        if n_move:
            cache.data[:, n_keep : n_keep + n_move] = cache.data[:, src0 : src0 + n_move]  # numpy copes with the overlap
            pos = np.full(n_move, -n_discard, dtype=np.int32)
            for il in range(cache.n_layer):
                kpe = np.ascontiguousarray(cache.data[il, n_keep : n_keep + n_move, C:], dtype=np.float32)
                cache.data[il, n_keep : n_keep + n_move, C:] = nn.rope_(kpe[:, None, :], pos, self.inv_freq, 1.0)[:, 0]
        cache.n_past = n_keep + n_move

    def _forward_chunk(self, toks: np.ndarray, cache: KVCache, want_logits: bool, all_rows: bool) -> np.ndarray | None:
        cfg = self.config
        n, p0 = toks.shape[0], cache.n_past
        if n == 1 and self.lean_decode and self._decode_lock.acquire(blocking=False):
            try:
                dec = self._decoder()
                if dec is not None:
                    x = dec.step(self, toks, cache)
                    cache.n_past = p0 + 1
                    return self.output.mm(nn.rms_norm(x, self.output_norm, cfg.rms_eps)) if want_logits else None
            finally:
                self._decode_lock.release()
        pos = np.arange(p0, p0 + n, dtype=np.int32)
        x = self.tok_embd.rows(toks)
        for il, L in enumerate(self.layers):
            h = nn.rms_norm(x, L.attn_norm, cfg.rms_eps)
            x += self._attention(L, h, pos, cache.data[il], p0)
            h = nn.rms_norm(x, L.ffn_norm, cfg.rms_eps)
            x += self._ffn(L, h, il)
        cache.n_past = p0 + n
        if not want_logits:
            return None
        if not all_rows:
            x = x[-1:]
        x = nn.rms_norm(np.ascontiguousarray(x), self.output_norm, cfg.rms_eps)
        return self.output.mm(x)

    def _decoder(self) -> "_Decoder | None":
        """The lean decode path (built once), or None when this model cannot use it."""
        if self._decode is None:
            self._decode = _Decoder.build(self) or False  # type: ignore[assignment]
        return self._decode or None

    # ------------------------------------------------------------------------------------ layers
    def _heads(self, n: int) -> np.ndarray:
        """ids (n, H) = 0..H-1 per token: per-head matrices driven through the expert-indexed matmul."""
        H = self.config.n_head
        if self._head_ids.shape[0] < n:
            self._head_ids = np.tile(np.arange(H, dtype=np.int32), (max(n, 64), 1))
        return self._head_ids[:n]

    def _attention(self, L: _Layer, h: np.ndarray, pos: np.ndarray, kv: np.ndarray, p0: int) -> np.ndarray:
        cfg = self.config
        n, H, R, C, NP = h.shape[0], cfg.n_head, cfg.n_rot, cfg.kv_lora_rank, cfg.qk_nope
        if L.wq is not None:
            q = L.wq.mm(h)
        else:
            q = L.wq_b.mm(nn.rms_norm(L.wq_a.mm(h), L.q_a_norm, cfg.rms_eps))
        q = q.reshape(n, H, cfg.qk_head)
        nn.rope_(q[:, :, NP:], pos, self.inv_freq, self.rope_mag)
        ckv = L.wkv_a.mm(h)  # (n, C + R)
        kpe = np.ascontiguousarray(ckv[:, C:])
        nn.rope_(kpe[:, None, :], pos, self.inv_freq, self.rope_mag)
        kv[p0 : p0 + n, :C] = nn.rms_norm(np.ascontiguousarray(ckv[:, :C]), L.kv_a_norm, cfg.rms_eps)
        kv[p0 : p0 + n, C:] = kpe  # (rounded to f16 for an f16 cache)
        if self.mla == "naive":
            o = self._naive_attention(L, q, kv, p0)
        else:
            qa = np.empty((n, H, C + R), dtype=np.float32)
            if L.wk_b is not None:  # q_abs_h = W_UK,h^T q_nope_h, one matmul per head
                qa[:, :, :C] = L.wk_b.mm_id(q[:, :, :NP], self._heads(n))
            else:
                qa[:, :, :C] = np.einsum("thd,hdc->thc", q[:, :, :NP], L.uk)
            qa[:, :, C:] = q[:, :, NP:]
            o_lat = nn.latent_attention(qa, kv, p0, C, self.kq_scale, self.pool)  # (n, H, C)
            if L.wv_b is not None:
                o = L.wv_b.mm_id(o_lat, self._heads(n)).reshape(n, H * cfg.v_head)
            else:
                o = np.einsum("thc,hvc->thv", o_lat, L.uv).reshape(n, H * cfg.v_head)
        return L.wo.mm(np.ascontiguousarray(o, dtype=np.float32))

    def _naive_attention(self, L: _Layer, q: np.ndarray, kv: np.ndarray, p0: int) -> np.ndarray:
        """Textbook MLA: decompress per-head K = [W_UK c | k_pe], V = W_UV c for every cached row, then MHA."""
        cfg = self.config
        n, H, C, NP = q.shape[0], cfg.n_head, cfg.kv_lora_rank, cfg.qk_nope
        n_kv = p0 + n
        c, kpe = kv[:n_kv, :C].astype(np.float32), kv[:n_kv, C:].astype(np.float32)
        k_nope = np.einsum("jc,hdc->hjd", c, L.uk)  # (H, n_kv, nope)
        v = np.einsum("jc,hvc->hjv", c, L.uv)  # (H, n_kv, v)
        s = np.einsum("thd,hjd->htj", q[:, :, :NP], k_nope) + np.einsum("thr,jr->htj", q[:, :, NP:], kpe)
        s = s * np.float32(self.kq_scale)
        mask = np.arange(n_kv)[None, :] > (p0 + np.arange(n))[:, None]
        s = np.where(mask[None], -np.inf, s).astype(np.float32)
        p = nn.softmax(s)
        o = np.einsum("htj,hjv->thv", p, v)
        return o.reshape(n, H * cfg.v_head)

    def _ffn(self, L: _Layer, h: np.ndarray, il: int) -> np.ndarray:
        if L.ffn_gate is not None:
            return L.ffn_down.mm(nn.silu_mul(L.ffn_gate.mm(h), L.ffn_up.mm(h)))
        cfg = self.config
        n, K = h.shape[0], cfg.n_expert_used
        router = L.gate_inp.mm(h)
        ids, w = nn.moe_route(
            router, K, cfg.gating_func, L.probs_b, cfg.n_group, cfg.n_group_used, cfg.expert_weights_norm, cfg.expert_weights_scale
        )
        if L.gate_up_exps is not None:  # one expert-indexed matmul for both halves
            gu = L.gate_up_exps.mm_id(h, ids)
            a = nn.silu_mul(np.ascontiguousarray(gu[..., : cfg.n_ff_exp]), np.ascontiguousarray(gu[..., cfg.n_ff_exp :]))
        else:
            a = nn.silu_mul(L.gate_exps.mm_id(h, ids), L.up_exps.mm_id(h, ids))  # (n, K, F)
        d = L.down_exps.mm_id(a, ids)  # (n, K, D): one input row per (token, slot)
        y = w[:, 0:1] * d[:, 0]  # the slots summed in order, as the fused kernel does (same bits)
        for s in range(1, K):
            y += w[:, s : s + 1] * d[:, s]
        if L.gate_sh is not None:
            y += L.down_sh.mm(nn.silu_mul(L.gate_sh.mm(h), L.up_sh.mm(h)))
        return y


class _DecodeBuffers:
    """Every intermediate of one decode step, allocated once per model (n_tok = 1)."""

    def __init__(self, cfg: DeepseekV2Config, q_lora: int) -> None:
        D, H, C, R = cfg.n_embd, cfg.n_head, cfg.kv_lora_rank, cfg.n_rot
        z = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
        self.x, self.h, self.attn, self.ffn = z(1, D), z(1, D), z(1, D), z(1, D)
        self.q = z(1, H, cfg.qk_head)
        self.q_a, self.q_an = z(1, max(q_lora, 1)), z(1, max(q_lora, 1))
        self.ckv = z(1, C + R)
        self.qa = z(1, H, C + R)  # [W_UK^T q_nope | roped q_pe] per head
        self.olat = z(1, H, C)
        self.o = z(1, H, cfg.v_head)
        self.ids = np.zeros((1, max(cfg.n_expert_used, 1)), dtype=np.int32)
        self.wts = z(1, max(cfg.n_expert_used, 1))
        self.one_id = np.zeros((1, 1), dtype=np.int32)  # the dense FFN as expert 0 of 1, weight 1
        self.one_w = np.ones((1, 1), dtype=np.float32)


@dataclass
class _LayerPlan:
    attn_norm: BoundRmsNorm  # x -> h
    q: GemvBatch  # h -> q (or q_a), ckv; then per head W_UK^T q_nope into qa (second stage)
    q_a_norm: BoundRmsNorm | None  # Q-LoRA: q_a -> normed q_a
    q_b: GemvBatch | None  # Q-LoRA: normed q_a -> q, then W_UK per head
    prep: MlaDecodePrep  # rope q_pe / k_pe, norm c_kv, cache row, q_pe into qa
    attn: BoundLatentAttention  # qa, cache -> olat
    v_o: GemvBatch  # per head W_UV over the attention output, then W_O (two stages)
    ffn_norm: BoundRmsNorm  # x -> h
    moe: BoundMoEFFN  # the whole (MoE or dense) FFN


class _Decoder:
    """The lean decode step over _DecodeBuffers: bound C calls checked once, nothing allocated per layer.  Built
    only for absorbed MLA with attn_k_b/attn_v_b and every weight on the matmul engine."""

    def __init__(self, buf: _DecodeBuffers, plans: list[_LayerPlan]) -> None:
        self.buf, self.plans = buf, plans

    @staticmethod
    def build(m: "DeepseekV2Model") -> "_Decoder | None":
        cfg = m.config
        if m.pool is None or m.mla != "absorbed" or not cfg.mla_split:
            return None
        H, C, NP = cfg.n_head, cfg.kv_lora_rank, cfg.qk_nope
        q_lora = m.layers[0].wq_a.shape[0] if m.layers[0].wq_a is not None else 0
        b = _DecodeBuffers(cfg, q_lora)
        ws = MoEWorkspace()
        qflat = b.q.reshape(1, -1)
        plans = []
        try:
            for L in m.layers:
                needed = [L.wq, L.wq_a, L.wq_b, L.wkv_a, L.wk_b, L.wv_b, L.wo, L.ffn_gate, L.ffn_up, L.ffn_down]
                needed += [L.gate_inp, L.gate_exps, L.up_exps, L.gate_up_exps, L.down_exps, L.gate_sh, L.up_sh, L.down_sh]
                if any(w is not None and w._q is None for w in needed):
                    return None  # a type the engine lacks: general path
                # W_UK per head reads q_nope (not roped), so it runs as a second stage of q's projection
                k_b = [((L.wk_b._q, h), b.q[:, h, :NP], b.qa[:, h, :C], 1) for h in range(H)]
                if L.wq is not None:
                    q = GemvBatch([(L.wq._q, b.h, qflat, 0), (L.wkv_a._q, b.h, b.ckv, 0), *k_b], ws)
                    q_a_norm = q_b = None
                else:
                    q = GemvBatch([(L.wq_a._q, b.h, b.q_a, 0), (L.wkv_a._q, b.h, b.ckv, 0)], ws)
                    q_a_norm = BoundRmsNorm(b.q_a, L.q_a_norm, cfg.rms_eps, b.q_an)
                    q_b = GemvBatch([(L.wq_b._q, b.q_an, qflat, 0), *k_b], ws)
                prep = MlaDecodePrep(b.q, b.qa, b.ckv, L.kv_a_norm, cfg.rms_eps, m.inv_freq, m.rope_mag)
                v_o = [((L.wv_b._q, h), b.olat[:, h], b.o[:, h], 0) for h in range(H)]
                v_o = GemvBatch(v_o + [(L.wo._q, b.o.reshape(1, -1), b.attn, 1)], ws)
                if L.gate_inp is None:  # dense FFN = a one-expert MoE without router (weight 1: the same bits)
                    dense = [_as_expert(w._q) for w in (L.ffn_gate, L.ffn_up, L.ffn_down)]
                    moe = MoEFFN(dense[2], 1, gate=dense[0], up=dense[1], workspace=ws).bind(b.h, b.one_id, b.one_w, b.ffn)
                else:
                    shared = (L.gate_sh._q, L.up_sh._q, L.down_sh._q) if L.gate_sh is not None else None
                    if L.gate_up_exps is not None:
                        gu = dict(gate_up=L.gate_up_exps._q)
                    else:
                        gu = dict(gate=L.gate_exps._q, up=L.up_exps._q)
                    ffn = MoEFFN(
                        L.down_exps._q, cfg.n_expert_used, **gu, shared=shared, router=L.gate_inp._q, gating=cfg.gating_func,
                        bias=L.probs_b, n_group=cfg.n_group, n_group_used=cfg.n_group_used, norm=cfg.expert_weights_norm,
                        scale=cfg.expert_weights_scale, workspace=ws,
                    )  # fmt: skip
                    moe = ffn.bind(b.h, b.ids, b.wts, b.ffn)
                plans.append(
                    _LayerPlan(
                        BoundRmsNorm(b.x, L.attn_norm, cfg.rms_eps, b.h), q, q_a_norm, q_b, prep,
                        BoundLatentAttention(b.qa, b.olat, m.kq_scale), v_o, BoundRmsNorm(b.x, L.ffn_norm, cfg.rms_eps, b.h), moe,
                    )
                )  # fmt: skip
        except (TypeError, ValueError):
            return None  # something the fused kernels refuse: general path
        return _Decoder(b, plans)

    def step(self, m: "DeepseekV2Model", toks: np.ndarray, cache: KVCache) -> np.ndarray:
        """Runs one token through every layer (writing its cache rows); returns the final hidden state (1, n_embd)."""
        b, pool, p0 = self.buf, m.pool, cache.n_past
        x = b.x
        x[...] = m.tok_embd.rows(toks)
        for il, P in enumerate(self.plans):
            kv = cache.data[il]
            P.attn_norm.run()
            P.q.run(pool)
            if P.q_b is not None:
                P.q_a_norm.run()
                P.q_b.run(pool)
            P.prep.run(kv, p0)
            P.attn.run(pool, kv, p0)
            P.v_o.run(pool)
            x += b.attn
            P.ffn_norm.run()
            P.moe.run(pool)
            x += b.ffn
        return x


def _as_expert(w: Any) -> Any:
    """A 2-D QWeight [n_out, n_in] as the one-expert stack [1, n_out, n_in] (a view of the same rows)."""
    return type(w)(w.data.reshape(1, *w.data.shape), w.ggml_type, (1, *w.shape))


def _make_pool(n_threads: int | None) -> Any:
    from . import base

    if n_threads is not None and (not isinstance(n_threads, (int, np.integer)) or n_threads <= 0):
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    if base._HAVE_MATMUL:
        return base._mm.ThreadPool(n_threads)
    return None
