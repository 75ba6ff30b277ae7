#!/usr/bin/env python3
"""Load test for `moe-gguf serve`: N concurrent streaming chat clients for a bounded time, some disconnecting
at random mid-stream.

Checks that no request fails (anything but 200, or a stream without [DONE]) and that nothing is garbled:
decoding is greedy, so every completed answer to the same prompt must be identical. Reports aggregate
tokens/s, request latency and time-to-first-token p50/p99, and the server's RSS over the run (flat = no leak).

    python tools/load_test.py --model model.gguf --clients 50 --duration 60      # starts its own server
    python tools/load_test.py --url http://127.0.0.1:8080 --clients 50           # an already running one
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

try:
    import httpx2 as httpx  # what openai >= 3 ships httpx as
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is a mixture of experts?",
    "Count from one to five.",
    "Say hello in French.",
    "Describe a cat in four words.",
    "Why is the sky blue?",
    "Give me a short poem title.",
]


@dataclass
class Stats:
    completed: int = 0
    disconnected: int = 0
    rejected: int = 0  # 503 queue full
    failures: list[str] = field(default_factory=list)
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    answers: dict[tuple[str, int], str] = field(default_factory=dict)
    garbled: int = 0


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, headers: dict, st: Stats, rng: random.Random,
                      max_tokens: int, p_disconnect: float) -> None:
    prompt = rng.choice(PROMPTS)
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    cut = rng.randint(1, max(1, max_tokens // 2)) if rng.random() < p_disconnect else None
    t0 = time.perf_counter()
    ttft = None
    text, n_chunks, usage, done = [], 0, None, False
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code == 503:
                st.rejected += 1
                await r.aread()
                return
            if r.status_code != 200:
                st.failures.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                j = json.loads(data)
                if "error" in j:
                    st.failures.append(f"stream error: {j['error']}")
                    return
                if j.get("usage"):
                    usage = j["usage"]
                for c in j.get("choices", []):
                    piece = c.get("delta", {}).get("content")
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(piece)
                        n_chunks += 1
                if cut is not None and n_chunks >= cut:
                    st.disconnected += 1
                    return  # leaving the block closes the connection mid-stream
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        st.failures.append(f"{type(e).__name__}: {e}")
        return
    if not done:
        st.failures.append("stream ended without [DONE]")
        return
    st.completed += 1
    st.latencies.append(time.perf_counter() - t0)
    if ttft is not None:
        st.ttfts.append(ttft)
    st.tokens += usage["completion_tokens"] if usage else n_chunks
    answer = "".join(text)
    key = (prompt, max_tokens)
    if key in st.answers and st.answers[key] != answer:
        st.garbled += 1
    st.answers.setdefault(key, answer)


async def client_loop(i: int, url: str, headers: dict, st: Stats, deadline: float, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed * 1000 + i)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout)) as client:
        while time.perf_counter() < deadline:
            await one_request(client, url, headers, st, rng, args.max_tokens, args.disconnect)


async def run(args: argparse.Namespace, url: str, pid: int | None) -> Stats:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    st = Stats()
    deadline = time.perf_counter() + args.duration
    rss: list[int] = []

    async def sample_rss() -> None:
        while time.perf_counter() < deadline + args.timeout:
            if pid:
                rss.append(rss_kib(pid))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop(i, url, headers, st, deadline, args) for i in range(args.clients)))
    wall = time.perf_counter() - t0
    sampler.cancel()
    if pid:
        rss.append(rss_kib(pid))
    st.wall = wall  # type: ignore[attr-defined]
    st.rss = rss  # type: ignore[attr-defined]
    return st


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (otherwise --model starts one)")
    ap.add_argument("--model", help="GGUF to serve with `moe-gguf serve`")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds during which clients start requests")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--disconnect", type=float, default=0.2, help="probability a request hangs up mid-stream")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--parallel", type=int, default=4, help="server slots when --model starts the server")
    ap.add_argument("--ctx-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    if not args.url and not args.model:
        ap.error("give --url or --model")

    proc = None
    pid = None
    url = args.url
    if args.model:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "moe_gguf.cli", "serve", args.model, "--port", str(port), "-c", str(args.ctx_size),
               "--parallel", str(args.parallel), "--queue", str(max(64, args.clients)), "-t", str(args.threads)]
        if args.api_key:
            cmd += ["--api-key", args.api_key]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pid = proc.pid
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                print(proc.stderr.read().decode(), file=sys.stderr)
                return 2
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > 120:
                proc.kill()
                print("server did not start", file=sys.stderr)
                return 2
            time.sleep(0.3)
    try:
        st = asyncio.run(run(args, url, pid))
        health = httpx.get(url + "/health", timeout=5).json()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    rss = st.rss  # type: ignore[attr-defined]
    summary = {
        "clients": args.clients, "duration_s": round(st.wall, 1),  # type: ignore[attr-defined]
        "completed": st.completed, "disconnected": st.disconnected, "rejected_503": st.rejected,
        "failed": len(st.failures), "garbled": st.garbled,
        "tokens": st.tokens, "tokens_per_s": round(st.tokens / st.wall, 2),  # type: ignore[attr-defined]
        "latency_p50_s": round(pct(st.latencies, 50), 3), "latency_p99_s": round(pct(st.latencies, 99), 3),
        "ttft_p50_s": round(pct(st.ttfts, 50), 3), "ttft_p99_s": round(pct(st.ttfts, 99), 3),
        # the server's RSS at the start, 1/4, 1/2, 3/4 of the run and at the end: flat after warm-up = no leak
        "rss_mib_over_run": [round(rss[min(len(rss) - 1, int(q * (len(rss) - 1)))] / 1024, 1)
                             for q in (0, 0.25, 0.5, 0.75, 1)] if rss else None,
        "server_after": health,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>24}: {v}")
        for f in st.failures[:10]:
            print("failure:", f)
    ok = not st.failures and not st.garbled and health.get("active") == 0 and health.get("waiting") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
