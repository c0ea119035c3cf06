"""Sizes and budgets of the paper suite: ``FULL`` (about 90 minutes on 2 CPU cores) and ``QUICK``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Scale:
    """Everything that sets the size and cost of a suite run (the paper's values in brackets).

    Attributes:
        chunk_len: symbols per training chunk [the paper's N = 100 tokens, no context].
        n_layer, n_embd, n_head: the GPT-2 architecture of teacher and students [4 layers, 29M].
        teacher_steps, teacher_batch, teacher_lr: teacher training (cross-entropy, Eq. 8).
        steps: training steps of every distilled student [150k].
        batch: sequences per student step [32]; windows: split points per sequence.
        lr: peak learning rate of the students' adapters [1e-4 for 150k steps].
        lora_rank, aux_dim: gated-LoRA rank [full fine-tuning of a teacher copy], features of u.
        num_draft: N of every table but Table 8 [100 in Tables 4, 5, 7; 16 in Table 6].
        table8_n: the N of Table 8 [1 .. 100].
        table1_steps, table1_num_draft: budget (steps, same batch) of both Table 1 models, and the
            C-PTP's N; scratch_lr: learning rate of the models trained from scratch there.
        teacher_samples: teacher sequences pregenerated for the ``teacher`` proposal.
        eval_contexts: held-out contexts for #correct [16000 samples].
        table7_contexts, table7_m: contexts and M values of Table 7.
        fig5_grid: grid points per axis of the Figure 5 maps.
        curve_steps, curve_points: the longer runs (O-PTP, C-PTP, MTP trained ``curve_steps``
            steps, #correct measured after each of ``curve_points`` steps).
    """

    chunk_len: int = 64
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    teacher_steps: int = 1500
    teacher_batch: int = 32
    teacher_lr: float = 2e-3
    steps: int = 400
    batch: int = 16
    windows: int = 4
    lr: float = 3e-3
    lora_rank: int = 32
    aux_dim: int = 32
    num_draft: int = 16
    table8_n: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    table1_steps: int = 400
    table1_num_draft: int = 8
    scratch_lr: float = 2e-3
    teacher_samples: int = 4096
    eval_contexts: int = 1024
    table7_contexts: int = 256
    table7_m: tuple[int, ...] = (1, 4, 16, 64)
    fig5_grid: int = 128
    curve_steps: int = 3200
    curve_points: tuple[int, ...] = (200, 400, 800, 1600, 3200)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Scale()
QUICK = replace(FULL, chunk_len=24, n_layer=2, n_embd=32, n_head=2, teacher_steps=40, steps=4, batch=4, windows=2,
                lora_rank=4, aux_dim=16, num_draft=4, table8_n=(1, 2, 4, 8), table1_steps=4, table1_num_draft=2,
                teacher_samples=64, eval_contexts=32, table7_contexts=8, table7_m=(1, 4, 16, 64), fig5_grid=16,
                curve_steps=8, curve_points=(4, 8))
