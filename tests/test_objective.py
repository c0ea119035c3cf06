"""The training step: teacher u-intervals, inverse autoregressive u, PTPObjective, training signal."""

from __future__ import annotations

import time

import pytest
import torch

from ptp import SamplingConfig, Student
from ptp.losses import kl
from ptp.pregenerate import sample_completions
from ptp.objective import (
    PTPObjective,
    _context,
    _slot_logits,
    draft_inputs,
    gather_windows,
    inverse_autoregressive_u,
    sample_starts,
    teacher_targets,
    window_positions,
)
from ptp.sampling import pick, sample_in_interval, warp
from tiny_models import ARCHITECTURES, VOCAB, tiny_teacher

N = 4


def _student(mode: str = "o-ptp", arch: str = "llama", num_draft: int = N, lora_b: float = 0.0) -> Student:
    student = Student.from_teacher(tiny_teacher(arch), mode=mode, num_draft_tokens=num_draft, lora_rank=4)
    if lora_b:  # a student that differs from the teacher on its slots, as after some training
        torch.manual_seed(1)
        for module in student.lora_modules():
            torch.nn.init.normal_(module.lora_B, std=lora_b)
    return student


def _teacher_data(student: Student, sampling: SamplingConfig, batch: int = 3, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(2, VOCAB, (batch, 1), generator=g)
    u = torch.rand(batch, length - 1, dtype=torch.float64, generator=g)
    return sample_fixed_length(student, prompts, u, sampling)


def sample_fixed_length(student: Student, prompts: torch.Tensor, u: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """``(B, P)`` prompts + ``(B, K)`` u -> ``(B, P + K)`` teacher samples (no EOS stop)."""
    completions = sample_completions(student.model, prompts.tolist(), u, sampling, eos_ids=set())
    return torch.cat([prompts, torch.stack([c for c, _, _ in completions])], dim=1)


@pytest.mark.parametrize(
    "sampling", [SamplingConfig(), SamplingConfig(temperature=0.7, top_k=5), SamplingConfig(top_p=0.8)]
)
def test_teacher_targets_intervals_pick_the_tokens(sampling):
    student = _student()
    tokens = _teacher_data(student, sampling)
    lo, hi, q = teacher_targets(student, tokens, sampling, with_probs=True)
    assert lo.dtype == hi.dtype == torch.float64 and lo.shape == hi.shape == tokens.shape
    assert (lo[:, 0] == 0).all() and (hi[:, 0] == 1).all() and torch.isnan(q[:, 0]).all()
    assert (lo < hi).all(), "tokens sampled from the teacher always have a non-empty interval"
    g = torch.Generator().manual_seed(3)
    for beta in (1.0, 0.5, 2.0):
        u = sample_in_interval(lo, hi, beta, g)
        assert torch.equal(pick(u[:, 1:], q[:, 1:]), tokens[:, 1:])
    # the borders themselves: lo picks the token, the largest float below hi too
    below_hi = torch.nextafter(hi, torch.zeros_like(hi))
    assert torch.equal(pick(lo[:, 1:], q[:, 1:]), tokens[:, 1:])
    assert torch.equal(pick(below_hi[:, 1:], q[:, 1:]), tokens[:, 1:])
    assert teacher_targets(student, tokens, sampling).probs is None


def test_windows_and_starts():
    g = torch.Generator().manual_seed(0)
    starts = sample_starts(64, 10, 3, 4, g)
    assert starts.shape == (64, 3) and starts.min() >= 1 and starts.max() <= 6
    assert set(starts.flatten().tolist()) == set(range(1, 7))
    positions = window_positions(torch.tensor([[1, 3]]), 3)
    assert positions.tolist() == [[[1, 2, 3], [3, 4, 5]]]
    x = torch.arange(10).view(1, 10) * 10
    assert gather_windows(x, positions).tolist() == [[[10, 20, 30], [30, 40, 50]]]
    with pytest.raises(ValueError, match="at least 5 tokens"):
        sample_starts(2, 4, 1, 4)


def test_draft_inputs_rows():
    student = _student("c-ptp")
    tokens = torch.randint(2, VOCAB, (2, 8))
    u = torch.rand(2, 2, N, dtype=torch.float64)
    inputs = draft_inputs(student, tokens, torch.tensor([[1, 4], [2, 3]]), u)
    assert inputs["input_ids"].shape == (2, 8 + 2 * N)
    assert torch.equal(inputs["input_ids"][:, :8], tokens)
    assert torch.isnan(inputs["u"][:, :8]).all() and not inputs["draft"][:, :8].any()
    # C-PTP: slot j carries u_{j-1}, slot 0 none
    assert torch.equal(inputs["u"][:, 8:].view(2, 2, N)[..., 1:], u[..., :-1])
    assert torch.isnan(inputs["u"][:, 8:].view(2, 2, N)[..., 0]).all()


@pytest.mark.parametrize("mode", ["c-ptp", "mtp"])
def test_inverse_autoregressive_u_reproduces_data_tokens(mode):
    """Alg. 3: the extracted u make the student's own slots pick the data, in ONE parallel call."""
    student = _student(mode, num_draft=6, lora_b=0.3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (3, 14), generator=g)  # data, not teacher samples
    starts = sample_starts(3, 14, 2, 6, g)
    u = inverse_autoregressive_u(student, tokens, starts, beta=0.5, generator=g)
    assert u.shape == (3, 2, 6) and ((u >= 0) & (u < 1)).all()
    with torch.no_grad():
        logits = _slot_logits(student, _context(student, tokens, with_logits=False)[1], tokens, starts, u)
    targets = gather_windows(tokens, window_positions(starts, 6))
    assert torch.equal(pick(u, logits.double().softmax(-1)), targets)
    assert torch.equal(student.draft_tokens(logits, u), targets)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["o-ptp", "c-ptp"])
def test_slots_over_a_context_cache_equal_one_call_over_all_rows(arch, mode):
    """Training's two calls (token rows without autograd, then slots over their cache) give the
    logits of one call over the whole training layout, and reuse the cache for further slot passes."""
    student = _student(mode, arch=arch, lora_b=0.2)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(2, VOCAB, (2, 13), generator=g)
    starts = sample_starts(2, 13, 3, N, g)
    u = torch.rand(2, 3, N, dtype=torch.float64, generator=g)
    with torch.no_grad():
        whole = student(**draft_inputs(student, tokens, starts, u)).logits
        token_logits, context = _context(student, tokens, with_logits=True)
        for _ in range(2):  # the cache is back at the token rows after each pass
            torch.testing.assert_close(_slot_logits(student, context, tokens, starts, u), whole[:, 13:].unflatten(1, (3, N)))
    torch.testing.assert_close(token_logits, whole[:, :13])


def test_inverse_autoregressive_needs_a_distribution():
    with pytest.raises(ValueError, match="c-ptp"):
        inverse_autoregressive_u(_student("o-ptp"), torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))


@pytest.mark.parametrize("mode", ["o-ptp", "c-ptp", "mtp"])
@pytest.mark.parametrize("loss", ["ce", "kl", "rev-kl", "bce"])
def test_objective_runs_and_trains_only_the_adapter(mode, loss):
    sampling = SamplingConfig(top_k=20)
    student = _student(mode, lora_b=0.1)
    tokens = _teacher_data(student, sampling)
    value, metrics = PTPObjective(loss=loss, windows=2, sampling=sampling)(
        student, tokens, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(value) and value.requires_grad
    assert set(metrics) == {"loss", "correct", "accepted", "decode_accepted"}
    assert 0 <= metrics["correct"] <= N and 1 <= metrics["accepted"] <= N
    assert 1 <= metrics["decode_accepted"] <= N
    value.backward()
    for module in student.lora_modules():
        assert module.lora_B.grad is not None and torch.isfinite(module.lora_B.grad).all()
        assert module.lora_B.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.model.parameters() if not p.requires_grad)


def test_objective_precomputed_intervals_equal_computed_ones():
    sampling = SamplingConfig(temperature=0.8)
    student = _student("c-ptp", lora_b=0.1)
    tokens = _teacher_data(student, sampling)
    objective = PTPObjective(loss="kl", windows=3, sampling=sampling, beta=0.5)
    lo, hi, _ = teacher_targets(student, tokens, sampling)
    a, ma = objective(student, tokens, generator=torch.Generator().manual_seed(4))
    b, mb = objective(student, tokens, lo, hi, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and ma == mb


def test_objective_c_ptp_kl_targets_teacher_distribution():
    """Eq. (12): with the slots' logits replaced by the teacher's own, the KL is zero."""
    sampling = SamplingConfig(temperature=0.9)
    student = _student("c-ptp")
    tokens = _teacher_data(student, sampling)
    starts = torch.tensor([[2, 5]] * tokens.shape[0])
    positions = window_positions(starts, N)
    with torch.no_grad():
        q = warp(gather_windows(student(tokens).logits, positions - 1), sampling)
    assert float(kl(q.log().float().flatten(1, 2), q.flatten(1, 2), torch.ones(3, 2 * N, dtype=torch.bool))[0]) < 1e-5
    value, _ = PTPObjective(loss="kl", sampling=sampling)(student, tokens, starts=starts)
    assert float(value.detach()) > 1e-3  # an untrained student is not the teacher on its slots


def test_objective_inverse_autoregressive_mode():
    student = _student("c-ptp", lora_b=0.1)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (2, 12), generator=g)
    value, metrics = PTPObjective(loss="ce", windows=2, inverse_autoregressive=True)(student, tokens, generator=g)
    assert torch.isfinite(value) and value.requires_grad
    assert 0 <= metrics["correct"] <= N


def test_objective_drops_tokens_the_teacher_cannot_pick():
    """top-k = 1 with random data: most tokens have empty intervals; the loss stays finite and
    #correct never runs past the first such token of a window."""
    sampling = SamplingConfig(top_k=1)
    student = _student("o-ptp")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (4, 12), generator=g)
    starts = sample_starts(4, 12, 3, N, g)
    lo, hi, _ = teacher_targets(student, tokens, sampling)
    value, metrics = PTPObjective(loss="bce", windows=3, sampling=sampling)(student, tokens, lo, hi, starts, g)
    assert torch.isfinite(value)
    valid = gather_windows(hi > lo, window_positions(starts, N))
    assert metrics["correct"] <= float(valid.long().cumprod(-1).sum(-1).double().mean())


def test_objective_validation():
    with pytest.raises(ValueError, match="unknown"):
        PTPObjective(loss="l2")
    with pytest.raises(ValueError, match="beta"):
        PTPObjective(beta=0.0)
    with pytest.raises(ValueError, match="windows"):
        PTPObjective(windows=0)
    student = _student()
    tokens = torch.randint(2, VOCAB, (1, 12))
    with pytest.raises(ValueError, match="both lo and hi"):
        PTPObjective()(student, tokens, lo=torch.zeros(1, 12))
    with pytest.raises(ValueError, match="too short"):
        PTPObjective()(student, tokens[:, :N])


def test_o_ptp_training_signal_beats_mtp():
    """A few hundred AdamW steps of O-PTP distillation raise #correct well above MTP's.

    The teacher is the tiny random llama with its head sharpened 4x more, so that its next-token
    entropy (about 1.7 nats) resembles a real LM's rather than being nearly uniform. Sequences are
    the teacher's own samples (temperature 1) from a BOS token, and every window starts right
    after BOS, as in the paper's context-free taxi evaluation (App. H.2): a 2-layer random teacher's
    dependence on long random contexts is too hard to fit in this budget, while the coordination of
    future tokens through u, which is what separates PTP from MTP (App. G), is fully exercised.
    """
    torch.manual_seed(0)
    num_draft, steps, batch, sampling = 8, 600, 32, SamplingConfig()

    def sharp_teacher():
        teacher = tiny_teacher("llama")
        with torch.no_grad():
            teacher.get_output_embeddings().weight.mul_(4.0)
        return teacher

    g = torch.Generator().manual_seed(2)
    sampler = Student.from_teacher(sharp_teacher(), num_draft_tokens=num_draft)
    u = torch.rand(2048 + 256, num_draft, dtype=torch.float64, generator=g)
    data = sample_fixed_length(sampler, torch.zeros(2048 + 256, 1, dtype=torch.long), u, sampling)
    lo, hi, _ = teacher_targets(sampler, data, sampling)
    train, test = slice(0, 2048), slice(2048, None)
    objective = PTPObjective(loss="ce", windows=1, sampling=sampling)
    after_bos = lambda b: torch.ones(b, 1, dtype=torch.long)  # noqa: E731

    def evaluate(student):
        with torch.no_grad():
            _, m = objective(student, data[test], lo[test], hi[test], after_bos(256), torch.Generator().manual_seed(1))
        return m["correct"]

    results = {}
    for mode in ("o-ptp", "mtp"):
        torch.manual_seed(1)
        student = Student.from_teacher(sharp_teacher(), mode=mode, num_draft_tokens=num_draft, lora_rank=16)
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
        initial, start = evaluate(student), time.perf_counter()
        batches = torch.Generator().manual_seed(2)
        for _ in range(steps):
            idx = torch.randint(0, 2048, (batch,), generator=batches)
            loss, _ = objective(student, data[idx], lo[idx], hi[idx], after_bos(batch), batches)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results[mode] = (initial, evaluate(student), time.perf_counter() - start)
        print(f"{mode}: #correct {initial:.3f} -> {results[mode][1]:.3f} "
              f"({steps} steps, batch {batch}, N={num_draft}, {results[mode][2]:.1f} s)")
    (o_init, o_final, _), (_, mtp_final, _) = results["o-ptp"], results["mtp"]
    assert o_final > o_init + 1.0
    assert o_final > mtp_final + 0.5
