"""`moe-gguf bench`: llama-bench-like speed measurement, plus the decode roofline.

Tests, as llama-bench defines them: `ppN` evaluates N random tokens as one batch into an empty KV cache;
`tgN` decodes N tokens one at a time (each step one forward call on one token) from an empty cache. Each test
runs `repetitions` times after one warm-up (a full pp run and a one-token decode, which also pages the
weights in); the table shows tokens/s as mean ± sample standard deviation.

Roofline: decoding one token must read every weight it uses once. For a MoE model that is the attention,
dense and shared-expert weights of every layer, k/n of each routed expert stack (k = expert_used_count),
the router and norms, the output head and one embedding row, summed from the file's actual tensor types.
Divided into the machine's read bandwidth (measured here over a 1 GiB buffer with the same thread count)
it gives the highest decode speed the memory system allows; `fraction` is the measured tg speed over it.
The KV cache traffic is not counted (at tg128 it is < 0.1% of the weights for DeepSeek-V2-Lite).
"""
from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .ggml_types import type_name
from .gguf import GGUFFile

__all__ = [
    "TestResult",
    "Roofline",
    "BenchReport",
    "active_weight_bytes",
    "measure_read_bandwidth",
    "run_bench",
    "format_table",
]

FILE_TYPE_NAMES = {
    0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K - Medium",
    11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large", 14: "Q4_K - Small", 15: "Q4_K - Medium",
    16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K", 30: "IQ4_XS", 32: "BF16",
}


@dataclass
class TestResult:
    name: str  # "pp512", "tg128"
    n_prompt: int
    n_gen: int
    samples_ts: list[float]

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0


@dataclass
class Roofline:
    active_bytes: int  # weight bytes read per decoded token
    breakdown: dict[str, int]
    bandwidth: float  # measured read bandwidth, bytes/s
    max_ts: float  # bandwidth / active_bytes
    fraction: float | None  # measured tg t/s / max_ts


@dataclass
class BenchReport:
    model: str
    model_type: str
    size: int  # bytes of tensor data
    n_params: int
    n_threads: int
    load_seconds: float
    rss_after_load: int  # VmRSS right after loading (bytes)
    rss_after_bench: int  # VmRSS after the tests: includes the mapped weight pages that were touched
    rss_anon_after_bench: int  # private (anonymous) memory after the tests: KV cache, scratch, Python
    machine: str = ""  # CPU count and load average when the tests started (other load skews the numbers)
    tests: list[TestResult] = field(default_factory=list)
    roofline: Roofline | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tests"] = [
            {**asdict(t), "avg_ts": t.avg_ts, "stddev_ts": t.stddev_ts} for t in self.tests
        ]
        return d


# ---------------------------------------------------------------------------------------------- roofline
def _meta_int(f: GGUFFile, key: str, default: int) -> int:
    v = f.metadata.get(key, default)
    if isinstance(v, np.ndarray):  # per-layer arrays in newer files: the largest bounds the traffic
        return int(v.max()) if v.size else default
    return int(v)


def active_weight_bytes(f: GGUFFile) -> tuple[int, dict[str, int]]:
    """Weight bytes one decoded token reads, and their split by role (see the module docstring)."""
    arch = f.architecture or ""
    n_expert = _meta_int(f, f"{arch}.expert_count", 0)
    n_used = _meta_int(f, f"{arch}.expert_used_count", 0)
    tied = "output.weight" not in f.tensors
    parts = {"embedding row": 0, "attention": 0, "dense + shared FFN": 0, "routed experts": 0,
             "router + norms": 0, "output head": 0}
    for t in f.tensors.values():
        n = t.nbytes
        name = t.name
        if name == "token_embd.weight":
            rows = t.n_elements // t.ne[0]
            parts["embedding row"] += n // rows
            if tied:
                parts["output head"] += n
        elif n_expert > 0 and len(t.ne) == 3 and t.ne[2] == n_expert and "_exps" in name:
            parts["routed experts"] += n * n_used // n_expert
        elif len(t.ne) == 1 or "ffn_gate_inp" in name or "_norm" in name or "exp_probs_b" in name:
            parts["router + norms"] += n
        elif name.startswith("output"):
            parts["output head"] += n
        elif ".attn_" in name:
            parts["attention"] += n
        else:
            parts["dense + shared FFN"] += n
    return sum(parts.values()), parts


def measure_read_bandwidth(n_threads: int = 1, nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Read bandwidth in bytes/s: the best of `repeats` passes of `n_threads` threads reading an `nbytes`
    buffer of ones and summing it (the matmul engine's C probe on its thread pool when the kernels provide
    it, else numpy reductions in a thread pool, which release the GIL). The sum is checked."""
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if nbytes < 1 << 20:
        raise ValueError(f"nbytes must be >= 1 MiB, got {nbytes}")
    nbytes -= nbytes % 64
    try:  # the matmul engine's probe (mg_read_sum: SIMD byte sum by its persistent thread pool), if built
        from .ops import matmul as mm

        with mm.ThreadPool(n_threads) as pool:
            return mm.read_bandwidth(pool, n_threads, nbytes, max(1, repeats)) * 1e9
    except ImportError:
        return _numpy_read_bandwidth(n_threads, nbytes, repeats)


def _numpy_read_bandwidth(n_threads: int, nbytes: int, repeats: int) -> float:
    """measure_read_bandwidth without the C kernels: numpy reductions in a thread pool (they release the GIL)."""
    buf = np.ones(nbytes, dtype=np.uint8)
    words = buf.view(np.int64)
    parts = np.array_split(words, n_threads * 4)
    ex = ThreadPoolExecutor(n_threads)

    def probe() -> bool:  # one pass; True if the sum is right (int64 sums wrap: compare modulo 2**64)
        total = sum(int(v) for v in ex.map(np.add.reduce, parts))
        return total % 2**64 == words.size * 0x0101010101010101 % 2**64

    best = 0.0
    try:
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            ok = probe()
            dt = time.perf_counter() - t0
            if not ok:  # keeps the reduction honest
                raise RuntimeError("bandwidth probe: wrong sum")
            best = max(best, nbytes / dt)
    finally:
        ex.shutdown()
    return best


# ---------------------------------------------------------------------------------------------- timing
def _rss(field_name: str = "VmRSS") -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _model_type(f: GGUFFile, n_params: int) -> str:
    arch = f.architecture or "?"
    if n_params >= 1e9:
        label = f"{round(n_params / 1e9)}B"
    else:
        label = f"{round(n_params / 1e6)}M"
    ft = f.metadata.get("general.file_type")
    ft_name = FILE_TYPE_NAMES.get(int(ft), f"ftype {ft}") if isinstance(ft, int) else "?"
    return f"{arch} {label} {ft_name}"


def _time_pp(model: Any, tokens: np.ndarray) -> float:
    cache = model.new_cache()
    t0 = time.perf_counter()
    model.forward(tokens, cache)
    return time.perf_counter() - t0


def _time_tg(model: Any, tokens: np.ndarray) -> float:
    cache = model.new_cache()
    t0 = time.perf_counter()
    for i in range(tokens.shape[0]):
        model.forward(tokens[i : i + 1], cache)
    return time.perf_counter() - t0


def run_bench(
    path: str | os.PathLike[str],
    n_prompt: int = 512,
    n_gen: int = 128,
    n_threads: int = 2,
    repetitions: int = 3,
    warmup: bool = True,
    bandwidth: float | None = None,
    seed: int = 0,
    loader: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
    populate: bool = True,
) -> BenchReport:
    """Measure pp`n_prompt` and tg`n_gen` (either may be 0 to skip it) and the decode roofline.

    `bandwidth` (bytes/s) skips the bandwidth probe; `loader(path, n_ctx=, n_threads=)` defaults to
    `moe_gguf.models.load_model` (with `populate`: the whole file mapped at load, as llama-bench's mmap does)."""
    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise ValueError(f"need n_prompt >= 0 and n_gen >= 0, not both 0 (got {n_prompt}, {n_gen})")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    say = log or (lambda s: None)

    if loader is None:
        from .models import load_model

        loader = functools.partial(load_model, populate=populate)
    t0 = time.perf_counter()
    model = loader(path, n_ctx=max(n_prompt, n_gen, 1), n_threads=n_threads)
    load_s = time.perf_counter() - t0
    rss_load = _rss()
    f: GGUFFile = model.file
    n_params = sum(t.n_elements for t in f.tensors.values())
    size = sum(t.nbytes for t in f.tensors.values())
    n_vocab = int(model.n_vocab)
    rng = np.random.default_rng(seed)
    say(f"loaded {path} in {load_s:.2f} s ({size / 2**30:.2f} GiB, RSS {rss_load / 2**20:.0f} MiB)")

    if warmup:
        if n_prompt:
            _time_pp(model, rng.integers(0, n_vocab, n_prompt, dtype=np.int32))
        if n_gen:
            _time_tg(model, rng.integers(0, n_vocab, 1, dtype=np.int32))

    machine = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    tests: list[TestResult] = []
    for name, n_p, n_g in (("pp", n_prompt, 0), ("tg", 0, n_gen)):
        n = n_p or n_g
        if n == 0:
            continue
        samples = []
        for r in range(repetitions):
            toks = rng.integers(0, n_vocab, n, dtype=np.int32)
            dt = _time_pp(model, toks) if name == "pp" else _time_tg(model, toks)
            samples.append(n / dt)
            say(f"{name}{n} run {r + 1}/{repetitions}: {n / dt:.2f} t/s")
        tests.append(TestResult(f"{name}{n}", n_p, n_g, samples))
    rss_bench, rss_anon = _rss(), _rss("RssAnon")
    del model

    active, parts = active_weight_bytes(f)
    bw = bandwidth if bandwidth is not None else measure_read_bandwidth(n_threads)
    max_ts = bw / active if active else math.inf
    tg = next((t for t in tests if t.n_gen), None)
    roof = Roofline(active, parts, bw, max_ts, (tg.avg_ts / max_ts) if tg is not None and active else None)
    return BenchReport(
        model=path,
        model_type=_model_type(f, n_params),
        size=size,
        n_params=n_params,
        n_threads=n_threads,
        load_seconds=load_s,
        rss_after_load=rss_load,
        rss_after_bench=rss_bench,
        rss_anon_after_bench=rss_anon,
        machine=machine,
        tests=tests,
        roofline=roof,
    )


# ---------------------------------------------------------------------------------------------- output
def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_table(rep: BenchReport) -> str:
    """A llama-bench-style markdown table, then the roofline."""
    head = ["model", "size", "params", "backend", "threads", "test", "t/s"]
    rows = [
        [rep.model_type, _size(rep.size), _params(rep.n_params), "CPU (moe-gguf)", str(rep.n_threads), t.name,
         f"{t.avg_ts:.2f} ± {t.stddev_ts:.2f}"]
        for t in rep.tests
    ]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    right = {1, 2, 4, 6}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(cells)) + " |"

    out = [line(head), "| " + " | ".join(("-" * (w[i] - 1) + ":") if i in right else "-" * w[i]
                                         for i in range(len(head))) + " |"]
    out += [line(r) for r in rows]
    r = rep.roofline
    if r is not None:
        out.append("")
        out.append(f"decode roofline: {_size(r.active_bytes)} of weights per token / "
                   f"{r.bandwidth / 1e9:.1f} GB/s read bandwidth ({rep.n_threads} threads) = {r.max_ts:.2f} t/s max")
        out.append("  " + ", ".join(f"{k} {_size(v)}" for k, v in r.breakdown.items() if v))
        if r.fraction is not None:
            out.append(f"  tg at {100 * r.fraction:.1f}% of the roofline")
    out.append(f"load {rep.load_seconds:.2f} s; RSS after load {_size(rep.rss_after_load)}, after the tests "
               f"{_size(rep.rss_after_bench)} (of which private {_size(rep.rss_anon_after_bench)}); {rep.machine}")
    return "\n".join(out)


def type_mix(f: GGUFFile) -> dict[str, int]:
    """Bytes per tensor type (for reports)."""
    out: dict[str, int] = {}
    for t in f.tensors.values():
        out[type_name(t.ggml_type)] = out.get(type_name(t.ggml_type), 0) + t.nbytes
    return out
