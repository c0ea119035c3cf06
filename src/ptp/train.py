"""``ptp train``: the PTP objective (``ptp.objective``) on PyTorch Lightning, resumable and interrupt-safe.

Data (``load_examples``):

* ``completions``: the pregenerated shards, prompt + completion tokens with the stored u-intervals
  ``lo``/``hi``, so the teacher is only needed for the teacher rows of the training forward itself;
* ``text``: the dataset's text in ``seq_len`` chunks; u-intervals from the teacher (``teacher_targets``);
* ``inverse``: the same chunks; u from the student itself (Alg. 3).

The last ``val_examples`` examples (or chunks) are held out for validation.

Batching: examples are right-padded to the longest of the batch (never cropped: cropping the
front of a completion's context would change the distributions its u-intervals were computed
from). Right padding needs no attention mask: token rows are causal and draft slots see only the
tokens before their window, and every window lies inside one example's real tokens (in its
completion, for completions mode). Examples too short to hold one window of N tokens are skipped.

Randomness: the example order (a permutation per pass over the data), the window starts and the
u of step ``s`` on rank ``r`` all come from seeds derived from (experiment seed, s, r), and the
training stream starts at the trainer's ``global_step``. A run resumed from a checkpoint therefore
continues exactly where the uninterrupted run would be: same data, same u, same final weights.

Checkpoints (``DIR/checkpoints``, written through ``ptp.io.atomic_path``, so a kill mid-write
leaves the previous file intact): ``step-XXXXXXXX.ckpt`` every ``checkpoint_every`` steps (the
``keep_checkpoints`` newest kept), ``last.ckpt`` (the newest state, also written on Ctrl-C and at
the end) and ``best.ckpt`` (highest validation #correct). They are Lightning checkpoints holding
only the trainable weights (gated LoRA + auxiliary embedding), the optimizer, scheduler and loop
progress, and the run's OptimConfig; they are read with ``torch.load(weights_only=True)``. A
damaged checkpoint is skipped, with a note; a run resumes from the readable one with the most steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import pickle
import signal
import sys
import threading
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, IterableDataset

from .data import check_context, load_rows, text_sequences
from .errors import UserError
from .experiment import Experiment, OptimConfig, TrainerConfig
from .io import atomic_path, remove_stale_temps
from .models import load_teacher, load_tokenizer
from .objective import PTPObjective
from .pregenerate import load_shards
from .student import Student

CHECKPOINT_DIR = "checkpoints"
STUDENT_DIR = "student"
LAST, BEST = "last.ckpt", "best.ckpt"
CHECKPOINT_FORMAT = "ptp-train-1"
MONITOR = "val/correct"


def _say(message: str) -> None:
    """One line for the user on stderr (rank 0 only)."""
    if rank_zero_only.rank == 0:
        print(f"ptp train: {message}", file=sys.stderr, flush=True)


def derived_seed(*parts: Any) -> int:
    """An independent 63-bit seed per tuple of parts (a hash: no overlap between nearby tuples)."""
    digest = hashlib.sha256(("ptp-train:" + ":".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training sequence.

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


def load_examples(directory: Path, experiment: Experiment) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples of an experiment, each holding at least one window.

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
    split = len(examples) - data.val_examples
    if split < 1:
        raise UserError(f"{directory} has {len(examples)} {unit}, not more than val_examples={data.val_examples}: "
                        "lower val_examples in experiment.yaml or use more data")
    train, val = ([e for e in part if e.num_starts(n) >= 1] for part in (examples[:split], examples[split:]))
    skipped = len(examples) - len(train) - len(val)
    if not train:
        what = "completions" if data.data_mode == "completions" else "sequences"
        raise UserError(f"no training example has {what} of {n + 1}+ tokens to hold a window of num_draft_tokens={n}: "
                        "lower num_draft_tokens or use longer completions / seq_len")
    if skipped:
        _say(f"skipping {skipped} of {len(examples)} {unit} too short for a window of {n} draft tokens")
    return train, val


def collate(examples: list[Example], starts: torch.Tensor, seed: int) -> dict[str, Any]:
    """Right-padded batch.

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


class TrainStream(IterableDataset):
    """The batches of steps ``start() .. steps - 1`` for one rank, each a pure function of its step.

    Step ``s`` on rank ``r`` of ``world`` takes the examples at positions
    ``(s * world + r) * B ..`` of an endless stream of passes over the data, each pass a fresh
    permutation; windows and u come from seeds of ``(seed, s, r)``.
    """

    def __init__(self, examples: list[Example], batch_size: int, windows: int, num_draft: int, seed: int,
                 steps: int, start: Callable[[], int], rank: int = 0, world: int = 1) -> None:
        self.examples, self.batch_size, self.windows, self.num_draft = examples, batch_size, windows, num_draft
        self.seed, self.steps, self.start, self.rank, self.world = seed, steps, start, rank, world
        self._order: tuple[int, list[int]] = (-1, [])

    def example_at(self, position: int) -> Example:
        epoch, index = divmod(position, len(self.examples))
        if self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch))
            self._order = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
        return self.examples[self._order[1][index]]

    def batch(self, step: int) -> dict[str, Any]:
        first = (step * self.world + self.rank) * self.batch_size
        picked = [self.example_at(p) for p in range(first, first + self.batch_size)]
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "starts", step, self.rank))
        starts = sample_starts(picked, self.windows, self.num_draft, generator)
        return collate(picked, starts, derived_seed(self.seed, "u", step, self.rank))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Read when iteration begins, i.e. after Lightning restored a checkpoint's step count.
        for step in range(self.start(), self.steps):
            yield self.batch(step)


def validation_batches(examples: list[Example], batch_size: int, total_windows: int, num_draft: int, seed: int,
                       rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """Rank ``rank``'s fixed held-out batches (same windows and u at every validation).

    Every example gets ``ceil(total_windows / len(examples))`` windows; ranks take every
    ``world``-th example (all of them if there are fewer examples than ranks).
    """
    windows = math.ceil(total_windows / len(examples))
    starts = sample_starts(examples, windows, num_draft, torch.Generator().manual_seed(derived_seed(seed, "val")))
    mine = list(range(rank, len(examples), world)) if len(examples) >= world else list(range(len(examples)))
    batches = []
    for i in range(0, len(mine), batch_size):
        rows = mine[i : i + batch_size]
        batches.append(collate([examples[j] for j in rows], starts[rows], derived_seed(seed, "val-u", rows[0])))
    return batches


class PTPDataModule(L.LightningDataModule):
    """Training stream and held-out batches; every rank builds its own share (no sampler needed)."""

    def __init__(self, train: list[Example], val: list[Example], optim: OptimConfig, windows: int,
                 num_draft: int, seed: int) -> None:
        super().__init__()
        self.train_examples, self.val_examples, self.optim = train, val, optim
        self.windows, self.num_draft, self.seed = windows, num_draft, seed

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        stream = TrainStream(self.train_examples, self.optim.batch_size, self.windows, self.num_draft, self.seed,
                             trainer.max_steps, lambda: trainer.global_step, trainer.global_rank, trainer.world_size)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        batches = validation_batches(self.val_examples, self.optim.batch_size, self.optim.val_windows, self.num_draft, self.seed,
                                     self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(batches, batch_size=None)


# ---------------------------------------------------------------------------------------- model


def lr_factor(step: int, optim: OptimConfig) -> float:
    """Learning rate of step ``step`` relative to ``optim.lr``: linear warm-up, then constant or a
    cosine decay to ``final_lr_ratio`` at the last step."""
    warmup = optim.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, optim.steps - 1 - warmup))
    return optim.final_lr_ratio + (1 - optim.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PTPModule(L.LightningModule):
    """The student under the PTP objective; AdamW with linear warm-up, then ``lr_factor``.

    Only the gated LoRA and the auxiliary embedding train (the Student freezes the teacher), and
    checkpoints hold only those weights.
    """

    def __init__(self, student: Student, objective: PTPObjective, optim: OptimConfig) -> None:
        super().__init__()
        self.student, self.objective, self.optim = student, objective, optim
        # Validation draws u uniformly in each interval (beta = 1): #correct as decoding sees it.
        self.val_objective = dataclasses.replace(objective, beta=1.0)
        self.strict_loading = False  # the frozen teacher is not in checkpoints

    def train(self, mode: bool = True) -> "PTPModule":
        super().train(mode)
        # Token rows must be the exact teacher, so its dropout stays off; LoRA and aux have none.
        self.student.eval()
        return self

    def _step(self, objective: PTPObjective, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        intervals = [batch[k].view(torch.float64) if k in batch else None for k in ("lo_bits", "hi_bits")]
        generator = torch.Generator(device=self.device).manual_seed(batch["seed"])
        return objective(self.student, batch["tokens"], *intervals, starts=batch["starts"], generator=generator)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, metrics = self._step(self.objective, batch)
        windows = batch["starts"].numel()
        for name in ("loss", "correct", "accepted"):
            self.log(f"train/{name}", metrics[name], prog_bar=name != "accepted", batch_size=windows)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._step(self.val_objective, batch)
        windows = batch["starts"].numel()
        for name in ("loss", "correct", "accepted", "decode_accepted"):
            self.log(f"val/{name}", metrics[name], prog_bar=name == "correct", batch_size=windows, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, self.optim))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run gets its checkpoint's optimizer and schedule back, peak rate and weight
        # decay included; re-apply this run's (possibly overridden) values, so that step s always
        # trains at lr * lr_factor(s), as LambdaLR computes it.
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        scheduler.base_lrs = [self.optim.lr] * len(scheduler.base_lrs)
        for group in scheduler.optimizer.param_groups:
            group["initial_lr"] = self.optim.lr
            group["lr"] = self.optim.lr * lr_factor(self.trainer.global_step, self.optim)
            group["weight_decay"] = self.optim.weight_decay

    def trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["ptp"] = {"format": CHECKPOINT_FORMAT, "optim": asdict(self.optim)}

    def check_checkpoint(self, checkpoint: dict[str, Any], path: Path) -> None:
        """UserError unless ``checkpoint`` holds exactly this student's trainable weights."""
        own = dict(self.named_parameters())
        state = checkpoint["state_dict"]
        if set(state) != self.trainable_names() or any(state[k].shape != own[k].shape for k in state):
            raise UserError(f"{path} was trained with another model configuration: restore experiment.yaml's model "
                            f"section, or delete {path.parent} to train from scratch")


# ---------------------------------------------------------------------------------------- checkpoints


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read safely."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ptp training checkpoint, loaded with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        DamagedCheckpoint: truncated, corrupt, foreign or unsafe content.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise DamagedCheckpoint(f"{path} is damaged ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("ptp", {}).get("format") != CHECKPOINT_FORMAT:
        raise DamagedCheckpoint(f"{path} is not a ptp training checkpoint")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O through ``ptp.io.atomic_path`` and ``read_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)


def find_resume(checkpoints: Path) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint with the most steps; among equals ``last``, then step checkpoints, then ``best``.

    Comparing steps matters after a kill between two saves of one step boundary (``step-N`` is
    written before ``last``): the newer file wins, so no finished step is lost.

    Raises:
        UserError: checkpoints exist but none is readable.
    """
    candidates = [checkpoints / LAST, *sorted(checkpoints.glob("step-*.ckpt"), reverse=True), checkpoints / BEST]
    newest: tuple[Path, dict[str, Any]] | None = None
    damaged = []
    for path in (p for p in candidates if p.is_file()):
        try:
            checkpoint = read_checkpoint(path)
        except DamagedCheckpoint as e:
            _say(f"ignoring {e}")
            damaged.append(path.name)
            continue
        if newest is None or checkpoint["global_step"] > newest[1]["global_step"]:
            newest = path, checkpoint
    if newest is not None:
        return newest
    if damaged:
        raise UserError(f"no readable checkpoint in {checkpoints} ({', '.join(damaged)} damaged): "
                        f"delete {checkpoints} to train from scratch")
    return None


def checkpoint_callbacks(directory: Path, cfg: TrainerConfig, validate: bool) -> list[ModelCheckpoint]:
    """Periodic ``step-*`` (newest ``keep_checkpoints`` kept) + ``last``; ``best`` by validation #correct."""
    common = {"dirpath": directory, "auto_insert_metric_name": False, "enable_version_counter": False}
    periodic = ModelCheckpoint(filename="step-{step:08d}", monitor="step", mode="max", save_top_k=cfg.keep_checkpoints,
                               every_n_train_steps=cfg.checkpoint_every, save_last=True, **common)
    if not validate:
        return [periodic]
    best = ModelCheckpoint(filename=BEST.removesuffix(".ckpt"), monitor=MONITOR, mode="max", save_top_k=1,
                           save_on_train_epoch_end=False, **common)
    return [periodic, best]


# ---------------------------------------------------------------------------------------- callbacks


class InterruptGuard(Callback):
    """Ctrl-C ends the run at the next step boundary with ``last.ckpt`` saved.

    The first SIGINT only sets a flag, read when the current step (or validation batch) ends, so
    the saved state is always a whole number of steps. A second SIGINT interrupts at once; the
    state is still saved unless the parameters were mid-update (then the periodic checkpoint stands).
    """

    def __init__(self, last: Path) -> None:
        self.last = last
        self.requested = False
        self.interrupted = False
        self.saved = False
        self._updating = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            _say("interrupted: saving a checkpoint after the current step (Ctrl-C again to stop at once)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            # Also undoes Lightning's SIG_IGN after an interrupt.
            signal.signal(signal.SIGINT, previous)

    def _stop_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._updating = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._updating = False
        self._stop_if_requested()

    def on_validation_batch_end(self, *args: Any) -> None:
        self._stop_if_requested()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        if not self._updating and trainer.optimizers:
            trainer.save_checkpoint(self.last, weights_only=False)
            self.saved = True


class FinalValidation(Callback):
    """Validates after the last step too (Lightning validates on a stop request), so ``best`` sees it."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class StepProgressBar(TQDMProgressBar):
    """Steps of the whole run, also across a resume (the stream itself has no length)."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("train")
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = trainer.global_step
        if self._should_update(n, trainer.max_steps):
            self.train_progress_bar.n = n
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            self.train_progress_bar.refresh()


# ---------------------------------------------------------------------------------------- trainer


def make_logger(kind: str, directory: Path) -> Any:
    """CSV (default), TensorBoard or W&B logger writing under ``directory/logs``."""
    from lightning.pytorch import loggers

    if kind == "csv":
        return loggers.CSVLogger(directory, name="logs")
    if kind == "tensorboard":
        if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
            raise UserError("logger tensorboard needs the tensorboard package: pip install tensorboard, or use --logger csv")
        return loggers.TensorBoardLogger(directory, name="logs")
    if not importlib.util.find_spec("wandb"):
        raise UserError("logger wandb needs the wandb package: pip install wandb, or use --logger csv")
    return loggers.WandbLogger(save_dir=directory / "logs", project="ptp", name=directory.resolve().name)


def make_trainer(directory: Path, cfg: TrainerConfig, optim: OptimConfig, callbacks: list[Callback],
                 validate: bool, progress: bool) -> L.Trainer:
    devices: Any = int(cfg.devices) if cfg.devices.isdigit() else cfg.devices
    try:
        return L.Trainer(
            accelerator=cfg.accelerator, devices=devices, strategy=cfg.strategy, num_nodes=cfg.num_nodes,
            precision=cfg.precision, max_steps=optim.steps, max_epochs=-1,
            val_check_interval=optim.val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
            limit_val_batches=None if validate else 0,
            gradient_clip_val=optim.grad_clip or None, logger=make_logger(cfg.logger, directory),
            log_every_n_steps=min(50, optim.val_every), callbacks=callbacks + ([StepProgressBar()] if progress else []),
            enable_progress_bar=progress, enable_model_summary=progress, plugins=[AtomicCheckpointIO()],
            default_root_dir=directory, use_distributed_sampler=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise UserError(f"cannot set up training ({(str(e).splitlines() or [''])[0]}): check --accelerator, --devices, "
                        "--strategy, --num-nodes and --precision") from None


def build_student(experiment: Experiment) -> Student:
    """The experiment's student on a freshly loaded teacher, with a seeded adapter initialisation."""
    model = experiment.model
    teacher = load_teacher(model.teacher, dtype=getattr(torch, model.teacher_dtype), trust_remote_code=model.trust_remote_code)
    torch.manual_seed(derived_seed(experiment.data.seed, "init"))
    return Student.from_teacher(teacher, mode=model.mode, num_draft_tokens=model.num_draft_tokens, lora_rank=model.lora_rank,
                                lora_alpha=model.lora_alpha, lora_targets=model.lora_targets,
                                aux_embedding=model.aux_embedding, aux_dim=model.aux_dim, teacher_name=model.teacher,
                                sampling=experiment.sampling)


def _full_parameters(trainer: L.Trainer) -> Any:
    """FSDP shards the parameters: gather them on rank 0 to write the student (collective)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False, rank0_only=True)
    return nullcontext()


def _replace(config: Any, overrides: dict[str, Any]) -> Any:
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


@dataclass
class TrainResult:
    """What a ``train`` call did.

    Attributes:
        status: ``done`` (student written) or ``interrupted`` (Ctrl-C; rerun to resume).
        step, steps: optimisation steps done so far and in total.
        checkpoint: the checkpoint a rerun resumes from (None if none was written).
        student: the written student directory (``done`` only).
        resumed_from: the checkpoint this call started from, if any.
        metrics: the last logged metrics (``val/correct``, ``val/accepted``, ``train/loss``, ...).
        rank: this process's global rank (multi-process runs return in every process).
    """

    status: str
    step: int
    steps: int
    checkpoint: Path | None = None
    student: Path | None = None
    resumed_from: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    rank: int = 0


def train(directory: str | Path, optim: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None,
          progress: bool = True, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train (or resume training) the student of the experiment in ``directory``.

    Args:
        optim: OptimConfig fields overriding the run's (a resumed run's recorded values, else
            experiment.yaml's).
        trainer: TrainerConfig fields overriding experiment.yaml's.
        callbacks: extra Lightning callbacks (tests, benchmarks).
    Raises:
        UserError: missing experiment or data, damaged checkpoints, bad settings.
    """
    directory = Path(directory)
    experiment = Experiment.load(directory)
    checkpoints = directory / CHECKPOINT_DIR
    remove_stale_temps(checkpoints)  # left by a run killed mid-save
    resume = find_resume(checkpoints) if checkpoints.is_dir() else None
    # A run keeps the schedule it started with (same total steps after a kill), unless overridden.
    base_optim = OptimConfig(**resume[1]["ptp"]["optim"]) if resume else experiment.optim
    optim_cfg = _replace(base_optim, optim or {})
    trainer_cfg = _replace(experiment.trainer, trainer or {})
    train_examples, val_examples = load_examples(directory, experiment)
    guard = InterruptGuard(checkpoints / LAST)
    # Before loading the teacher, so bad hardware settings fail fast.
    runner = make_trainer(directory, trainer_cfg, optim_cfg, [
        guard, FinalValidation(), LearningRateMonitor(logging_interval="step"),
        *checkpoint_callbacks(checkpoints, trainer_cfg, bool(val_examples)), *(callbacks or []),
    ], validate=bool(val_examples), progress=progress)

    student = build_student(experiment)
    check_context(experiment.data, student.model.config)  # experiment.yaml may have been edited since ptp distill
    objective = PTPObjective(loss=experiment.loss.loss, beta=experiment.loss.beta, windows=experiment.loss.windows_per_sequence,
                             sampling=experiment.sampling, inverse_autoregressive=experiment.data.data_mode == "inverse")
    module = PTPModule(student, objective, optim_cfg)
    if resume:
        module.check_checkpoint(resume[1], resume[0])
        _say(f"resuming from {resume[0]} at step {resume[1]['global_step']} of {optim_cfg.steps}")
    datamodule = PTPDataModule(train_examples, val_examples, optim_cfg, experiment.loss.windows_per_sequence,
                               experiment.model.num_draft_tokens, experiment.data.seed)

    with warnings.catch_warnings():
        # Expected here: the student stays in eval mode, and resuming reuses DIR/checkpoints.
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        try:
            with guard.installed():
                runner.fit(module, datamodule=datamodule, ckpt_path=resume[0] if resume else None)
        except SystemExit:  # Lightning exits after handling a KeyboardInterrupt
            if not guard.interrupted:
                raise
    metrics = {k: float(v) for k, v in runner.callback_metrics.items()}
    result = TrainResult("interrupted" if guard.interrupted else "done", runner.global_step, optim_cfg.steps,
                         resumed_from=resume[0] if resume else None, metrics=metrics, rank=runner.global_rank)
    if guard.interrupted:
        last = checkpoints / LAST
        result.checkpoint = last if last.is_file() else None
        return result
    # The finished state, so that a rerun finds nothing left to do.
    runner.save_checkpoint(checkpoints / LAST, weights_only=False)  # False: with the optimizer state
    result.checkpoint = checkpoints / LAST
    with _full_parameters(runner):
        if runner.is_global_zero:
            student.save_pretrained(directory / STUDENT_DIR)
    result.student = directory / STUDENT_DIR
    return result


def export_student(directory: str | Path, checkpoint: str | Path | None = None) -> tuple[Path, int]:
    """Write ``DIR/student`` from a training checkpoint, without training: try a run in progress
    or an interrupted one.

    Args:
        checkpoint: the checkpoint to export; None: the newest readable one in ``DIR/checkpoints``.
    Returns:
        The student directory and the checkpoint's step.
    Raises:
        UserError: no experiment, no readable checkpoint, or one from another student layout.
    """
    directory = Path(directory)
    experiment = Experiment.load(directory)
    if checkpoint is None:
        found = find_resume(directory / CHECKPOINT_DIR) if (directory / CHECKPOINT_DIR).is_dir() else None
        if found is None:
            raise UserError(f"{directory} has no checkpoint yet: run ptp train {directory} first")
        checkpoint, state = found
    else:
        if not Path(checkpoint).is_file():
            raise UserError(f"checkpoint {str(checkpoint)!r} does not exist: pass a .ckpt file written by ptp train")
        state = read_checkpoint(checkpoint)
    student = build_student(experiment)
    module = PTPModule(student, PTPObjective(), experiment.optim)
    module.check_checkpoint(state, Path(checkpoint))
    module.load_state_dict(state["state_dict"], strict=False)
    student.save_pretrained(directory / STUDENT_DIR)
    return directory / STUDENT_DIR, int(state["global_step"])
