"""``ptp bench``: Spec-Bench answer files, summary metrics, lossless check, plots and one-line errors."""

from __future__ import annotations

import json

import pytest

from ptp.cli import main
from tiny_models import write_student

METHODS = ["ar", "hf", "verify", "pqd", "pld", "hf-pld", "mtp", "assisted"]
QUESTIONS = [
    {"question_id": 7, "category": "qa", "turns": ["the cat sat on the mat", "where is it ?"]},
    {"question_id": "x2", "category": "math", "turns": ["who ran under the tree ?"]},
]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return write_student(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def mtp_dir(tmp_path_factory):
    return write_student(tmp_path_factory.mktemp("bench-mtp"), mode="mtp")


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def test_bench_writes_spec_bench_answers_summary_and_plots(student_dir, mtp_dir, questions, tmp_path, capsys):
    out = tmp_path / "out"
    assistant = mtp_dir.parent / "teacher"  # same tokenizer; its own copy of the weights
    assert main(["bench", str(student_dir), "--questions", str(questions), "--max-new-tokens", "6",
                 "--mtp", str(mtp_dir), "--assistant", str(assistant), "--out", str(out)]) == 0  # default: every method
    printed = capsys.readouterr().out
    assert "| category | method | MAT |" in printed
    for name in [f"{m}.jsonl" for m in METHODS] + ["summary.json", "summary.md", "speedup.png", "accept_lengths.png"]:
        assert (out / name).is_file(), name

    for method in METHODS:
        records = [json.loads(line) for line in (out / f"{method}.jsonl").read_text().splitlines()]
        assert [r["question_id"] for r in records] == [7, "x2"]
        for record, q in zip(records, QUESTIONS):
            assert record["category"] == q["category"] and method in record["model_id"] and "tstamp" in record
            choice = record["choices"][0]
            assert choice["index"] == 0
            assert len(choice["turns"]) == len(choice["new_tokens"]) == len(choice["wall_time"]) == len(q["turns"])
            assert sum(choice["accept_lengths"]) == sum(choice["new_tokens"])
            assert all(1 <= n <= 6 for n in choice["new_tokens"])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["categories"] == ["qa", "math", "overall", "task_average"]
    assert "| task_average | pqd |" in printed
    for method in METHODS:
        for category in summary["categories"]:
            entry = summary["metrics"][method][category]
            assert entry["mat"] >= 1.0 and "speedup_over_ar" in entry and "speedup_over_hf" in entry
    assert all(summary["metrics"][m][c]["mat"] == 1.0 for m in ("ar", "hf") for c in summary["categories"])
    assert summary["metrics"]["assisted"]["overall"]["mat"] > 1.0  # the assistant is the teacher itself
    assert summary["lossless"] == {"verify": 0, "pqd": 0, "pld": 0, "mtp": 0}
    assert all(m in summary["lossless_note"] for m in ("hf", "hf-pld", "assisted"))


def test_task_average_is_the_unweighted_mean_over_categories():
    from ptp.bench import BenchResult, Tally, markdown, summarize

    def tallies(scale: float) -> dict:
        # qa: 10 tokens in 5 calls (MAT 2) at 10 or 20 tok/s; math: 90 tokens in 90 calls (MAT 1) at 30 tok/s.
        return {"ar": {"qa": Tally(10, 10, 1.0), "math": Tally(90, 90, 3.0), "overall": Tally(100, 100, 4.0)},
                "pqd": {"qa": Tally(10, 5, 1.0 / scale), "math": Tally(90, 90, 3.0), "overall": Tally(100, 95, 3.0 + 1.0 / scale)}}

    result = BenchResult(methods=["ar", "pqd"], tallies=[tallies(1.0), tallies(2.0)])
    summary = summarize(result, {"runs": 2})
    assert summary["categories"] == ["qa", "math", "overall", "task_average"]
    average = summary["metrics"]["pqd"]["task_average"]
    assert average["mat"] == pytest.approx(1.5)  # (2 + 1) / 2; overall pools tokens: 100 / 95
    assert summary["metrics"]["pqd"]["overall"]["mat"] == pytest.approx(100 / 95)
    assert average["speedup_over_ar"]["mean"] == pytest.approx(((1 + 1) / 2 + (2 + 1) / 2) / 2)  # per run, then over runs
    assert average["speedup_over_ar"]["std"] == pytest.approx(0.25)
    assert average["tokens_per_second"]["mean"] == pytest.approx(((10 + 30) / 2 + (20 + 30) / 2) / 2)
    assert "| task_average | pqd | 1.50 |" in markdown(summary)


@pytest.mark.parametrize(
    "extra, content, message",
    [
        ([], '{"question_id": 1, "turns": ["hi"]}\n{not json\n', "line 2"),
        (["--categories", "poetry"], None, "unknown category poetry"),
        (["--methods", "ar", "beam"], None, "unknown method beam"),
        (["--questions", "/nonexistent/q.jsonl"], None, "does not exist"),
        (["--methods", "ar", "assisted"], None, "pass --assistant"),
        (["--methods", "mtp"], None, "pass --mtp"),
    ],
)
def test_bad_input_is_one_line_user_error(student_dir, questions, tmp_path, capsys, extra, content, message):
    if content is not None:
        questions.write_text(content)
    argv = ["bench", str(student_dir), "--questions", str(questions), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ptp bench: error:") and message in err[-1]
    assert not (tmp_path / "o").exists()


def test_mtp_must_be_an_mtp_student_of_the_same_teacher(student_dir, questions, tmp_path, capsys):
    argv = ["bench", str(student_dir), "--questions", str(questions), "--out", str(tmp_path / "o"), "--methods", "mtp"]
    assert main(argv + ["--mtp", str(student_dir)]) == 2
    assert "holds a o-ptp student" in capsys.readouterr().err


def test_drafters_are_methods_of_their_own_and_lossless(student_dir, questions, tmp_path, capsys):
    head = write_student(tmp_path / "head", mode="c-ptp", kind="head")
    lora = write_student(tmp_path / "lora", mode="mtp")
    out = tmp_path / "out"
    assert main(["bench", str(student_dir), "--questions", str(questions), "--max-new-tokens", "6", "--methods", "ar", "pqd",
                 "ptp-head", "mtp-lora", "--drafters", f"ptp-head={head}", f"mtp-lora={lora}", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lossless"] == {"pqd": 0, "ptp-head": 0, "mtp-lora": 0}
    assert (out / "ptp-head.jsonl").is_file() and "| overall | ptp-head |" in capsys.readouterr().out
    for spec, message in ((f"pqd={head}", "built-in method"), ("nameless", "NAME=STUDENT_DIR")):
        assert main(["bench", str(student_dir), "--questions", str(questions), "--drafters", spec, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
