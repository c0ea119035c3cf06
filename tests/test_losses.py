"""Losses (Eqs. 10-12, Tables 4-5) against torch references, and the #correct / #accepted metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptp.losses import LOSSES, REVERSE_KL_EPS, bce, cross_entropy, get_loss, kl, reverse_kl
from ptp.metrics import decode_accepted, num_accepted, num_correct

B, S, V = 2, 5, 7


def _case(seed: int = 0, zeros: bool = False):
    """Random logits, a mask with holes, target tokens and target distributions (float64)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=g)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, True, True]])
    tokens = torch.randint(0, V, (B, S), generator=g)
    q = torch.randn(B, S, V, generator=g, dtype=torch.float64).softmax(-1)
    if zeros:  # as after top-k: some tokens have probability exactly 0
        q[..., :3] = 0.0
        q = q / q.sum(-1, keepdim=True)
    return logits, mask, tokens, q


def test_cross_entropy_matches_torch():
    logits, mask, tokens, _ = _case()
    loss, metrics = cross_entropy(logits, tokens, mask)
    ref = F.cross_entropy(logits[mask], tokens[mask])
    torch.testing.assert_close(loss, ref)
    assert metrics == {"loss": pytest.approx(float(ref))}


def test_kl_matches_kl_div_with_exact_zeros():
    logits, mask, _, q = _case(zeros=True)
    loss, _ = kl(logits, q, mask)
    ref = F.kl_div(logits[mask].log_softmax(-1), q[mask].float(), reduction="sum") / mask.sum()
    torch.testing.assert_close(loss, ref)
    assert torch.isfinite(loss)


def test_kl_is_zero_iff_distributions_equal():
    _, mask, _, q = _case()
    same, _ = kl(q.log().float(), q, mask)
    assert abs(float(same)) < 1e-6
    shifted = q.log().float().clone()
    shifted[0, 0] = shifted[0, 0].roll(1)  # permutes the distribution of one masked slot
    different, _ = kl(shifted, q, mask)
    assert float(different) > 1e-3


def test_kl_to_one_hot_is_cross_entropy():
    # O-PTP's distributional target is the one-hot of its token: KL reduces to Eq. (10).
    logits, mask, tokens, _ = _case()
    one_hot = F.one_hot(tokens, V).double()
    torch.testing.assert_close(kl(logits, one_hot, mask)[0], cross_entropy(logits, tokens, mask)[0])


def test_reverse_kl_matches_definition_and_zero_floor():
    logits, mask, _, q = _case()
    p = logits[mask].softmax(-1).double()
    ref = (p * (p.log() - q[mask].log())).sum(-1).mean()
    torch.testing.assert_close(reverse_kl(logits, q, mask)[0].double(), ref, rtol=1e-5, atol=1e-6)

    logits, mask, _, q = _case(zeros=True)
    logits.requires_grad_(True)
    loss, _ = reverse_kl(logits, q, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    p = logits[mask].detach().softmax(-1).double()
    floored = (p * (p.log() - q[mask].clamp_min(REVERSE_KL_EPS).log())).sum(-1).mean()
    torch.testing.assert_close(loss.detach().double(), floored, rtol=1e-5, atol=1e-6)


def test_bce_matches_torch_and_is_finite_for_one_hot_and_zeros():
    logits, mask, tokens, q = _case(zeros=True)
    for target in (q, F.one_hot(tokens, V).double()):
        loss, _ = bce(logits, target, mask)
        ref = F.binary_cross_entropy_with_logits(logits[mask], target[mask].float(), reduction="sum") / mask.sum()
        torch.testing.assert_close(loss, ref)
        assert torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_slots_are_excluded_even_when_nan(name):
    logits, mask, tokens, q = _case(seed=1)
    target = tokens if name == "ce" else q
    base, _ = get_loss(name)(logits, target, mask)
    # Garbage everywhere the mask is off: logits and targets must not matter there.
    logits2 = torch.where(mask[..., None], logits, torch.full_like(logits, 1e4)).requires_grad_(True)
    if name == "ce":
        target2 = torch.where(mask, tokens, -100)
    else:
        target2 = torch.where(mask[..., None], q, torch.full_like(q, float("nan")))
    loss, _ = get_loss(name)(logits2, target2, mask)
    loss.backward()
    torch.testing.assert_close(loss, base)
    assert torch.isfinite(logits2.grad).all()
    assert (logits2.grad[~mask] == 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_mask_gives_zero_loss_with_graph(name):
    logits, _, tokens, q = _case()
    logits.requires_grad_(True)
    loss, metrics = get_loss(name)(logits, tokens if name == "ce" else q, torch.zeros(B, S, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics["loss"] == 0.0
    assert (logits.grad == 0).all()


def test_half_precision_logits_get_a_float32_loss():
    logits, mask, tokens, _ = _case()
    loss, _ = cross_entropy(logits.bfloat16(), tokens, mask)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), float(cross_entropy(logits.bfloat16().float(), tokens, mask)[0]), rel_tol=1e-6)


def test_registry_and_unknown_name():
    assert set(LOSSES) == {"ce", "kl", "rev-kl", "bce"}
    assert get_loss("rev-kl") is reverse_kl
    with pytest.raises(ValueError, match="use one of ce, kl, rev-kl, bce"):
        get_loss("mse")


def test_num_correct_and_accepted_by_hand():
    teacher = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    student = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 8], [0, 6, 7, 8], [5, 0, 0, 0]])
    correct = num_correct(student, teacher)
    # a later match after a miss does not count (row 2: 0 correct although 3 tokens match)
    assert correct.tolist() == [4, 2, 0, 1]
    assert num_accepted(correct, 4).tolist() == [4, 3, 1, 2]
    # a decoder's teacher supplies slot 0's token, so slot 0's miss (row 2) costs nothing
    assert decode_accepted(student, teacher).tolist() == [4, 2, 4, 1]
    # batched over leading dims
    assert num_correct(student.view(2, 2, 4), teacher.view(2, 2, 4)).tolist() == [[4, 2], [0, 1]]
    with pytest.raises(ValueError, match="shapes differ"):
        num_correct(student, teacher[:, :3])
