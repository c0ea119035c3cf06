"""Held-out measurements of the paper suite: #correct (Eq. 16), Eq. (18) selection, perplexity.

#correct compares the student's one-call draft with the teacher's own autoregressive sample under
the same u, from held-out contexts (prefixes of test-split chunks, aircraft never trained on): the
tokens the teacher would sample, step by step, versus the tokens the student predicts at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel

from ptp import Student
from ptp.metrics import num_accepted, num_correct
from ptp.objective import draft_inputs, gather_windows, inverse_autoregressive_u, window_positions
from ptp.parallel_sampling import draft_after
from ptp.pregenerate import sample_completions
from ptp.selection import select_central

from training import generator, sampling, window_starts

ROWS_PER_CALL = 1024


@dataclass
class EvalSet:
    """Held-out contexts, M draws of u per context and the teacher's samples under them.

    Attributes:
        tokens: ``(E, T)`` contexts, zero after each one (never seen by draft slots anyway).
        starts: ``(E,)`` context lengths.
        u: ``(M, E, N)`` float64 auxiliary variables; teacher: ``(M, E, N)`` its tokens under them;
        lo, hi: ``(M, E, N)`` the teacher's u-interval of each of its tokens (for Eq. 18).
    """

    tokens: torch.Tensor
    starts: torch.Tensor
    u: torch.Tensor
    teacher: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


@torch.no_grad()
def build_eval_set(teacher: GPT2LMHeadModel, chunks: torch.Tensor, contexts: int, draws: int, num_draft: int,
                   order: str, seed: int) -> EvalSet:
    """``contexts`` prefixes of the test chunks (cycled), each with ``draws`` u draws of N tokens."""
    g = generator(seed, "eval", contexts, draws, order)
    t = chunks.shape[1]
    starts = torch.randint(1, t - num_draft + 1, (contexts,), generator=g)
    tokens = chunks[torch.arange(contexts) % len(chunks)].clone()
    tokens[torch.arange(t) >= starts.view(-1, 1)] = 0
    u = torch.rand(draws, contexts, num_draft, dtype=torch.float64, generator=g)
    prompts = [tokens[e, : starts[e]].tolist() for e in range(contexts)] * draws
    flat = u.flatten(0, 1)
    samples = []
    for b in range(0, len(prompts), ROWS_PER_CALL):
        samples += sample_completions(teacher, prompts[b : b + ROWS_PER_CALL], flat[b : b + ROWS_PER_CALL], sampling(order), set())
    teacher_tokens, lo, hi = (torch.stack([s[i] for s in samples]).view(draws, contexts, num_draft) for i in range(3))
    return EvalSet(tokens, starts, u, teacher_tokens, lo, hi)


def drafts(student: Student, es: EvalSet, u: torch.Tensor, order: str) -> torch.Tensor:
    """``(M, E, N')`` u (N' >= the student's N) -> ``(M, E, N)`` the student's one-call drafts."""
    n = student.num_draft_tokens
    m, e = u.shape[:2]
    flat_u = u[..., :n].flatten(0, 1)
    rows = torch.arange(m * e) % e
    out = [draft_after(student, es.tokens[rows[b : b + ROWS_PER_CALL]], es.starts[rows[b : b + ROWS_PER_CALL]],
                       flat_u[b : b + ROWS_PER_CALL], order)[0] for b in range(0, m * e, ROWS_PER_CALL)]
    return torch.cat(out).view(m, e, n)


def correct(student: Student, es: EvalSet, order: str, u: torch.Tensor | None = None) -> torch.Tensor:
    """``(M, E)`` #correct (Eq. 16) of the student's drafts against the teacher under the same u
    (``u``: the first M of the set's draws, or other u inside the same teacher intervals)."""
    n, u = student.num_draft_tokens, es.u if u is None else u
    return num_correct(drafts(student, es, u, order), es.teacher[: u.shape[0], :, :n])


def summary(values: torch.Tensor, num_draft: int) -> dict[str, float]:
    """Mean #correct with its standard error, and mean #accepted (Eq. 17)."""
    x = values.double().flatten()
    return {"correct": float(x.mean()), "sem": float(x.std() / math.sqrt(len(x))) if len(x) > 1 else 0.0,
            "accepted": float(num_accepted(values.flatten(), num_draft).double().mean())}


def first_slot_share(values: torch.Tensor) -> float:
    """Share of drafts whose first token is right (#correct >= 1)."""
    return float((values >= 1).double().mean())


@torch.no_grad()
def argmax_share(teacher: GPT2LMHeadModel, es: EvalSet) -> float:
    """Share of the set's first teacher tokens that are the teacher's most likely token: what a
    first slot that ignored u and predicted the argmax would get right."""
    logits = torch.cat([teacher(x).logits for x in es.tokens.split(ROWS_PER_CALL)])
    last = logits[torch.arange(len(es.starts)), es.starts - 1]
    return float((last.argmax(-1) == es.teacher[0, :, 0]).double().mean())


def parallel_selection(student: Student, es: EvalSet, ms: tuple[int, ...], order: str) -> dict[str, dict[str, float]]:
    """Table 7: #correct when the best of M draws is chosen by Eq. (18), per M, and the M -> inf limit
    (every u moved to the midpoint of the teacher's interval of its token)."""
    n = student.num_draft_tokens
    every = correct(student, es, order)  # (M_max, E)
    contexts = torch.arange(every.shape[1])
    out = {}
    for m in ms:
        chosen = select_central(es.u[:m, :, :n], es.lo[:m, :, :n], es.hi[:m, :, :n])
        out[str(m)] = summary(every[chosen, contexts], n)
    middle = (es.lo[:1] + es.hi[:1]) / 2
    out["inf"] = summary(correct(student, es, order, u=middle), n)
    return out


@torch.no_grad()
def autoregressive_perplexity(model: GPT2LMHeadModel, chunks: torch.Tensor) -> float:
    """Test perplexity of an autoregressive model over every position of the chunks."""
    nll = [torch.nn.functional.cross_entropy(model(x).logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
           for x in chunks.split(64)]
    return math.exp(float(sum(nll)) / (chunks.shape[0] * (chunks.shape[1] - 1)))


@torch.no_grad()
def perplexities(ar: GPT2LMHeadModel, cptp: Student, chunks: torch.Tensor, windows: int, order: str,
                 seed: int) -> dict[str, float]:
    """Table 1: test perplexity of the autoregressive model and of the C-PTP on the same tokens.

    The C-PTP predicts token k of a window from the context and ``u_i .. u_{k-1}`` (Eq. 11), its u
    extracted from its own distributions (Alg. 3); the autoregressive model from all tokens before k.
    """
    n, t = cptp.num_draft_tokens, chunks.shape[1]
    g = generator(seed, "perplexity")
    starts = window_starts(torch.ones(len(chunks), dtype=torch.int64), t, windows, n, g)
    ar_nll, cptp_nll = [], []
    for b in range(0, len(chunks), 64):
        x, s = chunks[b : b + 64], starts[b : b + 64]
        positions = window_positions(s, n)
        targets = gather_windows(x, positions).unsqueeze(-1)  # (B, W, N, 1)
        log_p = ar(x).logits.log_softmax(-1)
        ar_nll.append(-gather_windows(log_p, positions - 1).gather(-1, targets))
        u = inverse_autoregressive_u(cptp, x, s, 1.0, g, order)
        slot_logits = cptp(**draft_inputs(cptp, x, s, u)).logits[:, t:].unflatten(1, (windows, n))
        cptp_nll.append(-slot_logits.log_softmax(-1).gather(-1, targets))
    mean_exp = lambda parts: math.exp(float(torch.cat([p.flatten() for p in parts]).double().mean()))  # noqa: E731
    return {"ar": mean_exp(ar_nll), "c-ptp": mean_exp(cptp_nll), "ar_all_positions": autoregressive_perplexity(ar, chunks),
            "tokens": int(sum(p.numel() for p in ar_nll))}
