"""Sampling math of the paper as small pure functions, apart from any model.

* ``warp``: logits -> the final distribution P of Eq. (1) (temperature, top-k, top-p), float64.
* ``pick``: Eq. (2), inverse-CDF sampling ``min{j : F_j > u}`` over token ids in increasing order.
* ``token_interval``: Eq. (9), the interval ``[F_{t-1}, F_t)`` of u that picks token t.
* ``sample_in_interval``: a u inside that interval, ``lo + Beta(b, b) * (hi - lo)`` (App. D).

All CDFs are computed by one helper (``_cdf``) so that ``pick`` and ``token_interval`` agree
bit for bit: every u drawn inside ``token_interval(P, t)`` picks exactly t.
"""

from __future__ import annotations

import torch

from .config import SamplingConfig

__all__ = ["warp", "pick", "token_interval", "sample_in_interval", "draw_uniform"]


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Final sampling distribution P of Eq. (1).

    Args:
        logits: ``(..., V)`` raw next-token logits of any float dtype.
        cfg: temperature, top-k and top-p, applied in that order (as transformers' warpers).
    Returns:
        ``(..., V)`` float64 probabilities; tokens outside the kept set are exactly 0.
        Greedy (``temperature == 0``) gives a one-hot at the argmax (lowest id on ties).
    """
    logits = logits.to(torch.float64)
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float64)
    scores = logits / cfg.temperature
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    if 0 < cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[..., -1:]
        scores = torch.where(scores < kth, neg_inf, scores)
    if cfg.top_p < 1.0:
        # Descending order, stable so that equal scores keep increasing ids.
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        sorted_probs = sorted_scores.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= cfg.top_p
        drop_sorted[..., 0] = False  # always keep the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = torch.where(drop, neg_inf, scores)
    return scores.softmax(-1)


def _cdf(probs: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` normalised CDF with ``F_V == 1`` exactly, so u in [0, 1) always picks a token."""
    cdf = probs.to(torch.float64).cumsum(-1)
    return cdf / cdf[..., -1:]


def pick(u: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``min{j : F_j > u}``.

    Args:
        u: ``(...)`` auxiliary variables in [0, 1) (any float dtype; compared in float64).
        probs: ``(..., V)`` distributions (e.g. from ``warp``).
    Returns:
        ``(...)`` int64 token ids. A token of probability 0 is never picked, since its CDF step is
        empty; a one-hot distribution picks its token for every u.
    """
    cdf = _cdf(probs)
    u = u.to(torch.float64).unsqueeze(-1)
    tokens = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).squeeze(-1)
    return tokens.clamp_max(probs.shape[-1] - 1)


def token_interval(probs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (9): the interval ``[F_{t-1}, F_t)`` of u for which ``pick(u, probs) == t``.

    Args:
        probs: ``(..., V)`` distributions.
        tokens: ``(...)`` token ids.
    Returns:
        ``(lo, hi)``, each ``(...)`` float64. Empty (``lo == hi``) when ``P_t == 0``.
    """
    cdf = _cdf(probs)
    tokens = tokens.long().unsqueeze(-1)
    hi = cdf.gather(-1, tokens).squeeze(-1)
    lo = torch.where(
        tokens.squeeze(-1) > 0,
        cdf.gather(-1, (tokens - 1).clamp_min(0)).squeeze(-1),
        torch.zeros_like(hi),
    )
    return lo, hi


def sample_in_interval(
    lo: torch.Tensor, hi: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A u in ``[lo, hi)``: ``lo + B (hi - lo)`` with ``B ~ Beta(beta, beta)`` (App. D; 1 = uniform).

    Args:
        lo, hi: ``(...)`` interval bounds (float64), ``lo < hi``.
        beta: the Beta parameter b; ``b < 1`` favours the borders, ``b > 1`` the centre.
    Returns:
        ``(...)`` float64 u, guaranteed ``lo <= u < hi`` despite rounding.
    """
    lo = lo.to(torch.float64)
    hi = hi.to(torch.float64)
    if beta == 1.0:
        frac = torch.rand(lo.shape, dtype=torch.float64, generator=generator, device=lo.device)
    else:
        # Beta(b, b) as a ratio of Gammas, drawn from the generator for reproducibility.
        # on lo's device, so a generator on that device (CPU or CUDA) drives the draw
        alpha = torch.full(lo.shape, float(beta), dtype=torch.float64, device=lo.device)
        g1 = torch._standard_gamma(alpha, generator=generator)
        g2 = torch._standard_gamma(alpha, generator=generator)
        frac = g1 / (g1 + g2)
    u = lo + frac * (hi - lo)
    below_hi = torch.nextafter(hi, torch.full_like(hi, -1.0))
    return torch.minimum(torch.maximum(u, lo), torch.maximum(below_hi, lo))


def draw_uniform(n: int, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` float64 auxiliary variables ``u ~ U[0, 1)``, reproducible from ``seed``."""
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
    return torch.rand(n, dtype=torch.float64, generator=generator)
