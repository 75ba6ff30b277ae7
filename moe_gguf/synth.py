"""Random-weight GGUF files with a real architecture's exact shapes, metadata and quantization mix.

`write_synth(out, preset="v2-lite", qtype="q4_k_m")` writes a DeepSeek-V2-Lite-shaped `deepseek2` file
(27 layers, MLA split layout `attn_k_b`/`attn_v_b`, 64 routed experts top-6 + 2 shared, YaRN) whose
tensors carry exactly the types llama.cpp's `llama-quantize` would give the real model, with the
tokenizer copied from a vocab GGUF so that `moe-gguf run` works on it. Users can measure their hardware
(`moe-gguf bench`) before downloading the real 10 GB.

How the weights are made (documented, deterministic for a given seed):
  * every 2-D/3-D weight of row length n_in is N(0, 1/sqrt(n_in)), so every matmul keeps unit-scale
    activations; norms are 1 + N(0, 0.02); the F32 routers (`ffn_gate_inp`) are N(0, 1/sqrt(n_embd)) drawn
    fresh per layer, giving unit-variance router logits, so routing spreads over all experts.
  * Quantizing 16 B random values on 2 cores would take long, so for every (type, row length) one pool of
    up to 4096 random rows is quantized once, and each tensor is filled with rows drawn from its pool by a
    seeded RNG (rows repeat across the file; that changes no shape, type, byte count or memory traffic).
  * The file is streamed to disk in chunks of a few MiB: the model is never held in RAM. It is written to
    a temporary name beside OUT and renamed when complete.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .ggml_types import TYPE_INFO, GGMLType, row_bytes, type_name

__all__ = [
    "DeepSeek2Preset",
    "PRESETS",
    "QTYPES",
    "TensorPlan",
    "SynthResult",
    "deepseek2_plan",
    "deepseek2_metadata",
    "write_synth",
]

DEFAULT_VOCAB = Path(__file__).resolve().parent.parent.parent / "shared" / "vocab" / "ggml-vocab-deepseek-llm.gguf"
ALIGNMENT = 32
POOL_ROWS = 4096  # max rows per (type, row length) pool
POOL_BYTES = 64 << 20  # max float32 bytes generated for one pool
CHUNK_BYTES = 8 << 20  # bytes written per chunk


@dataclass(frozen=True)
class DeepSeek2Preset:
    """The hyper-parameters of a deepseek2 model, with the names of the HF config."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    moe_intermediate_size: int
    intermediate_size: int
    first_k_dense_replace: int
    vocab_size: int
    max_position_embeddings: int = 163840
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    rope_factor: float = 40.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale_all_dim: float = 0.707
    routed_scaling_factor: float = 1.0


PRESETS: dict[str, DeepSeek2Preset] = {
    # DeepSeek-V2-Lite (config.json of deepseek-ai/DeepSeek-V2-Lite; q_lora_rank null)
    "v2-lite": DeepSeek2Preset(
        name="v2-lite",
        num_hidden_layers=27,
        hidden_size=2048,
        num_attention_heads=16,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=64,
        num_experts_per_tok=6,
        n_shared_experts=2,
        moe_intermediate_size=1408,
        intermediate_size=10944,
        first_k_dense_replace=1,
        vocab_size=102400,
    ),
    # small dims with the same structure and the same row-length quirks (expert FFN and dense FFN widths not
    # multiples of 256, so the Q4_K->Q5_0 / Q6_K->Q8_0 fallbacks occur) and the real vocabulary/tokenizer
    "tiny": DeepSeek2Preset(
        name="tiny",
        num_hidden_layers=4,
        hidden_size=256,
        num_attention_heads=4,
        kv_lora_rank=256,
        qk_nope_head_dim=32,
        qk_rope_head_dim=32,
        v_head_dim=32,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_shared_experts=2,
        moe_intermediate_size=384,
        intermediate_size=1056,
        first_k_dense_replace=1,
        vocab_size=102400,
    ),
}

# --type values -> llama.cpp's LLAMA_FTYPE (general.file_type)
QTYPES: dict[str, int] = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the file: name, ggml `ne` (ne[0] = row length), type, and how its values are drawn."""

    name: str
    ne: tuple[int, ...]
    ggml_type: int
    kind: str  # "weight": pooled N(0, 1/sqrt(ne0)); "norm": 1 + N(0, 0.02); "router": fresh N(0, 1/sqrt(ne0))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne[0]

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.ggml_type, self.ne[0])

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.n_rows


@dataclass(frozen=True)
class SynthResult:
    path: str
    n_tensors: int
    n_params: int
    n_bytes: int  # file size
    seconds: float
    type_counts: dict[str, int]


# ---------------------------------------------------------------------------------------------- type recipe
def _tensor_types(specs: list[tuple[str, tuple[int, ...]]], qtype: str, p: "DeepSeek2Preset") -> dict[str, GGMLType]:
    """The type llama-quantize would give each tensor of an F32 file with these shapes (one recipe for
    convert, quantize and synth: `convert.mixes.plan_types`)."""
    from .convert.mixes import ModelShape, plan_types

    if qtype not in QTYPES:
        raise ValueError(f"unknown type {qtype!r}; choose one of {', '.join(QTYPES)}")
    # head_count_kv is 1 in an MLA file (run as MQA over the latent), as the metadata says
    shape = ModelShape(arch="deepseek2", n_layer=p.num_hidden_layers, n_expert=p.n_routed_experts,
                       n_head=p.num_attention_heads, n_head_kv=1)
    return plan_types(qtype, [(name, ne, GGMLType.F32) for name, ne in specs], shape)


# ---------------------------------------------------------------------------------------------- plan + metadata
def _resolve(preset: str | DeepSeek2Preset, n_layers: int | None) -> DeepSeek2Preset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
    else:
        p = preset
    if n_layers is not None:
        if n_layers < 1:
            raise ValueError(f"--layers must be >= 1, got {n_layers}")
        p = replace(p, num_hidden_layers=n_layers, first_k_dense_replace=min(p.first_k_dense_replace, n_layers))
    return p


def deepseek2_plan(preset: str | DeepSeek2Preset = "v2-lite", qtype: str = "q4_k_m",
                   n_layers: int | None = None) -> list[TensorPlan]:
    """Every tensor of the file in write order, with llama.cpp's names and `ne` (section 2 of the doc)."""
    p = _resolve(preset, n_layers)
    E, H, L = p.hidden_size, p.num_attention_heads, p.num_hidden_layers
    qk_head = p.qk_nope_head_dim + p.qk_rope_head_dim
    shexp = p.moe_intermediate_size * p.n_shared_experts
    specs: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (E, p.vocab_size))]
    for i in range(L):
        b = f"blk.{i}."
        specs += [
            (b + "attn_norm.weight", (E,)),
            (b + "attn_q.weight", (E, H * qk_head)),
            (b + "attn_kv_a_mqa.weight", (E, p.kv_lora_rank + p.qk_rope_head_dim)),
            (b + "attn_kv_a_norm.weight", (p.kv_lora_rank,)),
            (b + "attn_k_b.weight", (p.qk_nope_head_dim, p.kv_lora_rank, H)),
            (b + "attn_v_b.weight", (p.kv_lora_rank, p.v_head_dim, H)),
            (b + "attn_output.weight", (H * p.v_head_dim, E)),
            (b + "ffn_norm.weight", (E,)),
        ]
        if i < p.first_k_dense_replace:
            specs += [
                (b + "ffn_gate.weight", (E, p.intermediate_size)),
                (b + "ffn_down.weight", (p.intermediate_size, E)),
                (b + "ffn_up.weight", (E, p.intermediate_size)),
            ]
        else:
            X, F = p.n_routed_experts, p.moe_intermediate_size
            specs += [
                (b + "ffn_gate_inp.weight", (E, X)),
                (b + "ffn_gate_exps.weight", (E, F, X)),
                (b + "ffn_down_exps.weight", (F, E, X)),
                (b + "ffn_up_exps.weight", (E, F, X)),
                (b + "ffn_gate_shexp.weight", (E, shexp)),
                (b + "ffn_down_shexp.weight", (shexp, E)),
                (b + "ffn_up_shexp.weight", (E, shexp)),
            ]
    specs += [("output_norm.weight", (E,)), ("output.weight", (E, p.vocab_size))]

    types = _tensor_types(specs, qtype, p)
    plans = []
    for name, ne in specs:
        kind = "norm" if len(ne) == 1 else "router" if "ffn_gate_inp" in name else "weight"
        plans.append(TensorPlan(name, ne, int(types[name]), kind))
    return plans


def deepseek2_metadata(preset: str | DeepSeek2Preset = "v2-lite", qtype: str = "q4_k_m",
                       n_layers: int | None = None) -> list[tuple[str, Any, str]]:
    """The `deepseek2.*`/`general.*` keys as llama.cpp's converter writes them for an MLA file:
    (key, value, gguf value type name). The tokenizer keys are added by `write_synth`."""
    p = _resolve(preset, n_layers)
    a = "deepseek2."
    kv: list[tuple[str, Any, str]] = [
        ("general.architecture", "deepseek2", "STRING"),
        ("general.type", "model", "STRING"),
        ("general.name", f"DeepSeek-V2-Lite shapes ({p.name} preset, synthetic random weights)", "STRING"),
        ("general.description", "written by moe-gguf synth: random weights, for benchmarking only", "STRING"),
        ("general.file_type", QTYPES[qtype], "UINT32"),
        ("general.quantization_version", 2, "UINT32"),
        (a + "block_count", p.num_hidden_layers, "UINT32"),
        (a + "context_length", p.max_position_embeddings, "UINT32"),
        (a + "embedding_length", p.hidden_size, "UINT32"),
        (a + "feed_forward_length", p.intermediate_size, "UINT32"),
        (a + "attention.head_count", p.num_attention_heads, "UINT32"),
        (a + "attention.head_count_kv", 1, "UINT32"),  # MLA is run as MQA over the latent
        (a + "rope.freq_base", p.rope_theta, "FLOAT32"),
        (a + "attention.layer_norm_rms_epsilon", p.rms_norm_eps, "FLOAT32"),
        (a + "expert_used_count", p.num_experts_per_tok, "UINT32"),
        (a + "expert_count", p.n_routed_experts, "UINT32"),
        (a + "expert_gating_func", 1, "UINT32"),  # softmax
        (a + "leading_dense_block_count", p.first_k_dense_replace, "UINT32"),
        (a + "vocab_size", p.vocab_size, "UINT32"),
    ]
    if p.num_hidden_layers not in (26, 27):
        # llama.cpp requires the key for layer counts it does not recognise as "lite"; 0 means no Q-LoRA
        kv.append((a + "attention.q_lora_rank", 0, "UINT32"))
    kv += [
        (a + "attention.kv_lora_rank", p.kv_lora_rank, "UINT32"),
        (a + "attention.key_length", p.kv_lora_rank + p.qk_rope_head_dim, "UINT32"),
        (a + "attention.value_length", p.kv_lora_rank, "UINT32"),
        (a + "attention.key_length_mla", p.qk_nope_head_dim + p.qk_rope_head_dim, "UINT32"),
        (a + "attention.value_length_mla", p.v_head_dim, "UINT32"),
        (a + "expert_feed_forward_length", p.moe_intermediate_size, "UINT32"),
        (a + "expert_shared_count", p.n_shared_experts, "UINT32"),
        (a + "expert_weights_scale", p.routed_scaling_factor, "FLOAT32"),
        (a + "rope.dimension_count", p.qk_rope_head_dim, "UINT32"),
        (a + "rope.scaling.type", "yarn", "STRING"),
        (a + "rope.scaling.factor", p.rope_factor, "FLOAT32"),
        (a + "rope.scaling.original_context_length", p.original_max_position_embeddings, "UINT32"),
        (a + "rope.scaling.yarn_beta_fast", p.beta_fast, "FLOAT32"),
        (a + "rope.scaling.yarn_beta_slow", p.beta_slow, "FLOAT32"),
        # stored as 0.1 * mscale_all_dim, as llama.cpp's converter does (its loader divides by 0.1)
        (a + "rope.scaling.yarn_log_multiplier", 0.1 * p.mscale_all_dim, "FLOAT32"),
    ]
    return kv


# ---------------------------------------------------------------------------------------------- data
def _quantize_rows(x: np.ndarray, t: int) -> np.ndarray:
    """float32 rows -> the bytes of type t, (rows, row_bytes) uint8."""
    if t == GGMLType.F32:
        return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)
    if t == GGMLType.F16:
        return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8)
    try:
        from .ops import quants as ours  # the C quantizers
    except ImportError:
        ours = None
    if ours is not None and t in ours.SUPPORTED_QUANT:
        return np.asarray(ours.quantize(np.ascontiguousarray(x, dtype=np.float32), t)).reshape(x.shape[0], -1)
    import gguf.quants  # numpy reference: the legacy 32-blocks only

    try:
        q = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t)))
    except NotImplementedError:
        raise RuntimeError(f"no quantizer for {type_name(t)} is available (moe_gguf.ops.quants is missing)") from None
    return np.ascontiguousarray(q).reshape(x.shape[0], -1)


class _Pools:
    """One quantized pool of random N(0, 1/sqrt(n)) rows per (type, row length), made on first use."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pools: dict[tuple[int, int], np.ndarray] = {}

    def get(self, t: int, n: int) -> np.ndarray:
        key = (t, n)
        if key not in self.pools:
            rows = min(POOL_ROWS, max(256, POOL_BYTES // (4 * n)))
            rng = np.random.default_rng([self.seed, t, n])
            x = rng.standard_normal((rows, n), dtype=np.float32)
            x *= np.float32(1.0 / np.sqrt(n))
            self.pools[key] = _quantize_rows(x, t)
        return self.pools[key]


def _tensor_chunks(plan: TensorPlan, pools: _Pools, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The bytes of one tensor, in chunks of at most CHUNK_BYTES (whole rows)."""
    if plan.kind in ("norm", "router"):
        n = plan.n_elements
        if plan.kind == "norm":
            v = 1.0 + 0.02 * rng.standard_normal(n, dtype=np.float32)
        else:
            v = rng.standard_normal(n, dtype=np.float32) * np.float32(1.0 / np.sqrt(plan.ne[0]))
        yield _quantize_rows(v.astype(np.float32).reshape(-1, plan.ne[0]), plan.ggml_type).reshape(-1)
        return
    pool = pools.get(plan.ggml_type, plan.ne[0])
    rb = plan.row_bytes
    per_chunk = max(1, CHUNK_BYTES // rb)
    buf = np.empty((min(per_chunk, plan.n_rows), rb), dtype=np.uint8)
    done = 0
    while done < plan.n_rows:
        n = min(per_chunk, plan.n_rows - done)
        idx = rng.integers(0, pool.shape[0], n)
        np.take(pool, idx, axis=0, out=buf[:n])
        yield buf[:n]
        done += n


def _vocab_kv(vocab_path: str | os.PathLike[str]) -> list[tuple[str, Any, str, str | None]]:
    """The tokenizer.* keys of a vocab GGUF with their value types: (key, value, type, array sub-type)."""
    from .gguf import GGUFFile, ValueType

    names = {getattr(ValueType, k): k for k in dir(ValueType) if k.isupper()}
    dtype_to_vt = {
        np.dtype("uint8"): "UINT8", np.dtype("int8"): "INT8", np.dtype("uint16"): "UINT16",
        np.dtype("int16"): "INT16", np.dtype("uint32"): "UINT32", np.dtype("int32"): "INT32",
        np.dtype("float32"): "FLOAT32", np.dtype("bool"): "BOOL", np.dtype("uint64"): "UINT64",
        np.dtype("int64"): "INT64", np.dtype("float64"): "FLOAT64",
    }
    out: list[tuple[str, Any, str, str | None]] = []
    with GGUFFile(vocab_path) as f:
        for k, v in f.metadata.items():
            if not k.startswith("tokenizer."):
                continue
            vt = names[f.metadata_types[k]]
            if vt != "ARRAY":
                out.append((k, v, vt, None))
            elif isinstance(v, np.ndarray):
                out.append((k, v.tolist(), vt, dtype_to_vt[v.dtype]))
            elif all(isinstance(s, str) for s in v):
                out.append((k, list(v), vt, "STRING"))
            else:
                raise ValueError(f"{vocab_path}: cannot copy the nested array {k!r}")
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ValueError(f"{vocab_path} holds no tokenizer.ggml.tokens")
    return out


def _write(path: str | os.PathLike[str], kv: list[tuple[str, Any, str, str | None]], plans: list[TensorPlan],
           chunks: Callable[[TensorPlan], Iterator[np.ndarray]],
           progress: Callable[[int, int], None] | None = None) -> None:
    """Header, then each tensor's data streamed chunk by chunk through moe_gguf's GGUFWriter (written under a
    temporary name and renamed at the end, so no half-written file is ever left behind)."""
    from .gguf import ValueType
    from .gguf_writer import GGUFWriter

    total = sum(p.nbytes for p in plans)
    done = 0

    def counted(p: TensorPlan) -> Iterator[np.ndarray]:
        nonlocal done
        yield from chunks(p)
        done += p.nbytes
        if progress is not None:
            progress(done, total)

    w = GGUFWriter(path, alignment=ALIGNMENT)
    try:
        for key, val, vt, sub in kv:
            w.add(key, val, (ValueType.ARRAY, getattr(ValueType, sub)) if sub else getattr(ValueType, vt))
        for p in plans:
            w.add_tensor(p.name, lambda p=p: counted(p), ggml_type=p.ggml_type, shape=tuple(reversed(p.ne)))
        w.finish()
    finally:
        w.abort()  # a no-op once finished


def write_synth(out: str | os.PathLike[str], arch: str = "deepseek2", preset: str = "v2-lite",
                qtype: str = "q4_k_m", n_layers: int | None = None, seed: int = 0,
                vocab: str | os.PathLike[str] | None = None,
                progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write a random-weight GGUF; see the module docstring. Returns what was written and how long it took."""
    if arch != "deepseek2":
        raise ValueError(f"unsupported architecture {arch!r}; supported: deepseek2")
    if qtype not in QTYPES:
        raise ValueError(f"unknown type {qtype!r}; choose one of {', '.join(QTYPES)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    vocab_path = Path(vocab) if vocab is not None else DEFAULT_VOCAB
    if not vocab_path.is_file():
        raise FileNotFoundError(f"vocab GGUF {vocab_path} not found (pass vocab=... / --vocab)")
    p = _resolve(preset, n_layers)
    plans = deepseek2_plan(p, qtype)
    tok_kv = _vocab_kv(vocab_path)
    n_vocab_tok = len(next(v for k, v, *_ in tok_kv if k == "tokenizer.ggml.tokens"))
    if n_vocab_tok != p.vocab_size:
        raise ValueError(f"{vocab_path} has {n_vocab_tok} tokens, the {p.name} preset needs {p.vocab_size}")
    kv = [(k, v, t, None) for k, v, t in deepseek2_metadata(p, qtype)] + tok_kv

    t0 = time.perf_counter()
    pools = _Pools(seed)
    rngs = np.random.default_rng(seed).spawn(len(plans))
    rng_of = {pl.name: r for pl, r in zip(plans, rngs)}
    _write(out, kv, plans, lambda pl: _tensor_chunks(pl, pools, rng_of[pl.name]), progress)
    seconds = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for pl in plans:
        counts[type_name(pl.ggml_type)] = counts.get(type_name(pl.ggml_type), 0) + 1
    return SynthResult(
        path=os.fspath(out),
        n_tensors=len(plans),
        n_params=sum(pl.n_elements for pl in plans),
        n_bytes=os.path.getsize(out),
        seconds=seconds,
        type_counts=counts,
    )
