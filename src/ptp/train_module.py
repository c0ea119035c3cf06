"""``ptp train``'s LightningModules: a gated-LoRA student under the PTP objective (``PTPModule``) or a
draft head trained from cached teacher features (``HeadModule``), sharing the optimiser, the
schedule, what a checkpoint holds and the stop on a non-finite loss (``StudentModule``)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from .errors import UserError
from .experiment import OptimConfig, lr_factor
from .head_training import head_loss, summarise, window_tally
from .metrics import num_correct
from .objective import PTPObjective
from .student import Student

CHECKPOINT_FORMAT = "ptp-train-1"  # in every checkpoint's "ptp" entry, checked when one is read


class NonFiniteLoss(UserError):
    """A NaN or infinite training loss: the run stops before that step updates anything."""


class StudentModule(L.LightningModule):
    """What both kinds of student share: AdamW with linear warm-up, then ``lr_factor``; checkpoints
    that hold only the trained weights (and ``SAVED_BUFFERS``); no dropout; a stop on a NaN loss.

    The frozen teacher is not in checkpoints (``strict_loading`` off).
    """

    SAVED_BUFFERS: tuple[str, ...] = ()

    def __init__(self, student: nn.Module, optim: OptimConfig) -> None:
        super().__init__()
        self.student, self.optim = student, optim
        self.strict_loading = False

    def train(self, mode: bool = True) -> "StudentModule":
        super().train(mode)
        # Token rows must be the exact teacher, so its dropout stays off (LoRA, aux and lifts have
        # none); a head's layers keep it off too, so that a step is a pure function of its batch
        # and resumed or multi-process runs reproduce one uninterrupted run.
        self.student.eval()
        return self

    def stop_if_not_finite(self, loss: torch.Tensor) -> None:
        """NonFiniteLoss on every rank if any rank's loss is NaN or infinite (one collective, so no
        rank waits for another that stopped)."""
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss.detach())), all=False)
        if bad:
            raise NonFiniteLoss(f"the training loss is {float(loss.detach())} at step {self.trainer.global_step + 1}")

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

    def saved_names(self) -> set[str]:
        """State-dict keys a checkpoint holds: the trainable parameters and ``SAVED_BUFFERS``."""
        return {name for name, p in self.named_parameters() if p.requires_grad} | set(self.SAVED_BUFFERS)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = self.saved_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in saved}
        checkpoint["ptp"] = {"format": CHECKPOINT_FORMAT, "optim": asdict(self.optim)}

    def check_checkpoint(self, checkpoint: dict[str, Any], path: Path) -> None:
        """UserError unless ``checkpoint`` holds exactly this student's saved state."""
        own = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        state = checkpoint["state_dict"]
        if set(state) != self.saved_names() or any(state[k].shape != own[k].shape for k in state):
            raise UserError(f"{path} was trained with another model configuration: restore experiment.yaml's model "
                            f"section, or delete {path.parent} to train from scratch")


class PTPModule(StudentModule):
    """A gated-LoRA student under the PTP objective; only the gated LoRA and the auxiliary
    embedding train (the Student freezes the teacher)."""

    def __init__(self, student: Student, objective: PTPObjective, optim: OptimConfig) -> None:
        super().__init__(student, optim)
        self.objective = objective
        # Validation draws u uniformly in each interval (beta = 1): #correct as decoding sees it.
        self.val_objective = dataclasses.replace(objective, beta=1.0)

    def _step(self, objective: PTPObjective, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        intervals = [batch[k].view(torch.float64) if k in batch else None for k in ("lo_bits", "hi_bits")]
        generator = torch.Generator(device=self.device).manual_seed(batch["seed"])
        return objective(self.student, batch["tokens"], *intervals, starts=batch["starts"], generator=generator)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, metrics = self._step(self.objective, batch)
        self.stop_if_not_finite(loss)
        windows = batch["starts"].numel()
        for name in ("loss", "correct", "accepted"):
            self.log(f"train/{name}", metrics[name], prog_bar=name != "accepted", batch_size=windows)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._step(self.val_objective, batch)
        windows = batch["starts"].numel()
        for name in ("loss", "correct", "accepted", "decode_accepted"):
            self.log(f"val/{name}", metrics[name], prog_bar=name == "correct", batch_size=windows, sync_dist=True)


class HeadModule(StudentModule):
    """A draft head under ``ptp.head_training.head_loss`` on cached features: the head's layers,
    lifts and u embedding train; the draft vocabulary is saved with them.

    Validation is ``ptp.head_training.evaluate``'s: ``val/mat`` (1 + the matching prefix of the N
    drafts), ``val/correct`` (the prefix alone, as the LoRA student's) and ``val/slot_K``
    (per-slot accuracy), summed over all ranks' windows.
    """

    SAVED_BUFFERS = ("student.vocab_ids",)

    def __init__(self, head: nn.Module, optim: OptimConfig) -> None:
        super().__init__(head, optim)
        self._tally: torch.Tensor | None = None

    @staticmethod
    def _batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**batch, "u": batch["u_bits"].view(torch.float64)}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        batch = self._batch(batch)
        # autocast off: Lightning's --precision decides (bf16-mixed runs the matmuls in bf16).
        loss, drafts = head_loss(self.student, batch, autocast=False)
        self.stop_if_not_finite(loss)
        windows = batch["starts"].numel()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=windows)
        self.log("train/correct", num_correct(drafts, batch["targets"]).double().mean(), prog_bar=True, batch_size=windows)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._tally = torch.zeros(2 + self.student.num_draft_tokens, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._tally += window_tally(self.student, self._batch(batch), autocast=False)

    def on_validation_epoch_end(self) -> None:
        metrics = summarise(self.trainer.strategy.reduce(self._tally, reduce_op="sum").cpu())
        if not metrics["windows"]:
            return
        # Equal on every rank already (summed above); sync_dist only spares Lightning's warning.
        self.log("val/correct", metrics["mat"] - 1.0, prog_bar=True, sync_dist=True)
        self.log("val/mat", metrics["mat"], sync_dist=True)
        for k, accuracy in enumerate(metrics["slot_accuracy"]):
            self.log(f"val/slot_{k}", accuracy, sync_dist=True)
