"""Attention layouts against brute-force references written from first principles."""

from __future__ import annotations

import random

import pytest
import torch

from ptp.masks import additive_mask, training_layout, tree_layout


# ---------------------------------------------------------------------------- references


def reference_training_layout(seq_len: int, starts: list[int], n: int):
    """Decide every (row, col) on its own: what row r may see and where it sits.

    Rows ``0..seq_len-1`` are tokens; then window w occupies rows ``seq_len + w n + j``, j < n.
    """
    w_count = len(starts)
    length = seq_len + w_count * n

    def describe(r):  # ("token", index) or ("slot", window, j)
        return ("token", r) if r < seq_len else ("slot", (r - seq_len) // n, (r - seq_len) % n)

    visible = torch.zeros(length, length, dtype=torch.bool)
    positions = torch.zeros(length, dtype=torch.long)
    for r in range(length):
        row = describe(r)
        positions[r] = row[1] if row[0] == "token" else starts[row[1]] + row[2]
        for c in range(length):
            col = describe(c)
            if row[0] == "token":
                # A token sees itself and earlier tokens, never a draft slot.
                visible[r, c] = col[0] == "token" and col[1] <= row[1]
            elif col[0] == "token":
                # A slot of window w sees the context before the window, never the tokens it predicts.
                visible[r, c] = col[1] < starts[row[1]]
            else:
                # ... and slots 0..j of its own window, never another window.
                visible[r, c] = col[1] == row[1] and col[2] <= row[2]
    draft = torch.tensor([describe(r)[0] == "slot" for r in range(length)])
    return visible, positions, draft


def reference_tree_layout(parents: list[int], past_len: int):
    """Row r sees the cache, itself and its ancestors; it sits at past_len + its depth."""
    t = len(parents)

    def ancestors(r):
        out = []
        while parents[r] >= 0:
            r = parents[r]
            out.append(r)
        return out

    visible = torch.zeros(t, past_len + t, dtype=torch.bool)
    positions = torch.zeros(t, dtype=torch.long)
    for r in range(t):
        chain = ancestors(r)
        positions[r] = past_len + len(chain)
        for c in range(past_len + t):
            visible[r, c] = c < past_len or (c - past_len) in chain or c - past_len == r
    return visible, positions


def random_starts(rng: random.Random, seq_len: int, w: int, n: int) -> list[int]:
    return [rng.randint(1, seq_len - n) for _ in range(w)]


# ---------------------------------------------------------------------------- training layout


@pytest.mark.parametrize("seed", range(25))
def test_training_layout_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 5)
    seq_len = rng.randint(n + 1, 14)
    w = rng.randint(1, 4)
    batch = [random_starts(rng, seq_len, w, n) for _ in range(rng.randint(1, 3))]
    visible, positions, draft = training_layout(seq_len, torch.tensor(batch), n)
    length = seq_len + w * n
    assert visible.shape == (len(batch), length, length)
    assert positions.shape == draft.shape == (len(batch), length)
    for b, starts in enumerate(batch):
        ref_visible, ref_positions, ref_draft = reference_training_layout(seq_len, starts, n)
        assert torch.equal(visible[b], ref_visible), (seq_len, starts, n)
        assert torch.equal(positions[b], ref_positions)
        assert torch.equal(draft[b], ref_draft)


def test_training_layout_example_by_hand():
    """seq_len 4, one window of 2 slots starting at token 2: slots sit at positions 2, 3."""
    visible, positions, draft = training_layout(4, torch.tensor([[2]]), 2)
    expected = torch.tensor(
        [  # t0 t1 t2 t3 s0 s1
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # s0 predicts t2: sees t0, t1 and itself
            [1, 1, 0, 0, 1, 1],  # s1 predicts t3: sees t0, t1, s0 and itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(visible[0], expected)
    assert positions[0].tolist() == [0, 1, 2, 3, 2, 3]
    assert draft[0].tolist() == [False] * 4 + [True] * 2


# ---------------------------------------------------------------------------- tree layout


@pytest.mark.parametrize("seed", range(25))
def test_tree_layout_matches_brute_force(seed):
    rng = random.Random(seed)
    t = rng.randint(1, 12)
    past_len = rng.randint(0, 6)
    parents = [rng.randint(-1, r - 1) for r in range(t)]
    visible, positions = tree_layout(torch.tensor(parents), past_len)
    ref_visible, ref_positions = reference_tree_layout(parents, past_len)
    assert torch.equal(visible, ref_visible), (parents, past_len)
    assert torch.equal(positions, ref_positions)
    assert positions.dtype == torch.int64
    # A list works the same as a tensor.
    assert torch.equal(tree_layout(parents, past_len)[0], visible)


def test_tree_layout_chain_is_causal():
    visible, positions = tree_layout(list(range(-1, 5)), past_len=3)
    assert torch.equal(visible[:, 3:], torch.ones(6, 6, dtype=torch.bool).tril())
    assert bool(visible[:, :3].all())
    assert positions.tolist() == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-1, 0, 5], [-2]])
def test_tree_layout_rejects_parents_not_before_child(parents):
    with pytest.raises(ValueError, match="parent"):
        tree_layout(parents, 0)


# ---------------------------------------------------------------------------- additive mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_additive_mask_is_zero_where_visible_and_min_elsewhere(dtype):
    visible = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.5
    mask = additive_mask(visible, dtype)
    assert mask.shape == (2, 1, 5, 7) and mask.dtype == dtype
    assert bool((mask[:, 0][visible] == 0).all())
    assert bool((mask[:, 0][~visible] == torch.finfo(dtype).min).all())
