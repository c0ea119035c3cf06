"""Library pieces the paper reproduction needs: one-call drafts / sampling from the student
(``ptp.parallel_sampling``) and the unbiased choice among M draws of u (``ptp.selection``, Eq. 18)."""

from __future__ import annotations

import pytest
import torch

from ptp import Student
from ptp.inverse_training import inverse_autoregressive_loss
from ptp.parallel_sampling import draft_after, sample_from_student
from ptp.sampling import pick, token_interval
from ptp.selection import centre_distance, select_central
from tiny_models import VOCAB, tiny_teacher

N = 4


def _trained_looking_student(mode: str) -> Student:
    """A student whose adapter is non-zero, so its slots differ from a fresh one's."""
    student = Student.from_teacher(tiny_teacher("gpt2"), mode=mode, num_draft_tokens=N, lora_rank=4)
    torch.manual_seed(1)
    for module in student.lora_modules():
        torch.nn.init.normal_(module.lora_B, std=0.3)
    return student.eval()


@pytest.mark.parametrize("mode", ["o-ptp", "c-ptp", "mtp"])
def test_draft_after_ignores_everything_after_each_context(mode):
    student = _trained_looking_student(mode)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (5, 12), generator=g)
    starts = torch.tensor([1, 3, 5, 8, 2])
    u = torch.rand(5, N, dtype=torch.float64, generator=g)
    batched, logits = draft_after(student, tokens, starts, u, order="id")
    assert batched.shape == (5, N) and logits.shape == (5, N, VOCAB)
    scrambled = tokens.clone()
    scrambled[torch.arange(12) >= starts[:, None]] = 7  # what follows a context must not matter
    assert torch.equal(draft_after(student, scrambled, starts, u, order="id")[0], batched)
    for b in range(5):  # each row alone, with nothing after its context but the N placeholders
        alone = torch.cat([tokens[b, : starts[b]], torch.zeros(N, dtype=torch.long)])[None]
        single, _ = draft_after(student, alone, starts[b : b + 1], u[b : b + 1], order="id")
        assert torch.equal(single[0], batched[b])
    if mode != "o-ptp":  # C-PTP / MTP draft by Pick with each token's own u (Eq. 7)
        assert torch.equal(batched, pick(u, logits.double().softmax(-1), "id"))
    else:
        assert torch.equal(batched, logits.argmax(-1))


def test_draft_after_rejects_windows_that_do_not_fit():
    student = _trained_looking_student("o-ptp")
    tokens = torch.zeros(1, 6, dtype=torch.long)
    u = torch.rand(1, N, dtype=torch.float64)
    with pytest.raises(ValueError, match="starts must lie"):
        draft_after(student, tokens, torch.tensor([3]), u)
    with pytest.raises(ValueError, match="starts must lie"):
        draft_after(student, tokens, torch.tensor([0]), u)
    with pytest.raises(ValueError, match="u has shape"):
        draft_after(student, tokens, torch.tensor([1]), u[:, :2])


def test_sample_from_student_writes_its_one_call_draft_into_the_window():
    student = _trained_looking_student("o-ptp")
    tokens = torch.randint(2, VOCAB, (6, 10), generator=torch.Generator().manual_seed(2))
    starts = torch.tensor([1, 2, 3, 4, 5, 6])
    sequences, u = sample_from_student(student, tokens, starts, "rank", torch.Generator().manual_seed(3))
    again, u_again = sample_from_student(student, tokens, starts, "rank", torch.Generator().manual_seed(3))
    assert torch.equal(sequences, again) and torch.equal(u, u_again), "seeded: reproducible"
    assert u.dtype == torch.float64 and ((u >= 0) & (u < 1)).all()
    draft, _ = draft_after(student, tokens, starts, u, "rank")
    window = starts[:, None] + torch.arange(N)
    assert torch.equal(sequences.gather(1, window), draft)
    outside = torch.ones_like(tokens, dtype=torch.bool).scatter(1, window, False)
    assert torch.equal(sequences[outside], tokens[outside])


def test_centre_distance_and_selection():
    lo = torch.tensor([[0.0, 0.5], [0.2, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 1.0], [0.4, 0.1]], dtype=torch.float64)
    middle = (lo + hi) / 2
    assert torch.allclose(centre_distance(middle, lo, hi), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(centre_distance(lo, lo, hi), torch.ones(2, dtype=torch.float64))  # two tokens at their borders: 2 x 1/2
    draws = torch.stack([lo, middle, lo + 0.25 * (hi - lo)])  # (M=3, B=2, N=2)
    assert select_central(draws, lo.expand(3, 2, 2), hi.expand(3, 2, 2)).tolist() == [1, 1]


def test_selection_by_eq18_leaves_the_token_distribution_unchanged():
    """Choosing among M draws by where u falls inside its interval does not bias the sampled tokens
    (App. E), unlike choosing by the tokens themselves, and it pulls u towards interval centres."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    trials, m = 40000, 8
    g = torch.Generator().manual_seed(0)
    u = torch.rand(m, trials, 2, dtype=torch.float64, generator=g)  # two tokens per draw
    tokens = pick(u, probs.expand(m, trials, 2, 4), "id")
    lo, hi = token_interval(probs.expand(m, trials, 2, 4), tokens, "id")
    chosen = select_central(u, lo, hi)
    picked = tokens[chosen, torch.arange(trials)]  # (trials, 2)
    freq = torch.bincount(picked.flatten(), minlength=4).double() / picked.numel()
    assert torch.allclose(freq, probs, atol=0.01)
    # the two tokens stay independent: joint frequency of (0, 0) is P(0)^2
    assert abs(float(((picked[:, 0] == 0) & (picked[:, 1] == 0)).double().mean()) - 0.25) < 0.01
    v = (u[chosen, torch.arange(trials)] - lo[chosen, torch.arange(trials)]) / (hi - lo)[chosen, torch.arange(trials)]
    assert float((v - 0.5).abs().mean()) < 0.15  # uniform v would give 0.25


def test_inverse_autoregressive_loss_trains_the_context_rows_too():
    """A C-PTP from scratch (every weight trainable): the gradient reaches weights only the token
    rows use (the embedding of a token that appears only in contexts), and the u it extracts make
    the student's own picks reproduce the data (Alg. 3)."""
    student = Student.from_teacher(tiny_teacher("gpt2"), mode="c-ptp", num_draft_tokens=N, lora_rank=4)
    for p in student.model.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (4, 12), generator=g)
    tokens[:, 0] = 2  # token 2 only ever appears as context
    starts = torch.randint(1, 12 - N + 1, (4, 2), generator=g)
    loss, metrics = inverse_autoregressive_loss(student, tokens, starts, generator=g, order="id")
    loss.backward()
    embedding = student.model.get_input_embeddings().weight.grad
    assert embedding is not None and embedding[2].abs().sum() > 0
    assert metrics["correct"] == N and loss.item() == metrics["loss"] > 0
    teacher_only = Student.from_teacher(tiny_teacher("gpt2"), mode="o-ptp", num_draft_tokens=N, lora_rank=4)
    with pytest.raises(ValueError, match="c-ptp"):
        inverse_autoregressive_loss(teacher_only, tokens, starts)
