"""Lossless decoding: every strategy returns exactly the teacher's own samples for the same u."""

from __future__ import annotations

import pytest
import torch

from ptp import SamplingConfig, Student, UserError
from ptp.budget import AcceptanceModel, CostCurve, allocate
from ptp.generate import generate
from ptp.sampling import pick, warp
from tiny_models import ARCHITECTURES, tiny_teacher

CONFIGS = [
    SamplingConfig(),
    SamplingConfig(temperature=0.0),
    SamplingConfig(temperature=0.7, top_p=0.95),
    SamplingConfig(temperature=1.3, top_k=5),
    SamplingConfig(temperature=0.8, top_k=20, top_p=0.8),
    SamplingConfig(temperature=0.9, top_p=0.9, order="id"),
]


def reference_tokens(teacher, prompt: torch.Tensor, u: torch.Tensor, sampling: SamplingConfig, eos: int = 1) -> list[int]:
    """The definition: t_k = pick(u_k, warp(teacher(prompt + t_<k))), full recompute, no cache."""
    seq, out = prompt.tolist(), []
    with torch.no_grad():
        for k in range(u.numel()):
            logits = teacher(torch.tensor([seq])).logits[0, -1]
            tok = int(pick(u[k], warp(logits, sampling), sampling.order))
            out.append(tok)
            seq.append(tok)
            if tok == eos:
                break
    return out


def random_student(arch: str, mode: str, scale: float = 0.05, num_draft: int = 6, dtype=torch.float32) -> Student:
    student = Student.from_teacher(tiny_teacher(arch, dtype=dtype), mode=mode, num_draft_tokens=num_draft, lora_rank=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in student.lora_modules():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * scale)
    return student


class OracleStudent(Student):
    """Drafts the teacher's true future tokens (looked up by their u), wrong with probability p."""

    def arm(self, u: torch.Tensor, truth: list[int], error_rate: float, seed: int = 0) -> "OracleStudent":
        self.truth = {float(x): truth[k] for k, x in enumerate(u[: len(truth)].tolist())}
        self.error_rate = error_rate
        self.rng = torch.Generator().manual_seed(seed)
        return self

    def draft_tokens(self, logits: torch.Tensor, u: torch.Tensor, order: str = "rank") -> torch.Tensor:
        guess = super().draft_tokens(logits, u, order)
        for j, x in enumerate(u.tolist()):
            if float(x) in self.truth and torch.rand((), generator=self.rng) >= self.error_rate:
                guess[j] = self.truth[float(x)]
        return guess


COMBINATIONS = [(arch, mode) for arch in ARCHITECTURES for mode in ("o-ptp", "c-ptp", "mtp")]


@pytest.mark.parametrize("index", range(len(COMBINATIONS)), ids=["-".join(c) for c in COMBINATIONS])
def test_all_strategies_equal_teacher_samples(index):
    arch, mode = COMBINATIONS[index]
    student = random_student(arch, mode)
    prompt = torch.randint(2, 97, (9,), generator=torch.Generator().manual_seed(5))
    # every sampling config meets every architecture and every mode across the combinations
    for i in (index % len(CONFIGS), (index + 2) % len(CONFIGS)):
        sampling = CONFIGS[i]
        u = torch.rand(24, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        expected = reference_tokens(student.model, prompt, u, sampling)
        for strategy in ("ar", "verify", "pqd", "pld"):
            result = generate(student, prompt, 24, sampling=sampling, u=u, strategy=strategy, cost=CostCurve())
            assert result.tokens.tolist() == expected, (arch, mode, sampling, strategy)
            assert sum(result.accepted) == len(expected) and result.calls == len(result.accepted)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("error_rate", [0.0, 0.1, 0.5])
def test_oracle_student_accepts_many_and_stays_exact(arch, error_rate):
    sampling = SamplingConfig(temperature=0.9, top_p=0.95)
    student = OracleStudent(tiny_teacher(arch), random_student(arch, "o-ptp").config)
    prompt = torch.randint(2, 97, (6,), generator=torch.Generator().manual_seed(2))
    u = torch.rand(48, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    expected = reference_tokens(student.model, prompt, u, sampling, eos=-1)
    student.arm(u, expected, error_rate)
    for strategy in ("verify", "pqd"):
        result = generate(student, prompt, 48, sampling=sampling, u=u, strategy=strategy, cost=CostCurve(), max_rows=40)
        assert result.tokens.tolist() == expected[: len(result.tokens)]
        assert len(result.tokens) == 48 or int(result.tokens[-1]) == 1
        if error_rate == 0.0:
            # every draft right: pqd accepts a full window (N - 1 proposals + 1) per call
            floor = 2.5 if strategy == "verify" else 4.0
            assert result.tokens_per_call > floor, (strategy, result.accepted)


def test_float64_teacher_exact_and_bf16_runs():
    sampling = SamplingConfig(temperature=0.7, top_p=0.95)
    prompt = torch.randint(2, 97, (8,), generator=torch.Generator().manual_seed(3))
    u = torch.rand(24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    student = random_student("qwen2", "o-ptp", dtype=torch.float64)
    expected = reference_tokens(student.model, prompt, u, sampling)
    for strategy in ("ar", "verify", "pqd"):
        assert generate(student, prompt, 24, sampling=sampling, u=u, strategy=strategy).tokens.tolist() == expected
    bf16 = random_student("llama", "o-ptp", dtype=torch.bfloat16)
    result = generate(bf16, prompt, 24, sampling=sampling, u=u, strategy="pqd", cost=CostCurve())
    assert 1 <= len(result.tokens) <= 24


def test_seed_reproducible_and_returned():
    student = random_student("llama", "o-ptp")
    prompt = torch.tensor([5, 6, 7])
    a = generate(student, prompt, 12, seed=11, strategy="pqd", cost=CostCurve())
    b = generate(student, prompt, 12, seed=11, strategy="ar")
    assert a.tokens.tolist() == b.tokens.tolist() and torch.equal(a.u, b.u)
    c = generate(student, prompt, 12, strategy="ar")
    assert c.seed is not None
    assert generate(student, prompt, 12, seed=c.seed, strategy="ar").tokens.tolist() == c.tokens.tolist()


def test_plain_teacher_decodes_with_ar_and_refuses_ptp_strategies():
    teacher = tiny_teacher("gpt2")
    prompt = torch.tensor([3, 4, 5, 6])
    u = torch.rand(10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert generate(teacher, prompt, 10, u=u, strategy="ar").tokens.tolist() == reference_tokens(teacher, prompt, u, SamplingConfig())
    with pytest.raises(UserError, match="needs a PTP student"):
        generate(teacher, prompt, 10, u=u, strategy="pqd")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(input_ids=torch.tensor([], dtype=torch.long)), "empty"),
        (dict(strategy="beam"), "strategy"),
        (dict(max_new_tokens=600), "context"),
        (dict(u=torch.rand(3)), "one value per generated token"),
    ],
)
def test_bad_inputs_raise_user_errors(kwargs, match):
    student = random_student("llama", "o-ptp")
    args = dict(input_ids=torch.tensor([3, 4]), max_new_tokens=8, strategy="ar")
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        generate(student, **args)


def test_allocate_spends_rows_only_where_they_pay():
    flat = CostCurve([1, 64], [1.0, 1.0])
    steep = CostCurve([1, 2], [1.0, 2.0])
    sure = torch.full((7,), 0.95, dtype=torch.float64)
    hopeless = torch.full((7,), 0.01, dtype=torch.float64)
    assert allocate(1, torch.zeros(0), sure, 8, steep).groups == {}  # doubling cost per row never pays
    assert allocate(1, torch.zeros(0), sure, 8, flat).groups == {0: 8}
    assert allocate(1, torch.zeros(0), hopeless, 8, CostCurve([1, 64], [1.0, 1.6])).groups == {}
    # an uncertain proposal spreads slots over several acceptance hypotheses (its unlikely tail
    # may be dropped when sure drafts use the rows better)
    spread = allocate(1, torch.full((5,), 0.5, dtype=torch.float64), sure, 8, flat, max_rows=40)
    assert spread.verify >= 3 and len(spread.groups) >= 3 and sum(spread.groups.values()) <= 34
    # a hopeless proposal is not worth verifying when rows cost time: plain step instead
    dud = allocate(1, torch.full((7,), 0.01, dtype=torch.float64), hopeless, 8, CostCurve([1, 8], [1.0, 2.0]))
    assert dud.verify == 0 and dud.groups == {}


def test_cost_curve_learns_from_observed_calls():
    curve = CostCurve([1, 64], [1.0, 1.6], base_seconds=0.01)
    assert curve(8) < 1.1
    for _ in range(20):
        curve.observe(8, 0.03)  # real calls of 8 rows take 3x a 1-row call
    assert abs(curve(8) - 3.0) < 1e-6 and curve(16) > 2.5  # unobserved sizes scaled alike


def test_acceptance_model_calibrates():
    model = AcceptanceModel(4)
    for _ in range(50):
        model.update(torch.tensor([0.95, 0.95, 0.15, 0.15], dtype=torch.float64), accepted=2)
    rates = model.rates(torch.tensor([0.95, 0.95, 0.15], dtype=torch.float64))
    assert rates[0] > 0.9 and rates[1] > 0.9 and rates[2] < 0.1


def test_greedy_in_rank_order_feeds_the_student_u_zero():
    """u -> 0 picks the most likely token at every temperature in rank order: greedy decoding
    draws u = 0, so a student trained on sampled text is asked for the greedy continuation."""
    student = random_student("llama", "o-ptp")
    prompt = torch.randint(2, 97, (7,), generator=torch.Generator().manual_seed(3))
    greedy = SamplingConfig(temperature=0.0)
    result = generate(student, prompt, 12, sampling=greedy, strategy="pqd", cost=CostCurve())
    assert torch.equal(result.u, torch.zeros(12, dtype=torch.float64))
    assert result.tokens.tolist() == reference_tokens(student.model, prompt, torch.rand(12, dtype=torch.float64), greedy)
    drafted = generate(student, prompt, 12, sampling=SamplingConfig(temperature=0.0, order="id"), seed=5, strategy="ar")
    assert not torch.equal(drafted.u, torch.zeros(12, dtype=torch.float64))  # id order: u stays random
