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
