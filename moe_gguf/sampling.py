"""Token sampling with llama.cpp's semantics.

The chain is llama.cpp's default order: repetition penalty over the last `repeat_last_n` accepted tokens
(each distinct token once: a positive logit is divided by the penalty, a non-positive one multiplied), then
top-k, top-p, min-p, and finally temperature and a draw from the resulting distribution. Top-p and min-p see
the *untempered* distribution over the tokens top-k kept, as in llama.cpp. ``temperature <= 0`` means greedy
(the penalty still applies first). Everything is vectorised numpy; the per-token working buffers are
allocated once per `Sampler`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingParams", "Sampler"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's.

    temperature: <= 0 is greedy. top_k: <= 0 disables it. top_p: 1.0 disables it. min_p: 0 disables it.
    repeat_penalty: 1.0 disables it. repeat_last_n: how many of the latest accepted tokens are penalised,
    0 disables, -1 means the whole context. seed: None (or -1) draws a fresh random seed.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        for name in ("top_k", "repeat_last_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {v!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1 = whole context), got {self.repeat_last_n}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
                raise TypeError(f"seed must be an integer or None, got {self.seed!r}")
            if self.seed < -1:
                raise ValueError(f"seed must be >= 0 (or -1 for random), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Sampler:
    """Samples token ids from logits. Call `sample(logits)` then `accept(token)` for every token that enters
    the sequence (prompt tokens too, as llama.cpp does) so the repetition penalty sees it."""

    def __init__(self, n_vocab: int, params: SamplingParams | None = None, n_ctx: int | None = None) -> None:
        if n_vocab <= 0:
            raise ValueError(f"n_vocab must be positive, got {n_vocab}")
        self.n_vocab = int(n_vocab)
        self.params = params if params is not None else SamplingParams()
        p = self.params
        last_n = p.repeat_last_n
        if last_n == -1:
            if n_ctx is None:
                raise ValueError("repeat_last_n = -1 (whole context) needs n_ctx")
            last_n = int(n_ctx)
        self._penalise = p.repeat_penalty != 1.0 and last_n > 0
        self._last_n = int(last_n)
        seed = None if p.seed is None or p.seed == -1 else int(p.seed)
        self._rng = np.random.default_rng(seed)
        self._k = p.top_k if 0 < p.top_k < self.n_vocab else self.n_vocab
        self._log_min_p = math.log(p.min_p) if p.min_p > 0.0 else -math.inf
        # Reused every token: the working logits, the history ring, and the full index range.
        self._work = np.empty(self.n_vocab, dtype=np.float32)
        self._scratch = np.empty(self.n_vocab, dtype=np.float32)
        self._buf = np.empty(self.n_vocab, dtype=np.float32)
        self._mask = np.empty(self.n_vocab, dtype=bool)
        self._unfiltered = self._k == self.n_vocab and p.top_p >= 1.0 and p.min_p == 0.0
        self._cum = np.empty(self.n_vocab if self._unfiltered else 0, dtype=np.float64)
        self._hist = np.zeros(max(self._last_n, 1), dtype=np.int64)
        self._n_hist = 0
        self._hist_pos = 0

    # ---- history -------------------------------------------------------------------------------------------
    def reset(self, history: Iterable[int] = ()) -> None:
        """Forget the accepted tokens, then accept `history`."""
        self._n_hist = 0
        self._hist_pos = 0
        for t in history:
            self.accept(t)

    def accept(self, token: int) -> None:
        """Record `token` as part of the sequence (for the repetition penalty)."""
        if not self._penalise:
            return
        self._hist[self._hist_pos] = token
        self._hist_pos = (self._hist_pos + 1) % self._last_n
        self._n_hist = min(self._n_hist + 1, self._last_n)

    @property
    def history(self) -> np.ndarray:
        """The penalised window, oldest first (empty when the penalty is off)."""
        if self._n_hist < self._last_n:
            return self._hist[: self._n_hist].copy()
        return np.roll(self._hist, -self._hist_pos)

    # ---- sampling ------------------------------------------------------------------------------------------
    def _prepare(self, logits: np.ndarray) -> np.ndarray:
        if not isinstance(logits, np.ndarray):
            raise TypeError(f"logits must be a numpy array, got {type(logits).__name__}")
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {logits.shape}")
        work = self._work
        np.copyto(work, logits, casting="same_kind")
        if self._penalise and self._n_hist:
            ids = np.unique(self._hist[: self._n_hist])
            v = work[ids]
            pen = np.float32(self.params.repeat_penalty)
            work[ids] = np.where(v <= 0, v * pen, v / pen)
        return work

    def _kth_largest(self, work: np.ndarray, k: int) -> float:
        """The k-th largest working logit (in-place partition of a reused scratch copy: O(n), no allocation)."""
        scratch = self._scratch
        np.copyto(scratch, work)
        scratch.partition(self.n_vocab - k)
        return float(scratch[self.n_vocab - k])

    def _at_least(self, work: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Ids and float64 logits of the tokens with logit >= threshold, sorted most likely first (ties by id)."""
        np.greater_equal(work, threshold, out=self._mask)
        idx = np.flatnonzero(self._mask)
        vals = work[idx].astype(np.float64)
        order = np.argsort(-vals, kind="stable")
        return idx[order], vals[order]

    def _select(self, work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """top-k -> top-p -> min-p on the penalised logits: the kept ids and logits, most likely first.

        Never sorts the vocabulary: top-k is a partition; top-p and min-p both keep a prefix of the sorted
        list, so they are found on the top-kk tokens for growing kk until the prefix is known to end inside."""
        p = self.params
        n, k = self.n_vocab, self._k
        m = float(work.max())
        if not math.isfinite(m):
            raise ValueError("logits contain no finite maximum (NaN or all -inf)")
        lo = m + self._log_min_p  # min-p: keep logit >= max + log(min_p)
        if k < n:
            idx, vals = self._at_least(work, self._kth_largest(work, k))
            idx, vals = idx[:k], vals[:k]  # ties at the threshold: the first k by (logit desc, id)
            ex = np.exp(vals - m)
            z = float(ex.sum())
        else:
            buf = self._buf
            np.subtract(work, np.float32(m), out=buf)
            np.exp(buf, out=buf)
            z = float(buf.sum(dtype=np.float64))  # normaliser of the whole vocabulary
            kk = 64
            while True:
                thr = self._kth_largest(work, kk) if kk < n else -math.inf
                if thr < lo:  # every token min-p keeps is in the top-kk set
                    idx, vals = self._at_least(work, lo)
                    break
                idx, vals = self._at_least(work, thr)
                if kk >= n or (p.top_p < 1.0 and float(np.exp(vals - m).sum()) / z >= p.top_p):
                    break  # the top-p cut falls inside these
                kk *= 4
            ex = np.exp(vals - m)
        keep = vals >= lo
        if not keep.all():
            idx, vals, ex = idx[keep], vals[keep], ex[keep]
        if p.top_p < 1.0:
            cum = np.cumsum(ex / z)
            cut = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            if cut < len(idx):
                idx, vals = idx[:cut], vals[:cut]
        return idx, vals

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens the chain keeps and their final probabilities (after temperature), most likely first.
        Greedy returns the single argmax with probability 1."""
        work = self._prepare(logits)
        if self.params.greedy:
            return np.array([int(np.argmax(work))], dtype=np.int64), np.ones(1, dtype=np.float64)
        idx, vals = self._select(work)
        t = vals / self.params.temperature
        prob = np.exp(t - t[0])
        prob /= prob.sum()
        return idx, prob

    def sample(self, logits: np.ndarray) -> int:
        """Draw one token id from `logits` (shape (n_vocab,)). Does not accept it."""
        if self.params.greedy:
            return int(np.argmax(self._prepare(logits)))
        if self._unfiltered:  # the whole vocabulary: draw from the tempered softmax without sorting anything
            work = self._prepare(logits)
            m = float(work.max())
            if not math.isfinite(m):
                raise ValueError("logits contain no finite maximum (NaN or all -inf)")
            buf, cum = self._buf, self._cum
            np.subtract(work, np.float32(m), out=buf)
            buf *= np.float32(1.0 / self.params.temperature)
            np.exp(buf, out=buf)
            np.cumsum(buf, out=cum)
            i = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
            return min(i, self.n_vocab - 1)
        idx, prob = self.candidates(logits)
        if len(idx) == 1:
            return int(idx[0])
        cum = np.cumsum(prob)
        i = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return int(idx[min(i, len(idx) - 1)])
