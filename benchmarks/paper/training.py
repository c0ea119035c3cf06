"""The two training loops of the paper suite: autoregressive (teacher, Table 1 baseline) and PTP.

One ``train_student`` serves every student of every table; a ``RunSpec`` says what differs
(mode, loss, proposal distribution, auxiliary embedding, Beta b, N, token order). Training
sequences come from one of the proposal distributions of Sec. 2.2.1 / Alg. 2-3:

* ``teacher``: teacher completions of data-set prefixes, sampled once (``pregenerate_teacher``);
* ``dataset``: the data-set chunks themselves, u-intervals from the teacher (``dataset_targets``);
* ``student``: data-set prefixes continued by the student itself at its current state, one call
  per step (``ptp.parallel_sampling.sample_from_student``), u-intervals from the teacher;
* ``inverse``: data-set chunks, u from the student itself (Alg. 3; a C-PTP trained from scratch,
  every weight learning: ``ptp.inverse_training``).

Every random choice comes from a generator seeded by (suite seed, run name, step): reruns are
identical.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ptp import SamplingConfig, Student
from ptp.inverse_training import inverse_autoregressive_loss
from ptp.objective import PTPObjective, teacher_targets
from ptp.parallel_sampling import sample_from_student
from ptp.pregenerate import sample_completions

from flights import BOS_ID, VOCAB_SIZE
from scale import Scale


def seed_of(*parts: Any) -> int:
    """A 63-bit seed per tuple of parts."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def sampling(order: str) -> SamplingConfig:
    """The teacher's sampling distribution: plain temperature-1 sampling, tokens in ``order``."""
    return SamplingConfig(order=order)


@dataclass(frozen=True)
class RunSpec:
    """One student of the suite.

    Attributes:
        mode: ``o-ptp``, ``c-ptp`` or ``mtp``.
        loss: ``ce``, ``bce`` (O-PTP), ``kl``, ``rev-kl`` (C-PTP).
        proposal: where training sequences come from: ``teacher``, ``student``, ``dataset`` or
            ``inverse`` (Alg. 3, from scratch, no teacher).
        aux_embedding: ``FEATURE+HEAD`` of u (Table 5).
        beta: b of the Beta(b, b) draw of u inside its interval (Table 6).
        num_draft: N, tokens predicted per call (Table 8).
        order: token order of Pick (``id``: the paper's Eq. 2; ``rank``: ptp's default).
    """

    mode: str = "o-ptp"
    loss: str = "bce"
    proposal: str = "teacher"
    aux_embedding: str = "ar+lin"
    beta: float = 1.0
    num_draft: int = 16
    order: str = "id"

    @property
    def name(self) -> str:
        return f"{self.mode}_{self.loss}_{self.proposal}_{self.aux_embedding}_b{self.beta:g}_n{self.num_draft}_{self.order}"


# ---------------------------------------------------------------------------------------- models


def gpt2_config(scale: Scale, dropout: float) -> GPT2Config:
    """The GPT-2-style architecture of teacher, students and the Table 1 models."""
    return GPT2Config(vocab_size=VOCAB_SIZE, n_positions=scale.chunk_len + 1, n_embd=scale.n_embd, n_layer=scale.n_layer,
                      n_head=scale.n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      bos_token_id=BOS_ID, eos_token_id=BOS_ID)


def schedule(params: list[torch.nn.Parameter], lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with 5% linear warm-up and cosine decay to zero (short runs end converged, not noisy)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    decay = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


def optimise(params: list[torch.nn.Parameter], lr: float, steps: int,
             step_loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
             after_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """``steps`` AdamW steps on ``step_loss(step)``; averages of the last quarter's metrics, wall and CPU time.

    ``after_step(done)`` runs after each step with the number of steps done (for measurements
    along the way); its time is not counted in the training times.
    """
    optimizer, scheduler = schedule(params, lr, steps)
    tail: dict[str, list[float]] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        loss, metrics = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step >= steps * 3 // 4:
            for k, v in metrics.items():
                tail.setdefault(f"train_{k}", []).append(v)
        if after_step is not None:
            paused, paused_cpu = time.perf_counter(), time.process_time()
            after_step(step + 1)
            start += time.perf_counter() - paused
            cpu += time.process_time() - paused_cpu
    result = {k: sum(v) / len(v) for k, v in tail.items()}
    result["train_seconds"], result["train_cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    result["cpu_seconds_per_step"] = result["train_cpu_seconds"] / steps
    return result


def train_autoregressive(chunks: torch.Tensor, scale: Scale, steps: int, dropout: float, name: str,
                         seed: int) -> tuple[GPT2LMHeadModel, dict[str, float]]:
    """A GPT-2 from scratch on the chunks with the cross-entropy of Eq. (8); returned in eval mode."""
    torch.manual_seed(seed_of(seed, name, "init"))
    model = GPT2LMHeadModel(gpt2_config(scale, dropout)).train()

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randint(0, len(chunks), (scale.teacher_batch,), generator=generator(seed, name, step))
        loss = model(chunks[rows], labels=chunks[rows]).loss
        return loss, {"loss": float(loss.detach())}

    metrics = optimise(list(model.parameters()), scale.teacher_lr, steps, step_loss)
    return model.eval(), metrics


# ---------------------------------------------------------------------------------------- data


@torch.no_grad()
def pregenerate_teacher(teacher: GPT2LMHeadModel, chunks: torch.Tensor, scale: Scale, order: str,
                        seed: int) -> dict[str, torch.Tensor]:
    """``teacher_samples`` sequences: a data-set prefix of ``first`` tokens, then the teacher's sample.

    Returns ``tokens`` ``(S, T)``, ``lo``/``hi`` ``(S, T)`` (the teacher's u-interval of each sampled
    token; [0, 1) on prefix tokens, which are never window targets) and ``first`` ``(S,)``, drawn
    uniformly in ``[1, T - max N]`` so that every N of the suite fits after it.
    """
    g = generator(seed, "pregenerate", order)
    t = chunks.shape[1]
    rows = torch.randint(0, len(chunks), (scale.teacher_samples,), generator=g)
    first = torch.randint(1, t - max(scale.table8_n) + 1, (scale.teacher_samples,), generator=g)
    u = torch.rand(scale.teacher_samples, t - 1, dtype=torch.float64, generator=g)
    tokens = chunks[rows].clone()
    lo = torch.zeros(tokens.shape, dtype=torch.float64)
    hi = torch.ones(tokens.shape, dtype=torch.float64)
    for c in first.unique().tolist():  # one call per prefix length: exactly T - c tokens, no position overflow
        group = (first == c).nonzero().flatten()
        samples = sample_completions(teacher, chunks[rows[group], :c].tolist(), u[group, : t - c], sampling(order), set())
        for i, (sample, s_lo, s_hi) in zip(group.tolist(), samples):
            tokens[i, c:], lo[i, c:], hi[i, c:] = sample, s_lo, s_hi
    return {"tokens": tokens, "lo": lo, "hi": hi, "first": first}


@torch.no_grad()
def dataset_targets(teacher: GPT2LMHeadModel, chunks: torch.Tensor, order: str) -> dict[str, torch.Tensor]:
    """The data-set chunks with the teacher's u-interval of every token (Eq. 9)."""
    parts = [teacher_targets(teacher, chunks[b : b + 512], sampling(order)) for b in range(0, len(chunks), 512)]
    return {"tokens": chunks, "lo": torch.cat([p.lo for p in parts]), "hi": torch.cat([p.hi for p in parts]),
            "first": torch.ones(len(chunks), dtype=torch.int64)}


# ---------------------------------------------------------------------------------------- students


def build_student(teacher: GPT2LMHeadModel | None, spec: RunSpec, scale: Scale, seed: int) -> Student:
    """A student on a private copy of the teacher; without a teacher (``inverse``), a fresh GPT-2
    whose weights all train (C-PTP from data alone, Table 1)."""
    torch.manual_seed(seed_of(seed, spec.name, "init"))
    base = copy.deepcopy(teacher) if teacher is not None else GPT2LMHeadModel(gpt2_config(scale, 0.0))
    student = Student.from_teacher(base.eval(), mode=spec.mode, num_draft_tokens=spec.num_draft, lora_rank=scale.lora_rank,
                                   aux_embedding=spec.aux_embedding, aux_dim=scale.aux_dim, sampling=sampling(spec.order))
    if teacher is None:
        for p in student.model.parameters():
            p.requires_grad_(True)
    return student.eval()  # the token rows are the teacher: no dropout anywhere


def window_starts(first: torch.Tensor, length: int, windows: int, num_draft: int, g: torch.Generator) -> torch.Tensor:
    """``(B, W)`` starts uniform in ``[first_b, length - N]`` per row."""
    room = (length - num_draft - first + 1).clamp_min(1).to(torch.float64)
    return first.view(-1, 1) + (torch.rand(len(first), windows, generator=g, dtype=torch.float64) * room.view(-1, 1)).long()


def training_batch(spec: RunSpec, student: Student, source: dict[str, torch.Tensor], scale: Scale,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``(tokens, lo, hi, starts)`` of one step for the spec's proposal distribution.

    Every proposal yields ``batch * windows`` windows per step: the student proposal draws one
    window per sequence (its continuation), so it takes ``batch * windows`` sequences.
    """
    tokens, n, t = source["tokens"], spec.num_draft, source["tokens"].shape[1]
    if spec.proposal == "student":
        rows = torch.randint(0, len(tokens), (scale.batch * scale.windows,), generator=g)
        starts = torch.randint(1, t - n + 1, (len(rows),), generator=g)
        sequences, _ = sample_from_student(student, tokens[rows], starts, spec.order, g)
        targets = teacher_targets(student, sequences, sampling(spec.order))  # gate off: the teacher
        return sequences, targets.lo, targets.hi, starts.view(-1, 1)
    rows = torch.randint(0, len(tokens), (scale.batch,), generator=g)
    starts = window_starts(source["first"][rows], t, scale.windows, n, g)
    if spec.proposal == "inverse":
        return tokens[rows], None, None, starts
    return tokens[rows], source["lo"][rows], source["hi"][rows], starts


def train_student(spec: RunSpec, teacher: GPT2LMHeadModel | None, source: dict[str, torch.Tensor], scale: Scale,
                  steps: int, seed: int,
                  after_step: Callable[[int, Student], None] | None = None) -> tuple[Student, dict[str, float]]:
    """Train one student of the suite for ``steps`` steps: Alg. 2 (``PTPObjective``), or for
    ``inverse`` Alg. 3 with every weight learning (``inverse_autoregressive_loss``).
    ``after_step(done, student)`` runs after every step (see ``optimise``)."""
    student = build_student(teacher, spec, scale, seed)
    objective = PTPObjective(loss=spec.loss, beta=spec.beta, windows=scale.windows, sampling=sampling(spec.order))
    params = [p for p in student.parameters() if p.requires_grad]

    def step_loss(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        g = generator(seed, spec.name, step)
        tokens, lo, hi, starts = training_batch(spec, student, source, scale, g)
        if spec.proposal == "inverse":
            return inverse_autoregressive_loss(student, tokens, starts, spec.beta, g, spec.order)
        return objective(student, tokens, lo, hi, starts=starts, generator=g)

    lr = scale.scratch_lr if teacher is None else scale.lr
    hook = (lambda done: after_step(done, student)) if after_step is not None else None
    return student, optimise(params, lr, steps, step_loss, hook)
