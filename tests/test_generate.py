"""The generation loop on a fake model (logits from a fixed table) and a fake byte-level tokenizer."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_gguf.generate import Chunk, Context, ContextFullError, generate
from moe_gguf.sampling import Sampler, SamplingParams

EOG = 0


class FakeCache:
    def __init__(self) -> None:
        self.tokens: list[int] = []

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def clear(self) -> None:
        self.tokens.clear()

    def truncate(self, n: int) -> None:
        del self.tokens[n:]


class FakeModel:
    """Logits for position i depend only on the token at i: row `t` of a random table, with a strong bump at
    `next_of[t]` so greedy decoding follows `next_of` exactly."""

    def __init__(self, next_of: list[int], n_ctx: int = 256, seed: int = 0) -> None:
        self.n_vocab = len(next_of)
        self.n_ctx = n_ctx
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((self.n_vocab, self.n_vocab)).astype(np.float32)
        self.table[np.arange(self.n_vocab), next_of] += 8.0
        self.evaluated = 0
        self.calls = 0

    def new_cache(self) -> FakeCache:
        return FakeCache()

    def forward(self, tokens: np.ndarray, cache: FakeCache, all_logits: bool = False) -> np.ndarray:
        assert tokens.dtype == np.int32 and tokens.ndim == 1 and tokens.size > 0
        assert cache.n_past + tokens.size <= self.n_ctx, "model asked to go past its context"
        cache.tokens.extend(int(t) for t in tokens)
        self.evaluated += tokens.size
        self.calls += 1
        return self.table[int(tokens[-1])].copy()


class FakeTokenizer:
    """Token i is the bytes `pieces[i]`; the stream decoder emits the longest complete UTF-8 prefix."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def is_eog(self, t: int) -> bool:
        return t == EOG

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> "FakeDecoder":
        return FakeDecoder(self)


class FakeDecoder:
    def __init__(self, tok: FakeTokenizer) -> None:
        self.tok = tok
        self.buf = b""

    def feed(self, t: int) -> str:
        self.buf += self.tok.pieces[t]
        for cut in range(len(self.buf), max(len(self.buf) - 4, -1), -1):
            try:
                s = self.buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.buf = self.buf[cut:]
            return s
        s, self.buf = self.buf.decode("utf-8", errors="replace"), b""
        return s

    def flush(self) -> str:
        s, self.buf = self.buf.decode("utf-8", errors="replace"), b""
        return s


V = 40
PIECES = [b"</s>"] + [bytes([ord("a") + (i % 5)]) * (1 + i % 3) + (b" " if i % 4 == 0 else b"") for i in range(1, V - 2)]
PIECES += [b"\xc3", b"\xa9"]  # "é" split over two tokens


def chain(start: int, next_of: list[int], n: int) -> list[int]:
    out, t = [], start
    for _ in range(n):
        t = next_of[t]
        out.append(t)
        if t == EOG:
            break
    return out


def cycle_next(order: list[int]) -> list[int]:
    """next_of that walks `order` cyclically; tokens not in `order` go to order[0]."""
    nxt = [order[0]] * V
    for a, b in zip(order, order[1:] + order[:1]):
        nxt[a] = b
    return nxt


ORDER = [5, 9, 13, 2, V - 2, V - 1, 7, 21, 3, 30, 11, 17]
TOK = FakeTokenizer(PIECES)


def run(model: FakeModel, prompt: list[int], max_tokens: int, **kw) -> tuple[str, list, object]:
    params = kw.pop("params", SamplingParams(temperature=0.0))
    g = generate(model, TOK, prompt, params, max_tokens, **kw)
    chunks = list(g)
    return "".join(c.text for c in chunks), chunks, g


def test_greedy_follows_table_and_stops_at_length() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt)
    text, chunks, g = run(model, [1, 5], 30)
    ref_ids = chain(5, nxt, 30)
    assert g.tokens == ref_ids
    assert text == TOK.decode(ref_ids)
    assert "é" in text  # the split character came out whole
    assert chunks[-1].finish_reason == "length" and chunks[-1].token_id is None
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert g.stats.completion_tokens == 30 and g.stats.prompt_tokens == 2
    # 2 prompt tokens + 29 decode steps (the 30th token is never fed back)
    assert model.evaluated == 2 + 29


def test_eog_stops_and_is_not_emitted() -> None:
    nxt = cycle_next(ORDER)
    nxt[17] = EOG
    model = FakeModel(nxt)
    text, chunks, g = run(model, [1], 100)
    ref_ids = chain(1, nxt, 100)
    assert ref_ids[-1] == EOG
    assert g.tokens == ref_ids
    assert text == TOK.decode(ref_ids[:-1])
    assert "</s>" not in text
    assert chunks[-1].finish_reason == "stop"


@given(start=st.integers(0, 30), length=st.integers(1, 6), n=st.integers(15, 40))
def test_stop_strings_cut_and_never_leak(start: int, length: int, n: int) -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt)
    full = TOK.decode(chain(1, nxt, n))
    stop = full[start : start + length]
    if len(stop) < length:
        stop = "zzz-never"
    text, chunks, g = run(model, [1], n, stop=[stop, "qqq"])
    j = full.find(stop)
    expected = full if j < 0 else full[:j]
    assert text == expected
    assert chunks[-1].finish_reason == ("length" if j < 0 else "stop")
    # every prefix of the stream is a prefix of the answer: nothing beyond the stop string was ever sent
    acc = ""
    for c in chunks:
        acc += c.text
        assert expected.startswith(acc)


def test_stop_prefix_held_back_then_released() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt)
    ids = chain(1, nxt, 5)
    full = TOK.decode(ids)
    tail = TOK.decode(ids[3:])
    stop = tail + "\x00never"  # the last two pieces start it: held back, then released when the stream ends
    text, chunks, _ = run(model, [1], 5, stop=stop)
    assert text == full
    assert chunks[-1].finish_reason == "length"
    assert [c.text for c in chunks[-2:]] == ["", tail]


def test_prompt_too_long_fails_before_any_work() -> None:
    model = FakeModel(cycle_next(ORDER), n_ctx=16)
    with pytest.raises(ContextFullError, match="16"):
        generate(model, TOK, list(range(1, 17)), SamplingParams(), 4)
    assert model.calls == 0


def test_context_fills_up_gracefully() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt, n_ctx=12)
    text, chunks, g = run(model, [1, 2, 3, 4], 100)
    assert chunks[-1].finish_reason == "length"
    # positions 0..11 hold 4 prompt + 8 generated tokens; the 9th sampled token comes from the last logits
    assert len(g.tokens) == 9
    assert g.tokens == chain(4, nxt, 9)
    assert model.evaluated == 12


def test_long_prompt_is_batched() -> None:
    model = FakeModel(cycle_next(ORDER), n_ctx=2048)
    prompt = [int(x) for x in np.random.default_rng(1).integers(1, V, 1200)]
    _, _, g = run(model, prompt, 3)
    assert model.calls == 3 + 2  # ceil(1200 / 512) prompt batches + 2 decode steps
    assert g.stats.prompt_evaluated == 1200 and g.stats.prompt_tokens_per_second > 0


def test_context_reuses_common_prefix() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt)
    ctx = Context(model)
    p1 = [1, 5, 9, 13]
    t1, _, g1 = run(model, p1, 5, context=ctx)
    assert ctx.tokens == p1 + g1.tokens[:-1] == ctx.cache.tokens
    # the next prompt extends the conversation: only the new tokens are evaluated
    p2 = p1 + g1.tokens + [7, 21]
    before = model.evaluated
    t2, _, g2 = run(model, p2, 4, context=ctx)
    assert g2.stats.prompt_evaluated == 3  # last sampled token (never fed) + the 2 new ones
    assert model.evaluated - before == 3 + 3
    fresh, _, _ = run(FakeModel(nxt), p2, 4)
    assert t2 == fresh
    # a prompt that diverges early truncates the cache
    run(model, [1, 5, 30], 2, context=ctx)
    assert ctx.tokens[:3] == [1, 5, 30] and ctx.cache.tokens == ctx.tokens
    # the same prompt twice still evaluates one token to get logits
    _, _, g4 = run(model, [1, 5, 30], 2, context=ctx)
    assert g4.stats.prompt_evaluated == 1


def test_sampled_generation_matches_manual_loop() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt, seed=3)
    model.table /= 4.0  # flatten so sampling really varies
    params = SamplingParams(temperature=1.0, top_k=10, top_p=0.9, min_p=0.02, repeat_penalty=1.2, seed=7)
    _, _, g = run(model, [1, 2], 25, params=params)
    s = Sampler(V, params, n_ctx=model.n_ctx)
    s.reset([1, 2])
    t, ref = 2, []
    for _ in range(25):
        t = s.sample(model.table[t])
        s.accept(t)
        ref.append(t)
        if t == EOG:
            break
    assert g.tokens == ref


def test_close_early_and_bad_inputs() -> None:
    model = FakeModel(cycle_next(ORDER))
    g = generate(model, TOK, [1], SamplingParams(temperature=0), 50)
    next(g)
    next(g)
    g.close()
    assert model.calls <= 3
    with pytest.raises(ValueError, match="empty"):
        generate(model, TOK, [], None, 3)
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        generate(model, TOK, [1, 40], None, 3)
    with pytest.raises(ValueError):
        generate(model, TOK, [[1, 2]], None, 3)
    with pytest.raises(TypeError):
        generate(model, TOK, [1.5], None, 3)
    with pytest.raises(ValueError):
        generate(model, TOK, [1], None, -1)
    with pytest.raises(TypeError):
        generate(model, TOK, [1], None, 3, stop=[1])  # type: ignore[list-item]
    out = list(generate(model, TOK, [1], None, 0))
    assert len(out) == 1 and out[0].finish_reason == "length" and out[0].text == ""


# ------------------------------------------------------------------------------------------------- scheduler
import threading  # noqa: E402

from moe_gguf.generate import Job, QueueFullError, Scheduler  # noqa: E402


class BatchingModel(FakeModel):
    """FakeModel plus forward_batch (one token for each of several caches), recording every call."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.log: list[tuple[str, int]] = []

    def forward(self, tokens, cache, all_logits=False):
        self.log.append(("forward", int(tokens.size)))
        return super().forward(tokens, cache, all_logits)

    def forward_batch(self, tokens: np.ndarray, caches: list) -> np.ndarray:
        assert tokens.dtype == np.int32 and tokens.shape == (len(caches),)
        assert len({id(c) for c in caches}) == len(caches), "two rows for one sequence"
        self.log.append(("batch", len(caches)))
        for t, c in zip(tokens, caches):
            c.tokens.append(int(t))
        return self.table[tokens].copy()


def run_jobs(sched: Scheduler, prompts: list[list[int]], max_tokens: int, params=None) -> list[tuple[str, list]]:
    done = [threading.Event() for _ in prompts]
    events: list[list] = [[] for _ in prompts]

    def cb(i):
        def on(ev):
            events[i].append(ev)
            if isinstance(ev, BaseException) or ev.finish_reason is not None:
                done[i].set()
        return on

    jobs = [Job(p, params or SamplingParams(temperature=0), max_tokens, None, cb(i)) for i, p in enumerate(prompts)]
    for j in jobs:
        sched.submit(j)
    for d in done:
        assert d.wait(20)
    return [("".join(e.text for e in evs if isinstance(e, Chunk)), evs) for evs in events]


@pytest.mark.parametrize("batching", [True, False])
def test_scheduler_matches_single_generation(batching: bool) -> None:
    nxt = cycle_next(ORDER)
    model = BatchingModel(nxt) if batching else FakeModel(nxt)
    prompts = [[1, 2], [3], [4, 5, 9], [7]]
    sched = Scheduler(model, TOK, n_slots=3, max_queue=8).start()
    try:
        got = run_jobs(sched, prompts, 15)
    finally:
        sched.stop()
    for p, (text, evs) in zip(prompts, got):
        assert text == TOK.decode(chain(p[-1], nxt, 15))
        assert evs[-1].finish_reason == "length"
    if batching:
        sizes = [n for kind, n in model.log if kind == "batch"]
        assert max(sizes) == 3  # three slots decode in one pass over the weights


def test_scheduler_interleaves_long_prefill_with_decoding() -> None:
    nxt = cycle_next(ORDER)
    model = BatchingModel(nxt, n_ctx=1 << 20)  # room enough that the short job cannot finish first, however fast
    long_prompt = [int(x) for x in np.random.default_rng(0).integers(1, V, 1500)]
    # the short job starts first, so it is decoding when the long prompt arrives
    sched = Scheduler(model, TOK, n_slots=2, max_queue=8)
    first = threading.Event()
    out: list = []

    def on_short(ev):
        out.append(ev)
        first.set()

    long_done = threading.Event()
    short = Job([1], SamplingParams(temperature=0), (1 << 20) - 2, None, on_short)  # still running when the long one ends
    sched.submit(short)
    sched.start()
    assert first.wait(10)
    sched.submit(Job(long_prompt, SamplingParams(temperature=0), 2, None,
                     lambda ev: long_done.set() if not isinstance(ev, Chunk) or ev.finish_reason else None))
    assert long_done.wait(20)
    assert out[-1].finish_reason is None
    short.cancel()
    sched.stop()
    prefill = [i for i, (k, n) in enumerate(model.log) if k == "forward" and n > 1]
    assert len(prefill) == 3  # 1500 tokens in batches of 512
    between = model.log[prefill[0] : prefill[-1]]
    assert ("forward", 1) in between, "the short sequence stalled during the long prompt"


def test_scheduler_queue_limit_and_cancel() -> None:
    nxt = cycle_next(ORDER)
    model = FakeModel(nxt, n_ctx=4096)
    sched = Scheduler(model, TOK, n_slots=1, max_queue=1)  # not started: nothing is taken off the queue
    sched.submit(Job([1], SamplingParams(), 5, None, lambda ev: None))
    with pytest.raises(QueueFullError, match="busy"):
        sched.submit(Job([1], SamplingParams(), 5, None, lambda ev: None))
    sched.stop()
    # a cancelled job frees its slot for the next one
    sched = Scheduler(model, TOK, n_slots=1, max_queue=4)
    got_one = threading.Event()
    j1 = Job([1], SamplingParams(temperature=0), 4000, None, lambda ev: got_one.set())
    sched.submit(j1)
    sched.start()
    assert got_one.wait(10)
    j1.cancel()
    res = run_jobs(sched, [[3]], 5)
    sched.stop()
    assert res[0][0] == TOK.decode(chain(3, nxt, 5))
    assert sched.n_active == 0 and sched.n_waiting == 0


def test_scheduler_reports_bad_jobs() -> None:
    model = FakeModel(cycle_next(ORDER), n_ctx=8)
    sched = Scheduler(model, TOK, n_slots=1).start()
    try:
        (text, evs), = run_jobs(sched, [list(range(1, 10))], 3)
    finally:
        sched.stop()
    assert len(evs) == 1 and isinstance(evs[0], ContextFullError)


def test_scheduler_survives_a_failing_model() -> None:
    class Flaky(FakeModel):
        def forward(self, tokens, cache, all_logits=False):
            if 33 in tokens:
                raise RuntimeError("kernel exploded")
            return super().forward(tokens, cache, all_logits)

    nxt = cycle_next(ORDER)
    sched = Scheduler(Flaky(nxt), TOK, n_slots=1).start()
    try:
        (_, bad), = run_jobs(sched, [[1, 33]], 3)
        (text, good), = run_jobs(sched, [[1, 2]], 3)
    finally:
        sched.stop()
    assert len(bad) == 1 and isinstance(bad[0], RuntimeError)
    assert text == TOK.decode(chain(2, nxt, 3)) and good[-1].finish_reason == "length"
