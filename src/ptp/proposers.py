"""Proposers: who fills the draft rows of a decoding call, behind one tiny interface.

A proposer answers two questions for the shared verifier in ``ptp.generate``:

* ``plan(state)``: which draft groups the next call should carry, ``{h: slots}`` meaning "assuming
  the first h tokens of the current proposal get accepted, draft ``slots`` tokens after them";
* ``observe(state, accepted, drafts, features)``: after verification, the next proposal (token
  ids and per-token confidence), typically the drafts of the group whose hypothesis came true.
  A proposer that sets ``feature_layer`` is handed ``features``, the teacher's hidden states
  entering that decoder block at the rows the call kept (the prefill's rows on the first call).

``Proposer`` itself proposes nothing (plain decoding), ``StudentProposer`` drafts with a gated
PTP or MTP student in the same forward pass that verifies, ``HeadProposer`` drafts with a draft
head after the pass, ``PromptLookupProposer`` copies n-grams from the context (no draft rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import time
from typing import Any

import torch

from .budget import AcceptanceModel, CostCurve, allocate

Drafts = dict[int, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecodeState:
    """One sequence being decoded."""

    tokens: list[int]  # prompt + accepted tokens
    prompt_len: int
    max_new_tokens: int
    u: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))  # u[k]: k-th generated token
    cached: int = 0  # tokens[:cached] are in the KV cache; tokens[cached:] are pending
    proposal: list[int] = field(default_factory=list)  # unverified drafts for the next positions
    confidence: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def pending(self) -> list[int]:
        return self.tokens[self.cached :]


class Proposer:
    """Plain decoding: no drafts, one token per call."""

    feature_layer: int | None = None  # decoder block whose input hidden states observe() receives

    def plan(self, state: DecodeState) -> dict[int, int]:
        return {}

    def record_call(self, rows: int, seconds: float) -> None:
        """Wall time of the call just made (proposers that budget rows learn their cost from it)."""

    def observe(self, state: DecodeState, accepted: int, drafts: Drafts, features: torch.Tensor | None = None) -> None:
        """Set ``state.proposal``/``state.confidence`` for the next call (default: none)."""
        state.proposal, state.confidence = [], torch.zeros(0, dtype=torch.float64)


class StudentProposer(Proposer):
    """Drafts with the student's gated draft slots; ``policy`` is ``verify`` or ``pqd``.

    ``verify`` (Algorithm 1): a call either drafts N tokens (when nothing awaits verification) or
    verifies the proposal. ``pqd``: every call verifies the proposal and drafts for the acceptance
    hypotheses chosen by ``ptp.budget.allocate``.
    """

    def __init__(self, num_draft: int, policy: str = "pqd", cost: CostCurve | None = None, max_rows: int | None = None,
                 acceptance: AcceptanceModel | None = None) -> None:
        self.num_draft = num_draft
        self.policy = policy
        self.cost = cost or CostCurve()
        self.max_rows = max_rows
        self.acceptance = acceptance or AcceptanceModel(num_draft)

    def record_call(self, rows: int, seconds: float) -> None:
        self.cost.observe(rows, seconds)

    def _allowed(self, state: DecodeState, h: int) -> int:
        """Slots a group for hypothesis h may have without drafting past max_new_tokens."""
        return state.max_new_tokens - state.generated - h

    def plan(self, state: DecodeState) -> dict[int, int]:
        if self.policy == "verify":
            if state.proposal:
                return {}
            g = min(self.num_draft, self._allowed(state, 0))
            return {0: g} if g >= 2 else {}
        plan = allocate(
            len(state.pending),
            self.acceptance.rates(state.confidence),
            self.acceptance.position_rates(self.num_draft),
            self.num_draft,
            self.cost,
            max_rows=self.max_rows,
        )
        # Verifying an unlikely tail of the proposal costs rows and cannot pay: drop it.
        state.proposal, state.confidence = state.proposal[: plan.verify], state.confidence[: plan.verify]
        groups = {h: min(g, self._allowed(state, h)) for h, g in plan.groups.items()}
        return {h: g for h, g in groups.items() if g >= 2}

    def observe(self, state: DecodeState, accepted: int, drafts: Drafts, features: torch.Tensor | None = None) -> None:
        if state.proposal:
            self.acceptance.update(state.confidence, accepted)
        if accepted in drafts:
            tokens, confidence = drafts[accepted]
            # Slot 0 predicted the token the teacher just supplied; the rest is the proposal.
            state.proposal, state.confidence = tokens[1:].tolist(), confidence[1:]
        else:
            super().observe(state, accepted, drafts)


class PromptLookupProposer(Proposer):
    """Prompt lookup decoding: propose the continuation of the last n-gram's earlier occurrence."""

    def __init__(self, max_ngram: int = 3, num_draft: int = 10) -> None:
        self.max_ngram = max_ngram
        self.num_draft = num_draft

    def observe(self, state: DecodeState, accepted: int, drafts: Drafts, features: torch.Tensor | None = None) -> None:
        seq = state.tokens
        room = state.max_new_tokens - state.generated
        for n in range(min(self.max_ngram, len(seq) - 1), 0, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == tail:
                    cont = seq[start + n : start + n + min(self.num_draft, room)]
                    state.proposal = cont
                    state.confidence = torch.full((len(cont),), 0.5, dtype=torch.float64)
                    return
        super().observe(state, accepted, drafts)


class HeadProposer(Proposer):
    """Drafts with a draft head (``ptp.head.HeadStudent``) after every verifying call.

    The head keeps its own KV cache over the context; each call hands it the teacher's states of
    the newly kept rows, the verified token the teacher has not run yet and the u of the next
    ``num_draft`` positions, and it proposes them all. Before a call, ``plan`` verifies only the
    prefix of the proposal that pays: the length n maximising expected new tokens per cost,
    ``(1 + sum_j prod_{i<=j} r_i) / (t(1 + n) + t_head)`` with calibrated acceptance rates r and
    the measured cost curve t, so drafts that keep failing cost almost nothing.

    Back-off: when even the best verify length would not pay for the head's call (expected tokens
    per cost at the average acceptance rates below plain decoding's), the head sits out the next
    1, 2, 4, ... calls (at most ``MAX_BACKOFF``), then drafts once to test again; the states of the
    rows verified meanwhile reach its cache with that next call. A useless head thus costs a
    call in ``MAX_BACKOFF`` at most, and decoding falls back to plain speed.
    """

    MAX_BACKOFF = 32

    def __init__(self, head: Any, num_draft: int, cost: CostCurve | None = None, max_rows: int | None = None) -> None:
        self.head = head
        self.num_draft = num_draft
        self.feature_layer = head.feature_layer
        self.cost = cost or CostCurve()
        self.max_rows = max_rows
        self.acceptance = AcceptanceModel(num_draft)
        self.cache: Any = None
        self.past = 0  # context rows in the head's cache
        self.previous: torch.Tensor | None = None  # teacher state of the last cached token
        self.head_seconds = 0.0  # last head call, excluded from the teacher's timed call
        self.skip = 0  # calls still to sit out
        self.backoff = 1  # calls to sit out at the next failure
        self.buffered: list[torch.Tensor] = []  # teacher states of rows not yet in the head's cache

    def record_call(self, rows: int, seconds: float) -> None:
        self.cost.observe(rows, seconds - self.head_seconds)

    def _gains(self, rates: torch.Tensor, pending: int) -> list[float]:
        """Expected new tokens per cost of verifying 0..len(rates) proposal tokens."""
        reach = rates.cumprod(0)  # P(first j+1 accepted)
        head = self.head_seconds / self.cost.base_seconds if self.cost.base_seconds else 0.1
        return [(1.0 + float(reach[:n].sum())) / (self.cost(pending + n) + head) for n in range(rates.shape[0] + 1)]

    def plan(self, state: DecodeState) -> dict[int, int]:
        if not state.proposal:
            return {}
        limit = len(state.proposal) if self.max_rows is None else max(0, min(len(state.proposal), self.max_rows - len(state.pending)))
        gains = self._gains(self.acceptance.rates(state.confidence[:limit]), len(state.pending))
        n = max(range(limit + 1), key=gains.__getitem__)
        state.proposal, state.confidence = state.proposal[:n], state.confidence[:n]
        return {}

    def _drafting_pays(self, pending: int) -> bool:
        """Whether the head beats plain decoding (1 token per ``t(pending)``) at average rates."""
        return max(self._gains(self.acceptance.position_rates(self.num_draft), pending)) * self.cost(pending) > 1.0

    def observe(self, state: DecodeState, accepted: int, drafts: Drafts, features: torch.Tensor | None = None) -> None:
        from transformers import DynamicCache

        verified = bool(state.proposal)
        if verified:
            self.acceptance.update(state.confidence, accepted)
        start = time.perf_counter()
        self.head_seconds = 0.0
        if features is not None and features.shape[0]:
            self.buffered.append(features)
            self.previous = features[-1]
        n = min(self.num_draft, state.max_new_tokens - state.generated)
        if verified and self.skip == 0 and not self._drafting_pays(len(state.pending)):
            self.skip, self.backoff = self.backoff, min(2 * self.backoff, self.MAX_BACKOFF)
        elif verified:
            self.backoff = 1
        if n < 1 or self.skip > 0:
            self.skip = max(0, self.skip - 1)
            super().observe(state, accepted, drafts)
            return
        if self.cache is None:
            self.cache = DynamicCache()
        hidden = self.head.model.get_input_embeddings().weight.shape[1]
        empty = torch.zeros(0, hidden, dtype=self.head.dtype, device=self.head.device)
        context = torch.cat(self.buffered) if self.buffered else empty
        self.buffered = []
        previous = self.previous if self.previous is not None else empty.new_zeros(hidden)
        u = state.u[state.generated : state.generated + n]
        tokens, confidence, self.cache = self.head.draft(context, previous, state.tokens[-1], u, self.cache, self.past)
        self.past = state.cached
        state.proposal, state.confidence = tokens.tolist(), confidence.cpu()
        self.head_seconds = time.perf_counter() - start
