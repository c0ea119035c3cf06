"""``ptp train``'s data: training streams and held-out batches for both kinds of student.

Gated-LoRA students (``load_examples``):

* ``completions``: the pregenerated shards, prompt + completion tokens with the stored u-intervals
  ``lo``/``hi``, so the teacher is only needed for the teacher rows of the training forward itself;
* ``text``: the dataset's text in ``seq_len`` chunks; u-intervals from the teacher (``teacher_targets``);
* ``inverse``: the same chunks; u from the student itself (Alg. 3).

Draft heads (``load_head_examples``): the cached features of the completions (``ptp.head_data``),
batched by ``ptp.head_training.collate_windows``, so no teacher layer runs in a step.

The last ``val_examples`` examples are held out for validation; examples too short to hold one
window of N tokens are skipped.

Batching: examples are right-padded to the longest of the batch (never cropped: cropping the
front of a completion's context would change the distributions its u-intervals were computed
from). Right padding needs no attention mask: token rows are causal and draft slots see only the
tokens before their window, and every window lies inside one example's real tokens.

Randomness: step ``s`` of a run on ``world`` processes takes the global batch of rows at positions
``s * world * B .. (s + 1) * world * B - 1`` of an endless stream of passes over the data (each pass
a fresh permutation); rank ``r`` takes the ``r``-th B of them. A row's windows and u come from a
seed of its stream position alone, so a step's global batch is the same on any number of processes
(split between them), and a run resumed at the trainer's ``global_step`` continues exactly where
the uninterrupted run would be. (Text and inverse modes draw u inside the objective, from a seed
of the rank's first row: exact on resume, but not across process counts.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, IterableDataset

from .data import load_rows, text_sequences
from .errors import UserError
from .experiment import Experiment
from .head_data import load_features
from .head_training import collate_windows, draw_starts, evaluation_batches, valid_starts
from .models import load_tokenizer
from .pregenerate import load_shards
from .sampling import sample_in_interval

Row = tuple[Any, int]  # an example and the seed of its stream position


def say(message: str) -> None:
    """One line for the user on stderr (rank 0 only)."""
    if rank_zero_only.rank == 0:
        print(f"ptp train: {message}", file=sys.stderr, flush=True)


def derived_seed(*parts: Any) -> int:
    """An independent 63-bit seed per tuple of parts (a hash: no overlap between nearby tuples)."""
    digest = hashlib.sha256(("ptp-train:" + ":".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One training sequence of a gated-LoRA student.

    Attributes:
        tokens: ``(T,)`` int64 token ids.
        first: earliest window start (the first completion token, or 1 in text modes).
        lo, hi: ``(T,)`` float64 u-interval of each token (completions mode), else None.
    """

    tokens: torch.Tensor
    first: int
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None

    def num_starts(self, num_draft: int) -> int:
        """How many window positions of ``num_draft`` tokens fit in ``[first, T)``."""
        return len(self.tokens) - num_draft - self.first + 1


def split_examples(examples: list[Any], val_examples: int, num_draft: int, fits: Callable[[Any], bool], unit: str,
                   directory: Path, too_short: str) -> tuple[list[Any], list[Any]]:
    """The last ``val_examples`` held out; both parts keep only examples that ``fits``.

    Raises:
        UserError: not more examples than ``val_examples``, or no training example fits
            (``too_short`` says why and what to change).
    """
    split = len(examples) - val_examples
    if split < 1:
        raise UserError(f"{directory} has {len(examples)} {unit}, not more than val_examples={val_examples}: "
                        "lower val_examples in experiment.yaml or use more data")
    train, val = ([e for e in part if fits(e)] for part in (examples[:split], examples[split:]))
    if not train:
        raise UserError(too_short)
    skipped = len(examples) - len(train) - len(val)
    if skipped:
        say(f"skipping {skipped} of {len(examples)} {unit} too short for a window of {num_draft} draft tokens")
    return train, val


def load_examples(directory: Path, experiment: Experiment) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples of a gated-LoRA experiment, each holding at least one window.

    Raises:
        UserError: no pregenerated data (completions), too little data, or no example long enough.
    """
    data, n = experiment.data, experiment.model.num_draft_tokens
    if data.data_mode == "completions":
        examples = [Example(e["tokens"], max(1, e["prompt_len"]), e["lo"], e["hi"]) for e in load_shards(directory)]
        unit = "examples"
    else:
        tokenizer = load_tokenizer(experiment.model.teacher, trust_remote_code=experiment.model.trust_remote_code)
        chunks = text_sequences(load_rows(data), data, tokenizer)
        examples = [Example(torch.tensor(c, dtype=torch.int64), 1) for c in chunks]
        unit = "text chunks"
    what = "completions" if data.data_mode == "completions" else "sequences"
    return split_examples(examples, data.val_examples, n, lambda e: e.num_starts(n) >= 1, unit, directory,
                          f"no training example has {what} of {n + 1}+ tokens to hold a window of num_draft_tokens={n}: "
                          "lower num_draft_tokens or use longer completions / seq_len")


def load_head_examples(directory: Path, experiment: Experiment, layer: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out feature sequences of a head experiment (``ptp.features`` dicts), each
    holding at least one window: a bonus token followed by N tokens with u intervals."""
    n = experiment.model.num_draft_tokens
    examples = load_features(directory, experiment, layer)
    return split_examples(examples, experiment.data.val_examples, n, lambda e: valid_starts(e["lo"], e["hi"], n).numel() > 0,
                          "sequences", directory, f"no training sequence has a completion of {n + 1}+ tokens to hold a "
                          f"window of num_draft_tokens={n}: lower num_draft_tokens or use longer completions")


# ---------------------------------------------------------------------------------------- batches


def collate(examples: list[Example], starts: torch.Tensor, seed: int) -> dict[str, Any]:
    """Right-padded batch of a gated-LoRA student.

    Returns:
        ``tokens`` ``(B, T)`` int64 (padding 0); ``starts`` ``(B, W)`` int64; ``seed`` (int) of the
        batch's u; in completions mode ``lo_bits``/``hi_bits`` ``(B, T)``: the float64 intervals
        as int64 bit patterns, because precision plugins cast every float input (``bf16-true``
        would round them away).
    """
    width = max(len(e.tokens) for e in examples)
    tokens = torch.zeros(len(examples), width, dtype=torch.int64)
    for row, e in enumerate(examples):
        tokens[row, : len(e.tokens)] = e.tokens
    batch: dict[str, Any] = {"tokens": tokens, "starts": starts, "seed": seed}
    if examples[0].lo is not None:
        for name in ("lo", "hi"):
            bounds = torch.zeros(len(examples), width, dtype=torch.float64)
            for row, e in enumerate(examples):
                bounds[row, : len(e.tokens)] = getattr(e, name)
            batch[f"{name}_bits"] = bounds.view(torch.int64)
    return batch


def sample_starts(examples: list[Example], windows: int, num_draft: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, W)`` window starts, uniform over the windows that fit in each example's ``[first, T)``."""
    return torch.stack([
        torch.randint(e.first, e.first + e.num_starts(num_draft), (windows,), generator=generator) for e in examples
    ])


def pin_u(lo: torch.Tensor, hi: torch.Tensor, beta: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T,)`` u intervals -> intervals ``[u, next float after u)`` around a u drawn in each.

    Such an interval holds one float64, so the objective's own draw in it returns exactly this u:
    a row's u are then fixed by its seed, whatever batch (or process) it lands in. Empty and NaN
    intervals (no target) are kept as they are.
    """
    target = hi > lo  # False for NaN
    u = sample_in_interval(torch.where(target, lo, 0.0), torch.where(target, hi, 1.0), beta, generator)
    return torch.where(target, u, lo), torch.where(target, torch.nextafter(u, torch.ones_like(u)), hi)


def training_batch(rows: list[Row], windows: int, num_draft: int, beta: float) -> dict[str, Any]:
    """A gated-LoRA training batch: each row's windows (and, in completions mode, u) from its own seed."""
    generators = [torch.Generator().manual_seed(seed) for _, seed in rows]
    examples = [e for e, _ in rows]
    starts = torch.cat([sample_starts([e], windows, num_draft, g) for e, g in zip(examples, generators)])
    if examples[0].lo is not None:
        examples = [dataclasses.replace(e, **dict(zip(("lo", "hi"), pin_u(e.lo, e.hi, beta, g))))
                    for e, g in zip(examples, generators)]
    return collate(examples, starts, derived_seed(rows[0][1], "u"))


def validation_batches(examples: list[Example], batch_size: int, total_windows: int, num_draft: int, seed: int,
                       rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """Rank ``rank``'s fixed held-out batches of a gated-LoRA student (same windows and u at every
    validation).

    Every example gets ``ceil(total_windows / len(examples))`` windows; ranks take every
    ``world``-th example (all of them if there are fewer examples than ranks).
    """
    if not examples:
        return []
    windows = math.ceil(total_windows / len(examples))
    starts = sample_starts(examples, windows, num_draft, torch.Generator().manual_seed(derived_seed(seed, "val")))
    mine = list(range(rank, len(examples), world)) if len(examples) >= world else list(range(len(examples)))
    batches = []
    for i in range(0, len(mine), batch_size):
        rows = mine[i : i + batch_size]
        batches.append(collate([examples[j] for j in rows], starts[rows], derived_seed(seed, "val-u", rows[0])))
    return batches


def _u_as_bits(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A head batch with its float64 ``u`` as int64 ``u_bits`` (precision plugins cast float inputs)."""
    return {**{k: v for k, v in batch.items() if k != "u"}, "u_bits": batch["u"].view(torch.int64)}


def head_training_batch(rows: list[Row], windows: int, num_draft: int, beta: float) -> dict[str, torch.Tensor]:
    """A head training batch (``collate_windows``): each row's windows and u from its own seed."""
    generators = [torch.Generator().manual_seed(seed) for _, seed in rows]
    chosen = [(e, draw_starts(e, windows, num_draft, g)) for (e, _), g in zip(rows, generators)]
    return _u_as_bits(collate_windows(chosen, num_draft, generators, beta))


def head_validation_batches(examples: list[dict], total_windows: int, num_draft: int, seed: int, rank: int = 0,
                            world: int = 1) -> list[dict[str, torch.Tensor]]:
    """Rank ``rank``'s share of ``ptp.head_training.evaluation_batches`` (one held-out sequence each,
    ``ceil(total_windows / len(examples))`` windows, the same at every validation)."""
    if not examples:
        return []
    batches = evaluation_batches(examples, math.ceil(total_windows / len(examples)), num_draft, derived_seed(seed, "val"))
    # With fewer batches than ranks every rank takes all: sums grow alike, their ratios stay.
    mine = batches[rank::world] if len(batches) >= world else batches
    return [_u_as_bits(b) for b in mine]


# ---------------------------------------------------------------------------------------- streams


class TrainStream(IterableDataset):
    """The batches of steps ``start() .. steps - 1`` for one rank, each a pure function of its step.

    Step ``s`` on rank ``r`` of ``world`` takes the examples at positions
    ``(s * world + r) * B ..`` of an endless stream of passes over the data, each pass a fresh
    permutation, and ``build``s a batch from them with the seeds of their positions.
    """

    def __init__(self, examples: list[Any], batch_size: int, seed: int, steps: int, start: Callable[[], int],
                 build: Callable[[list[Row]], dict[str, Any]], rank: int = 0, world: int = 1) -> None:
        self.examples, self.batch_size, self.seed, self.steps, self.start = examples, batch_size, seed, steps, start
        self.build, self.rank, self.world = build, rank, world
        self._order: tuple[int, list[int]] = (-1, [])

    def example_at(self, position: int) -> Any:
        epoch, index = divmod(position, len(self.examples))
        if self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch))
            self._order = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
        return self.examples[self._order[1][index]]

    def batch(self, step: int) -> dict[str, Any]:
        first = (step * self.world + self.rank) * self.batch_size
        positions = range(first, first + self.batch_size)
        return self.build([(self.example_at(p), derived_seed(self.seed, "row", p)) for p in positions])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Read when iteration begins, i.e. after Lightning restored a checkpoint's step count.
        for step in range(self.start(), self.steps):
            yield self.batch(step)


class PTPDataModule(L.LightningDataModule):
    """Training stream and held-out batches; every rank builds its own share (no sampler needed).

    ``build`` makes a training batch from rows; ``validation(rank, world)`` gives a rank's batches.
    """

    def __init__(self, train: list[Any], batch_size: int, seed: int, build: Callable[[list[Row]], dict[str, Any]],
                 validation: Callable[[int, int], list[dict[str, Any]]]) -> None:
        super().__init__()
        self.train_examples, self.batch_size, self.seed, self.build, self.validation = train, batch_size, seed, build, validation

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        stream = TrainStream(self.train_examples, self.batch_size, self.seed, trainer.max_steps, lambda: trainer.global_step,
                             self.build, trainer.global_rank, trainer.world_size)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation(self.trainer.global_rank, self.trainer.world_size), batch_size=None)
