"""Training losses of the student's draft slots (Eqs. 10-12, App. C.2), as pure functions.

Every loss takes student logits ``(B, S, V)``, a target and a mask ``(B, S)`` (True on slots that
count) and returns ``(scalar loss, {"loss": float})``.

Normalisation: Eqs. (10)-(12) sum a per-slot term over the N slots of a window. Here the per-slot
term is summed over the vocabulary (the distance between two distributions) and then *averaged*
over the masked slots, i.e. the loss is the paper's per-window sum divided by N, averaged over
windows. This keeps the scale, and so a good learning rate, independent of N, W and the batch
size; it only rescales the gradient of the paper's objective.

* ``cross_entropy``: ``-log P_theta(t_k | ...)`` against the window's tokens. Eq. (10) (O-PTP) and
  Eq. (11) (C-PTP, MTP) are the *same* formula: they differ only in which u the slot was given
  (O-PTP: ``u_i..u_k``, C-PTP: ``u_i..u_{k-1}``, MTP: none), which ``Student.slot_u`` and the
  attention layout handle before the logits reach this function.
* ``kl``: ``KL(Q || P)`` against target probabilities Q (Eq. 12, forward KL).
* ``reverse_kl``: ``KL(P || Q)`` (Eq. 12, reverse KL).
* ``bce``: per-vocabulary-entry binary cross entropy, each logit a Bernoulli against ``Q_v``.

Q is the teacher's final (warped) distribution for C-PTP and MTP, or the one-hot of the target
token for O-PTP, whose exact conditional is a point mass (Theorem 1).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "kl", "reverse_kl", "bce", "LOSSES", "get_loss", "REVERSE_KL_EPS"]

# Q of the reverse KL is floored here: tokens the warper removed (top-k / top-p zeros) would make
# log Q = -inf. With the floor, student mass on such a token costs about -log(eps) = 18.4 nats per
# unit of probability: a strong but finite push away from it.
REVERSE_KL_EPS = 1e-8


def _select(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the masked slots only: ``(B, S, V)``, ``(B, S[, V])`` -> ``(n, V)``, ``(n[, V])``.

    Selecting before computing means masked-out slots may hold anything (padding ids, NaN
    distributions) without leaking NaN into the loss or its gradient. Logits are promoted to at
    least float32 so half-precision students get a full-precision loss.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits[mask].to(dtype), target[mask]


def _mean(per_slot: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``(n,)`` per-slot losses -> their mean; 0 (still attached to the graph) when ``n == 0``."""
    loss = per_slot.mean() if per_slot.numel() else logits.sum() * 0.0
    return loss, {"loss": float(loss.detach())}


def cross_entropy(
    logits: torch.Tensor, target_tokens: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (10) / (11): mean over masked slots of ``-log softmax(logits)[t]``.

    Args:
        logits: ``(B, S, V)`` student slot logits.
        target_tokens: ``(B, S)`` int token ids (any value where ``mask`` is False).
        mask: ``(B, S)`` bool.
    """
    logits, tokens = _select(logits, target_tokens, mask)
    return _mean(F.cross_entropy(logits, tokens.long(), reduction="none"), logits)


def kl(
    logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (12) with ``d = KL(Q || P)``: ``sum_v Q_v (log Q_v - log P_v)``, with ``0 log 0 = 0``.

    Args:
        logits: ``(B, S, V)`` student slot logits (P = their softmax).
        target_probs: ``(B, S, V)`` Q, e.g. ``warp`` output (float64, may hold exact zeros).
        mask: ``(B, S)`` bool.
    """
    logits, q = _select(logits, target_probs, mask)
    q = q.to(logits.dtype)
    per_slot = (torch.xlogy(q, q) - q * logits.log_softmax(-1)).sum(-1)
    return _mean(per_slot, logits)


def reverse_kl(
    logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor, eps: float = REVERSE_KL_EPS
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (12) with ``d = KL(P || Q)``: ``sum_v P_v (log P_v - log max(Q_v, eps))``.

    Args:
        logits: ``(B, S, V)`` student slot logits (P = their softmax).
        target_probs: ``(B, S, V)`` Q; its zeros are floored at ``eps`` (see ``REVERSE_KL_EPS``).
        mask: ``(B, S)`` bool.
    """
    logits, q = _select(logits, target_probs, mask)
    log_p = logits.log_softmax(-1)
    log_q = q.clamp_min(eps).log().to(logits.dtype)
    per_slot = (log_p.exp() * (log_p - log_q)).sum(-1)
    return _mean(per_slot, logits)


def bce(
    logits: torch.Tensor, target_probs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary cross entropy per vocabulary entry (Tables 4-5), summed over V.

    Each logit ``z_v`` is an independent Bernoulli ``sigmoid(z_v)`` fitted to ``Q_v``:
    ``-(Q_v log sigmoid(z_v) + (1 - Q_v) log(1 - sigmoid(z_v)))``, computed from logits, so zeros in
    Q (or a one-hot Q for O-PTP) stay finite.

    Args:
        logits: ``(B, S, V)`` student slot logits.
        target_probs: ``(B, S, V)`` Q in [0, 1].
        mask: ``(B, S)`` bool.
    """
    logits, q = _select(logits, target_probs, mask)
    per_slot = F.binary_cross_entropy_with_logits(logits, q.to(logits.dtype), reduction="none").sum(-1)
    return _mean(per_slot, logits)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]

# ``ce`` takes target token ids; the others take target probabilities.
LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "kl": kl, "rev-kl": reverse_kl, "bce": bce}


def get_loss(name: str) -> LossFn:
    """The loss registered as ``name``; ValueError naming the accepted names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss {name!r} is unknown: use one of {', '.join(LOSSES)}") from None
