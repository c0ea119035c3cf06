"""How many draft tokens a teacher would keep (App. B, Eqs. 16-17)."""

from __future__ import annotations

import torch

__all__ = ["num_correct", "num_accepted", "decode_accepted"]


def num_correct(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """Eq. (16): length of the longest common prefix along the last dimension.

    Args:
        student_tokens, teacher_tokens: ``(..., N)`` token ids of the same shape.
    Returns:
        ``(...)`` int64 in ``[0, N]``.
    """
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(f"token shapes differ: {tuple(student_tokens.shape)} vs {tuple(teacher_tokens.shape)}")
    # cumprod turns every match after the first mismatch into 0.
    return (student_tokens == teacher_tokens).long().cumprod(-1).sum(-1)


def num_accepted(correct: torch.Tensor, num_draft: int) -> torch.Tensor:
    """Eq. (17): ``min(#correct + 1, N)``; verification adds the teacher's token at the first miss."""
    return (correct + 1).clamp_max(num_draft)


def decode_accepted(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """Tokens per call a single-pass decoder gets from ``(..., N)`` windows: slot 0 predicts the
    token the verifying teacher supplies in the same call, so only slots 1.. propose, and a call
    yields 1 + their matching prefix. Returns ``(...)`` int64 in ``[1, N]``."""
    return 1 + num_correct(student_tokens[..., 1:], teacher_tokens[..., 1:])
