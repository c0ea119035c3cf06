"""Properties of the sampling math (Eq. 1, 2, 9 and App. D) in ``ptp.sampling``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ptp import SamplingConfig
from ptp.sampling import ORDERS, draw_uniform, pick, sample_in_interval, token_interval, warp

V = 50


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(shape: tuple[int, ...], seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=gen(seed)) * scale


def next_down(x: torch.Tensor | float) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return torch.nextafter(x, torch.zeros_like(x))


# ---------------------------------------------------------------------------- SamplingConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"top_p": 0.0},
        {"top_p": -0.5},
        {"top_p": 1.0001},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_k": True},
    ],
)
def test_sampling_config_rejects_invalid_values(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_sampling_config_accepts_boundaries_and_normalises_types():
    cfg = SamplingConfig(temperature=0, top_k=3.0, top_p=1)
    assert cfg.greedy
    assert isinstance(cfg.top_k, int) and isinstance(cfg.temperature, float)
    assert not SamplingConfig(temperature=1e-6).greedy
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------------------- warp


def transformers_reference(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k, top-p warpers of transformers, in that order, then softmax (float64)."""
    scores = logits.to(torch.float64)
    scores = TemperatureLogitsWarper(cfg.temperature)(None, scores)
    if cfg.top_k > 0:
        scores = TopKLogitsWarper(cfg.top_k)(None, scores)
    if cfg.top_p < 1.0:
        scores = TopPLogitsWarper(cfg.top_p)(None, scores)
    return scores.softmax(-1)


WARP_CONFIGS = [
    SamplingConfig(temperature=t, top_k=k, top_p=p)
    for t, k, p in itertools.product([0.3, 1.0, 1.7], [0, 1, 7, V - 1, V, 3 * V], [1.0, 0.95, 0.6, 0.1, 1e-6])
]


@pytest.mark.parametrize("cfg", WARP_CONFIGS, ids=lambda c: f"T{c.temperature}-k{c.top_k}-p{c.top_p}")
def test_warp_matches_transformers_warpers(cfg):
    logits = random_logits((16, V), seed=cfg.top_k + int(100 * cfg.temperature))
    ours = warp(logits.float(), cfg)  # any input dtype; the result is float64
    ref = transformers_reference(logits.float(), cfg)
    assert ours.dtype == torch.float64 and ours.shape == logits.shape
    # Same support: exact zeros exactly where transformers filtered the token to -inf.
    assert torch.equal(ours == 0, ref == 0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours.sum(-1), torch.ones(16, dtype=torch.float64))


@pytest.mark.parametrize("top_p", [1e-9, 0.2, 0.5, 0.8, 0.99])
def test_top_p_keeps_smallest_set_reaching_top_p(top_p):
    """From first principles: sort by probability, keep the shortest prefix with mass >= top_p."""
    logits = random_logits((32, V), seed=7)
    full = logits.softmax(-1)
    kept = warp(logits, SamplingConfig(top_p=top_p)) > 0
    for row in range(logits.shape[0]):
        probs, order = full[row].sort(descending=True)
        mass = probs.cumsum(0)
        n_keep = int((mass < top_p).sum()) + 1  # first prefix whose mass reaches top_p
        expected = torch.zeros(V, dtype=torch.bool)
        expected[order[:n_keep]] = True
        assert torch.equal(kept[row], expected)
        assert kept[row].sum() >= 1
        assert full[row][kept[row]].sum() >= top_p - 1e-12
        # Minimal: dropping the least likely kept token falls below top_p.
        assert full[row][kept[row]].sum() - full[row][kept[row]].min() < top_p


def test_top_k_keeps_k_most_likely_tokens():
    logits = random_logits((8, V), seed=3)
    probs = warp(logits, SamplingConfig(top_k=5))
    assert torch.equal((probs > 0).sum(-1), torch.full((8,), 5))
    assert torch.equal(probs.topk(5).indices.sort().values, logits.topk(5).indices.sort().values)


def test_greedy_is_one_hot_at_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -3.0, 2.0]])
    probs = warp(logits, SamplingConfig(temperature=0.0, top_k=2, top_p=0.3))
    expected = torch.eye(4, dtype=torch.float64)[[1, 0, 3]]
    assert torch.equal(probs, expected)


def test_warp_works_on_batched_shapes():
    cfg = SamplingConfig(temperature=0.8, top_k=10, top_p=0.9)
    logits = random_logits((2, 3, V), seed=11)
    batched = warp(logits, cfg)
    assert batched.shape == (2, 3, V)
    assert torch.equal(batched, warp(logits.reshape(6, V), cfg).reshape(2, 3, V))


# ---------------------------------------------------------------------------- pick / token_interval


def make_distributions() -> list[torch.Tensor]:
    """Dense, sparse (many exact zeros, including first/last ids), one-hot and warped distributions."""
    dense = random_logits((V,), seed=1).softmax(-1)
    sparse = random_logits((V,), seed=2).softmax(-1)
    zero = torch.rand(V, generator=gen(3)) < 0.7
    zero[0] = zero[-1] = True
    sparse = torch.where(zero, torch.zeros_like(sparse), sparse)
    sparse = sparse / sparse.sum()
    one_hot_first = torch.zeros(V, dtype=torch.float64)
    one_hot_first[0] = 1.0
    one_hot_last = torch.zeros(V, dtype=torch.float64)
    one_hot_last[-1] = 1.0
    one_hot_mid = torch.zeros(V, dtype=torch.float64)
    one_hot_mid[17] = 1.0
    two_tokens = torch.zeros(V, dtype=torch.float64)
    two_tokens[[4, 40]] = torch.tensor([0.25, 0.75], dtype=torch.float64)
    warped = warp(random_logits((V,), seed=4), SamplingConfig(temperature=0.7, top_k=12, top_p=0.9))
    return [dense, sparse, one_hot_first, one_hot_last, one_hot_mid, two_tokens, warped]


DISTRIBUTIONS = make_distributions()


def all_intervals(probs: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.arange(probs.shape[-1])
    return token_interval(probs.expand(len(tokens), -1), tokens, order)


def cdf_order(probs: torch.Tensor, order: str) -> torch.Tensor:
    """Reference token order of the CDF: ids, or decreasing probability with ties by id."""
    ids = torch.arange(probs.shape[-1])
    if order == "id":
        return ids
    return torch.tensor(sorted(ids.tolist(), key=lambda i: (-float(probs[i]), i)))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("probs", DISTRIBUTIONS)
def test_token_intervals_tile_unit_interval_in_cdf_order(probs, order):
    lo, hi = all_intervals(probs, order)
    support = cdf_order(probs, order)
    support = support[probs[support] > 0]
    assert lo[support[0]] == 0.0 and hi[support[-1]] == 1.0
    assert torch.equal(lo[support[1:]], hi[support[:-1]])  # each interval starts where the previous ends, bit for bit
    assert bool((hi >= lo).all())
    # Empty exactly for zero-probability tokens (every P > 0 here is far above rounding).
    assert torch.equal(hi > lo, probs > 0)
    torch.testing.assert_close(hi - lo, probs, rtol=0, atol=1e-14)


@pytest.mark.parametrize("probs", DISTRIBUTIONS)
def test_rank_order_gives_small_u_to_likely_tokens(probs):
    lo, hi = all_intervals(probs, "rank")
    top = int(probs.argmax())  # lowest id among ties
    assert lo[top] == 0.0
    assert int(pick(torch.zeros((), dtype=torch.float64), probs, "rank")) == top  # u -> 0 is greedy
    likely, unlikely = probs.unsqueeze(-1) > probs.unsqueeze(0), (probs > 0).unsqueeze(0)
    assert bool((lo.unsqueeze(-1) < lo.unsqueeze(0))[likely & unlikely].all())


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("probs", DISTRIBUTIONS)
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_u_inside_token_interval_picks_that_token(probs, beta, order):
    tokens = torch.nonzero(probs > 0).squeeze(-1)
    repeats = 200
    rows = probs.expand(len(tokens), -1)
    lo, hi = token_interval(rows, tokens, order)
    lo_r, hi_r = lo.repeat_interleave(repeats), hi.repeat_interleave(repeats)
    u = sample_in_interval(lo_r, hi_r, beta, generator=gen(5))
    assert bool(((u >= lo_r) & (u < hi_r)).all())
    assert torch.equal(pick(u, probs.expand(len(u), -1), order), tokens.repeat_interleave(repeats))
    # The interval's closed left end and the last float below its right end.
    assert torch.equal(pick(lo, rows, order), tokens)
    assert torch.equal(pick(next_down(hi), rows, order), tokens)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("probs", DISTRIBUTIONS)
def test_zero_probability_tokens_are_never_picked(probs, order):
    cdf = probs[cdf_order(probs, order)].cumsum(-1)
    lo, hi = all_intervals(probs, order)
    boundaries = torch.cat([cdf, lo, hi, torch.tensor([0.0, 1.0], dtype=torch.float64)])
    near = torch.cat([boundaries, next_down(boundaries), torch.nextafter(boundaries, torch.ones_like(boundaries))])
    u = near[(near >= 0.0) & (near < 1.0)]
    u = torch.cat([u, torch.tensor([0.0, next_down(1.0).item()], dtype=torch.float64), draw_uniform(1000, seed=0)])
    picked = pick(u, probs.expand(len(u), -1), order)
    assert bool((probs[picked] > 0).all())


@pytest.mark.parametrize("order", ORDERS)
def test_one_hot_picks_its_token_for_every_u(order):
    probs = DISTRIBUTIONS[4]
    u = torch.cat([torch.tensor([0.0, next_down(1.0).item(), 0.5], dtype=torch.float64), draw_uniform(100, seed=1)])
    assert bool((pick(u, probs.expand(len(u), -1), order) == 17).all())


@pytest.mark.parametrize("order", ORDERS)
def test_pick_and_token_interval_work_on_batched_shapes(order):
    probs = warp(random_logits((2, 3, V), seed=8), SamplingConfig(top_k=10))
    u = draw_uniform(6, seed=2).reshape(2, 3)
    tokens = pick(u, probs, order)
    assert tokens.shape == (2, 3) and tokens.dtype == torch.int64
    lo, hi = token_interval(probs, tokens, order)
    assert lo.shape == hi.shape == (2, 3)
    assert bool(((lo <= u) & (u < hi)).all())  # u lies in the interval of the token it picked
    flat = [pick(u.reshape(-1)[i : i + 1], probs.reshape(6, V)[i : i + 1], order) for i in range(6)]
    assert torch.equal(tokens.reshape(-1), torch.cat(flat))


def test_rank_order_of_a_large_vocabulary_matches_a_full_stable_sort():
    """The candidate shortcut (top-k of the support) orders exactly as a full stable sort, ties included."""
    logits = (random_logits((4, 5000), seed=11) * 4).round()  # many exact ties
    for cfg in (SamplingConfig(temperature=0.7, top_p=0.9), SamplingConfig(top_k=40), SamplingConfig()):
        probs = warp(logits, cfg)
        u = draw_uniform(400, seed=3).reshape(100, 4).t()
        expected = []
        for row in range(4):
            ids = torch.tensor(sorted(range(5000), key=lambda i: (-float(probs[row, i]), i)))
            cdf = probs[row, ids].cumsum(-1)
            cdf = cdf / cdf[-1]
            expected.append(ids[torch.searchsorted(cdf, u[row].contiguous(), right=True).clamp_max(4999)])
        assert torch.equal(pick(u, probs.unsqueeze(1).expand(4, 100, 5000), "rank"), torch.stack(expected))


@pytest.mark.parametrize("order", ORDERS)
def test_pick_matches_distribution_statistically(order):
    """200k draws: each token's count within 5 binomial standard deviations of n P."""
    n = 200_000
    probs = warp(random_logits((20,), seed=9, scale=1.0), SamplingConfig(top_k=15))
    counts = torch.bincount(pick(draw_uniform(n, seed=1234), probs.expand(n, -1), order), minlength=20).double()
    expected = n * probs
    std = (n * probs * (1 - probs)).sqrt()
    assert bool((counts[probs == 0] == 0).all())
    assert bool(((counts - expected).abs() <= 5 * std).all()), (counts, expected)


# ---------------------------------------------------------------------------- draw_uniform / sample_in_interval


def test_draw_uniform_is_reproducible_by_seed():
    a, b, c = draw_uniform(1000, seed=42), draw_uniform(1000, seed=42), draw_uniform(1000, seed=43)
    assert a.dtype == torch.float64 and a.shape == (1000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(draw_uniform(10, generator=gen(42)), draw_uniform(10, generator=gen(42)))


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_sample_in_interval_is_reproducible_by_generator(beta):
    lo = torch.zeros(100, dtype=torch.float64)
    hi = torch.full((100,), 0.5, dtype=torch.float64)
    assert torch.equal(sample_in_interval(lo, hi, beta, gen(0)), sample_in_interval(lo, hi, beta, gen(0)))


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 2.0, 50.0])
def test_sample_in_interval_stays_in_half_open_interval_even_when_tiny(beta):
    edges = torch.tensor([0.0, 0.5, next_down(next_down(1.0)).item()], dtype=torch.float64)
    lo = torch.cat([draw_uniform(300, seed=3), edges])
    one_ulp = torch.nextafter(lo, torch.ones_like(lo))
    two_ulp = torch.nextafter(one_ulp, torch.ones_like(lo))
    for hi in (one_ulp, two_ulp, lo + 1e-12, torch.minimum(lo + 0.3, torch.ones_like(lo))):
        u = sample_in_interval(lo, hi, beta, generator=gen(1))
        assert u.dtype == torch.float64
        assert bool(((u >= lo) & (u < hi)).all())
    # A one-ulp interval holds exactly one float: lo itself.
    assert torch.equal(sample_in_interval(lo, one_ulp, beta, generator=gen(2)), lo)


def test_sample_in_interval_beta_shapes_spread_within_interval():
    """App. D: Beta(b, b) with b < 1 favours the borders, b > 1 the centre; mean stays central."""
    n = 20_000
    lo = torch.full((n,), 0.2, dtype=torch.float64)
    hi = torch.full((n,), 0.6, dtype=torch.float64)
    frac = {b: (sample_in_interval(lo, hi, b, gen(4)) - 0.2) / 0.4 for b in (0.5, 1.0, 2.0)}
    for f in frac.values():
        assert abs(f.mean().item() - 0.5) < 0.02
    # Var of Beta(b, b) is 1 / (4 (2b + 1)).
    for b, f in frac.items():
        assert math.isclose(f.var().item(), 1 / (4 * (2 * b + 1)), rel_tol=0.08)
