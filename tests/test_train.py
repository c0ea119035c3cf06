"""``ptp train`` on a tiny random Llama: outputs, exact resume after Ctrl-C, damaged checkpoints, errors."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from ptp.cli import main
from ptp.experiment import EXPERIMENT_FILE, OptimConfig
from ptp.student import WEIGHTS_NAME
from ptp.train import DamagedCheckpoint, lr_factor, read_checkpoint, train
from tiny_models import write_assets

# Small enough for ~1 s per run: 4 draft tokens, rank-4 LoRA, 4 sequences per step.
RUN = ["--num-draft-tokens", "4", "--lora-rank", "4", "--batch-size", "4", "--steps", "6", "--val-every", "3",
       "--checkpoint-every", "2", "--val-windows", "16", "--warmup-steps", "2", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return write_assets(tmp_path_factory.mktemp("train-assets"), 30)


@pytest.fixture(scope="module")
def pregenerated(assets, tmp_path_factory) -> Path:
    """An O-PTP completions experiment with its data, made once; tests train copies of it."""
    directory = tmp_path_factory.mktemp("pregenerated") / "exp"
    assert main(["distill", assets["model"], assets["data"], str(directory), "--prompt-format", "Q: {question} ?",
                 "--completion-tokens", "12", "--max-prompt-tokens", "64", "--val-examples", "4", *RUN]) == 0
    assert main(["pregenerate", str(directory), "--no-progress"]) == 0
    return directory


@pytest.fixture
def experiment(pregenerated, tmp_path) -> Path:
    directory = tmp_path / "exp"
    directory.mkdir()
    shutil.copy(pregenerated / EXPERIMENT_FILE, directory / EXPERIMENT_FILE)
    shutil.copytree(pregenerated / "data", directory / "data")
    return directory


def run_train(directory: Path, *flags: str) -> int:
    return main(["train", str(directory), "--no-progress", *flags])


def student_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "student" / WEIGHTS_NAME))


def metrics(directory: Path, version: int = 0) -> list[dict[str, str]]:
    """Rows of a run's metrics.csv (none if that run logged nothing before it was interrupted)."""
    path = directory / "logs" / f"version_{version}" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_student_metrics_and_checkpoints(experiment, capsys):
    assert run_train(experiment) == 0
    assert "trained 6 steps; validation #correct" in capsys.readouterr().out
    assert set(student_weights(experiment)) and (experiment / "student" / "ptp_student.json").is_file()

    rows_ = metrics(experiment)
    val = [(int(r["step"]), float(r["val/correct"])) for r in rows_ if r["val/correct"]]
    assert [step for step, _ in val] == [2, 5]  # every 3 steps (0-based), the last one included
    assert any(r["train/correct"] for r in rows_) and all(0 <= c <= 4 for _, c in val)

    checkpoints = experiment / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt", "step-00000004.ckpt", "step-00000006.ckpt"]
    best = read_checkpoint(checkpoints / "best.ckpt")
    assert best["global_step"] == max(val, key=lambda v: (v[1], -v[0]))[0] + 1  # first step reaching the best
    last = read_checkpoint(checkpoints / "last.ckpt")
    assert last["global_step"] == 6
    # Only the trainable weights: the frozen teacher is not copied into every checkpoint.
    assert set(last["state_dict"]) == {f"student.{k}" for k in student_weights(experiment)}

    # A finished run is not repeated: the rerun restores step 6 and writes the same student.
    before = student_weights(experiment)
    assert run_train(experiment) == 0
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 6
    after = student_weights(experiment)
    assert all(torch.equal(before[k], after[k]) for k in before)


class Interrupt(Callback):
    """Simulates Ctrl-C after ``step`` steps: a real SIGINT, or a bare KeyboardInterrupt."""

    def __init__(self, step: int, signal_: bool) -> None:
        self.step, self.signal = step, signal_

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.signal:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


def test_interrupted_runs_resume_to_the_uninterrupted_weights(experiment, tmp_path, capsys, monkeypatch):
    reference = tmp_path / "reference"
    shutil.copytree(experiment, reference)
    assert run_train(reference) == 0
    expected = student_weights(reference)

    # Ctrl-C (a real SIGINT) during the end of step 2: the flag is read at the next step
    # boundary, so step 3 completes, last.ckpt holds step 3 and the command exits with 130.
    monkeypatch.setattr("ptp.commands.train.train", functools.partial(train, callbacks=[Interrupt(2, signal_=True)]))
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a shell's background job
    assert run_train(experiment) == 130
    assert "stopped at step 3 of 6" in capsys.readouterr().err
    assert read_checkpoint(experiment / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # ptp's handler (and Lightning's SIG_IGN) undone
    monkeypatch.undo()

    # A bare KeyboardInterrupt (not through ptp's handler) after step 5: saved at step 5.
    result = train(experiment, progress=False, callbacks=[Interrupt(5, signal_=False)])
    assert result.status == "interrupted" and result.step == 5 and result.resumed_from.name == "last.ckpt"
    assert read_checkpoint(experiment / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not (experiment / "student").exists()

    assert run_train(experiment) == 0
    assert "at step 5 of 6" in capsys.readouterr().err
    got = student_weights(experiment)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    # The losses logged by the three partial runs are the reference run's at the same steps.
    reference_losses = {r["step"]: r["train/loss"] for r in metrics(reference) if r["train/loss"]}
    logged = [(r["step"], r["train/loss"]) for v in range(3) for r in metrics(experiment, v) if r.get("train/loss")]
    assert logged and all(reference_losses[step] == loss for step, loss in logged)


def assert_stops_at_a_nan_loss(directory: Path, owner: Any, name: str, capsys, monkeypatch) -> None:
    """With ``owner.name`` (a loss function) returning NaN at its third call, ``ptp train`` stops
    with one line naming the step and the kept checkpoint of step 2, and writes no student."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def nan_at_step_3(*args, **kwargs):
        loss, extra = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), extra

    monkeypatch.setattr(owner, name, nan_at_step_3)
    assert run_train(directory) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ptp train: error:")]
    assert len(errors) == 1 and errors[0].startswith("ptp train: error: the training loss is nan at step 3"), err
    assert "last.ckpt (step 2) is kept" in errors[0] and "Traceback" not in err
    assert read_checkpoint(directory / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (directory / "student").exists()


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(experiment, capsys, monkeypatch):
    from ptp.objective import PTPObjective

    assert_stops_at_a_nan_loss(experiment, PTPObjective, "__call__", capsys, monkeypatch)


def test_damaged_checkpoints(experiment, capsys):
    assert run_train(experiment, "--steps", "4") == 0
    checkpoints = experiment / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(DamagedCheckpoint, match="damaged"):
        read_checkpoint(last)
    capsys.readouterr()
    # Resumes from the newest readable checkpoint instead (step 4, the same state).
    assert run_train(experiment, "--steps", "6") == 0
    err = capsys.readouterr().err
    assert "ignoring" in err and "last.ckpt is damaged" in err and "step-00000004.ckpt at step 4 of 6" in err
    assert read_checkpoint(last)["global_step"] == 6

    # Checkpoints of another student (here: another LoRA rank) are refused, naming the fix.
    text = (experiment / EXPERIMENT_FILE).read_text()
    (experiment / EXPERIMENT_FILE).write_text(text.replace("lora_rank: 4", "lora_rank: 2"))
    capsys.readouterr()
    assert run_train(experiment, "--steps", "8") == 2
    assert "trained with another model configuration" in capsys.readouterr().err
    (experiment / EXPERIMENT_FILE).write_text(text)

    # Pickled objects are refused (weights_only), never executed.
    torch.save({"ptp": {"format": "ptp-train-1"}, "evil": Interrupt(1, False)}, checkpoints / "step-00000099.ckpt")
    with pytest.raises(DamagedCheckpoint, match="damaged"):
        read_checkpoint(checkpoints / "step-00000099.ckpt")
    for path in checkpoints.iterdir():
        path.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert run_train(experiment) == 2
    err = capsys.readouterr().err
    *notes, error = err.strip().splitlines()
    assert len(notes) == 5 and all(n.startswith("ptp train: ignoring") for n in notes)
    assert error.startswith("ptp train: error: no readable checkpoint") and "to train from scratch" in error
    assert "Traceback" not in err


def test_user_errors(experiment, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing")], "not a directory"),
        ([str(tmp_path)], "no experiment.yaml"),
        ([str(experiment), "--lr", "-1"], "lr=-1.0 is invalid"),
        ([str(experiment), "--precision", "nonsense"], "--precision"),
        ([str(experiment), "--logger", "tensorboard"] if not _installed("tensorboard") else [str(experiment), "--logger", "x"],
         "pip install tensorboard" if not _installed("tensorboard") else "logger"),
    ]
    for argv, message in cases:
        assert main(["train", *argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        error = err.strip().splitlines()[-1]  # after notes such as skipped short examples
        assert error.startswith("ptp train: error:") and message in error and "Traceback" not in err, err
    shutil.rmtree(experiment / "data")
    assert run_train(experiment) == 2
    assert f"has no pregenerated data: run ptp pregenerate {experiment}" in capsys.readouterr().err
    assert not (experiment / "checkpoints").exists()


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize(("mode", "loss"), [("o-ptp", "ce"), ("c-ptp", "kl")])
def test_text_mode_trains_with_teacher_u(assets, tmp_path, mode, loss):
    directory = tmp_path / "text"
    assert main(["distill", assets["model"], assets["data"], str(directory), "--data-mode", "text", "--text-column", "text",
                 "--seq-len", "16", "--val-examples", "2", "--mode", mode, "--loss", loss, *RUN, "--steps", "3"]) == 0
    result = train(directory, progress=False)
    assert result.status == "done" and result.step == 3 and 0 <= result.metrics["val/correct"] <= 4
    assert (directory / "student" / WEIGHTS_NAME).is_file()


def test_learning_rate_warms_up_then_decays_to_the_final_ratio():
    optim = OptimConfig(lr=1e-3, warmup_steps=10, steps=110, final_lr_ratio=0.1)
    factors = [lr_factor(step, optim) for step in range(optim.steps)]
    assert factors[0] == 0.1 and factors[9] == 1.0  # linear warm-up
    assert factors[10] == 1.0 and abs(factors[-1] - 0.1) < 1e-12  # cosine from the peak to the final ratio
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    constant = OptimConfig(warmup_steps=0, steps=50)
    assert {lr_factor(step, constant) for step in range(50)} == {1.0}


def test_export_writes_the_student_of_a_checkpoint(experiment, capsys):
    assert run_train(experiment, "--steps", "2") == 0
    trained = student_weights(experiment)
    shutil.rmtree(experiment / "student")
    assert main(["train", str(experiment), "--export"]) == 0
    assert "the student of step 2" in capsys.readouterr().out
    exported = student_weights(experiment)
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    assert main(["train", str(experiment), "--export", str(experiment / "nothing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a text file: torch's legacy unpickler raised KeyError, a traceback
    assert main(["train", str(experiment), "--export", str(experiment / EXPERIMENT_FILE)]) == 2
    assert "experiment.yaml is damaged or not a ptp training checkpoint" in capsys.readouterr().err


def test_a_checkpoint_overwritten_with_text_is_skipped(experiment, capsys):
    """As truncated ones are; its KeyError in torch's legacy unpickler used to stop every resume."""
    assert run_train(experiment, "--steps", "4") == 0
    (experiment / "checkpoints" / "last.ckpt").write_text("hello\n")
    capsys.readouterr()
    assert run_train(experiment, "--steps", "6") == 0
    err = capsys.readouterr().err
    assert "last.ckpt is damaged or not a ptp training checkpoint" in err and "step-00000004.ckpt at step 4 of 6" in err


class RecordRates(Callback):
    """The learning rate and weight decay each step trains with."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer, *args) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.seen[trainer.global_step] = (group["lr"], group["weight_decay"])


def test_a_resumed_run_trains_at_its_overridden_rate(experiment):
    assert run_train(experiment, "--steps", "2", "--lr", "0.001") == 0
    overrides = {"steps": 5, "lr": 0.02, "weight_decay": 0.25, "warmup_steps": 1, "final_lr_ratio": 0.5}
    record = RecordRates()
    result = train(experiment, optim=overrides, progress=False, callbacks=[record])
    assert result.status == "done" and result.resumed_from is not None
    optim = OptimConfig(**{**OptimConfig().__dict__, **overrides})
    assert sorted(record.seen) == [2, 3, 4]
    for step, (lr, weight_decay) in record.seen.items():
        assert lr == pytest.approx(0.02 * lr_factor(step, optim), rel=1e-12) and weight_decay == 0.25


def test_slot_accuracy_benchmark_agrees_with_the_validation_metrics(experiment, tmp_path, monkeypatch):
    """benchmarks/slot_accuracy.py: its per-slot chain accuracies multiply up to the objective's
    #correct on the same windows and u, and its decode_accepted is the objective's."""
    import importlib.util

    from ptp.experiment import Experiment
    from ptp.objective import PTPObjective, SlotDrafts
    from ptp.student import Student
    from ptp.train_data import load_examples, validation_batches

    assert run_train(experiment) == 0
    # A 6-step student drafts almost nothing right; make drafts the teacher's tokens with a
    # deterministic share of misses, seen alike by the benchmark and the objective's metrics.
    drafts = PTPObjective.drafts

    def partly_right(self, *args, **kwargs) -> SlotDrafts:
        out = drafts(self, *args, **kwargs)
        slot = torch.arange(out.teacher.shape[-1])
        miss = (out.teacher * 7 + slot) % 4 == 0
        return out._replace(drafted=torch.where(miss, -2, out.teacher))

    monkeypatch.setattr(PTPObjective, "drafts", partly_right)
    path = Path(__file__).parent.parent / "benchmarks" / "slot_accuracy.py"
    spec = importlib.util.spec_from_file_location("slot_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "slots.json"
    assert bench.main([str(experiment), "--windows", "24", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][str(experiment / "student")]

    config = Experiment.load(experiment)
    student = Student.from_pretrained(experiment / "student").eval()
    _, val = load_examples(experiment, config)
    batches = validation_batches(val, config.optim.batch_size, 24, student.num_draft_tokens, config.data.seed)
    objective = PTPObjective(windows=1, sampling=config.sampling)
    correct = decode = 0.0
    with torch.no_grad():
        for batch in batches:
            lo, hi = batch["lo_bits"].view(torch.float64), batch["hi_bits"].view(torch.float64)
            generator = torch.Generator().manual_seed(batch["seed"])
            _, m = objective(student, batch["tokens"], lo, hi, starts=batch["starts"], generator=generator)
            correct += m["correct"] * batch["starts"].numel()
            decode += m["decode_accepted"] * batch["starts"].numel()
    windows = sum(b["starts"].numel() for b in batches)
    assert result["windows"] == windows
    chain = torch.tensor(result["chain_accuracy"], dtype=torch.float64)
    assert float(chain.cumprod(0).sum()) == pytest.approx(correct / windows, abs=1e-9)
    assert result["decode_accepted"] == pytest.approx(decode / windows, abs=1e-9)
    assert result["slot_accuracy"][0] == result["chain_accuracy"][0]
    assert 0.3 < correct / windows and 1.3 < result["decode_accepted"]  # the comparison is not of zeros
    assert all(0.0 <= a <= 1.0 for a in result["slot_accuracy"] + [result["argmax_share"]])
