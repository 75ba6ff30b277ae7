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

With --llama-cpp DIR (a llama.cpp source tree with its build in DIR/build/bin, e.g. the llama-cpp-python sdist's
vendor/llama.cpp) every cell is also timed through llama.cpp: tools/ggml_mm_bench.c is compiled against ggml's
public API and times ggml_mul_mat / ggml_mul_mat_id on the same type, shape, thread count and working set, with
a persistent ggml threadpool; each cell then shows ours / llama.cpp throughput ("x1.10" = we are 10 % faster).
The weights go where llama-bench puts them: the CPU backend's CPU_REPACK buffer for the types llama.cpp repacks
on this CPU (on AVX2: Q4_0, Q4_K, IQ4_NL; such cells are marked "r"), the plain CPU buffer otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's moe_gguf, not an installed one
from moe_gguf._kernels import ffi, lib
from moe_gguf.ggml_types import TYPE_INFO, GGMLType, row_bytes
from moe_gguf.ops.matmul import QWeight, ThreadPool, matmul, matmul_id, read_bandwidth

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


class LlamaCpp:
    """tools/ggml_mm_bench.c built against a llama.cpp tree: times the same matmuls through ggml."""

    def __init__(self, root: str) -> None:
        rootp = Path(root)
        inc, libdir = rootp / "ggml" / "include", rootp / "build" / "bin"
        if not (inc / "ggml.h").is_file() or not any(libdir.glob("libggml-cpu.so*")):
            raise SystemExit(f"--llama-cpp {root}: need ggml/include/ggml.h and build/bin/libggml-cpu.so there")
        cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
        if cc is None:
            raise SystemExit("--llama-cpp needs a C compiler (gcc or cc)")
        self._tmp = tempfile.TemporaryDirectory(prefix="ggml_mm_bench_")
        self.exe = os.path.join(self._tmp.name, "ggml_mm_bench")
        src = Path(__file__).resolve().with_name("ggml_mm_bench.c")
        cmd = [cc, "-O2", "-std=c11", f"-I{inc}", str(src), "-o", self.exe, f"-L{libdir}",
               "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{libdir}"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"building {src.name} failed:\n{r.stderr}")

    def time(self, tname: str, shape: tuple[int, ...], n_tok: int, n_threads: int, reps: int, copies: int) -> tuple[float, bool]:
        """Best seconds for one pass over `copies` weight tensors, and whether llama.cpp repacked them."""
        n_exp, n_out, n_in = (shape if len(shape) == 3 else (0, *shape))
        offs = ",".join(str(o) for o in SCALE_OFFSETS[tname])
        args = [self.exe, str(int(GGMLType[tname])), str(n_out), str(n_in), str(n_tok), str(n_exp), str(n_threads),
                str(reps), str(copies), "1", offs]  # fmt: skip
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ggml_mm_bench failed: {r.stderr.strip()[-500:]}")
        t, rep = r.stdout.split()
        return float(t), rep == "1"


def gemv_time(pool: ThreadPool, ws: list[QWeight], reps: int, expert: bool) -> float:
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
    return best_time(cycle, reps)


def ratio_cell(ours_s: float, ref: tuple[float, bool] | None) -> str:
    if ref is None:
        return ""
    return f" x{ref[0] / ours_s:4.2f}{'r' if ref[1] else ' '}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, GEMM only at n_tok=32")
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--llama-cpp", metavar="DIR", help="also time llama.cpp (source tree with build/bin) and print ours/llama.cpp")
    args = ap.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for t in types:
        if t not in SCALE_OFFSETS:
            raise SystemExit(f"unknown type {t!r} (known: {', '.join(SCALE_OFFSETS)})")
    threads = [int(t) for t in args.threads.split(",")]
    reps = 3 if args.quick else 5
    llama = LlamaCpp(args.llama_cpp) if args.llama_cpp else None
    rng = np.random.default_rng(0)
    pools = {n: ThreadPool(n) for n in threads}
    print(f"simd level {lib.mg_get_simd_level()}, threads {threads}")
    bw = {n: read_bandwidth(pools[n], n, 256 << 20, reps) for n in threads}
    print("read bandwidth: " + ", ".join(f"{n}T {bw[n]:.1f} GB/s" for n in threads))
    print("(GEMV rows: GB/s, and % of the read bandwidth measured again right before that row, as load may vary)")
    if llama:
        print("(xR = our throughput / llama.cpp's on the same cell; r = llama.cpp ran its repacked CPU_REPACK layout)")
    print()
    width = 25 if llama else 17
    print(f"{'type':7} {'shape':22} " + " ".join(f"{f'{n}T GB/s (%bw)':>{width}}" for n in threads))
    for tname in types:
        for label, shape, expert in (("10944x2048", (10944, 2048), False), ("64x1408x2048 (id)", (64, 1408, 2048), True)):
            one = random_weight(tname, shape, rng)
            copies = max(1, int(np.ceil(256e6 / one.nbytes)))  # >= 256 MB working set, far beyond the LLC
            ws = [one] + [random_weight(tname, shape, rng) for _ in range(copies - 1)]
            nbytes = sum(w.nbytes for w in ws)
            cells = []
            for n in threads:
                b = read_bandwidth(pools[n], n, 256 << 20, reps)
                t = gemv_time(pools[n], ws, reps, expert)
                ref = llama.time(tname, shape, 1, n, reps, copies) if llama else None
                g = nbytes / t / 1e9
                cells.append(f"{g:8.1f} ({100 * g / b:3.0f}%)" + ratio_cell(t, ref))
            print(f"{tname:7} {label:22} " + " ".join(f"{c:>{width}}" for c in cells), flush=True)
            del ws, one
    if args.no_gemm:
        return
    print()
    toks = [32] if args.quick else [32, 128, 512]
    n = threads[-1]
    width = 30 if llama else 22
    print(f"{'type':7} {'GEMM 10944x2048':22} " + " ".join(f"{f'n_tok={k} {n}T GFLOP/s':>{width}}" for k in toks))
    for tname in types:
        w = random_weight(tname, (10944, 2048), rng)
        cells = []
        for k in toks:
            x = rng.standard_normal((k, 2048)).astype(np.float32)
            r = 1 if k >= 512 else 2
            t = best_time(lambda: matmul(pools[n], w, x), r)
            ref = llama.time(tname, (10944, 2048), k, n, r, 1) if llama else None
            cells.append(f"{2 * 10944 * 2048 * k / t / 1e9:.1f}" + ratio_cell(t, ref))
        print(f"{tname:7} {'':22} " + " ".join(f"{c:>{width}}" for c in cells), flush=True)
    for p in pools.values():
        p.close()


if __name__ == "__main__":
    main()
