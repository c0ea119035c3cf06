"""Robustness (issue 9): bad input gets one line and exit code 2, killed work resumes, nothing unsafe is loaded.

Cases that belong to one command live with its tests (test_distill_pregenerate, test_train,
test_generate_cli); this file holds the rest: inputs every command shares (models, datasets, student
directories, text), the chat REPL's terminal events, and SIGKILL at random moments.
"""

from __future__ import annotations

import inspect
import itertools
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import DistilBertConfig, DistilBertModel

from ptp import SamplingConfig, Student, UserError
from ptp.cli import main
from ptp.experiment import EXPERIMENT_FILE
from ptp.models import load_config, load_teacher, load_tokenizer
from ptp.pregenerate import DATA_DIR, INDEX_FILE
from ptp.student import CONFIG_NAME, WEIGHTS_NAME
from ptp.train import CHECKPOINT_DIR, STUDENT_DIR, read_checkpoint
from tiny_models import tiny_teacher, tiny_tokenizer, write_student


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny student (root/student) with its teacher and dataset, and the bad inputs built from them."""
    root = tmp_path_factory.mktemp("robustness")
    student = write_student(root, num_rows=16)
    DistilBertModel(DistilBertConfig(vocab_size=97, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(root / "encoder")
    plain = tiny_tokenizer()
    plain.chat_template = None
    tiny_teacher("llama").save_pretrained(root / "plain")
    plain.save_pretrained(root / "plain")
    Student.from_teacher(load_teacher(str(root / "plain")), num_draft_tokens=4, lora_rank=4,
                         teacher_name=str(root / "plain")).save_pretrained(root / "plain-student")
    for name, teacher in (("gpt2", tiny_teacher("gpt2")), ("vocab", tiny_teacher("llama", vocab=120))):
        teacher.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        edit_student(student, root / f"student-{name}", lambda c, name=name: c.update(teacher=str(root / name)))
    edit_student(student, root / "unknown-key", lambda c: c.update(colour=1))
    edit_student(student, root / "missing-key", lambda c: c.pop("mode"))
    edit_student(student, root / "no-weights", weights=Path.unlink)
    edit_student(student, root / "truncated", weights=lambda p: p.write_bytes(p.read_bytes()[:-100]))
    (root / "empty.jsonl").write_text("")
    (root / "header.csv").write_text("question\n")
    (root / "bad-line.jsonl").write_text('{"question": "the cat"}\n{"question": "a",\n{"question": "the"}\n')
    (root / "latin1.jsonl").write_bytes('{"question": "caf\u00e9"}\n'.encode("latin-1"))
    return root


def edit_student(source: Path, target: Path, edit=None, weights=None) -> Path:
    """A copy of a student directory with its config JSON and/or weights file changed."""
    shutil.copytree(source, target)
    if edit is not None:
        config = json.loads((target / CONFIG_NAME).read_text())
        edit(config)
        (target / CONFIG_NAME).write_text(json.dumps(config))
    if weights is not None:
        weights(target / WEIGHTS_NAME)
    return target


def user_error(argv: list[str], capsys) -> str:
    """Run ``ptp argv``, expecting a user error: exit code 2, no traceback; returns the one error line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    # the error is the last line (transformers may draw a weight-loading bar before it)
    error = err.strip().splitlines()[-1]
    assert error.startswith(f"ptp {argv[0]}: error: ") and "Traceback" not in err, err
    assert ": " in error.removeprefix(f"ptp {argv[0]}: error: "), "the message ends with the fix after a colon"
    return error


# ---------------------------------------------------------------- MODEL and DATASET (ptp distill)


Q = ["--prompt-column", "question"]


@pytest.mark.parametrize(
    ("model", "dataset", "flags", "message"),
    [
        ("missing", "qa.jsonl", Q, "no such directory"),
        ("encoder", "qa.jsonl", Q, "is not a causal language model (model type 'distilbert')"),
        ("plain", "qa.jsonl", ["--messages-column", "messages"], "has no chat template"),
        ("teacher", "missing.jsonl", Q, "no such file or directory"),
        ("teacher", "empty.jsonl", Q, "empty.jsonl' is empty"),
        ("teacher", "header.csv", Q, "split 'train' is empty"),
        ("teacher", "bad-line.jsonl", Q, "bad-line.jsonl' is not valid JSON (line 2: Expecting property name"),
        ("teacher", "latin1.jsonl", Q, "is not UTF-8 text (invalid continuation byte at byte 17)"),
        ("teacher", "qa.jsonl", [*Q, "--max-prompt-tokens", "600"], "exceeds the teacher's context of 512 tokens"),
    ],
)
def test_distill_bad_model_or_dataset(root, tmp_path, capsys, model, dataset, flags, message):
    argv = ["distill", str(root / model), str(root / dataset), str(tmp_path / "exp"), "--val-examples", "1", *flags]
    assert message in user_error(argv, capsys)
    assert not (tmp_path / "exp").exists()


def test_distill_with_stdin_closed_names_the_flag(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # what Python sets when started with 0<&-
    argv = ["distill", str(root / "teacher"), str(root / "qa.jsonl"), str(tmp_path / "exp")]
    assert "pass --prompt-column, --messages-column or --prompt-format" in user_error(argv, capsys)


# ---------------------------------------------------------------- student directories and text (ptp generate, ptp bench)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("student-gpt2", "teacher does not match the student in {dir} (model_type: student 'llama' vs teacher 'gpt2')"),
        ("student-vocab", "teacher does not match the student in {dir} (vocab_size: student 97 vs teacher 120)"),
        ("unknown-key", "has unknown keys ['colour']: remove them"),
        ("missing-key", "lacks keys ['mode']"),
        ("no-weights", f"{WEIGHTS_NAME} is missing"),
        ("truncated", f"{WEIGHTS_NAME} is damaged"),
    ],
)
def test_generate_bad_student_directory(root, capsys, variant, message):
    directory = root / variant
    assert message.format(dir=directory) in user_error(["generate", str(directory), "the cat"], capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "1.5"], "top_p=1.5 is invalid"),
        (["--top-k", "-1"], "top_k=-1 is invalid"),
        (["--temperature", "nan"], "temperature=nan is invalid"),
        (["--max-new-tokens", "-3"], "max_new_tokens=-3 is invalid"),
    ],
)
def test_generate_sampling_out_of_range(root, capsys, flags, message):
    assert message in user_error(["generate", str(root / "student"), "the cat", *flags], capsys)


def test_generate_text_that_is_not_utf8(root, capsys):
    # A command-line argument's bytes that are not UTF-8 reach Python as lone surrogates.
    assert "PROMPT is not valid UTF-8 text" in user_error(["generate", str(root / "student"), "the \udcff cat"], capsys)


def test_chat_repl_needs_a_chat_template(root, capsys):
    assert "has no chat template, so the chat REPL" in user_error(["generate", str(root / "plain-student")], capsys)


def test_bench_bad_questions_and_output(root, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_bytes(b'{"question_id": 1, "turns": ["\xff"]}\n')
    assert "is not UTF-8 text (invalid start byte at byte 30)" in user_error(
        ["bench", str(root / "student"), "--questions", str(questions)], capsys)
    questions.write_text(json.dumps({"question_id": 1, "turns": ["the cat", "the dog"]}) + "\n")
    assert "multi-turn questions need" in user_error(["bench", str(root / "plain-student"), "--questions", str(questions)], capsys)
    assert "is a file" in user_error(["bench", str(root / "student"), "--questions", str(questions), "--out", str(questions)], capsys)


# ---------------------------------------------------------------- the chat REPL's terminal events


class Keyboard:
    """Stands in for ``input``: each item is a line to return or an exception to raise."""

    def __init__(self, *events) -> None:
        self.events = list(events)

    def __call__(self, prompt: str = "") -> str:
        event = self.events.pop(0)
        if isinstance(event, BaseException):
            raise event
        return event


def test_repl_survives_ctrl_c_bad_bytes_and_ends_on_closed_stdin(root, capsys, monkeypatch):
    monkeypatch.setattr("builtins.input", Keyboard(
        KeyboardInterrupt(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "the \udcff cat", "the cat", EOFError()))
    assert main(["generate", str(root / "student"), "--max-new-tokens", "3", "--no-baseline"]) == 0
    err = capsys.readouterr().err
    assert err.count("error: the input is not valid UTF-8 text: type or pass it in UTF-8") == 2
    assert err.count("tokens/call") == 1 and "Traceback" not in err

    # Ctrl-C while answering abandons that answer only; a stdin closed since (0<&-) ends the REPL.
    def interrupted(*args, **kwargs):
        monkeypatch.setattr("sys.stdin", None)
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", Keyboard("the cat"))
    monkeypatch.setattr("ptp.commands.generate.generate", interrupted)
    assert main(["generate", str(root / "student"), "--max-new-tokens", "3"]) == 0
    assert "(interrupted)" in capsys.readouterr().err


# ---------------------------------------------------------------- SIGKILL at random moments, then resume

TRAIN = ["--num-draft-tokens", "4", "--lora-rank", "4", "--batch-size", "2", "--steps", "16", "--val-every", "4",
         "--checkpoint-every", "1", "--keep-checkpoints", "2", "--val-windows", "8", "--warmup-steps", "2", "--lr", "1e-2"]
PREGENERATE = ["--no-progress", "--batch-size", "1", "--shard-size", "1"]  # a shard (and index write) per example


@pytest.fixture(scope="module")
def experiment(root) -> Path:
    """A completions experiment small enough that a killed-and-resumed run takes a second or two."""
    directory = root / "exp"
    assert main(["distill", str(root / "teacher"), str(root / "qa.jsonl"), str(directory), "--prompt-column", "question",
                 "--completion-tokens", "8", "--max-prompt-tokens", "32", "--val-examples", "1", *TRAIN]) == 0
    return directory


@pytest.fixture(scope="module")
def reference(experiment, root) -> Path:
    """The uninterrupted pregeneration and training of ``experiment``."""
    directory = copy_experiment(experiment, root / "reference")
    assert main(["pregenerate", str(directory), *PREGENERATE]) == 0
    assert main(["train", str(directory), "--no-progress"]) == 0
    return directory


def copy_experiment(source: Path, target: Path, data: bool = False) -> Path:
    target.mkdir()
    shutil.copy(source / EXPERIMENT_FILE, target / EXPERIMENT_FILE)
    if data:
        shutil.copytree(source / DATA_DIR, target / DATA_DIR)
    return target


def edit_experiment(directory: Path, section: str, **values) -> None:
    raw = yaml.safe_load((directory / EXPERIMENT_FILE).read_text())
    raw[section].update(values)
    (directory / EXPERIMENT_FILE).write_text(yaml.safe_dump(raw))


def test_damaged_or_foreign_pregenerated_data(reference, root, capsys):
    directory = copy_experiment(reference, root / "broken-data", data=True)
    index_file = directory / DATA_DIR / INDEX_FILE
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({k: v for k, v in index.items() if k not in ("done", "complete")}))
    for command in ("pregenerate", "train"):
        assert "index.json is damaged (no complete, done): delete its directory" in user_error([command, str(directory)], capsys)
    index_file.write_text(json.dumps(index))
    shard = directory / DATA_DIR / index["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-50])
    assert "shard-00000.safetensors is missing or damaged" in user_error(["train", str(directory)], capsys)
    # experiment.yaml now names another teacher (another vocabulary) than the data were sampled from
    edit_experiment(directory, "model", teacher=str(root / "vocab"))
    assert "was generated with another configuration or dataset" in user_error(["train", str(directory)], capsys)


def test_pregenerate_checks_an_edited_experiment_against_the_context(experiment, root, capsys):
    directory = copy_experiment(experiment, root / "long")
    edit_experiment(directory, "data", completion_tokens=600)
    assert "= 632 exceeds the teacher's context of 512 tokens" in user_error(["pregenerate", str(directory)], capsys)
    assert not (directory / DATA_DIR).exists()


def start(argv: list[str], die_at_rename: int = 0) -> multiprocessing.Process:
    """``ptp argv`` in a forked child (no fresh interpreter: a run costs only the command's own start-up).

    With ``die_at_rename=n`` the child SIGKILLs itself in its n-th atomic write, after writing the
    temporary file and before renaming it into place.
    """

    def run() -> None:
        if die_at_rename:
            renames, replace = itertools.count(1), os.replace
            os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL) if next(renames) == die_at_rename else replace(*a)
        main(argv)

    child = multiprocessing.get_context("fork").Process(target=run)
    child.start()
    return child


def kill_after(child: multiprocessing.Process, progressed, delay: float) -> bool:
    """SIGKILL ``child`` ``delay`` s after ``progressed()`` turns true; whether it was killed (not finished first)."""
    deadline = time.monotonic() + 120
    while not progressed() and child.is_alive():
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)
    time.sleep(delay)
    child.kill()
    return died_of_sigkill(child)


def died_of_sigkill(child: multiprocessing.Process) -> bool:
    child.join()
    return child.exitcode == -signal.SIGKILL


def test_pregenerate_resumes_after_sigkill_at_random_moments(experiment, reference, root):
    directory = copy_experiment(experiment, root / "killed-pregenerate")
    data = directory / DATA_DIR
    rng = random.Random(5)
    done = 0  # examples the index lists
    argv = ["pregenerate", str(directory), *PREGENERATE]
    for _ in range(3):
        # Each kill comes at a random moment of the examples after the next one listed: while
        # sampling, or in the middle of writing a shard or the index.
        assert kill_after(start(argv), lambda: listed(data) > done, rng.uniform(0, 0.03))
        index = json.loads((data / INDEX_FILE).read_text())
        for shard in index["shards"]:  # every listed shard is whole and holds its examples
            assert load_file(str(data / shard["file"]))["examples"].tolist() == list(range(shard["start"], shard["stop"]))
        assert index["done"] > done  # nothing listed before the kill is lost
        done = index["done"]
    # And once for certain inside a write: the next shard is in place, the index naming it is not.
    assert died_of_sigkill(start(argv, die_at_rename=2))
    assert listed(data) == done and list(data.glob(".index.json.*.tmp"))
    assert main(argv) == 0
    # The same files as the uninterrupted run, byte for byte, and no temporary file left.
    names = sorted(p.name for p in (reference / DATA_DIR).iterdir())
    assert sorted(p.name for p in data.iterdir()) == names
    assert all((data / name).read_bytes() == (reference / DATA_DIR / name).read_bytes() for name in names)


def listed(data: Path) -> int:
    """Examples the index lists (it is replaced atomically, so it is always whole)."""
    return json.loads((data / INDEX_FILE).read_text())["done"] if (data / INDEX_FILE).is_file() else 0


def test_train_resumes_after_sigkill_at_random_moments(experiment, reference, root, capsys):
    directory = copy_experiment(reference, root / "killed-train", data=True)
    checkpoints = directory / CHECKPOINT_DIR
    rng = random.Random(9)
    saved = 0  # most steps of any checkpoint on disk
    argv = ["train", str(directory), "--no-progress"]
    for die_at_rename in (0, 0, 0, 2):
        # Each kill comes at a random moment of the steps after the next checkpoint (in a step, in
        # validation, or while writing step-N, last or best); the last one for certain inside the
        # write of last.ckpt after the next step-N.
        child = start(argv, die_at_rename)
        assert died_of_sigkill(child) if die_at_rename else kill_after(child, lambda: newest_step(checkpoints) > saved, rng.uniform(0, 0.1))
        steps = [read_checkpoint(path)["global_step"] for path in checkpoints.glob("*.ckpt")]  # none is damaged
        assert max(steps) >= saved + 1  # nothing saved before the kill is lost
        saved = max(steps)
    assert list(checkpoints.glob(".last.ckpt.*.tmp"))
    capsys.readouterr()
    assert main(argv) == 0
    assert f"at step {saved} of 16" in capsys.readouterr().err  # resumed from the newest save
    assert not list(checkpoints.glob(".*")), "temporary files of killed saves are removed"
    got, expected = (load_file(str(d / STUDENT_DIR / WEIGHTS_NAME)) for d in (directory, reference))
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def newest_step(checkpoints: Path) -> int:
    """Steps of the newest ``step-N`` checkpoint (its name appears only once it is complete)."""
    return max((int(p.stem.removeprefix("step-")) for p in checkpoints.glob("step-*.ckpt")), default=0)


# ---------------------------------------------------------------- nothing unsafe is loaded

REPOSITORY = Path(__file__).parent.parent
SOURCES = sorted((REPOSITORY / "src" / "ptp").rglob("*.py")) + sorted((REPOSITORY / "benchmarks").rglob("*.py"))


def test_every_torch_load_refuses_pickled_code_and_remote_code_stays_off():
    loads = []
    for path in SOURCES:
        text = path.read_text()
        assert "pickle.load" not in text and "trust_remote_code=True" not in text, path
        for call in text.split("torch.load(")[1:]:
            loads.append(path.name)
            assert "weights_only=True" in call.split("\n")[0], f"{path}: torch.load without weights_only=True"
    assert set(loads) == {"train.py"}  # the one pickle format ptp reads: its own Lightning checkpoints


def test_trust_remote_code_is_off_unless_asked(experiment):
    assert yaml.safe_load((experiment / EXPERIMENT_FILE).read_text())["model"]["trust_remote_code"] is False
    for load in (load_config, load_teacher, load_tokenizer):
        assert inspect.signature(load).parameters["trust_remote_code"].default is False, load.__name__


def test_files_are_written_with_the_users_umask(tmp_path):
    import os
    import stat

    from ptp.io import write_text

    previous = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640  # was 0600 whatever the umask


def test_bench_out_that_cannot_be_written_fails_before_the_first_question(root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: a path under a file stands in
            target = tmp_path / "file"
            target.write_text("x")
            out = target / "results"
        else:
            out = locked / "results"
        questions = tmp_path / "q.jsonl"
        questions.write_text(json.dumps({"question_id": 1, "turns": ["the cat"]}) + "\n")
        assert "cannot be written" in user_error(["bench", str(root / "student"), "--questions", str(questions),
                                                  "--out", str(out)], capsys)
    finally:
        locked.chmod(0o700)


def test_seed_beyond_64_bits_is_one_line(root, capsys):
    assert "seed=" in user_error(["generate", str(root / "student"), "the cat", "--seed", str(2**64)], capsys)


def test_a_shard_path_outside_the_experiment_is_refused(reference, root, capsys):
    directory = copy_experiment(reference, root / "escaping-index", data=True)
    index_path = directory / DATA_DIR / INDEX_FILE
    index = json.loads(index_path.read_text())
    outside = root / "outside.safetensors"
    shutil.copy(directory / DATA_DIR / index["shards"][0]["file"], outside)
    index["shards"][0]["file"] = "../../outside.safetensors"
    index_path.write_text(json.dumps(index))
    from ptp.pregenerate import load_shards

    with pytest.raises(UserError, match="outside"):
        load_shards(directory)
    index["shards"][0]["file"] = 7  # a field of the wrong type
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="file is not of type str"):
        load_shards(directory)


def test_one_process_per_experiment(experiment, root, capsys):
    """A second pregenerate or train on a locked experiment is a one-line error naming the holder;
    the lock goes with its holder (here: the block ends, as a process's exit ends it)."""
    from ptp.locks import experiment_lock

    directory = copy_experiment(experiment, root / "locked-experiment")
    with experiment_lock(directory, "train"):
        for command in ("pregenerate", "train"):
            message = user_error([command, str(directory), "--no-progress"], capsys)
            assert f"in use by process {os.getpid()}" in message
    assert main(["pregenerate", str(directory), *PREGENERATE]) == 0  # free again


def test_remote_code_needs_the_flag_not_just_the_config(reference, root, capsys):
    directory = copy_experiment(reference, root / "remote-code", data=True)
    edit_experiment(directory, "model", trust_remote_code=True)
    for command in ("pregenerate", "train"):
        assert "pass --trust-remote-code to ptp " + command in user_error([command, str(directory), "--no-progress"], capsys)
    assert main(["pregenerate", str(directory), "--no-progress", "--trust-remote-code"]) == 0  # allowed: it runs


def test_relative_model_and_dataset_paths_travel(root, tmp_path, capsys, monkeypatch):
    """Relative MODEL and DATASET are stored absolute: later commands run from anywhere, and a
    vanished local path is one line (it used to be looked up on the Hub as a repo id)."""
    shutil.copytree(root / "teacher", tmp_path / "teacher")
    shutil.copy(root / "qa.jsonl", tmp_path / "qa.jsonl")
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "teacher", "qa.jsonl", "exp", "--prompt-column", "question", "--completion-tokens", "4",
                 "--max-prompt-tokens", "32", "--val-examples", "1", *TRAIN]) == 0
    saved = yaml.safe_load((tmp_path / "exp" / EXPERIMENT_FILE).read_text())
    assert (saved["model"]["teacher"], saved["data"]["dataset"]) == (str(tmp_path / "teacher"), str(tmp_path / "qa.jsonl"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["pregenerate", "../exp", *PREGENERATE]) == 0
    copy_experiment(tmp_path / "exp", tmp_path / "again")  # no data yet: pregenerate reads the dataset
    (tmp_path / "qa.jsonl").rename(tmp_path / "moved.jsonl")
    assert f"no such file or directory {str(tmp_path / 'qa.jsonl')!r}" in user_error(["pregenerate", "../again", *PREGENERATE], capsys)
    shutil.rmtree(tmp_path / "teacher")
    assert f"no such directory {str(tmp_path / 'teacher')!r}" in user_error(["pregenerate", "../again", *PREGENERATE], capsys)


def test_devices_in_yaml_mean_what_the_flag_means(experiment, root, capsys):
    """``devices: 1`` in experiment.yaml was refused (expected a str) though --devices 1 works."""
    from ptp.cli import build_parser, dataclass_from_args
    from ptp.experiment import Experiment, TrainerConfig

    directory = copy_experiment(experiment, root / "devices")
    edit_experiment(directory, "trainer", devices=1)
    flag = dataclass_from_args(TrainerConfig, build_parser("train").parse_args(["train", str(directory), "--devices", "1"]))
    assert Experiment.load(directory).trainer.devices == flag.devices == "1"
    edit_experiment(directory, "trainer", devices=1.5)
    assert "trainer.devices = 1.5 is invalid: expected a str or int" in user_error(["train", str(directory)], capsys)


def test_distill_dir_that_cannot_be_written_is_one_line(root, capsys):
    """A file in the way, or a directory the kernel refuses (root ignores permissions, not /proc), was a traceback."""
    for directory in (root / "qa.jsonl" / "exp", Path("/proc/ptp-experiment")):
        assert "cannot be written" in user_error(["distill", str(root / "teacher"), str(root / "qa.jsonl"), str(directory),
                                                  *Q, "--val-examples", "1", "--max-prompt-tokens", "32"], capsys)


MISTYPED = [("done", "3", "done is not of type int"), ("shards", 5, "shards is not of type list"),
            ("shards", [3], "shard 0: not a mapping"), ("shards", [{"file": 7}], "shard 0: file is not of type str")]


@pytest.mark.parametrize(("field", "value", "message"), [*MISTYPED, ("complete", 1, "complete is not of type bool")])
def test_completions_index_fields_of_the_wrong_type_are_one_line(reference, root, capsys, field, value, message):
    """index.json shards: 5 or [3] was a TypeError traceback; done: "3" and complete: 1 passed unnoticed."""
    directory = copy_experiment(reference, root / f"mistyped-{field}-{value}", data=True)
    index_path = directory / DATA_DIR / INDEX_FILE
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), field: value}))
    for command in ("pregenerate", "train"):
        assert f"index.json is damaged ({message}): delete its directory" in user_error([command, str(directory), "--no-progress"], capsys)


@pytest.mark.parametrize(("field", "value", "message"), [*MISTYPED, ("tokens", None, "tokens is not of type int")])
def test_features_index_fields_of_the_wrong_type_are_one_line(tmp_path, field, value, message):
    from ptp.features import FeatureShardWriter, load_feature_shards

    directory = tmp_path / "features"
    FeatureShardWriter(directory, {"layer": 1}).write([(torch.arange(3), torch.zeros(3, 4), torch.zeros(3), torch.ones(3))])
    index_path = directory / "index.json"
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), field: value}))
    for read in (load_feature_shards, lambda d: FeatureShardWriter(d, {"layer": 1})):
        with pytest.raises(UserError, match=f"index.json is damaged \\({re.escape(message)}\\)"):
            read(directory)


def test_stdout_to_a_closed_pipe_or_a_full_device_is_one_line(root):
    """ptp generate ... | head -c1 and > /dev/full were a BrokenPipeError / OSError traceback."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ptp.cli", "generate", str(root / "student"), "the cat", "--max-new-tokens", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    closed = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    closed.stdout.close()  # the reader is gone before the first token
    errors = {"closed pipe": (closed.wait(), closed.stderr.read().decode())}
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, env=env, text=True)
    errors["full device"] = (done.returncode, done.stderr)
    for what, (code, err) in errors.items():
        assert code == 2 and "Traceback" not in err and "Exception ignored" not in err, (what, err)
        assert err.strip().splitlines()[-1].startswith("ptp generate: error: "), (what, err)
    assert "broken pipe" in errors["closed pipe"][1] and "No space left on device" in errors["full device"][1]


def test_bench_skips_a_turn_past_the_context_and_keeps_the_rest(root, tmp_path, capsys):
    """A second turn past the tiny teacher's 512 tokens used to end the run with an error, every result lost."""
    long = " ".join(["the cat sat on the mat"] * 90)  # about 540 tokens
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in [
        {"question_id": 1, "category": "a", "turns": ["the cat", long, "the dog"]},
        {"question_id": 2, "category": "b", "turns": ["the dog ran"]}]))
    out = tmp_path / "out"
    assert main(["bench", str(root / "student"), "--questions", str(questions), "--methods", "ar", "verify",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_turns"] == [[1, 2], [1, 3]] and "Skipped 2 turn(s)" in capsys.readouterr().out
    metrics = summary["metrics"]
    assert metrics["verify"]["overall"]["tokens"] == metrics["ar"]["overall"]["tokens"] > 0 and summary["lossless"]["verify"] == 0
    answers = [json.loads(line) for line in (out / "verify.jsonl").read_text().splitlines()]
    assert [len(a["choices"][0]["turns"]) for a in answers] == [1, 1]


# ---------------------------------------------------------------- student options that cannot train


@pytest.mark.parametrize(("flags", "message"), [
    (["--aux-dim", "0"], "aux_dim=0 is invalid: use an integer >= 1"),
    (["--aux-dim", "-1"], "aux_dim=-1 is invalid"),
    (["--lora-targets", "nothing"], "lora_targets=['nothing'] match no linear layer of the teacher: name module suffixes it has (e.g."),
])
def test_distill_refuses_student_options_that_cannot_train(root, tmp_path, capsys, flags, message):
    """--aux-dim 0 was a ZeroDivisionError and --lora-targets nothing a ValueError, both in ptp train, after distill accepted them."""
    argv = ["distill", str(root / "teacher"), str(root / "qa.jsonl"), str(tmp_path / "exp"), "--val-examples", "1", *Q,
            "--completion-tokens", "8", "--max-prompt-tokens", "32", *flags]
    assert message in user_error(argv, capsys)
    assert not (tmp_path / "exp").exists()


def test_empty_lora_targets_in_yaml_and_bad_student_configs_are_one_line(experiment, root, tmp_path, capsys):
    directory = copy_experiment(experiment, tmp_path / "no-targets")
    edit_experiment(directory, "model", lora_targets=[])
    assert "lora_targets=[] is invalid: name module suffixes" in user_error(["train", str(directory), "--no-progress"], capsys)
    for name, value, message in (("aux_dim", 0, "aux_dim=0 is invalid"), ("lora_targets", [], "lora_targets=[] is invalid"),
                                 ("lora_targets", ["nothing"], "match no linear layer of the teacher")):
        student = edit_student(root / "student", tmp_path / f"{name}-{value}", lambda c: c.update({name: value}))
        with pytest.raises(UserError, match=re.escape(message)):
            Student.from_pretrained(student)


# ---------------------------------------------------------------- a student on another teacher's weights


def test_a_student_on_a_teacher_with_other_weights_warns_and_stays_lossless(tmp_path, capsys):
    from ptp.generate import generate
    from ptp.head import HeadStudent
    from ptp.sampling import draw_uniform
    from ptp.student import TeacherMismatchWarning
    from test_generate import reference_tokens

    prompt = torch.tensor([0, 5, 9, 12, 7])
    for kind in ("lora", "head"):
        options = {"kind": "head", "num_layers": 1} if kind == "head" else {"lora_rank": 4}
        Student.from_teacher(tiny_teacher("llama", seed=0), num_draft_tokens=4, **options).save_pretrained(tmp_path / kind)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same weights, also rounded to bfloat16: no warning
            Student.from_pretrained(tmp_path / kind, teacher=tiny_teacher("llama", seed=0))
            Student.from_pretrained(tmp_path / kind, teacher=tiny_teacher("llama", seed=0, dtype=torch.bfloat16))
        other = tiny_teacher("llama", seed=1)  # same shape, other weights
        with pytest.warns(TeacherMismatchWarning, match="not those the student in .* was trained on"):
            student = Student.from_pretrained(tmp_path / kind, teacher=other)
        u = draw_uniform(16, seed=3)
        sampling = SamplingConfig(temperature=0.8)
        assert generate(student, prompt, 16, sampling=sampling, u=u).tokens.tolist() == reference_tokens(other, prompt, u, sampling)
        # Students saved before the fingerprint existed load without a warning.
        config = json.loads((tmp_path / kind / CONFIG_NAME).read_text())
        del config["teacher_fingerprint"]
        (tmp_path / kind / CONFIG_NAME).write_text(json.dumps(config))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert isinstance(Student.from_pretrained(tmp_path / kind, teacher=tiny_teacher("llama", seed=1)),
                              HeadStudent if kind == "head" else Student)


def test_the_cli_prints_the_teacher_warning_as_one_line(root, tmp_path):
    import subprocess
    import sys

    student = edit_student(root / "student", tmp_path / "other-teacher", lambda c: c.update(teacher_fingerprint=[0.5] * 24))
    done = subprocess.run([sys.executable, "-m", "ptp.cli", "generate", str(student), "the cat", "--max-new-tokens", "4"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert done.returncode == 0 and len(lines) == 1, done.stderr
    assert lines[0].startswith("ptp: warning: the teacher's weights are not those"), lines
