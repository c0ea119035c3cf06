"""``ptp generate``: one-shot text and JSON, the chat REPL, and one-line errors."""

from __future__ import annotations

import io
import json

import pytest

from ptp.cli import main
from tiny_models import write_student


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return write_student(tmp_path_factory.mktemp("generate-cli"))


def test_one_shot_streams_text_and_stats(student_dir, capsys):
    assert main(["generate", str(student_dir), "the cat sat", "--max-new-tokens", "6", "--seed", "1", "--max-rows", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("\n")
    assert "tokens/call" in captured.err and "vs ar" in captured.err and "seed 1" in captured.err


def test_json_is_machine_readable_and_lossless(student_dir, capsys):
    for strategy in ("pqd", "verify", "pld"):
        assert main(["generate", str(student_dir), "the dog ran", "--json", "--strategy", strategy,
                     "--max-new-tokens", "6", "--seed", "3", "--temperature", "0"]) == 0
        stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert stats["identical_to_ar"] is True and 1 <= stats["tokens"] <= 6
        assert sum(stats["accepted_per_call"]) == stats["tokens"] and stats["strategy"] == strategy


def test_repl_keeps_history_resets_and_exits_on_closed_stdin(student_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n\n/reset\nwhere is it ?\n"))
    assert main(["generate", str(student_dir), "--max-new-tokens", "4", "--no-baseline", "--seed", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("tokens/call") == 2 and "history cleared" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "/nonexistent/student", "hi"], "does not exist"),
        (["generate", "{dir}", "   "], "PROMPT is empty"),
        (["generate", "{dir}", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "{dir}", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
        (["generate", "{dir}", "hi", "--strategy", "beam"], "strategy"),
        (["generate", "{dir}", "hi", "--draft-length", "9"], "draft_length"),
        (["generate", "{dir}", "hi", "--max-new-tokens", "600"], "context"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(student_dir, capsys, argv, message):
    assert main([a.format(dir=student_dir) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    # the error is the last line (transformers may draw its weight-loading bar before it)
    assert message in err.splitlines()[-1] and err.splitlines()[-1].startswith("ptp generate: error:")
    assert "Traceback" not in err


@pytest.fixture()
def shipped_is_tiny(student_dir, monkeypatch):
    """The tiny student stands in for the shipped one (the real one needs the 135M teacher)."""
    monkeypatch.setattr("ptp.demo.SHIPPED", student_dir)
    return student_dir


def test_a_lone_prompt_goes_to_the_shipped_student(shipped_is_tiny, capsys):
    assert main(["generate", "the cat sat", "--json", "--max-new-tokens", "3", "--seed", "1", "--no-baseline"]) == 0
    assert 1 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] <= 3


def test_no_argument_opens_the_repl_of_the_shipped_student(shipped_is_tiny, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n"))
    assert main(["generate", "--max-new-tokens", "2", "--no-baseline", "--seed", "0"]) == 0
    assert capsys.readouterr().err.count("tokens/call") == 1


@pytest.mark.parametrize("argv, expected", [
    (["{dir}", "the cat"], ("{dir}", "the cat")),                   # STUDENT_DIR PROMPT
    (["{dir}"], ("{dir}", None)),                                   # an existing directory: its REPL
    (["{parent}"], ("{dir}", None)),                                # an experiment directory holding student/
    (["Write a Python function."], ("{shipped}", "Write a Python function.")),
    (["What is 3/4 of 12?"], ("{shipped}", "What is 3/4 of 12?")),  # a / inside a sentence: still a prompt
    (["hello"], ("{shipped}", "hello")),
    ([], ("{shipped}", None)),
])
def test_positionals_resolve_to_student_and_prompt(shipped_is_tiny, argv, expected):
    from ptp.commands.generate import student_and_prompt

    names = {"dir": shipped_is_tiny, "parent": shipped_is_tiny.parent, "shipped": shipped_is_tiny}
    args = [a.format(**names) for a in argv] + [None] * (2 - len(argv))
    directory, prompt = student_and_prompt(*args)
    assert (str(directory), prompt) == (expected[0].format(**names), expected[1])


@pytest.mark.parametrize("lone", ["runs/missing", "./student", "~/nowhere"])
def test_a_lone_missing_path_is_an_error_not_a_prompt(shipped_is_tiny, capsys, lone):
    assert main(["generate", lone]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "read as a directory" in err


def test_an_order_other_than_the_trained_one_is_refused(tmp_path, capsys):
    from ptp import SamplingConfig, Student
    from ptp.models import load_teacher
    from tiny_models import write_assets

    model = write_assets(tmp_path, 4)["model"]
    Student.from_teacher(load_teacher(model), num_draft_tokens=4, lora_rank=4, teacher_name=model,
                         sampling=SamplingConfig(order="id")).save_pretrained(tmp_path / "student")
    assert main(["generate", str(tmp_path / "student"), "the cat", "--order", "rank"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ptp generate: error:") and "trained with token order 'id', not 'rank'" in err
    assert main(["generate", str(tmp_path / "student"), "the cat", "--order", "id", "--max-new-tokens", "2",
                 "--no-baseline"]) == 0
