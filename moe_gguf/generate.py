"""The generation loop: prompt evaluation, sampling, streaming detokenisation, stop conditions and timing.

`generate(model, tokenizer, prompt_ids, params, max_tokens, stop)` returns a `Generation`: iterate it for
`Chunk`s (a text piece, the token id it came from, and on the last chunk the finish reason), then read its
`.stats`. A `Context` (a model's cache plus the tokens it holds) can be passed to keep the KV cache between
calls: the common prefix of the new prompt is reused and only the rest is evaluated (the chat REPL and the
server rely on this).
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .sampling import Sampler, SamplingParams

try:  # the model layer owns this exception; fall back until it lands so the engine stays importable
    from .models import ContextFullError
except ImportError:  # pragma: no cover - removed once moe_gguf.models exports it

    class ContextFullError(ValueError):  # type: ignore[no-redef]
        """The prompt (or prompt + generation) does not fit the model's context."""


__all__ = ["Chunk", "Context", "ContextFullError", "Generation", "GenerationStats", "generate"]

PROMPT_BATCH = 512  # prompt tokens per forward call: bounds the model's scratch memory for long prompts


class _Cache(Protocol):
    n_past: int

    def clear(self) -> None: ...
    def truncate(self, n: int) -> None: ...


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
    """An iterator of `Chunk`s; `.stats` is complete once it is exhausted. `close()` stops it early."""

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
        self._it = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def text(self) -> str:
        """Run to completion and return the whole generated text."""
        return "".join(c.text for c in self)

    def _run(self) -> Iterator[Chunk]:
        model, tok, ctx, st = self.model, self.tokenizer, self.context, self.stats
        cache = ctx.cache
        n_ctx = int(model.n_ctx)
        sampler = Sampler(model.n_vocab, self.params, n_ctx=n_ctx)
        sampler.reset(int(t) for t in self.prompt)  # llama.cpp's penalty window includes the prompt

        t0 = time.perf_counter()
        n_keep = ctx.reuse_prefix(self.prompt)
        rest = self.prompt[n_keep:]
        logits = None
        try:
            for i in range(0, len(rest), PROMPT_BATCH):
                part = np.ascontiguousarray(rest[i : i + PROMPT_BATCH])
                logits = model.forward(part, cache)
                ctx.tokens.extend(int(t) for t in part)
        except BaseException:
            ctx.reset()  # the cache may hold part of a batch: do not let a later call trust it
            raise
        st.prompt_evaluated = len(rest)
        t1 = time.perf_counter()
        st.prompt_seconds = t1 - t0

        dec = tok.stream_decoder(skip_special=True)  # like llama.cpp, control tokens are not printed
        step = np.empty(1, dtype=np.int32)  # the decode step's input, reused every token
        pending = ""  # decoded text not yet emitted (it may be the start of a stop string)
        finish = "length"
        stopped_by_string = False
        try:
            for i in range(self.max_tokens):
                assert logits is not None
                token = sampler.sample(logits)
                sampler.accept(token)
                self.tokens.append(token)
                st.completion_tokens += 1
                if tok.is_eog(token):
                    finish = "stop"
                    break
                pending += dec.feed(token)
                out, pending, stopped_by_string = self._split_stop(pending)
                if out or not stopped_by_string:
                    yield Chunk(out, token)
                if stopped_by_string:
                    finish = "stop"
                    break
                if i + 1 == self.max_tokens or cache.n_past >= n_ctx:
                    break  # finish stays "length"; do not evaluate a token nobody will sample from
                step[0] = token
                try:
                    logits = model.forward(step, cache)
                except BaseException:
                    ctx.reset()
                    raise
                ctx.tokens.append(token)
            out = ""
            if not stopped_by_string:
                # The stream ended without completing a stop string: whatever was held back is real output.
                out, pending, stopped_by_string = self._split_stop(pending + dec.flush())
                if stopped_by_string:
                    finish = "stop"
                else:
                    out += pending
            st.generation_seconds = time.perf_counter() - t1
            self.finish_reason = finish
            yield Chunk(out, None, finish)
        finally:
            if not st.generation_seconds:
                st.generation_seconds = time.perf_counter() - t1

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
