"""The generation loop: prompt evaluation, sampling, streaming detokenisation, stop conditions and timing.

`generate(model, tokenizer, prompt_ids, params, max_tokens, stop)` returns a `Generation`: iterate it for
`Chunk`s (a text piece, the token id it came from, and on the last chunk the finish reason), then read its
`.stats`. A `Context` (a model's cache plus the tokens it holds) can be passed to keep the KV cache between
calls: the common prefix of the new prompt is reused and only the rest is evaluated (the chat REPL and the
server rely on this).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .sampling import Sampler, SamplingParams

from .models import ContextFullError  # the model layer's "does not fit the context" error, re-raised here


__all__ = [
    "Chunk", "Context", "ContextFullError", "Generation", "GenerationStats", "Job", "QueueFullError", "Scheduler",
    "encode_chat", "encode_text", "generate",
]

log = logging.getLogger(__name__)

PROMPT_BATCH = 512  # prompt tokens per forward call: bounds the model's scratch memory for long prompts


class _Model(Protocol):
    n_vocab: int
    n_ctx: int

    def new_cache(self) -> Any: ...
    def forward(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray: ...


@dataclass
class Chunk:
    """One step of output. `text` may be empty (an incomplete UTF-8 sequence, or text held back because it
    could start a stop string). `token_id` is None on the closing chunk, which carries `finish_reason`:
    "stop" (end-of-generation token or stop string) or "length" (max_tokens or the context is full)."""

    text: str
    token_id: int | None = None
    finish_reason: str | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens in the prompt
    prompt_evaluated: int = 0  # of those, how many were run through the model (the rest came from the cache)
    prompt_seconds: float = 0.0
    completion_tokens: int = 0  # sampled tokens, including a final end-of-generation token
    generation_seconds: float = 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"prompt: {self.prompt_evaluated} tokens in {self.prompt_seconds:.2f} s "
            f"({self.prompt_tokens_per_second:.2f} tokens/s); generation: {self.completion_tokens} tokens in "
            f"{self.generation_seconds:.2f} s ({self.generation_tokens_per_second:.2f} tokens/s)"
        )


@dataclass
class Context:
    """A KV cache and the token ids whose keys/values it holds, so consecutive prompts share work."""

    model: Any
    cache: Any = None
    tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cache is None:
            self.cache = self.model.new_cache()

    def reset(self) -> None:
        self.cache.clear()
        self.tokens.clear()

    def reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keep the longest cached prefix of `prompt` (at most len(prompt) - 1 tokens, so at least one token
        is evaluated and produces logits); drop the rest of the cache. Returns how many tokens are kept."""
        n = min(len(self.tokens), len(prompt) - 1)
        if n > 0:
            a = np.asarray(self.tokens[:n], dtype=np.int64)
            b = np.asarray(prompt[:n], dtype=np.int64)
            diff = np.flatnonzero(a != b)
            if diff.size:
                n = int(diff[0])
        n = max(n, 0)
        if n == 0:
            self.reset()
        elif n < self.cache.n_past:
            self.cache.truncate(n)
            del self.tokens[n:]
        return n


def encode_chat(tokenizer: Any, template: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered by the chat `template` with the assistant's turn opened. Special tokens
    written by the template are parsed; a BOS both written by the template and added by the tokenizer is kept once."""
    text = template.render(list(messages), add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special=True, parse_special=True)
    if len(ids) > 1 and ids[0] == ids[1] == tokenizer.bos_id:
        ids = ids[1:]
    return list(ids)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a plain prompt as llama.cpp tokenizes one: BOS added when the model wants it, special
    tokens written in the text parsed."""
    return list(tokenizer.encode(text, add_special=True, parse_special=True))


def _check_prompt(prompt_ids: Any, n_vocab: int) -> np.ndarray:
    arr = np.asarray(prompt_ids)
    if arr.ndim != 1:
        raise ValueError(f"prompt_ids must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"prompt_ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_vocab:
        raise ValueError(f"prompt token ids must be in [0, {n_vocab}), got min {lo}, max {hi}")
    return arr.astype(np.int32)


def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Generation:
    """An iterator of `Chunk`s; `.stats` is complete once it is exhausted. `close()` stops it early.

    Iterating drives the steps below; a scheduler may drive them itself instead (to interleave sequences and
    batch their decode steps): `prefill_step()` until it returns True, then repeat `sample_step()` (returns a
    Chunk; the one with a finish_reason is the last) and, while `pending_token` is not None, either
    `forward_pending()` or a batched forward followed by `feed_logits(logits)`.
    """

    def __init__(
        self,
        model: _Model,
        tokenizer: Any,
        prompt_ids: Any,
        params: SamplingParams | None,
        max_tokens: int,
        stop: Sequence[str] | str | None = None,
        context: Context | None = None,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
            raise TypeError(f"max_tokens must be an integer, got {max_tokens!r}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if isinstance(stop, str):
            stop = [stop]
        stops = [s for s in (stop or []) if s]
        if not all(isinstance(s, str) for s in stops):
            raise TypeError("stop must be a string or a list of strings")
        prompt = _check_prompt(prompt_ids, model.n_vocab)
        n_ctx = int(model.n_ctx)
        if len(prompt) >= n_ctx:
            raise ContextFullError(
                f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}; "
                f"shorten the prompt or raise the context size (-c)"
            )
        if context is not None and context.model is not model:
            raise ValueError("context belongs to a different model")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.params = params if params is not None else SamplingParams()
        self.max_tokens = int(max_tokens)
        self.stops = stops
        self.context = context if context is not None else Context(model)
        self.stats = GenerationStats(prompt_tokens=len(prompt))
        self.finish_reason: str | None = None
        self.tokens: list[int] = []  # sampled token ids
        self.pending_token: int | None = None  # sampled, emitted, not yet run through the model
        self.finished = False
        self._sampler = Sampler(model.n_vocab, self.params, n_ctx=n_ctx)
        self._sampler.reset(int(t) for t in prompt)  # llama.cpp's penalty window includes the prompt
        self._dec = tokenizer.stream_decoder(skip_special=True)  # like llama.cpp, control tokens are not printed
        self._step = np.empty(1, dtype=np.int32)  # the decode step's input, reused every token
        self._held = ""  # decoded text not yet emitted (it may be the start of a stop string)
        self._rest: np.ndarray | None = None  # prompt tokens not in the cache
        self._pos = 0
        self._logits: np.ndarray | None = None
        self._t0 = self._t1 = 0.0
        self._it = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return next(self._it)

    def close(self) -> None:
        """Stop early (the cache keeps what was evaluated); the stats cover the work done so far."""
        self._it.close()
        if not self.finished and self._t1:
            self.stats.generation_seconds = time.perf_counter() - self._t1

    def text(self) -> str:
        """Run to completion and return the whole generated text."""
        return "".join(c.text for c in self)

    @property
    def prefilled(self) -> bool:
        return self._logits is not None or self.finished

    @property
    def cache(self) -> Any:
        return self.context.cache

    def _run(self) -> Iterator[Chunk]:
        while not self.prefill_step():
            pass
        while True:
            chunk = self.sample_step()
            yield chunk
            if chunk.finish_reason is not None:
                return
            self.forward_pending()

    # ---- steps ---------------------------------------------------------------------------------------------
    def prefill_step(self) -> bool:
        """Evaluate the next batch of prompt tokens (the cached prefix is skipped). True once the prompt is in."""
        if self.prefilled:
            return True
        ctx = self.context
        if self._rest is None:
            self._t0 = time.perf_counter()
            self._rest = self.prompt[ctx.reuse_prefix(self.prompt) :]
        part = np.ascontiguousarray(self._rest[self._pos : self._pos + PROMPT_BATCH])
        try:
            logits = self.model.forward(part, ctx.cache)
        except BaseException:
            ctx.reset()  # the cache may hold part of a batch: do not let a later call trust it
            raise
        ctx.tokens.extend(int(t) for t in part)
        self._pos += len(part)
        if self._pos >= len(self._rest):
            self._logits = logits
            self.stats.prompt_evaluated = len(self._rest)
            self._t1 = time.perf_counter()
            self.stats.prompt_seconds = self._t1 - self._t0
            return True
        return False

    def sample_step(self) -> Chunk:
        """Sample the next token from the current logits and return its text (see `Chunk`)."""
        if self.finished or self._logits is None or self.pending_token is not None:
            raise RuntimeError("sample_step() needs fresh logits: finish the prefill / forward the pending token")
        if len(self.tokens) >= self.max_tokens:
            return self._finish("length", "")
        token = self._sampler.sample(self._logits)
        self._sampler.accept(token)
        self.tokens.append(token)
        self.stats.completion_tokens += 1
        if self.tokenizer.is_eog(token):
            return self._finish("stop", "")
        out, self._held, hit = self._split_stop(self._held + self._dec.feed(token))
        if hit:
            return self._finish("stop", out, stopped=True)
        if len(self.tokens) >= self.max_tokens or self.context.cache.n_past >= int(self.model.n_ctx):
            return self._finish("length", out)  # no forward for a token nobody will sample from
        self.pending_token = token
        return Chunk(out, token)

    def feed_logits(self, logits: np.ndarray) -> None:
        """The model has run `pending_token` (appending it to this sequence's cache); these are its logits."""
        if self.pending_token is None:
            raise RuntimeError("no pending token")
        self.context.tokens.append(self.pending_token)
        self.pending_token = None
        self._logits = logits

    def forward_pending(self) -> None:
        """Run `pending_token` through the model on this sequence's own cache."""
        if self.pending_token is None:
            raise RuntimeError("no pending token")
        self._step[0] = self.pending_token
        try:
            logits = self.model.forward(self._step, self.context.cache)
        except BaseException:
            self.context.reset()
            raise
        self.feed_logits(logits)

    def _finish(self, reason: str, out: str, stopped: bool = False) -> Chunk:
        if not stopped:
            # The stream ended without completing a stop string: whatever was held back is real output.
            more, held, hit = self._split_stop(self._held + self._dec.flush())
            out += more
            if hit:
                reason = "stop"
            else:
                out += held
        self._held = ""
        self.finished = True
        self.finish_reason = reason
        self._logits = None
        self.stats.generation_seconds = time.perf_counter() - self._t1
        return Chunk(out, None, reason)

    def _split_stop(self, pending: str) -> tuple[str, str, bool]:
        """(text safe to emit, text to hold back, whether a stop string was found)."""
        if not self.stops:
            return pending, "", False
        first = -1
        for s in self.stops:
            j = pending.find(s)
            if j >= 0 and (first < 0 or j < first):
                first = j
        if first >= 0:
            return pending[:first], "", True
        hold = _stop_holdback(pending, self.stops)
        if hold:
            return pending[:-hold], pending[-hold:], False
        return pending, "", False


def generate(
    model: _Model,
    tokenizer: Any,
    prompt_ids: Any,
    params: SamplingParams | None = None,
    max_tokens: int = 128,
    stop: Sequence[str] | str | None = None,
    context: Context | None = None,
) -> Generation:
    """Generate up to `max_tokens` tokens after `prompt_ids`; iterate the result for `Chunk`s.

    Raises ContextFullError at once (before any model work) when the prompt does not fit the context.
    Generation ends at an end-of-generation token, a stop string (which is not emitted), `max_tokens`, or a
    full context; the last chunk carries the finish reason and `Generation.stats` the timings.
    """
    return Generation(model, tokenizer, prompt_ids, params, max_tokens, stop, context)


# ------------------------------------------------------------------------------------------------- scheduling
class QueueFullError(RuntimeError):
    """The scheduler's waiting queue is full; try again later."""


class Job:
    """One generation request for a `Scheduler`. `on_event` is called from the scheduler's thread with each
    `Chunk` (the last one carries `finish_reason`; `stats` is set before it is delivered) or with an exception
    (the job is then over). `cancel()` may be called from any thread; the job's slot is freed at the next step.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None,
        on_event: Callable[[Chunk | BaseException], None],
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.stop = stop
        self.on_event = on_event
        self.stats: GenerationStats | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Runs jobs on one model from a worker thread: up to `n_slots` sequences are active at once, each with its
    own KV cache (`Context`), and take turns one token each (round robin); the rest wait in a FIFO queue of at
    most `max_queue` jobs (`submit` raises QueueFullError beyond that). A new job goes to the free slot whose
    cache shares the longest prefix with its prompt, so a continued conversation re-evaluates only new tokens.
    """

    def __init__(self, model: _Model, tokenizer: Any, n_slots: int = 1, max_queue: int = 64) -> None:
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self._contexts = [Context(model) for _ in range(n_slots)]
        self._free = list(range(n_slots))
        self._active: list[tuple[Job, Generation, int]] = []
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def n_slots(self) -> int:
        return len(self._contexts)

    @property
    def n_active(self) -> int:
        return len(self._active)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="moe-gguf-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self._waiting) >= self.max_queue and not (self._free and not self._waiting):
                raise QueueFullError(
                    f"the server is busy: {len(self._active)} requests running and {len(self._waiting)} waiting "
                    f"(queue limit {self.max_queue}); retry later"
                )
            self._waiting.append(job)
            self._cv.notify_all()

    # ---- worker thread -------------------------------------------------------------------------------------
    def _pick_slot(self, prompt: Sequence[int]) -> int:
        best, best_n = self._free[0], -1
        p = np.asarray(prompt, dtype=np.int64)
        for s in self._free:
            toks = self._contexts[s].tokens
            n = min(len(toks), len(p))
            if n:
                diff = np.flatnonzero(np.asarray(toks[:n], dtype=np.int64) != p[:n])
                n = int(diff[0]) if diff.size else n
            if n > best_n:
                best, best_n = s, n
        self._free.remove(best)
        return best

    def _admit(self) -> None:
        while self._free and self._waiting:
            job = self._waiting.popleft()
            if job.cancelled:
                continue
            slot = self._pick_slot(job.prompt_ids)
            try:
                gen = Generation(
                    self.model, self.tokenizer, job.prompt_ids, job.params, job.max_tokens, job.stop,
                    context=self._contexts[slot],
                )
            except Exception as e:  # bad request that slipped past the caller's checks
                self._free.append(slot)
                self._emit(job, e)
                continue
            self._active.append((job, gen, slot))

    def _release(self, job: Job) -> None:
        for k, (j, gen, slot) in enumerate(self._active):
            if j is job:
                del self._active[k]
                gen.close()
                self._free.append(slot)
                return

    def _fail(self, job: Job, e: BaseException) -> None:
        self._release(job)
        self._emit(job, e)

    def _emit(self, job: Job, ev: Chunk | BaseException) -> None:
        try:
            job.on_event(ev)
        except Exception:  # a broken consumer must not take the scheduler down with it
            log.exception("job callback failed; cancelling the job")
            job.cancel()

    def _loop(self) -> None:
        batch_forward = getattr(self.model, "forward_batch", None)
        while True:
            try:
                if self._round(batch_forward):
                    return
            except Exception as e:  # a bug in a round must not leave clients waiting forever
                log.exception("scheduler round failed")
                for job, _, _ in list(self._active):
                    self._fail(job, e)

    def _round(self, batch_forward: Callable[..., np.ndarray] | None) -> bool:
        """One round: admit, one prompt batch, one token per decoding sequence. True when stopping."""
        with self._cv:
            self._admit()
            while not self._active and not self._stopping:
                self._cv.wait()
                self._admit()
            if self._stopping:
                for job in [j for j, _, _ in self._active] + list(self._waiting):
                    self._emit(job, QueueFullError("the server is shutting down"))
                self._waiting.clear()
                while self._active:
                    self._release(self._active[0][0])
                return True
            active = list(self._active)
        for job, _, _ in active:
            if job.cancelled:
                self._release(job)
        active = [a for a in active if not a[0].cancelled]
        # 1. one prompt batch, for the oldest sequence still reading its prompt (decoding streams keep
        #    flowing between the batches of a long prompt)
        for job, gen, _ in active:
            if not gen.prefilled:
                try:
                    gen.prefill_step()
                except Exception as e:
                    self._fail(job, e)
                break
        # 2. one token for every decoding sequence
        ready: list[tuple[Job, Generation]] = []
        for job, gen, _ in active:
            if gen.finished or not gen.prefilled or gen.pending_token is not None:
                continue
            try:
                chunk = gen.sample_step()
            except Exception as e:
                self._fail(job, e)
                continue
            if chunk.finish_reason is not None:
                job.stats = gen.stats
                self._release(job)
            else:
                ready.append((job, gen))
            self._emit(job, chunk)
        # 3. run the sampled tokens: one batched pass over the weights when the model offers it
        if len(ready) > 1 and batch_forward is not None:
            toks = np.fromiter((g.pending_token for _, g in ready), dtype=np.int32, count=len(ready))
            try:
                logits = batch_forward(toks, [g.cache for _, g in ready])
            except Exception as e:
                for job, g in ready:
                    g.context.reset()
                    self._fail(job, e)
                return False
            for i, (_, g) in enumerate(ready):
                g.feed_logits(logits[i])
        else:
            for job, g in ready:
                try:
                    g.forward_pending()
                except Exception as e:
                    self._fail(job, e)
        return False
