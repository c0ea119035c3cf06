"""``ptp train``: a student trained on PyTorch Lightning, resumable and interrupt-safe.

Two kinds of student (``model.kind`` of experiment.yaml):

* ``lora``: the gated-LoRA student under the PTP objective (``ptp.objective``), on pregenerated
  completions or the dataset's text;
* ``head``: a draft head (``ptp.head``) on the cached teacher features of the completions
  (``ptp.head_data``, written by ``ptp pregenerate``), so no teacher layer runs in a step. A draft
  vocabulary (``draft_vocab`` > 0) is the most frequent tokens of the training sequences.

The concerns live in their own modules: data and its seeds (``ptp.train_data``), the
LightningModules (``ptp.train_module``), the callbacks (``ptp.train_callbacks``); this one holds
the checkpoints and the trainer. A run resumes from the newest readable checkpoint of
``DIR/checkpoints`` and continues exactly where the uninterrupted run would be. Ctrl-C saves
``last.ckpt`` at the next step boundary. A NaN or infinite training loss stops the run with a
one-line error before that step changes anything, keeping the checkpoints written so far.
Multi-process runs (``--devices N --strategy ddp``, ``--num-nodes M``) see the global batch of a
one-process run with N times the per-device batch, split between the processes.

Checkpoints (``DIR/checkpoints``, written through ``ptp.io.atomic_path``, so a kill mid-write
leaves the previous file intact): ``step-XXXXXXXX.ckpt`` every ``checkpoint_every`` steps (the
``keep_checkpoints`` newest kept), ``last.ckpt`` (the newest state, also written on Ctrl-C and at
the end) and ``best.ckpt`` (highest validation #correct). They are Lightning checkpoints holding
only the trained weights (gated LoRA + auxiliary embedding, or a head and its draft vocabulary),
the optimizer, scheduler and loop progress, and the run's OptimConfig; they are read with
``torch.load(weights_only=True)``. A damaged checkpoint is skipped, with a note; a run resumes
from the readable one with the most steps.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import warnings
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from .data import check_context
from .errors import UserError
from .experiment import Experiment, OptimConfig, TrainerConfig
from .head import INITS as HEAD_INITS, frequent_tokens
from .head_data import check_head_experiment, feature_layer, load_experiment_teacher
from .io import atomic_path, remove_stale_temps
from .locks import experiment_lock
from .objective import PTPObjective
from .student import Student
from .train_callbacks import FinalValidation, InterruptGuard, StepProgressBar
from .train_data import (PTPDataModule, derived_seed, head_training_batch, head_validation_batches, load_examples,
                         load_head_examples, say, training_batch, validation_batches)
from .train_module import CHECKPOINT_FORMAT, HeadModule, NonFiniteLoss, PTPModule, StudentModule, lr_factor

__all__ = ["train", "export_student", "TrainResult", "build_student", "load_examples", "validation_batches",
           "read_checkpoint", "DamagedCheckpoint", "lr_factor", "CHECKPOINT_DIR", "STUDENT_DIR", "LAST", "BEST",
           "CHECKPOINT_FORMAT", "MONITOR"]

CHECKPOINT_DIR = "checkpoints"
STUDENT_DIR = "student"
LAST, BEST = "last.ckpt", "best.ckpt"
MONITOR = "val/correct"
INIT_SEQUENCES = 64  # training sequences whose features give a new head's lift statistics


# ---------------------------------------------------------------------------------------- checkpoints


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read safely."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ptp training checkpoint, loaded with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        DamagedCheckpoint: truncated, corrupt, foreign or unsafe content.
    """
    # torch.save writes zip archives; anything else would reach torch's legacy unpickler, whose
    # errors on a text file (KeyError, ...) are not a damaged file's.
    if not zipfile.is_zipfile(path):
        raise DamagedCheckpoint(f"{path} is damaged or not a ptp training checkpoint (not a zip archive)")
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
            say(f"ignoring {e}")
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


def _strategy(name: str, kind: str) -> str:
    """The Lightning strategy of ``--strategy name`` for a student of ``kind``.

    A head's body keeps its architecture's token embedding, unused (its rows are hidden states):
    DDP must be told that some parameters get no gradient, or it waits for them.
    """
    unused = f"{name}_find_unused_parameters_true"
    return unused if kind == "head" and unused in StrategyRegistry else name


def make_trainer(directory: Path, cfg: TrainerConfig, optim: OptimConfig, callbacks: list[Callback],
                 validate: bool, progress: bool, kind: str = "lora") -> L.Trainer:
    devices: Any = int(cfg.devices) if cfg.devices.isdigit() else cfg.devices
    try:
        return L.Trainer(
            accelerator=cfg.accelerator, devices=devices, strategy=_strategy(cfg.strategy, kind), num_nodes=cfg.num_nodes,
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



def build_student(experiment: Experiment, teacher: nn.Module | None = None, vocab_ids: torch.Tensor | None = None,
                  draft_tokens: list[torch.Tensor] | None = None) -> nn.Module:
    """The experiment's student on its teacher (loaded unless given), with a seeded initialisation.

    A head's draft vocabulary (``draft_vocab`` > 0) is ``vocab_ids`` if given (a checkpoint's), else
    the ``draft_vocab`` most frequent tokens of ``draft_tokens`` (the training sequences).
    """
    model = experiment.model
    teacher = teacher if teacher is not None else load_experiment_teacher(experiment)
    common = {"mode": model.mode, "num_draft_tokens": model.num_draft_tokens, "aux_embedding": model.aux_embedding,
              "aux_dim": model.aux_dim, "teacher_name": model.teacher, "sampling": experiment.sampling}
    if model.kind == "head":
        # A head started from a trained head (init: its directory) takes that head's vocabulary.
        if model.init in HEAD_INITS and vocab_ids is None and model.draft_vocab:
            vocab_ids = frequent_tokens(draft_tokens or [], model.draft_vocab, teacher.get_output_embeddings().weight.shape[0])
        torch.manual_seed(derived_seed(experiment.data.seed, "init"))
        return Student.from_teacher(teacher, kind="head", num_layers=model.num_layers, init=model.init,
                                    autoregressive=bool(model.autoregressive), draft_vocab=model.draft_vocab,
                                    vocab_ids=vocab_ids, **common)
    torch.manual_seed(derived_seed(experiment.data.seed, "init"))
    return Student.from_teacher(teacher, lora_rank=model.lora_rank, lora_alpha=model.lora_alpha,
                                lora_targets=model.lora_targets, **common)


def make_module(experiment: Experiment, student: nn.Module, optim: OptimConfig) -> StudentModule:
    """The LightningModule of the experiment's kind of student."""
    if experiment.model.kind == "head":
        return HeadModule(student, optim)
    loss = experiment.loss
    objective = PTPObjective(loss=loss.loss, beta=loss.beta, windows=loss.windows_per_sequence, sampling=experiment.sampling,
                             inverse_autoregressive=experiment.data.data_mode == "inverse")
    return PTPModule(student, objective, optim)


def make_datamodule(experiment: Experiment, optim: OptimConfig, train_examples: list[Any], val_examples: list[Any]) -> PTPDataModule:
    """Training stream and held-out batches of the experiment's kind of student."""
    seed, n = experiment.data.seed, experiment.model.num_draft_tokens
    rows = {"windows": experiment.loss.windows_per_sequence, "num_draft": n, "beta": experiment.loss.beta}
    if experiment.model.kind == "head":
        build, validation = partial(head_training_batch, **rows), partial(head_validation_batches, val_examples, optim.val_windows, n, seed)
    else:
        build = partial(training_batch, **rows)
        validation = partial(validation_batches, val_examples, optim.batch_size, optim.val_windows, n, seed)
    return PTPDataModule(train_examples, optim.batch_size, seed, build, validation)


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


def _non_finite(error: NonFiniteLoss, checkpoints: Path) -> UserError:
    """The one-line error of a run stopped by a NaN loss, naming the checkpoint a rerun resumes from."""
    found = find_resume(checkpoints) if checkpoints.is_dir() else None
    kept = f"{found[0]} (step {found[1]['global_step']}) is kept" if found else "no checkpoint was written yet"
    return UserError(f"{error}: training stopped; {kept}: lower --lr or check the data, then rerun to resume")


def train(directory: str | Path, optim: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None,
          progress: bool = True, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train (or resume training) the student of the experiment in ``directory``, holding its
    lock (``ptp.locks``: one process per experiment; other DDP ranks run under rank 0's).
    Arguments as ``_train``'s."""
    if rank_zero_only.rank != 0:
        return _train(directory, optim, trainer, progress, callbacks)
    with experiment_lock(directory, "train"):
        return _train(directory, optim, trainer, progress, callbacks)


def _train(directory: str | Path, optim: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None,
           progress: bool = True, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train (or resume training) the student of the experiment in ``directory``.

    Args:
        optim: OptimConfig fields overriding the run's (a resumed run's recorded values, else
            experiment.yaml's).
        trainer: TrainerConfig fields overriding experiment.yaml's.
        callbacks: extra Lightning callbacks (tests, benchmarks).
    Raises:
        UserError: missing experiment or data, damaged checkpoints, bad settings, a NaN loss.
    """
    directory = Path(directory)
    experiment = Experiment.load(directory)
    kind = experiment.model.kind
    checkpoints = directory / CHECKPOINT_DIR
    if rank_zero_only.rank == 0:  # other ranks start while rank 0 may be writing
        remove_stale_temps(checkpoints)  # left by a run killed mid-save
    resume = find_resume(checkpoints) if checkpoints.is_dir() else None
    # A run keeps the schedule it started with (same total steps after a kill), unless overridden.
    base_optim = OptimConfig(**resume[1]["ptp"]["optim"]) if resume else experiment.optim
    optim_cfg = _replace(base_optim, optim or {})
    trainer_cfg = _replace(experiment.trainer, trainer or {})
    teacher = None
    if kind == "head":
        check_head_experiment(experiment)
        teacher = load_experiment_teacher(experiment)  # its depth gives the features' layer
        train_examples, val_examples = load_head_examples(directory, experiment, feature_layer(experiment, teacher))
    else:
        train_examples, val_examples = load_examples(directory, experiment)
    guard = InterruptGuard(checkpoints / LAST)
    # Before loading the (LoRA student's) teacher, so bad hardware settings fail fast.
    runner = make_trainer(directory, trainer_cfg, optim_cfg, [
        guard, FinalValidation(), LearningRateMonitor(logging_interval="step"),
        *checkpoint_callbacks(checkpoints, trainer_cfg, bool(val_examples)), *(callbacks or []),
    ], validate=bool(val_examples), progress=progress, kind=kind)

    student = build_student(experiment, teacher, draft_tokens=[e["tokens"] for e in train_examples] if kind == "head" else None)
    # As ptp.head_training.train_head: lifts start at real states (a resume then loads its own, and
    # a head started from a trained one brings its own).
    if kind == "head" and experiment.model.init in HEAD_INITS:
        student.init_from_features(torch.cat([e["features"] for e in train_examples[:INIT_SEQUENCES]]))
    check_context(experiment.data, student.model.config)  # experiment.yaml may have been edited since ptp distill
    module = make_module(experiment, student, optim_cfg)
    if resume:
        module.check_checkpoint(resume[1], resume[0])
        say(f"resuming from {resume[0]} at step {resume[1]['global_step']} of {optim_cfg.steps}")
    datamodule = make_datamodule(experiment, optim_cfg, train_examples, val_examples)

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
        except NonFiniteLoss as e:
            raise _non_finite(e, checkpoints) from None
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
    or an interrupted one. A head's directory holds its draft vocabulary (``HeadStudent.save_pretrained``).

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
    # A head is built with the checkpoint's draft vocabulary (a LoRA checkpoint has none: None).
    student = build_student(experiment, vocab_ids=state["state_dict"].get("student.vocab_ids"))
    module = make_module(experiment, student, experiment.optim)
    module.check_checkpoint(state, Path(checkpoint))
    module.load_state_dict(state["state_dict"], strict=False)
    student.save_pretrained(directory / STUDENT_DIR)
    return directory / STUDENT_DIR, int(state["global_step"])
