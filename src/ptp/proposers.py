"""Proposers: who fills the draft rows of a decoding call, behind one tiny interface.

A proposer answers two questions for the shared verifier in ``ptp.generate``:

* ``plan(state)``: which draft groups the next call should carry, ``{h: slots}`` meaning "assuming
  the first h tokens of the current proposal get accepted, draft ``slots`` tokens after them";
* ``observe(state, accepted, drafts)``: after verification, the next proposal (token ids and
  per-token confidence), typically the drafts of the group whose hypothesis came true.

``Proposer`` itself proposes nothing (plain decoding), ``StudentProposer`` drafts with a PTP
or MTP student in the same forward pass that verifies, ``PromptLookupProposer`` copies n-grams
from the context (no draft rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .budget import AcceptanceModel, CostCurve, allocate


@dataclass
class DecodeState:
    """One sequence being decoded."""

    tokens: list[int]  # prompt + accepted tokens
    prompt_len: int
    max_new_tokens: int
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

    def plan(self, state: DecodeState) -> dict[int, int]:
        return {}

    def record_call(self, rows: int, seconds: float) -> None:
        """Wall time of the call just made (proposers that budget rows learn their cost from it)."""

    def observe(self, state: DecodeState, accepted: int, drafts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
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

    def observe(self, state: DecodeState, accepted: int, drafts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
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

    def observe(self, state: DecodeState, accepted: int, drafts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
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
