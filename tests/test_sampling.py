"""The sampler against a plain-Python transcription of llama.cpp's default chain, plus distribution checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_gguf.sampling import Sampler, SamplingParams


def reference_chain(logits: np.ndarray, history: list[int], p: SamplingParams) -> dict[int, float]:
    """llama.cpp's penalties -> top_k -> top_p -> min_p -> temperature, one token at a time, in plain Python.
    Returns {token: final probability}."""
    l = [float(x) for x in logits]
    if p.repeat_penalty != 1.0 and p.repeat_last_n != 0:
        window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n :]
        for t in set(window):
            # the float32 arithmetic llama.cpp does
            v = np.float32(l[t])
            l[t] = float(v * np.float32(p.repeat_penalty) if v <= 0 else v / np.float32(p.repeat_penalty))
    if p.temperature <= 0:
        best = max(range(len(l)), key=lambda i: (l[i], -i))
        return {best: 1.0}
    cand = sorted(range(len(l)), key=lambda i: -l[i])
    if p.top_k > 0:
        cand = cand[: p.top_k]
    mx = l[cand[0]]
    z = sum(math.exp(l[i] - mx) for i in cand)
    if p.top_p < 1.0:
        cum = 0.0
        kept = []
        for i in cand:
            cum += math.exp(l[i] - mx) / z
            kept.append(i)
            if cum >= p.top_p:
                break
        cand = kept
    if p.min_p > 0.0:
        pmax = 1.0 / z  # probability of the top token
        cand = [i for i in cand if math.exp(l[i] - mx) / z >= p.min_p * pmax]
    scaled = [l[i] / p.temperature for i in cand]
    m2 = max(scaled)
    w = [math.exp(s - m2) for s in scaled]
    tot = sum(w)
    return {i: wi / tot for i, wi in zip(cand, w)}


params_strategy = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.3, 0.8, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 10, 40, 1000]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    repeat_penalty=st.sampled_from([1.0, 1.1, 1.5, 0.8]),
    repeat_last_n=st.sampled_from([0, 4, 64, -1]),
    seed=st.integers(0, 2**32 - 1),
)


@given(params=params_strategy, data_seed=st.integers(0, 2**31), n_vocab=st.sampled_from([5, 37, 300, 2000]))
def test_candidates_match_reference(params: SamplingParams, data_seed: int, n_vocab: int) -> None:
    rng = np.random.default_rng(data_seed)
    logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
    history = [int(x) for x in rng.integers(0, n_vocab, size=int(rng.integers(0, 80)))]
    s = Sampler(n_vocab, params, n_ctx=128)
    s.reset(history)
    ids, probs = s.candidates(logits)
    ref = reference_chain(logits, history, params)
    assert sorted(int(i) for i in ids) == sorted(ref)
    np.testing.assert_allclose(probs, [ref[int(i)] for i in ids], rtol=1e-5, atol=1e-9)
    assert np.all(np.diff(probs) <= 1e-12)  # most likely first
    tok = s.sample(logits)
    assert tok in ref


def test_greedy_is_argmax_and_ignores_seed() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    for seed in (1, 2, 3):
        s = Sampler(1000, SamplingParams(temperature=0.0, seed=seed))
        assert s.sample(logits) == int(np.argmax(logits))


def test_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = np.array([2.0, 1.9, -0.5, -0.6], dtype=np.float32)
    p = SamplingParams(temperature=0.0, repeat_penalty=1.2, repeat_last_n=2)
    s = Sampler(4, p)
    assert s.sample(logits) == 0
    s.accept(0)  # 2.0 / 1.2 < 1.9 -> token 1 wins
    assert s.sample(logits) == 1
    s.accept(1)  # both penalised: 1.667 vs 1.583 -> token 0 again
    assert s.sample(logits) == 0
    s.accept(3)  # window of 2 is now [1, 3]: token 0 is free again
    assert s.sample(logits) == 0
    np.testing.assert_array_equal(s.history, [1, 3])
    # a negative logit gets more negative: with only negatives, penalising token 2 hands the win to token 3
    neg = np.array([-5.0, -5.0, -0.5, -0.55], dtype=np.float32)
    s2 = Sampler(4, p)
    s2.accept(2)
    assert s2.sample(neg) == 3


def test_penalty_counts_each_token_once() -> None:
    logits = np.array([3.0, 2.0], dtype=np.float32)
    s = Sampler(2, SamplingParams(temperature=0.0, repeat_penalty=1.4, repeat_last_n=8))
    for _ in range(5):
        s.accept(0)
    # once: 3 / 1.4 = 2.14 > 2 (five times would give 0.56)
    assert s.sample(logits) == 0


def test_seed_reproducible_and_distinct() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(50).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)

    def draws(seed: int) -> list[int]:
        s = Sampler(50, SamplingParams(**{**p.__dict__, "seed": seed}))
        return [s.sample(logits) for _ in range(50)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11),
        SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05, seed=12),
        SamplingParams(temperature=1.5, top_k=0, top_p=0.8, min_p=0.0, repeat_penalty=1.3, seed=13),
    ],
)
def test_sample_distribution_chi_square(params: SamplingParams) -> None:
    n_vocab = 10
    logits = np.array([2.0, 1.5, 1.2, 1.0, 0.5, 0.2, -0.3, -1.0, -2.0, -4.0], dtype=np.float32)
    history = [0, 4]
    ref = reference_chain(logits, history, params)
    s = Sampler(n_vocab, params)
    s.reset(history)
    n = 20000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=n_vocab)
    outside = [i for i in range(n_vocab) if i not in ref]
    assert counts[outside].sum() == 0, "sampled a token the chain removed"
    keys = sorted(ref)
    expected = np.array([ref[k] * n for k in keys])
    chi2 = float((((counts[keys] - expected) ** 2) / expected).sum())
    # 99.9th percentile of chi-square with df = len(keys) - 1 <= 9 is at most 27.88
    assert chi2 < 27.88, (chi2, counts, expected)


def test_full_vocab_path_large() -> None:
    # top_k disabled over a realistic vocabulary: same answer as the reference, fast enough
    rng = np.random.default_rng(3)
    n = 102400
    logits = (rng.standard_normal(n) * 2).astype(np.float32)
    p = SamplingParams(temperature=0.8, top_k=0, top_p=0.9, min_p=0.05)
    ids, probs = Sampler(n, p).candidates(logits)
    ref = reference_chain(logits, [], p)
    assert sorted(ids.tolist()) == sorted(ref)


@pytest.mark.parametrize("top_p", [0.5, 0.99])
def test_top_p_without_top_k_or_min_p_large_vocab(top_p: float) -> None:
    # the growing top-kk search must find exactly the sorted-prefix cut
    rng = np.random.default_rng(4)
    n = 102400
    logits = (rng.standard_normal(n) * 2.5).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
    ids, probs = Sampler(n, p).candidates(logits)
    ref = reference_chain(logits, [], p)
    assert len(ids) == len(ref) and set(ids.tolist()) == set(ref)


def test_unfiltered_sampling_distribution() -> None:
    # top_k = 0, top_p = 1, min_p = 0: the fast path draws from the whole tempered softmax
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5], dtype=np.float32)
    p = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=21)
    s = Sampler(5, p)
    n = 20000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=5)
    ref = reference_chain(logits, [], p)
    expected = np.array([ref[i] * n for i in range(5)])
    assert float((((counts - expected) ** 2) / expected).sum()) < 18.47  # chi-square df 4, p = 0.001


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(min_p=1.5)
    with pytest.raises(ValueError):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(ValueError):
        SamplingParams(repeat_penalty=0.0)
    with pytest.raises(ValueError):
        SamplingParams(repeat_last_n=-2)
    with pytest.raises(TypeError):
        SamplingParams(top_k=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Sampler(0)
    with pytest.raises(ValueError):
        Sampler(10, SamplingParams(repeat_penalty=1.1, repeat_last_n=-1))  # needs n_ctx
    s = Sampler(10)
    with pytest.raises(ValueError):
        s.sample(np.zeros(9, dtype=np.float32))
    with pytest.raises(TypeError):
        s.sample([0.0] * 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        s.sample(np.full(10, np.nan, dtype=np.float32))
