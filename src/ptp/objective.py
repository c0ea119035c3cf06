"""The PTP training step, independent of any trainer framework.

* Distillation (Alg. 2): the teacher's distributions over a training sequence give, for every token,
  the interval of u that makes the teacher pick it (Eq. 9, ``teacher_targets``); a u is drawn in
  each interval (App. D) and the student's draft slots learn to reproduce the tokens (O-PTP, C-PTP:
  Eqs. 10-11) or the teacher's distributions (C-PTP: Eq. 12).
* Inverse autoregressive training (Alg. 3, C-PTP only): the u are extracted from the student's own
  distributions, one slot at a time (``inverse_autoregressive_u``), so no teacher is needed.

In ptp the teacher is the student with its gate off. A training step makes two calls: the token
rows alone (gate off, no autograd: exact teacher rows, whose logits give the teacher distributions
of Eq. (12) when a loss needs them), then the draft slots over that call's KV cache, with autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .config import SamplingConfig
from .hf_cache import output_cache
from .losses import get_loss
from .masks import training_layout
from .metrics import decode_accepted, num_accepted, num_correct
from .sampling import pick, sample_in_interval, token_interval, warp
from .student import Student

__all__ = [
    "TeacherTargets",
    "teacher_targets",
    "sample_starts",
    "window_positions",
    "gather_windows",
    "draft_inputs",
    "inverse_autoregressive_u",
    "PTPObjective",
    "SlotDrafts",
]


class TeacherTargets(NamedTuple):
    """Per-token teacher facts of a batch of sequences.

    Attributes:
        lo, hi: ``(B, T)`` float64, the u-interval ``[lo, hi)`` that picks each token (Eq. 9).
            Position 0 has no teacher distribution: ``[0, 1)``, and it is never a window target.
        probs: ``(B, T, V)`` float64 warped teacher distributions Q (NaN at position 0), or None.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    probs: torch.Tensor | None


@torch.no_grad()
def teacher_targets(
    student: Student, tokens: torch.Tensor, sampling: SamplingConfig, with_probs: bool = False
) -> TeacherTargets:
    """One gate-off forward (the teacher) over ``(B, T)`` tokens -> their u-intervals (Eq. 9)."""
    return _targets_from_logits(student(tokens).logits, tokens, sampling, with_probs)


def _targets_from_logits(logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig,
                         with_probs: bool) -> TeacherTargets:
    """``(B, T, V)`` teacher logits of ``(B, T)`` tokens -> their u-intervals.

    ``Q_k = warp(logits at k - 1)`` is the distribution the teacher samples token k from.
    """
    probs = warp(logits[:, :-1], sampling)  # (B, T-1, V): Q_1 .. Q_{T-1}
    lo, hi = token_interval(probs, tokens[:, 1:], sampling.order)
    lo = F.pad(lo, (1, 0), value=0.0)
    hi = F.pad(hi, (1, 0), value=1.0)
    return TeacherTargets(lo, hi, F.pad(probs, (0, 0, 1, 0), value=float("nan")) if with_probs else None)


@torch.no_grad()
def sample_starts(
    batch: int,
    seq_len: int,
    windows: int,
    num_draft: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(B, W)`` window starts, uniform in ``[1, seq_len - num_draft]``.

    Each window needs at least one context token before it and ``num_draft`` tokens to predict.
    """
    if seq_len < num_draft + 1:
        raise ValueError(
            f"sequences of {seq_len} tokens are too short for {num_draft} draft tokens: "
            f"use sequences of at least {num_draft + 1} tokens or fewer draft tokens"
        )
    return torch.randint(1, seq_len - num_draft + 1, (batch, windows), generator=generator, device=device)


def window_positions(starts: torch.Tensor, num_draft: int) -> torch.Tensor:
    """``(B, W)`` starts -> ``(B, W, N)`` positions of the tokens each window predicts."""
    return starts[..., None] + torch.arange(num_draft, device=starts.device)


def gather_windows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(B, T, ...)`` per-token values at ``(B, W, N)`` positions -> ``(B, W, N, ...)``."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[batch, positions.to(x.device)]


def draft_inputs(
    student: Student, tokens: torch.Tensor, starts: torch.Tensor, token_u: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Keyword arguments of ``student(...)`` for tokens followed by W windows of N draft slots.

    Args:
        tokens: ``(B, T)`` token ids (token rows, gate off).
        starts: ``(B, W)`` window starts (see ``training_layout``).
        token_u: ``(B, W, N)`` u of the tokens each window predicts (NaN where not known yet);
            ``student.slot_u`` turns them into the u each slot carries for the student's mode.
    Returns:
        ``input_ids``, ``draft``, ``u``, ``position_ids``, ``visible``, rows ``T + W * N`` long.
    """
    b, t = tokens.shape
    w, n = token_u.shape[1:]
    visible, position_ids, draft = training_layout(t, starts.cpu(), n)
    device = tokens.device
    token_rows_u = torch.full((b, t), float("nan"), dtype=torch.float64, device=device)
    return {
        "input_ids": F.pad(tokens, (0, w * n)),  # ids of draft rows are ignored
        "draft": draft.to(device),
        "u": torch.cat([token_rows_u, student.slot_u(token_u).flatten(1).to(device)], dim=1),
        "position_ids": position_ids.to(device),
        "visible": visible.to(device),
    }


@torch.no_grad()
def _context(student: Student, tokens: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor | None, Any]:
    """The token rows alone, gate off and without autograd: ``(B, T, V)`` teacher logits (or None)
    and the KV cache the draft slots attend to.

    Token rows hold no trainable weight and slots never feed back into them, so they need no
    backward pass; with the logits skipped too this makes a training step about twice as cheap
    as one call over all rows.
    """
    out = student(tokens, use_cache=True, logits_to_keep=0 if with_logits else 1)
    return (out.logits if with_logits else None), output_cache(out)


def _slot_logits(student: Student, context: Any, tokens: torch.Tensor, starts: torch.Tensor,
                 token_u: torch.Tensor) -> torch.Tensor:
    """Draft slots continuing the ``_context`` cache of ``tokens`` -> slot logits ``(B, W, N, V)``.

    The cache is cropped back to the token rows afterwards, so it serves several slot passes.
    """
    t = tokens.shape[1]
    slots = {k: v[:, t:] for k, v in draft_inputs(student, tokens, starts, token_u).items()}
    logits = student(**slots, past_key_values=context, use_cache=True).logits
    context.crop(t - context.get_seq_length())
    return logits.unflatten(1, token_u.shape[1:])


@torch.no_grad()
def inverse_autoregressive_u(
    student: Student,
    tokens: torch.Tensor,
    starts: torch.Tensor,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    order: str = "rank",
) -> torch.Tensor:
    """Algorithm 3: u of every window token from the student's own distributions, slot by slot.

    For ``k = 0 .. N-1``, slot k's distribution ``P_k = softmax(logits)`` given ``u_0 .. u_{k-1}``
    (extracted in the previous steps) yields the interval of ``u_k`` that picks the data token
    (Eq. 9), in which ``u_k`` is drawn with Beta(beta, beta) (App. D). N calls of the slot rows
    over one context pass, laid out as the final training forward, which so computes the very same
    slot logits (slots after k cannot influence slot k, whatever u they carry).

    Args:
        tokens: ``(B, T)`` data tokens; starts: ``(B, W)`` window starts.
        order: the sampler's token order (``SamplingConfig.order``).
    Returns:
        ``(B, W, N)`` float64 u with ``pick(u_k, P_k, order) == t_k`` for every slot.
    """
    if student.mode == "o-ptp":
        raise ValueError("inverse autoregressive training needs a distribution per slot: use mode c-ptp (or mtp)")
    _, context = _context(student, tokens, with_logits=False)
    return _inverse_u(student, context, tokens, starts, beta, generator, order)


@torch.no_grad()
def _inverse_u(student: Student, context: Any, tokens: torch.Tensor, starts: torch.Tensor, beta: float,
               generator: torch.Generator | None, order: str) -> torch.Tensor:
    """``inverse_autoregressive_u`` over the ``_context`` cache of ``tokens``."""
    n = student.num_draft_tokens
    targets = gather_windows(tokens, window_positions(starts, n))
    token_u = torch.full(targets.shape, float("nan"), dtype=torch.float64, device=tokens.device)
    for k in range(n):
        slot_logits = _slot_logits(student, context, tokens, starts, token_u)
        # float64 softmax, exactly as Student.draft_tokens, so the picks agree bit for bit.
        lo, hi = token_interval(slot_logits[:, :, k].to(torch.float64).softmax(-1), targets[:, :, k], order)
        token_u[:, :, k] = sample_in_interval(lo, hi, beta, generator)
    return token_u


class SlotDrafts(NamedTuple):
    """What ``PTPObjective.drafts`` computes for a batch of W windows of N slots per sequence.

    Attributes:
        loss: scalar, with gradient for the student's adapter.
        metrics: ``{"loss": float}`` and whatever else the loss reports.
        drafted: ``(B, W, N)`` the student's draft tokens.
        teacher: ``(B, W, N)`` the teacher's tokens under the same u (-1 where it has none).
    """

    loss: torch.Tensor
    metrics: dict[str, float]
    drafted: torch.Tensor
    teacher: torch.Tensor


@dataclass
class PTPObjective:
    """Loss and metrics of one training batch (Alg. 2, or Alg. 3 with ``inverse_autoregressive``).

    Attributes:
        loss: ``ce`` (Eqs. 10-11), ``kl``, ``rev-kl`` or ``bce`` (Eq. 12, Tables 4-5). O-PTP's
            target is the one-hot of the token; C-PTP and MTP distributional losses target the
            teacher's warped distribution Q.
        beta: u is drawn in its interval as ``lo + Beta(beta, beta) (hi - lo)`` (App. D).
        windows: W, draft windows per sequence (each N slots, sharing the sequence's forward).
        sampling: the teacher's sampling distribution (temperature, top-k, top-p) of Eq. (1).
        inverse_autoregressive: extract u from the student itself (Alg. 3) instead of the teacher.
    """

    loss: str = "ce"
    beta: float = 1.0
    windows: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    inverse_autoregressive: bool = False

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r} is invalid: use a value > 0 (1 draws u uniformly)")
        if int(self.windows) != self.windows or self.windows < 1:
            raise ValueError(f"windows={self.windows!r} is invalid: use an integer >= 1")

    def __call__(
        self,
        student: Student,
        tokens: torch.Tensor,
        lo: torch.Tensor | None = None,
        hi: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (with gradient for the student's adapter) and float metrics of a batch.

        Args: as ``drafts``.
        Returns:
            ``(loss, {"loss", "correct", "accepted", "decode_accepted"})``: #correct (Eq. 16) and
            #accepted (Eq. 17) averaged over windows, comparing the student's draft with the
            teacher's picks under the same u; ``decode_accepted`` is the tokens per call a
            single-pass decoder gets from the window (1 + matching prefix of slots 1..N-1).
        """
        loss, metrics, drafted, teacher_tokens = self.drafts(student, tokens, lo, hi, starts, generator)
        correct = num_correct(drafted, teacher_tokens)
        metrics["correct"] = float(correct.double().mean())
        metrics["accepted"] = float(num_accepted(correct, student.num_draft_tokens).double().mean())
        metrics["decode_accepted"] = float(decode_accepted(drafted, teacher_tokens).double().mean())
        return loss, metrics

    def drafts(
        self,
        student: Student,
        tokens: torch.Tensor,
        lo: torch.Tensor | None = None,
        hi: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> "SlotDrafts":
        """The loss of a batch and, per window and slot, the student's draft and the teacher's token.

        Args:
            student: the student; its mode selects O-PTP, C-PTP or MTP (App. H: C-PTP's loss with
                uninformative u, which ``Student.slot_u`` provides).
            tokens: ``(B, T)`` training sequences.
            lo, hi: ``(B, T)`` precomputed u-intervals (``teacher_targets``); computed if None.
                Ignored with ``inverse_autoregressive``.
            starts: ``(B, W)`` window starts; drawn uniformly if None.
            generator: for starts and u.
        """
        if (lo is None) != (hi is None):
            raise ValueError("pass both lo and hi (from teacher_targets) or neither")
        n = student.num_draft_tokens
        tokens = tokens.to(student.device)
        if starts is None:
            starts = sample_starts(tokens.shape[0], tokens.shape[1], self.windows, n, generator, tokens.device)
        positions = window_positions(starts.to(tokens.device), n)
        window_tokens = gather_windows(tokens, positions)  # (B, W, N)

        needs_q = self.inverse_autoregressive or (self.loss != "ce" and student.mode != "o-ptp")
        needs_intervals = lo is None and not self.inverse_autoregressive
        token_logits, context = _context(student, tokens, with_logits=needs_q or needs_intervals)
        if self.inverse_autoregressive:
            token_u = _inverse_u(student, context, tokens, starts, self.beta, generator, self.sampling.order)
            valid = torch.ones_like(window_tokens, dtype=torch.bool)
        else:
            if lo is None:
                lo, hi, _ = _targets_from_logits(token_logits, tokens, self.sampling, with_probs=False)
            lo_w = gather_windows(lo.to(tokens.device), positions)
            hi_w = gather_windows(hi.to(tokens.device), positions)
            token_u = sample_in_interval(lo_w, hi_w, self.beta, generator)
            # A token the teacher cannot pick (empty interval) has no u encoding it: it and the
            # rest of its window, which would condition on that u, are left out.
            valid = (hi_w > lo_w).long().cumprod(-1).bool()

        slot_logits = _slot_logits(student, context, tokens, starts, token_u)
        # Q_k from token row k - 1: gate-off rows are exact teacher rows.
        q = warp(gather_windows(token_logits, positions - 1), self.sampling) if needs_q else None

        if self.loss == "ce":
            target = window_tokens
        elif student.mode == "o-ptp":
            target = F.one_hot(window_tokens, slot_logits.shape[-1]).to(torch.float64)
        else:
            target = q
        loss, metrics = get_loss(self.loss)(slot_logits.flatten(1, 2), target.flatten(1, 2), valid.flatten(1))

        # Teacher's tokens under the same u. Distillation: the window's own tokens by construction
        # (-1, never matched, where the teacher cannot pick them). Inverse autoregressive: the u
        # come from the student, so ask the teacher; its context is right up to the first miss,
        # which is all Eq. (16) looks at.
        order = self.sampling.order
        teacher_tokens = pick(token_u, q, order) if self.inverse_autoregressive else torch.where(valid, window_tokens, -1)
        drafted = student.draft_tokens(slot_logits.detach(), token_u, order)
        return SlotDrafts(loss, metrics, drafted, teacher_tokens)
