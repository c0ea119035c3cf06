"""Inverse autoregressive training of a C-PTP whose every weight learns (Sec. 2.2.2, 3.2; Table 1).

``PTPObjective`` distils into an adapter: the token rows are a frozen teacher, so it runs them
without autograd. A C-PTP trained from data alone has no teacher: the same weights compute the
context's keys and values and the draft slots, and the context must learn too. This loss does
Alg. 3 with one forward over token rows and slots together, so the gradient reaches both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import num_correct
from .objective import draft_inputs, gather_windows, inverse_autoregressive_u, window_positions
from .student import Student

__all__ = ["inverse_autoregressive_loss"]


def inverse_autoregressive_loss(
    student: Student, tokens: torch.Tensor, starts: torch.Tensor, beta: float = 1.0,
    generator: torch.Generator | None = None, order: str = "rank",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (13): ``-log P_theta(t_k | t_<i, u_i .. u_{k-1})`` averaged over the windows' tokens.

    The u come from the student's own distributions (``inverse_autoregressive_u``, no gradient);
    the loss's forward then differentiates through the token rows as well as the slots.

    Args:
        student: a ``c-ptp`` student (its base weights may require grad).
        tokens: ``(B, T)`` data sequences; starts: ``(B, W)`` window starts in ``[1, T - N]``.
        beta: u drawn as ``lo + Beta(beta, beta) (hi - lo)`` inside each interval (App. D).
        order: the sampler's token order.
    Returns:
        ``(loss, {"loss", "correct"})``: #correct is the matching prefix of each window's draft
        (``Pick(u_k, P_k)``, Eq. 7) against the data, which is N by construction up to rounding.
    """
    if student.mode != "c-ptp":
        raise ValueError(f"inverse autoregressive training needs a c-ptp student, not {student.mode}")
    n, t = student.num_draft_tokens, tokens.shape[1]
    tokens, starts = tokens.to(student.device), starts.to(student.device)
    targets = gather_windows(tokens, window_positions(starts, n))  # (B, W, N)
    token_u = inverse_autoregressive_u(student, tokens, starts, beta, generator, order)
    slot_logits = student(**draft_inputs(student, tokens, starts, token_u)).logits[:, t:].unflatten(1, targets.shape[1:])
    loss = F.cross_entropy(slot_logits.flatten(0, 2).float(), targets.flatten())
    drafted = student.draft_tokens(slot_logits.detach(), token_u, order)
    return loss, {"loss": float(loss.detach()), "correct": float(num_correct(drafted, targets).double().mean())}
