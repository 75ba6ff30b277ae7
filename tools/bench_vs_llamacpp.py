#!/usr/bin/env python3
"""moe-gguf vs llama.cpp on the same GGUF, same threads, alternating runs.

    python tools/bench_vs_llamacpp.py MODEL.gguf --llama-bench PATH/llama-bench -p 512 -n 128 -t 2 -r 3

Each round runs llama.cpp's `llama-bench -r 1 -o json` and then `moe-gguf bench -r 1 --json` (each with its
own warm-up), so drifts in machine load hit both sides alike. Prints per test the mean ± sd t/s of each,
the ratio moe-gguf / llama.cpp of the means and each round's ratio with their median (the robust figure on a
shared machine), plus the decode roofline moe-gguf measured and both sides' share of it.
`--check-load` also asks llama.cpp's `llama-simple` (next to llama-bench) to generate a few tokens from the
file, to show llama.cpp accepts it. Nothing of llama.cpp is part of this repository: point at a build.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA_BENCH = "/work/scratch/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench"


def _run(cmd: list[str], timeout: float) -> str:
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {p.returncode}:\n{err}")
    return p.stdout.decode("utf-8", "replace")  # generated text may end inside a UTF-8 sequence


def _json_from(out: str) -> Any:
    # llama-bench prints only JSON with -o json; be tolerant of a log line before it
    i = min((k for k in (out.find("["), out.find("{")) if k >= 0), default=-1)
    if i < 0:
        raise RuntimeError(f"no JSON in output:\n{out[:2000]}")
    return json.loads(out[i:])


def llama_bench(exe: str, model: str, p: int, n: int, t: int, timeout: float) -> dict[str, float]:
    rows = _json_from(_run([exe, "-m", model, "-p", str(p), "-n", str(n), "-t", str(t), "-r", "1", "-o", "json"], timeout))
    out: dict[str, float] = {}
    for r in rows:
        name = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[name] = float(r["avg_ts"])
    return out


def ours_bench(model: str, p: int, n: int, t: int, timeout: float) -> tuple[dict[str, float], dict[str, Any]]:
    cmd = [sys.executable, "-m", "moe_gguf.cli", "bench", model, "-p", str(p), "-n", str(n), "-t", str(t), "-r", "1", "--json"]
    js = _json_from(_run(cmd, timeout))
    return {r["name"]: float(r["avg_ts"]) for r in js["tests"]}, js


def check_load(exe_dir: Path, model: str, timeout: float) -> str:
    simple = exe_dir / "llama-simple"
    if not simple.exists():
        return f"(no llama-simple in {exe_dir})"
    out = _run([str(simple), "-m", model, "-n", "8", "The capital of France is"], timeout)
    return out.strip()


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--llama-bench", default=DEFAULT_LLAMA_BENCH, help="path to llama.cpp's llama-bench")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=3, help="alternating rounds (one run of each side per round)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    ap.add_argument("--check-load", action="store_true", help="also generate a few tokens with llama-simple")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)

    if not os.path.isfile(a.model):
        ap.error(f"model not found: {a.model}")
    if not os.access(a.llama_bench, os.X_OK):
        ap.error(f"llama-bench not found or not executable: {a.llama_bench}")
    if a.rounds < 1 or a.threads < 1:
        ap.error("rounds and threads must be >= 1")

    env_note = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    llama: dict[str, list[float]] = {}
    ours: dict[str, list[float]] = {}
    last_js: dict[str, Any] = {}
    for r in range(a.rounds):
        for name, v in llama_bench(a.llama_bench, a.model, a.n_prompt, a.n_gen, a.threads, a.timeout).items():
            llama.setdefault(name, []).append(v)
        res, last_js = ours_bench(a.model, a.n_prompt, a.n_gen, a.threads, a.timeout)
        for name, v in res.items():
            ours.setdefault(name, []).append(v)
        print(f"round {r + 1}/{a.rounds}: llama.cpp {llama_last(llama)} | moe-gguf {llama_last(ours)}", file=sys.stderr)

    roof = last_js.get("roofline") or {}
    max_ts = roof.get("max_ts")
    result = {
        "model": a.model,
        "threads": a.threads,
        "rounds": a.rounds,
        "machine": env_note,
        "tests": {
            name: {
                "llama_cpp": llama[name],
                "moe_gguf": ours.get(name, []),
                "ratio": (statistics.fmean(ours[name]) / statistics.fmean(llama[name])) if ours.get(name) else None,
                # each round runs both sides back to back: the median of the per-round ratios is robust to the
                # machine's speed drifting between rounds (seen here: the same binary 30 % apart within minutes)
                "round_ratios": [o / l for o, l in zip(ours.get(name, []), llama[name])],
            }
            for name in llama
        },
        "roofline_max_ts": max_ts,
        "roofline_bandwidth_gbs": (roof.get("bandwidth") or 0) / 1e9,
    }
    if a.check_load:
        result["llama_simple_output"] = check_load(Path(a.llama_bench).parent, a.model, a.timeout)

    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {a.model}, {a.threads} threads, {a.rounds} alternating rounds ({env_note})")
    print("| test | llama.cpp t/s | moe-gguf t/s | moe-gguf / llama.cpp | per round (median) |")
    print("| ---- | ------------: | -----------: | -------------------: | ------------------ |")
    for name, d in result["tests"].items():
        ratio = f"{d['ratio']:.2f}x" if d["ratio"] is not None else "-"
        rr = d["round_ratios"]
        per_round = f"{' '.join(f'{x:.2f}' for x in rr)} ({statistics.median(rr):.2f}x)" if rr else "-"
        print(f"| {name} | {_ms(d['llama_cpp'])} | {_ms(d['moe_gguf']) if d['moe_gguf'] else '-'} | {ratio} | {per_round} |")
    if max_ts:
        tg = next((n for n in result["tests"] if n.startswith("tg")), None)
        print(f"\ndecode roofline {max_ts:.2f} t/s ({result['roofline_bandwidth_gbs']:.1f} GB/s measured by moe-gguf bench)")
        if tg:
            d = result["tests"][tg]
            print(f"  llama.cpp at {100 * statistics.fmean(d['llama_cpp']) / max_ts:.1f}%"
                  + (f", moe-gguf at {100 * statistics.fmean(d['moe_gguf']) / max_ts:.1f}%" if d["moe_gguf"] else ""))
    if a.check_load:
        print("\nllama-simple on this file:\n" + result["llama_simple_output"])
    return 0


def llama_last(d: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {v[-1]:.2f}" for k, v in d.items())


if __name__ == "__main__":
    sys.exit(main())
