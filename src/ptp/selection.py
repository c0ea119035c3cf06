"""Choosing among M parallel predictions without biasing the samples (App. E, Eq. 18).

M students (or one student on M rows) predict from the same context with independent u draws
``u_{.,m}``. Picking the draw whose prediction is *correct the longest* would bias the output
towards easy continuations. Eq. (18) instead scores each draw only by where its u fall inside the
teacher's intervals: ``v_k = (u_k - lo_k) / (hi_k - lo_k)`` is uniform on [0, 1) and independent of
the sampled tokens, so any choice made from the v alone leaves the distribution of the token
sequence unchanged. Draws whose u sit near the middle of their intervals are the ones least likely
to flip under the small logit differences between student and teacher.

The paper's Eq. (18) reads ``argmax`` of the summed distances to the centre, while its text says
the draw that lands *closest* to the centre is chosen (and M -> infinity selects the midpoints);
this module follows the text: ``argmin``.
"""

from __future__ import annotations

import torch

__all__ = ["centre_distance", "select_central"]


def centre_distance(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sum_k |v_k - 1/2|`` over the last dimension, ``v_k`` the relative position of u_k in [lo_k, hi_k).

    Args:
        u, lo, hi: ``(..., N)`` u and the teacher's intervals of the tokens they picked (Eq. 9).
    Returns:
        ``(...)`` float64 scores, 0 when every u is a midpoint, at most N / 2.
    """
    u, lo, hi = (x.to(torch.float64) for x in (u, lo, hi))
    width = (hi - lo).clamp_min(torch.finfo(torch.float64).tiny)
    return ((u - lo) / width - 0.5).abs().sum(-1)


def select_central(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Eq. (18): index of the draw whose u are closest to their intervals' centres.

    Args:
        u, lo, hi: ``(M, ..., N)``: M draws of N auxiliary variables and their teacher intervals.
    Returns:
        ``(...)`` int64 indices in ``[0, M)`` (lowest index on ties).
    """
    return centre_distance(u, lo, hi).argmin(0)
