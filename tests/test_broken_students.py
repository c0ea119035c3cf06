"""Exactness must not depend on the student: NaN-, Inf- and huge-valued students (gated LoRA and
draft head) leave the teacher's rows and the accepted tokens unchanged, in every strategy and dtype."""

from __future__ import annotations

import pytest
import torch

from ptp import SamplingConfig, Student
from ptp.generate import generate
from ptp.masks import tree_layout
from test_generate import reference_tokens
from tiny_models import tiny_teacher

PROMPT = torch.tensor([0, 5, 9, 12, 7, 3, 22, 8])
VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e30}


def broken(student: torch.nn.Module, value: float) -> torch.nn.Module:
    """Every trainable weight of the student set to ``value`` (as 0xff bytes or lora_alpha=nan would)."""
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.fill_(value)
    return student


def make(kind: str, dtype: torch.dtype) -> torch.nn.Module:
    teacher = tiny_teacher("llama", dtype=dtype)
    if kind == "lora":
        return Student.from_teacher(teacher, mode="o-ptp", num_draft_tokens=4, lora_rank=4)
    return Student.from_teacher(teacher, kind="head", mode="c-ptp", num_draft_tokens=4, num_layers=1)


@pytest.mark.parametrize("kind", ["lora", "head"])
@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("strategy", ["pqd", "verify"])
def test_broken_student_decodes_the_teachers_tokens(kind, value, strategy):
    student = broken(make(kind, torch.float32), VALUES[value])
    sampling = SamplingConfig(temperature=0.8, top_p=0.9)
    u = torch.rand(24, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = generate(student, PROMPT, 24, sampling=sampling, u=u, strategy=strategy)
    assert out.tokens.tolist() == reference_tokens(student.model, PROMPT, u, sampling)
    assert out.tokens_per_call <= 2.0  # a broken student earns nothing: no inflated statistics


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", list(VALUES))
def test_token_rows_of_a_call_with_broken_slots_are_the_teachers_bits(dtype, value):
    """A PQD-shaped call (token chain + a slot window branching off it): the token rows' logits of a
    broken student equal those of an untouched (zero-LoRA) student bit for bit."""
    good = make("lora", dtype)
    bad = broken(make("lora", dtype), VALUES[value])
    parents = [-1, 0, 1, 2, 1, 4, 5, 6]  # 4 token rows, then 4 slots after row 1
    visible, positions = tree_layout(torch.tensor(parents), 0)
    draft = torch.tensor([[False] * 4 + [True] * 4])
    ids = torch.tensor([[0, 5, 9, 12, 0, 0, 0, 0]])
    u = torch.tensor([[float("nan")] * 4 + [0.1, 0.5, 0.9, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        logits = [s(ids, draft=draft, u=u, position_ids=positions.unsqueeze(0), visible=visible.unsqueeze(0)).logits[0, :4]
                  for s in (good, bad)]
    assert torch.isfinite(logits[1]).all()
    assert torch.equal(logits[0], logits[1])

