"""One student call turns (context, u) into N tokens: sampling from the student itself.

Sec. 2.2.1 lists three proposal distributions for training sequences: the teacher, a data set, and
the student: draw ``u_i..u_{i+N-1} ~ U[0, 1)`` and let the student, at its current state, predict
the whole continuation in one call (Eq. 5 for O-PTP, Eq. 7 for C-PTP and MTP). The same call is
how a student's draft is compared with the teacher's own samples under the same u (Eq. 16).

Contexts of different lengths share one batch: each row's window starts right after its context,
and draft slots only see the tokens before their window (``ptp.masks.training_layout``), so
whatever follows a context in its row is never seen.
"""

from __future__ import annotations

import torch

from .objective import draft_inputs
from .student import Student

__all__ = ["draft_after", "sample_from_student"]


@torch.no_grad()
def draft_after(
    student: Student, tokens: torch.Tensor, starts: torch.Tensor, u: torch.Tensor, order: str = "rank"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's N-token draft after each row's context, in one call.

    Args:
        tokens: ``(B, T)`` token ids; row b's context is ``tokens[b, :starts[b]]`` (the rest of the
            row is ignored, but must exist: ``starts + N <= T``).
        starts: ``(B,)`` context lengths, each >= 1.
        u: ``(B, N)`` auxiliary variables of the N tokens to predict.
        order: the sampler's token order (``SamplingConfig.order``), used by C-PTP and MTP picks.
    Returns:
        ``(draft, slot_logits)``: ``(B, N)`` int64 tokens and ``(B, N, V)`` slot logits.
    """
    n = student.num_draft_tokens
    if u.shape != (tokens.shape[0], n):
        raise ValueError(f"u has shape {tuple(u.shape)}: expected ({tokens.shape[0]}, {n})")
    if int(starts.min()) < 1 or int(starts.max()) + n > tokens.shape[1]:
        raise ValueError(f"starts must lie in [1, {tokens.shape[1] - n}] so that N={n} positions follow each context")
    tokens = tokens.to(student.device)
    inputs = draft_inputs(student, tokens, starts.view(-1, 1), u.view(u.shape[0], 1, n))
    slot_logits = student(**inputs).logits[:, tokens.shape[1]:]
    return student.draft_tokens(slot_logits, u.to(slot_logits.device), order), slot_logits


@torch.no_grad()
def sample_from_student(
    student: Student, tokens: torch.Tensor, starts: torch.Tensor, order: str = "rank",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences proposed by the student (Sec. 2.2.1): context + its one-call continuation.

    Args:
        tokens: ``(B, T)`` rows holding the contexts (see ``draft_after``).
        starts: ``(B,)`` context lengths.
        generator: draws the fresh ``u ~ U[0, 1)`` (on the CPU).
    Returns:
        ``(sequences, u)``: ``(B, T)`` copies of ``tokens`` with positions ``starts .. starts + N - 1``
        replaced by the student's tokens, and the ``(B, N)`` float64 u that produced them.
    """
    n = student.num_draft_tokens
    u = torch.rand(tokens.shape[0], n, dtype=torch.float64, generator=generator)
    draft, _ = draft_after(student, tokens, starts, u, order)
    positions = starts.view(-1, 1).to(tokens.device) + torch.arange(n, device=tokens.device)
    return tokens.scatter(1, positions, draft.to(tokens.device)), u
