"""Figure 5: which two-token output each (u_1, u_2) in the unit square gives, teacher vs students.

The teacher samples the pair autoregressively: ``t_1 = Pick(u_1, Q_1)``, ``t_2 = Pick(u_2, Q(. | t_1))``.
The students predict both in one call (``ptp.parallel_sampling.draft_after``): O-PTP sees
``u_1, u_2`` and can coordinate them; MTP (independent prediction) picks ``t_2`` from a marginal that
does not know ``t_1``.

A pair is *incompatible* when the teacher would continue ``t_1`` with ``t_2`` with probability below
``INCOMPATIBLE_BELOW``: a destination sequence the teacher considers (almost) impossible, as the
paper's ``def sys``. The teacher's own map has incompatible area equal to the mass it gives such
rare continuations, a floor for the students. The context is the held-out prefix (among the first
``CANDIDATES``) whose first two tokens the teacher couples most strongly (largest mutual
information), where independent prediction is most clearly at a loss.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from ptp import Student
from ptp.io import atomic_path
from ptp.parallel_sampling import draft_after
from ptp.sampling import pick, warp

from training import generator, sampling

INCOMPATIBLE_BELOW = 0.02
CANDIDATES = 256


@torch.no_grad()
def pair_distributions(teacher: GPT2LMHeadModel, context: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c,)`` context -> ``Q_1`` ``(V,)`` and ``Q_2`` ``(V, V)`` (row a: next distribution after t_1 = a)."""
    v = teacher.config.vocab_size
    q1 = warp(teacher(context[None]).logits[0, -1], sampling(order))
    rows = torch.cat([context.expand(v, -1), torch.arange(v)[:, None]], dim=1)
    return q1, warp(teacher(rows).logits[:, -1], sampling(order))


def mutual_information(q1: torch.Tensor, q2: torch.Tensor) -> float:
    """I(t_1; t_2) in nats under the teacher."""
    joint = q1[:, None] * q2
    marginal = joint.sum(0, keepdim=True)
    return float(torch.where(joint > 0, joint * (q2 / marginal.clamp_min(1e-300)).log(), 0.0).sum())


def choose_context(teacher: GPT2LMHeadModel, chunks: torch.Tensor, num_draft: int, order: str, seed: int) -> torch.Tensor:
    """The candidate held-out prefix with the most strongly coupled first two tokens."""
    g = generator(seed, "figure5")
    best, context = -1.0, chunks[0, :1]
    for i in range(min(CANDIDATES, len(chunks))):
        c = int(torch.randint(1, chunks.shape[1] - num_draft + 1, (1,), generator=g))
        mi = mutual_information(*pair_distributions(teacher, chunks[i, :c], order))
        if mi > best:
            best, context = mi, chunks[i, :c]
    return context


def grid_u(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres: ``u_1`` varies along columns (x axis), ``u_2`` along rows (y axis); ``(G, G)`` each."""
    axis = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    u2, u1 = torch.meshgrid(axis, axis, indexing="ij")
    return u1, u2


def teacher_map(q1: torch.Tensor, q2: torch.Tensor, size: int, order: str) -> torch.Tensor:
    """``(G, G, 2)`` the teacher's pair at every grid point."""
    u1, u2 = grid_u(size)
    t1 = pick(u1, q1.expand(*u1.shape, -1), order)
    return torch.stack([t1, pick(u2, q2[t1], order)], dim=-1)


def student_map(student: Student, context: torch.Tensor, size: int, order: str) -> torch.Tensor:
    """``(G, G, 2)`` the student's first two drafted tokens at every grid point (later u fixed at 1/2)."""
    u1, u2 = grid_u(size)
    rows = size * size
    u = torch.full((rows, student.num_draft_tokens), 0.5, dtype=torch.float64)
    u[:, 0], u[:, 1] = u1.flatten(), u2.flatten()
    tokens = torch.zeros(rows, len(context) + student.num_draft_tokens, dtype=torch.int64)
    tokens[:, : len(context)] = context
    starts = torch.full((rows,), len(context))
    draft = torch.cat([draft_after(student, tokens[b : b + 4096], starts[b : b + 4096], u[b : b + 4096], order)[0]
                       for b in range(0, rows, 4096)])
    return draft[:, :2].reshape(size, size, 2)


def incompatible(pairs: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """``(G, G)`` bool: the teacher continues t_1 with t_2 with probability below the threshold."""
    return q2[pairs[..., 0], pairs[..., 1]] < INCOMPATIBLE_BELOW


def plot(maps: dict[str, torch.Tensor], bad: dict[str, torch.Tensor], symbols: list[str], context: list[str],
         path: Path) -> None:
    """Three panels as the paper's Figure 5: regions of equal pair, green compatible, red not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import hsv_to_rgb

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.6))
    for ax, (name, pairs) in zip(axes, maps.items()):
        ids = pairs[..., 0] * 64 + pairs[..., 1]
        # Alternate the shade between neighbouring pair ids so that region borders show.
        value = 0.55 + 0.4 * ((ids * 7919) % 13).double() / 12
        hue = torch.where(bad[name], 0.0, 0.33)
        rgb = hsv_to_rgb(torch.stack([hue, torch.full_like(value, 0.75), value], -1).numpy())
        ax.imshow(rgb, origin="lower", extent=(0, 1, 0, 1), interpolation="nearest")
        for pid in ids.unique():
            cells = (ids == pid).nonzero().double()
            if len(cells) >= 0.02 * ids.numel():
                y, x = (cells.mean(0) + 0.5) / ids.shape[0]
                a, b = int(pid) // 64, int(pid) % 64
                ax.text(float(x), float(y), f"{symbols[a]}\n{symbols[b]}", ha="center", va="center", fontsize=6)
        ax.set_title(f"{name}: {100 * float(bad[name].double().mean()):.1f}% incompatible", fontsize=10)
        ax.set_xlabel("$u_1$")
        ax.set_ylabel("$u_2$")
    fig.suptitle("after " + " ".join(context[-6:]), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def figure5(teacher: GPT2LMHeadModel, students: dict[str, Student], chunks: torch.Tensor, symbols: list[str],
            size: int, order: str, seed: int, path: Path) -> dict[str, dict[str, float]]:
    """Draw the figure to ``path``; returns each panel's incompatible share and the share of the
    square where its pair is the teacher's (both tokens correct under the same u)."""
    n = max(s.num_draft_tokens for s in students.values())
    context = choose_context(teacher, chunks, n, order, seed)
    q1, q2 = pair_distributions(teacher, context, order)
    maps = {"teacher": teacher_map(q1, q2, size, order)}
    maps.update({name: student_map(s, context, size, order) for name, s in students.items()})
    bad = {name: incompatible(pairs, q2) for name, pairs in maps.items()}
    names = symbols + ["BOS"]
    plot(maps, bad, names, [names[i] for i in context.tolist()], path)
    return {"incompatible": {name: float(b.double().mean()) for name, b in bad.items()},
            "same_as_teacher": {name: float((pairs == maps["teacher"]).all(-1).double().mean()) for name, pairs in maps.items()}}
