"""``ptp train``'s callbacks: Ctrl-C saves at a step boundary, a last validation, a progress bar of steps."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from .train_data import say


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
            say("interrupted: saving a checkpoint after the current step (Ctrl-C again to stop at once)")

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
