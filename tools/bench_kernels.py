#!/usr/bin/env python3
"""Kernel benchmarks: GEMV weight-streaming GB/s next to the machine's read bandwidth, and GEMM GFLOP/s.

    python tools/bench_kernels.py                       # all types, 1 and 2 threads
    python tools/bench_kernels.py --types Q4_K,Q8_0 --threads 2 --quick

GEMV: y = W x for one token on a 10944 x 2048 matrix and on a 64-expert 1408 x 2048 stack (matmul_id with
every expert chosen once).  Several copies of the matrix are cycled so the working set is far larger than
the last-level cache and every call streams its weights from DRAM.  GB/s = weight bytes / time.
Read bandwidth: a SIMD byte sum over a 256 MiB buffer by the same thread pool, measured at the start and again
right before each GEMV row (the percentage uses the latter).
GEMM: 10944 x 2048 weights times n_tok = 32, 128, 512 tokens; GFLOP/s = 2 n_out n_in n_tok / time.
Timings are the best of several runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from moe_gguf._kernels import ffi, lib
from moe_gguf.ggml_types import TYPE_INFO, GGMLType, row_bytes
from moe_gguf.ops.matmul import QWeight, ThreadPool, matmul, matmul_id

DEFAULT_TYPES = ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
# byte offsets of the f16 scales in a block (so the random test weights hold finite numbers)
SCALE_OFFSETS = {"Q4_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
                 "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "IQ4_NL": [0], "Q2_K": [80, 82], "Q3_K": [108]}


def random_weight(tname: str, shape: tuple[int, ...], rng: np.random.Generator) -> QWeight:
    t = GGMLType[tname]
    info = TYPE_INFO[t]
    rb = row_bytes(t, shape[-1])
    n_rows = int(np.prod(shape[:-1]))
    raw = rng.integers(0, 256, size=(n_rows * (rb // info.block_bytes), info.block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[tname]:
        raw[:, off : off + 2] = np.full(len(raw), 0.01, np.float16).view(np.uint8).reshape(-1, 2)
    return QWeight(raw.reshape(*shape[:-1], rb), t, shape)


def best_time(fn, reps: int, min_time: float = 0.0) -> float:
    best = float("inf")
    t_start = time.perf_counter()
    i = 0
    while i < reps or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        i += 1
    return best


def read_bandwidth(pool: ThreadPool, n_threads: int, buf: np.ndarray, reps: int) -> float:
    nbytes = buf.nbytes
    ptr = ffi.cast("const void *", buf.ctypes.data)
    assert lib.mg_read_sum(pool._ptr, n_threads, ptr, nbytes) == nbytes
    return nbytes / best_time(lambda: lib.mg_read_sum(pool._ptr, n_threads, ptr, nbytes), reps) / 1e9


def gemv_gbs(pool: ThreadPool, ws: list[QWeight], reps: int, expert: bool) -> float:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(ws[0].n_in).astype(np.float32)
    if expert:
        ids = np.arange(ws[0].n_expert, dtype=np.int32)[None, :]
        x2 = x[None, :]
        calls = [lambda w=w: matmul_id(pool, w, x2, ids) for w in ws]
    else:
        calls = [lambda w=w: matmul(pool, w, x) for w in ws]

    def cycle() -> None:
        for c in calls:
            c()

    cycle()  # warm up (page faults)
    return sum(w.nbytes for w in ws) / best_time(cycle, reps) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, GEMM only at n_tok=32")
    ap.add_argument("--no-gemm", action="store_true")
    args = ap.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    threads = [int(t) for t in args.threads.split(",")]
    reps = 3 if args.quick else 5
    rng = np.random.default_rng(0)
    pools = {n: ThreadPool(n) for n in threads}
    print(f"simd level {lib.mg_get_simd_level()}, threads {threads}")
    bw_buf = np.ones(256 << 20, np.uint8)
    bw = {n: read_bandwidth(pools[n], n, bw_buf, reps) for n in threads}
    print("read bandwidth: " + ", ".join(f"{n}T {bw[n]:.1f} GB/s" for n in threads))
    print("(GEMV rows: GB/s, and % of the read bandwidth measured again right before that row, as load may vary)")
    print()
    print(f"{'type':7} {'shape':22} " + " ".join(f"{f'{n}T GB/s (%bw)':>17}" for n in threads))
    for tname in types:
        for label, shape, expert in (("10944x2048", (10944, 2048), False), ("64x1408x2048 (id)", (64, 1408, 2048), True)):
            one = random_weight(tname, shape, rng)
            copies = max(1, int(np.ceil(256e6 / one.nbytes)))  # >= 256 MB working set, far beyond the LLC
            ws = [one] + [random_weight(tname, shape, rng) for _ in range(copies - 1)]
            cells = []
            for n in threads:
                b = read_bandwidth(pools[n], n, bw_buf, reps)
                g = gemv_gbs(pools[n], ws, reps, expert)
                cells.append(f"{g:8.1f} ({100 * g / b:3.0f}%)")
            print(f"{tname:7} {label:22} " + " ".join(f"{c:>17}" for c in cells), flush=True)
            del ws, one
    if args.no_gemm:
        return
    print()
    toks = [32] if args.quick else [32, 128, 512]
    print(f"{'type':7} {'GEMM 10944x2048':22} " + " ".join(f"{f'n_tok={k} {threads[-1]}T GFLOP/s':>22}" for k in toks))
    n = threads[-1]
    for tname in types:
        w = random_weight(tname, (10944, 2048), rng)
        cells = []
        for k in toks:
            x = rng.standard_normal((k, 2048)).astype(np.float32)
            t = best_time(lambda: matmul(pools[n], w, x), 1 if k >= 512 else 2)
            cells.append(f"{2 * 10944 * 2048 * k / t / 1e9:.1f}")
        print(f"{tname:7} {'':22} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    for p in pools.values():
        p.close()


if __name__ == "__main__":
    main()
