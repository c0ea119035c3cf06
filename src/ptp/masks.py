"""Attention layouts: which row of a forward call may see which key, and at which position it sits.

Every layout in ptp is a *tree* of rows: each new row continues exactly one earlier row (its
parent) or the cached prefix (parent ``-1``), sees its ancestors, the whole cache and itself, and
sits one position after its parent. A plain sequence is a chain; a training sequence with draft
windows is a chain plus one branch per window (App. H, Alg. 2); a PQD call is a chain of
verification tokens plus one branch of draft slots per acceptance hypothesis.
"""

from __future__ import annotations

import torch


def tree_layout(parents: torch.Tensor, past_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Visibility and positions of rows arranged as a tree.

    Args:
        parents: ``(T,)`` int, ``parents[r] < r`` or ``-1`` for rows continuing the cache.
        past_len: number of cached positions (all visible to every row).
    Returns:
        ``visible``: ``(T, past_len + T)`` bool; ``position_ids``: ``(T,)`` int64.
    """
    parents = parents.tolist() if isinstance(parents, torch.Tensor) else list(parents)
    t = len(parents)
    visible = torch.zeros(t, past_len + t, dtype=torch.bool)
    visible[:, :past_len] = True
    positions = [0] * t
    for r, p in enumerate(parents):
        if not -1 <= p < r:
            raise ValueError(f"row {r} has parent {p}: parents must precede their children")
        if p >= 0:
            visible[r] = visible[p]
            positions[r] = positions[p] + 1
        else:
            positions[r] = past_len
        visible[r, past_len + r] = True
    return visible, torch.tensor(positions, dtype=torch.long)


def training_layout(
    seq_len: int, starts: torch.Tensor, num_draft: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layout of a training sequence followed by ``W`` draft windows of ``num_draft`` slots.

    Window ``w`` predicts tokens ``starts[w] .. starts[w] + num_draft - 1``: its slot ``j`` sits at
    position ``starts[w] + j``, sees the tokens before ``starts[w]`` and slots ``0..j`` of its own
    window, never another window and never the tokens it predicts.

    Args:
        seq_len: tokens in the sequence (rows ``0 .. seq_len - 1``, plain causal).
        starts: ``(B, W)`` int, each in ``[1, seq_len - num_draft]``.
    Returns:
        ``visible``: ``(B, L, L)`` bool, ``position_ids``: ``(B, L)``, ``draft``: ``(B, L)`` bool with
        ``L = seq_len + W * num_draft``; slot rows follow the tokens window by window.
    """
    b, w = starts.shape
    n = num_draft
    length = seq_len + w * n
    rows = torch.arange(length)
    is_slot = rows >= seq_len
    window = ((rows - seq_len) // n).clamp_min(0)  # (L,) window of each slot row
    slot_j = (rows - seq_len) % n  # (L,) index inside its window
    start_of_row = starts[:, window]  # (B, L)

    causal = rows[:, None] >= rows[None, :]
    token_cols = ~is_slot[None, None, :]
    visible = (causal & ~is_slot[:, None] & token_cols).expand(b, length, length).clone()
    # slot rows: tokens before the window's start ...
    sees_context = rows[None, None, :] < start_of_row[:, :, None]
    # ... and earlier-or-same slots of the same window.
    same_window = (window[:, None] == window[None, :]) & (slot_j[:, None] >= slot_j[None, :])
    slot_view = (sees_context & token_cols) | (same_window & is_slot[None, :])[None]
    visible = torch.where(is_slot[None, :, None], slot_view, visible)

    position_ids = torch.where(is_slot[None, :], start_of_row + slot_j[None, :], rows[None, :].expand(b, length))
    return visible, position_ids, is_slot[None, :].expand(b, length).clone()


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, T, S)`` bool -> ``(B, 1, T, S)`` additive float mask (0 where visible) for HF models."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask.unsqueeze(1)
