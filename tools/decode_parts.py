#!/usr/bin/env python3
"""Where a deepseek2 decode step spends its time: the lean decode step of moe_gguf.models.deepseek2, part by part.

    python tools/decode_parts.py MODEL.gguf [-t 2] [-n 48]

Runs the same calls as `_Decoder.step` (one token at a time from an empty cache, after one warm-up token) with a
clock around each part, and prints per part the milliseconds per token, its share, and for the parts that stream
weights the bytes they read per token and the resulting GB/s, next to the read bandwidth probe of the same pool.
Parts: q (attention norm + q / kv_a projections + W_UK per head), prep (rope, kv norm, cache row), attn (latent
attention), v_o (W_UV per head + W_O), norm (residual + ffn norm), moe / moe0 (the fused FFN; moe0 the dense
first layer), head (output norm + output matrix).  Speeds are indicative: compare runs taken back to back.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from moe_gguf.models import load_model
from moe_gguf.ops import nn
from moe_gguf.ops.matmul import read_bandwidth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--n-gen", type=int, default=48, help="decode steps timed")
    a = ap.parse_args(argv)
    m = load_model(a.model, n_ctx=a.n_gen + 1, n_threads=a.threads)
    if m.file.architecture != "deepseek2" or m._decoder() is None:
        ap.error("needs a deepseek2 model that takes the lean decode path (absorbed MLA, split attn_k_b/attn_v_b)")
    dec, cfg, pool = m._decoder(), m.config, m.pool
    b = dec.buf
    T: dict[str, float] = defaultdict(float)
    tensors = m.file.tensors
    dense0 = "blk.0.ffn_gate_inp.weight" not in tensors  # DeepSeek's first dense layer(s): timed as moe0
    clock = time.perf_counter

    def step(tok: np.ndarray, cache) -> None:
        p0 = cache.n_past
        b.x[...] = m.tok_embd.rows(tok)
        for il, P in enumerate(dec.plans):
            kv = cache.data[il]
            t0 = clock()
            P.attn_norm.run()
            P.q.run(pool)
            if P.q_b is not None:
                P.q_a_norm.run()
                P.q_b.run(pool)
            t1 = clock()
            P.prep.run(kv, p0)
            t2 = clock()
            P.attn.run(pool, kv, p0)
            t3 = clock()
            P.v_o.run(pool)
            t4 = clock()
            b.x += b.attn
            P.ffn_norm.run()
            t5 = clock()
            P.moe.run(pool)
            t6 = clock()
            b.x += b.ffn
            for k, v in (("q", t1 - t0), ("prep", t2 - t1), ("attn", t3 - t2), ("v_o", t4 - t3), ("norm", t5 - t4)):
                T[k] += v
            T["moe0" if il == 0 and dense0 else "moe"] += t6 - t5
        cache.n_past = p0 + 1
        t0 = clock()
        m.output.mm(nn.rms_norm(b.x, m.output_norm, cfg.rms_eps))
        T["head"] += clock() - t0

    toks = np.random.default_rng(0).integers(0, m.n_vocab, a.n_gen, dtype=np.int32)
    step(toks[:1], m.new_cache())
    T.clear()
    cache = m.new_cache()
    t0 = clock()
    for i in range(a.n_gen):
        step(toks[i : i + 1], cache)
    total = clock() - t0
    bw = read_bandwidth(pool, a.threads)

    n_used = max(cfg.n_expert_used, 1)

    def nbytes(*keys: str, layers: range) -> int:
        s = 0
        for il in layers:
            for k in keys:
                t = tensors.get(f"blk.{il}.{k}.weight")
                if t is not None:
                    s += t.nbytes * n_used // t.shape[0] if k.endswith("_exps") else t.nbytes
        return s

    moe_layers = range(1, cfg.n_layer) if dense0 else range(cfg.n_layer)
    parts = {
        "q": nbytes("attn_q", "attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b", layers=range(cfg.n_layer)),
        "v_o": nbytes("attn_v_b", "attn_output", layers=range(cfg.n_layer)),
        "moe": nbytes("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp",
                      "ffn_up_shexp", "ffn_down_shexp", layers=moe_layers),
        "moe0": nbytes("ffn_gate", "ffn_up", "ffn_down", layers=range(0, 1)) if dense0 else 0,
        "head": tensors["output.weight"].nbytes if "output.weight" in tensors else 0,
    }  # fmt: skip
    print(f"{a.model}: {a.n_gen / total:.2f} t/s over {a.n_gen} tokens, {a.threads} threads; read bandwidth {bw:.1f} GB/s")
    for k, v in sorted(T.items(), key=lambda kv: -kv[1]):
        per = v / a.n_gen
        line = f"  {k:5s} {per * 1e3:7.2f} ms/token {100 * v / total:5.1f} %"
        if parts.get(k):
            line += f"   {parts[k] / 1e6:7.1f} MB  {parts[k] / per / 1e9:5.1f} GB/s"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
