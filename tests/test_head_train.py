"""Draft heads (``--kind head``) through ptp's own commands on a tiny random Llama: ``ptp distill``
records the head, ``ptp pregenerate`` caches the teacher's features, ``ptp train`` trains the head
on Lightning from them (lower loss, exact resume, NaN stop, export) and the student decodes
losslessly; multi-process (DDP, gloo) training of both kinds equals the one-process run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ptp.head_data as head_data
import ptp.train_module as train_module
from ptp import Student
from ptp.cli import main
from ptp.experiment import EXPERIMENT_FILE, Experiment
from ptp.features import completion_features, load_feature_shards
from ptp.head import HeadStudent
from ptp.models import load_teacher
from ptp.pregenerate import load_shards
from ptp.student import CONFIG_NAME, WEIGHTS_NAME
from ptp.train import build_student, read_checkpoint, train
from test_train import Interrupt, assert_stops_at_a_nan_loss, metrics, run_train, student_weights
from tiny_models import write_assets

PROMPTS = ["--prompt-format", "Q: {question} ?", "--completion-tokens", "12", "--max-prompt-tokens", "64", "--val-examples", "4"]
HEAD = ["--kind", "head", "--num-layers", "1"]
RUN = ["--num-draft-tokens", "3", "--batch-size", "4", "--steps", "8", "--val-every", "4", "--checkpoint-every", "2",
       "--val-windows", "16", "--warmup-steps", "2", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return write_assets(tmp_path_factory.mktemp("head-assets"), 30)


def distill(assets: dict[str, str], directory: Path, *flags: str) -> int:
    return main(["distill", assets["model"], assets["data"], str(directory), *PROMPTS, *flags])


@pytest.fixture(scope="module")
def pregenerated(assets, tmp_path_factory) -> Path:
    """A head experiment with its completions and features, made once; tests train copies of it."""
    directory = tmp_path_factory.mktemp("head-pregenerated") / "exp"
    assert distill(assets, directory, *HEAD, *RUN) == 0
    assert main(["pregenerate", str(directory), "--no-progress", "--shard-size", "8"]) == 0
    return directory


def copy_experiment(source: Path, directory: Path) -> Path:
    directory.mkdir()
    shutil.copy(source / EXPERIMENT_FILE, directory / EXPERIMENT_FILE)
    for part in ("data", "features"):
        if (source / part).is_dir():
            shutil.copytree(source / part, directory / part)
    return directory


@pytest.fixture
def experiment(pregenerated, tmp_path) -> Path:
    return copy_experiment(pregenerated, tmp_path / "exp")


# ---------------------------------------------------------------- distill


def test_distill_records_the_head_and_old_files_load_as_lora(assets, pregenerated, tmp_path):
    raw = yaml.safe_load((pregenerated / EXPERIMENT_FILE).read_text())
    head_keys = ("kind", "num_layers", "init", "autoregressive", "draft_vocab")
    assert {k: raw["model"][k] for k in head_keys} == \
        {"kind": "head", "num_layers": 1, "init": "teacher", "autoregressive": False, "draft_vocab": 0}
    assert Experiment.load(pregenerated).to_dict() == raw
    old = tmp_path / "old"
    old.mkdir()
    # A head experiment written before autoregressive heads existed: a slot head.
    del raw["model"]["autoregressive"]
    (old / EXPERIMENT_FILE).write_text(yaml.safe_dump(raw))
    assert Experiment.load(old).model.autoregressive is False
    # An experiment.yaml written before heads existed has none of these keys: a LoRA student.
    for key in ("kind", "num_layers", "init", "draft_vocab"):
        del raw["model"][key]
    (old / EXPERIMENT_FILE).write_text(yaml.safe_dump(raw))
    model = Experiment.load(old).model
    assert model.kind == "lora" and model.num_layers is None


@pytest.mark.parametrize(("flags", "message"), [
    ([*HEAD, "--draft-vocab", "-1"], "draft_vocab=-1 is invalid"),
    (["--kind", "head", "--num-layers", "2"], "num_layers=2 is invalid for a teacher of 2 layers: use 1..1"),
    (["--kind", "head", "--init", "copy"], "init='copy' is invalid"),
    (["--kind", "medusa"], "kind='medusa' is invalid"),
    (["--num-layers", "1"], "num_layers is an option of kind head"),
    ([*HEAD, "--mode", "c-ptp", "--loss", "kl"], "a head trains with cross-entropy"),
])
def test_distill_head_user_errors(assets, tmp_path, capsys, flags, message):
    assert distill(assets, tmp_path / "exp", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptp distill: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- features


def test_pregenerate_writes_the_teachers_features(pregenerated, assets):
    completions = load_shards(pregenerated)
    features = load_feature_shards(pregenerated / head_data.FEATURES_DIR)
    assert len(features) == len(completions) == 30
    teacher = load_teacher(assets["model"])
    for c, f in zip(completions, features):
        assert torch.equal(c["tokens"], f["tokens"]) and f["features"].dtype == torch.bfloat16
        for name in ("lo", "hi"):  # NaN at the same (prompt) places
            torch.testing.assert_close(c[name], f[name], rtol=0, atol=0, equal_nan=True)
    alone = completion_features(teacher, [completions[7]["tokens"].tolist()], 1)[0]  # layer L - K = 2 - 1
    assert torch.equal(alone, features[7]["features"])  # right padding changes no row
    index = json.loads((pregenerated / head_data.FEATURES_DIR / "index.json").read_text())
    assert len(index["shards"]) == 4 and index["config"]["layer"] == 1  # 30 sequences in shards of 8


def test_features_resume_after_an_interruption(pregenerated, tmp_path, monkeypatch):
    directory = tmp_path / "exp"
    directory.mkdir()
    shutil.copy(pregenerated / EXPERIMENT_FILE, directory / EXPERIMENT_FILE)
    shutil.copytree(pregenerated / "data", directory / "data")
    real = head_data.completion_features
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(head_data, "completion_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        head_data.write_features(directory, batch_size=5, shard_size=10)  # shard 0 written, shard 1 not
    assert json.loads((directory / "features" / "index.json").read_text())["done"] == 10
    with pytest.raises(Exception, match="stopped at sequence 10 of 30"):
        train(directory, progress=False)
    monkeypatch.setattr(head_data, "completion_features", real)
    assert head_data.write_features(directory, batch_size=7, shard_size=10)["new_sequences"] == 20
    got, expected = load_feature_shards(directory / "features"), load_feature_shards(pregenerated / "features")
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(got, expected))
    assert head_data.write_features(directory)["new_sequences"] == 0  # complete: nothing to redo


def test_train_refuses_missing_or_foreign_features(experiment, capsys):
    index_path = experiment / "features" / "index.json"
    index = json.loads(index_path.read_text())
    index["config"]["layer"] = 0  # as if extracted for a head of another num_layers
    index_path.write_text(json.dumps(index))
    assert run_train(experiment) == 2
    assert "holds features made with another configuration" in capsys.readouterr().err
    shutil.rmtree(experiment / "features")
    assert run_train(experiment) == 2
    assert f"has no cached features: run ptp pregenerate {experiment}" in capsys.readouterr().err
    assert not (experiment / "checkpoints").exists()


# ---------------------------------------------------------------- training


def test_train_head_lowers_the_loss_and_exports_a_lossless_student(experiment, capsys):
    assert run_train(experiment) == 0
    out = capsys.readouterr().out
    assert "trained 8 steps; validation #correct" in out and "decode MAT" in out
    losses = [float(r["train/loss"]) for r in metrics(experiment) if r["train/loss"]]
    assert len(losses) == 2 and losses[1] < 0.95 * losses[0]  # logged every val_every steps
    rows = [r for r in metrics(experiment) if r.get("val/mat")]
    assert [int(r["step"]) for r in rows] == [3, 7] and all(r["val/slot_2"] for r in rows)

    config = json.loads((experiment / "student" / CONFIG_NAME).read_text())
    assert config["kind"] == "head" and config["num_layers"] == 1
    last = read_checkpoint(experiment / "checkpoints" / "last.ckpt")
    weights = student_weights(experiment)
    assert set(last["state_dict"]) == {f"student.{k}" for k in weights}  # head and vocabulary, no teacher
    head = Student.from_pretrained(experiment / "student")
    assert isinstance(head, HeadStudent)
    for strategy in ("pqd", "verify"):
        assert main(["generate", str(experiment), "Q: the cat ?", "--raw", "--json", "--strategy", strategy,
                     "--max-new-tokens", "12", "--seed", "3", "--dtype", "float32"]) == 0
        stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert stats["identical_to_ar"] is True and stats["tokens"] >= 1

    # --export writes the same student from the checkpoint.
    shutil.rmtree(experiment / "student")
    assert main(["train", str(experiment), "--export"]) == 0
    exported = student_weights(experiment)
    assert exported.keys() == weights.keys() and all(torch.equal(exported[k], weights[k]) for k in weights)


def test_a_head_starts_from_a_pretrained_head(assets, experiment, tmp_path, capsys, monkeypatch):
    """--init DIR: a new head (here autoregressive MTP) starts from a trained head's weights and
    draft vocabulary, stored as an absolute path; anything but a head's directory is one line."""
    text = (experiment / EXPERIMENT_FILE).read_text()
    (experiment / EXPERIMENT_FILE).write_text(text.replace("draft_vocab: 0", "draft_vocab: 12"))
    assert train(experiment, optim={"steps": 2}, progress=False).status == "done"
    pretrained = Student.from_pretrained(experiment / "student")

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "fine-tune"
    relative = os.path.relpath(experiment / "student", tmp_path)
    assert distill(assets, target, *HEAD, *RUN, "--init", relative, "--mode", "mtp", "--autoregressive") == 0
    model = Experiment.load(target).model
    assert model.init == str((experiment / "student").resolve()) and model.autoregressive is True
    head = build_student(Experiment.load(target), pretrained.model)
    assert head.config.autoregressive and head.mode == "mtp" and torch.equal(head.vocab_ids, pretrained.vocab_ids)
    ours, theirs = head.trainable_state_dict(), pretrained.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    capsys.readouterr()
    assert distill(assets, tmp_path / "bad", *HEAD, "--init", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "init=" in err and "directory of a trained head" in err and len(err.strip().splitlines()) == 1, err


def test_draft_vocabulary_is_built_from_the_training_features(experiment):
    text = (experiment / EXPERIMENT_FILE).read_text()
    (experiment / EXPERIMENT_FILE).write_text(text.replace("draft_vocab: 0", "draft_vocab: 12"))
    result = train(experiment, optim={"steps": 2}, progress=False)
    assert result.status == "done"
    vocab = student_weights(experiment)["vocab_ids"]
    assert vocab.numel() == 12 and torch.equal(vocab, vocab.sort().values)
    head = Student.from_pretrained(experiment / "student")
    assert torch.equal(head.vocab_ids, vocab)


def test_head_resumes_after_a_kill_to_the_same_weights(experiment, tmp_path):
    reference = copy_experiment(experiment, tmp_path / "reference")
    assert run_train(reference) == 0
    expected = student_weights(reference)
    result = train(experiment, progress=False, callbacks=[Interrupt(5, signal_=False)])
    assert result.status == "interrupted" and result.step == 5
    # A kill (no chance to save) after step 5 leaves the periodic checkpoint of step 4.
    (experiment / "checkpoints" / "last.ckpt").unlink()
    assert run_train(experiment) == 0
    got = student_weights(experiment)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(experiment, capsys, monkeypatch):
    assert_stops_at_a_nan_loss(experiment, train_module, "head_loss", capsys, monkeypatch)


# ---------------------------------------------------------------- several processes


def _ptp() -> list[str]:
    """The ``ptp`` command as a user types it (Lightning's DDP relaunches this very command line)."""
    script = Path(sys.executable).parent / "ptp"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ptp.cli"]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(assets, pregenerated, tmp_path):
    """``--devices 2 --strategy ddp`` on CPU (gloo) with half the per-device batch ends at the
    one-process weights, for a head and for a gated-LoRA student (float64 teachers)."""
    flags = [*PROMPTS, *RUN, "--steps", "4", "--teacher-dtype", "float64"]
    runs: dict[str, Path] = {}
    for kind, extra in (("head", HEAD), ("lora", ["--lora-rank", "4"])):
        source = tmp_path / kind
        assert distill(assets, source, *flags, *extra) == 0
        assert main(["pregenerate", str(source), "--no-progress"]) == 0
        runs[kind] = source
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Both two-process runs at once: they spend most of their time starting up.
    jobs = {kind: subprocess.Popen([*_ptp(), "train", str(copy_experiment(source, tmp_path / f"{kind}-ddp")), "--no-progress",
                                    "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--batch-size", "2"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for kind, source in runs.items()}
    for kind, source in runs.items():
        assert train(source, trainer={"accelerator": "cpu"}, progress=False).status == "done"
    for kind, job in jobs.items():
        output = job.communicate(timeout=240)[0]
        assert job.returncode == 0, output[-3000:]
        one = load_file(str(runs[kind] / "student" / WEIGHTS_NAME))
        two = load_file(str(tmp_path / f"{kind}-ddp" / "student" / WEIGHTS_NAME))
        build_student(Experiment.load(runs[kind])).save_pretrained(tmp_path / f"{kind}-init")
        init = load_file(str(tmp_path / f"{kind}-init" / WEIGHTS_NAME))
        assert one.keys() == two.keys() == init.keys()
        assert largest_difference(one, init) > 1e-3  # the runs trained
        assert largest_difference(one, two) < 1e-5, kind


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
