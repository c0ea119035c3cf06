"""How many rows a decoding call should spend, and on which acceptance hypotheses.

Two measured quantities drive Partial Quadratic Decoding's allocation:

* ``CostCurve``: the wall time of a call with k new rows relative to a call with one row,
  ``t(k)/t(1)``. On CPUs with bf16 matrix units it is nearly flat up to 64 rows; in fp32 it
  grows faster. Measured on the model itself (``CostCurve.measure``) and refined online from the
  calls the decoder makes.
* ``AcceptanceModel``: a calibrated histogram of how often a proposed token is accepted, given
  that the tokens before it were, as a function of its place in the proposal and of the student's
  confidence (its top probability) in it.

``allocate`` then picks draft groups greedily by expected accepted tokens per row and keeps the
budget that maximises expected tokens per unit time; when speculation cannot pay it allocates
nothing and the call is a plain autoregressive step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

CONFIDENCE_BINS = 10


@dataclass
class CostCurve:
    """Relative call cost ``t(k)/t(1)``, piecewise linear between measured row counts."""

    rows: list[int] = field(default_factory=lambda: [1, 64])
    relative: list[float] = field(default_factory=lambda: [1.0, 1.6])
    base_seconds: float | None = None  # measured t(1); enables learning from observed calls
    observed: dict[int, float] = field(default_factory=dict)  # rows -> EMA of t(rows)/t(1) seen in use

    def __call__(self, k: int) -> float:
        """t(k)/t(1): the observed value where calls of k rows were timed, else the measured curve
        scaled by how far observed calls (mask building, sampling overhead included) exceed it."""
        if k in self.observed:
            return self.observed[k]
        if self.observed:
            ratios = sorted(v / self._prior(r) for r, v in self.observed.items())
            return self._prior(k) * ratios[len(ratios) // 2]
        return self._prior(k)

    def observe(self, k: int, seconds: float, weight: float = 0.3) -> None:
        """Record the wall time of a real call over k rows (ignored without a measured t(1))."""
        if self.base_seconds is None or seconds <= 0:
            return
        ratio = seconds / self.base_seconds
        self.observed[k] = ratio if k not in self.observed else (1 - weight) * self.observed[k] + weight * ratio

    def _prior(self, k: int) -> float:
        rows, rel = self.rows, self.relative
        if k <= rows[0]:
            return rel[0]
        for (r0, c0), (r1, c1) in zip(zip(rows, rel), zip(rows[1:], rel[1:])):
            if k <= r1:
                return c0 + (c1 - c0) * (k - r0) / (r1 - r0)
        slope = (rel[-1] - rel[-2]) / (rows[-1] - rows[-2]) if len(rows) > 1 else 0.0
        return rel[-1] + slope * (k - rows[-1])

    @classmethod
    def measure(cls, forward_rows, sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64), repeats: int = 3) -> "CostCurve":
        """Time ``forward_rows(k)`` (a call over k new rows that leaves the cache unchanged)."""
        forward_rows(1)  # warm-up
        times = {}
        for k in sizes:
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                forward_rows(k)
                samples.append(time.perf_counter() - start)
            times[k] = sorted(samples)[len(samples) // 2]
        base = times[sizes[0]]
        rel = [1.0]
        for k in sizes[1:]:  # enforce a non-decreasing curve against timing noise
            rel.append(max(rel[-1], times[k] / base))
        return cls(list(sizes), rel, base_seconds=base)


class AcceptanceModel:
    """Calibrated ``P(proposal token j accepted | tokens before it accepted)``.

    Counts are kept per proposal index j (0-based) and per confidence bin, with a Beta prior that
    shrinks sparse bins towards the per-index rate, which itself shrinks towards ``prior``.
    """

    def __init__(self, max_len: int, prior: float = 0.5, strength: float = 2.0) -> None:
        self.max_len = max_len
        self.prior = prior
        self.strength = strength
        self.trials = torch.zeros(max_len, CONFIDENCE_BINS, dtype=torch.float64)
        self.hits = torch.zeros(max_len, CONFIDENCE_BINS, dtype=torch.float64)

    def _bin(self, confidence: torch.Tensor) -> torch.Tensor:
        return (confidence.to(torch.float64) * CONFIDENCE_BINS).long().clamp(0, CONFIDENCE_BINS - 1)

    def position_rates(self, n: int) -> torch.Tensor:
        """``(n,)`` acceptance rate per proposal index, ignoring confidence."""
        idx = torch.arange(n).clamp_max(self.max_len - 1)
        t, h = self.trials.sum(1)[idx], self.hits.sum(1)[idx]
        return (h + self.prior * self.strength) / (t + self.strength)

    def rates(self, confidence: torch.Tensor) -> torch.Tensor:
        """``(n,)`` confidences of a proposal -> ``(n,)`` calibrated acceptance rates."""
        n = confidence.shape[0]
        idx = torch.arange(n).clamp_max(self.max_len - 1)
        bins = self._bin(confidence)
        base = self.position_rates(n)
        t, h = self.trials[idx, bins], self.hits[idx, bins]
        return (h + base * self.strength) / (t + self.strength)

    def update(self, confidence: torch.Tensor, accepted: int) -> None:
        """Record a verified proposal: its first ``accepted`` tokens matched, the next did not."""
        n = min(confidence.shape[0], accepted + 1)
        if n == 0:
            return
        idx = torch.arange(n).clamp_max(self.max_len - 1)
        bins = self._bin(confidence[:n])
        self.trials.index_put_((idx, bins), torch.ones(n, dtype=torch.float64), accumulate=True)
        hit = (torch.arange(n) < accepted).to(torch.float64)
        self.hits.index_put_((idx, bins), hit, accumulate=True)


@dataclass
class Allocation:
    """One PQD call's plan: verify the first ``verify`` proposal tokens, draft ``groups``."""

    verify: int
    groups: dict[int, int]
    rate: float  # expected tokens per unit of t(1)


def _groups_for_prefix(
    pending_rows: int, q: torch.Tensor, chain: torch.Tensor, cap: int, cost: CostCurve, max_rows: int | None
) -> Allocation:
    """Best draft groups when the first ``len(q)`` proposal tokens are verified."""
    n = q.shape[0]
    reach = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(q, 0)])  # P(a >= h), h = 0..n
    p_exact = reach - torch.cat([reach[1:], torch.zeros(1, dtype=torch.float64)])  # P(a == h)
    rows, value = pending_rows + n, float(reach.sum())  # E[a + 1]: tokens this call yields
    groups: dict[int, int] = {}
    best = Allocation(n, {}, value / cost(rows))
    # Greedy by gain per row: opening group h costs 2 rows (slot 0 + its first useful slot) and
    # gains P(a=h) R_1; extending a group of g slots by one gains P(a=h) R_g.
    while cap >= 2:
        options = []  # (gain per row, h, rows added)
        for h in range(n + 1):
            ph, g = float(p_exact[h]), groups.get(h, 0)
            if ph > 0 and g < cap:
                options.append((ph * float(chain[0]) / 2, h, 2) if g == 0 else (ph * float(chain[g - 1]), h, 1))
        options = [o for o in options if max_rows is None or rows + o[2] <= max_rows]
        if not options:
            break
        gain, h, extra = max(options)
        groups[h] = groups.get(h, 0) + extra
        rows += extra
        value += gain * extra
        if value / cost(rows) > best.rate:
            best = Allocation(n, dict(groups), value / cost(rows))
    return best


def allocate(
    pending_rows: int,
    proposal_rates: torch.Tensor,
    future_rates: torch.Tensor,
    max_group: int,
    cost: CostCurve,
    max_rows: int | None = None,
) -> Allocation:
    """Plan one PQD call: how much of the proposal to verify and which draft groups to add.

    Args:
        pending_rows: rows the call needs anyway (accepted tokens not yet in the cache).
        proposal_rates: ``(n,)`` acceptance rates of the current proposal's tokens.
        future_rates: ``(max_group - 1,)`` acceptance rates of tokens a new group would propose
            (its slot 0 predicts the token the teacher supplies in this very call, so a group of g
            slots proposes g - 1 tokens).
        max_group: at most this many slots per group (the student's N).
        cost: relative call cost curve.
        max_rows: hard cap on rows per call (None: the cost curve decides alone).
    Returns:
        The plan maximising expected tokens per unit time; verifying nothing and drafting nothing
        (a plain autoregressive call) whenever speculation cannot pay.
    """
    q = proposal_rates.to(torch.float64)
    chain = torch.cumprod(future_rates[: max_group - 1].to(torch.float64), 0)  # R_m, m = 1..N-1
    limit = q.shape[0] if max_rows is None else max(0, min(q.shape[0], max_rows - pending_rows))
    plans = [_groups_for_prefix(pending_rows, q[:n], chain, max_group, cost, max_rows) for n in range(limit + 1)]
    return max(plans, key=lambda a: a.rate)
