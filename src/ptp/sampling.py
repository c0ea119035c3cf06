"""Sampling math of the paper as small pure functions, apart from any model.

* ``warp``: logits -> the final distribution P of Eq. (1) (temperature, top-k, top-p), float64.
* ``pick``: Eq. (2), inverse-CDF sampling ``min{j : F_j > u}`` over the tokens in a fixed order.
* ``token_interval``: Eq. (9), the interval ``[F_{t-1}, F_t)`` of u that picks token t.
* ``sample_in_interval``: a u inside that interval, ``lo + Beta(b, b) * (hi - lo)`` (App. D).

Eq. (2) holds for any order of the tokens; two are offered (``SamplingConfig.order``):

* ``rank`` (default): decreasing probability, ties by increasing id. Small u picks the most likely
  token (u -> 0 is greedy decoding at every temperature), so ``u < P(top)`` means "the top token"
  whatever its id, which is far easier for a student to learn than the position of an id's step
  in a vocabulary-ordered CDF.
* ``id``: increasing token id, exactly the paper's Eq. (2).

All CDFs are computed by one helper (``_ordered_cdf``) so that ``pick`` and ``token_interval``
agree bit for bit: every u drawn inside ``token_interval(P, t)`` picks exactly t.
"""

from __future__ import annotations

import torch

from .config import SamplingConfig

__all__ = ["warp", "pick", "token_interval", "sample_in_interval", "draw_uniform", "ORDERS"]

ORDERS = ("rank", "id")  # SamplingConfig.order


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
        probs = scores.softmax(-1)
        # Usually a few dozen tokens reach top_p: try the most likely ones before a full sort.
        for k in (min(64, probs.shape[-1]), probs.shape[-1]):
            values, ids = _descending(probs, k)
            keep = values.cumsum(-1) - values < cfg.top_p  # mass before each token
            keep[..., 0] = True  # always keep the most likely token
            kept = keep.sum(-1, keepdim=True)
            # Exact when every row drops a candidate whose value is below its last kept one:
            # then no unselected token (all <= the smallest candidate) could be kept.
            if k == probs.shape[-1] or bool(((kept < k) & (values.gather(-1, kept - 1) > values[..., -1:])).all()):
                break
        drop = torch.ones_like(scores, dtype=torch.bool).scatter(-1, ids, ~keep)
        scores = torch.where(drop, neg_inf, scores)
    return scores.softmax(-1)


def _descending(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of ``(..., V)`` values and their ids, decreasing, ties by increasing id:
    the first k of a stable descending sort (up to which ids tied at the k-th value are chosen)."""
    if k >= x.shape[-1]:
        return x.sort(dim=-1, descending=True, stable=True)
    ids = x.topk(k, dim=-1).indices.sort(dim=-1).values
    values, perm = x.gather(-1, ids).sort(dim=-1, descending=True, stable=True)
    return values, ids.gather(-1, perm)


def _ordered_cdf(probs: torch.Tensor, order: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Tokens in CDF order and their normalised CDF.

    Returns:
        ``(ids, cdf)``: ``ids`` ``(..., K)`` int64 token ids in CDF order (None for ``id`` order,
        where the CDF runs over all ids), ``cdf`` ``(..., K)`` float64 with ``cdf[..., -1] == 1``
        exactly, so u in [0, 1) always picks a token. For ``rank``, K covers every token of
        nonzero probability (tokens left out have probability 0 and are never picked).
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is invalid: use one of {', '.join(ORDERS)}")
    probs = probs.to(torch.float64)
    ids = None
    if order == "rank":
        support = int((probs > 0).sum(-1).max())
        # Few candidates (top-k / top-p) are selected first: much cheaper than a full sort.
        probs, ids = _descending(probs, max(1, support) if support * 8 < probs.shape[-1] else probs.shape[-1])
    cdf = probs.cumsum(-1)
    return ids, cdf / cdf[..., -1:]


def pick(u: torch.Tensor, probs: torch.Tensor, order: str = "rank") -> torch.Tensor:
    """Eq. (2): ``min{j : F_j > u}`` with the tokens in ``order`` (see the module docstring).

    Args:
        u: ``(...)`` auxiliary variables in [0, 1) (any float dtype; compared in float64).
        probs: ``(..., V)`` distributions (e.g. from ``warp``).
        order: ``rank`` (decreasing probability, ties by id) or ``id`` (the paper's increasing id).
    Returns:
        ``(...)`` int64 token ids. A token of probability 0 is never picked, since its CDF step is
        empty; a one-hot distribution picks its token for every u.
    """
    ids, cdf = _ordered_cdf(probs, order)
    u = u.to(torch.float64).unsqueeze(-1)
    index = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp_max(cdf.shape[-1] - 1)
    return (index if ids is None else ids.gather(-1, index)).squeeze(-1)


def token_interval(probs: torch.Tensor, tokens: torch.Tensor, order: str = "rank") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (9): the interval ``[F_{t-1}, F_t)`` of u for which ``pick(u, probs, order) == t``.

    Args:
        probs: ``(..., V)`` distributions.
        tokens: ``(...)`` token ids.
        order: the token order of ``pick``.
    Returns:
        ``(lo, hi)``, each ``(...)`` float64. Empty (``lo == hi``) when ``P_t == 0``.
    """
    ids, cdf = _ordered_cdf(probs, order)
    tokens = tokens.long().unsqueeze(-1)
    found = None
    if ids is None:
        index = tokens
    else:
        match = ids == tokens
        found = match.any(-1)
        index = match.long().argmax(-1, keepdim=True)
    hi = cdf.gather(-1, index).squeeze(-1)
    lo = torch.where(index.squeeze(-1) > 0, cdf.gather(-1, (index - 1).clamp_min(0)).squeeze(-1), torch.zeros_like(hi))
    if found is not None:
        # A token outside the selected candidates has probability 0: an empty interval at 1.
        lo, hi = torch.where(found, lo, 1.0), torch.where(found, hi, 1.0)
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
