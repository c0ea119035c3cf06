"""The paper reproduction suite (benchmarks/paper) end to end at its --quick scale: it builds the
flights data from the installed package, trains everything, fills every table of REPORT.md with
numbers, draws Figure 5, and a rerun reuses every finished part instead of training again."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "paper" / "suite.py"
HEADINGS = ("## Table 1", "## Table 2", "## Figure 5", "## Table 4", "## Table 5", "## Table 6", "## Table 7", "## Table 8",
            "## Extra: token order", "## Longer training", "## Discussion")
NUMBER = re.compile(r"\d+\.\d+")


def _run(out: Path, report: Path) -> None:
    subprocess.run([sys.executable, str(SUITE), "--quick", "--out", str(out), "--report", str(report)],
                   check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def test_quick_suite_fills_every_table_and_resumes(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report" / "REPORT.md"
    _run(out, report)
    text = report.read_text()
    positions = [text.index(h) for h in HEADINGS]
    assert positions == sorted(positions), "every table and the discussion, in order"
    for start, end in zip(positions, positions[1:]):
        section = text[start:end]
        rows = _table_rows(section)
        assert len(rows) >= 3, f"a table with a header and at least two rows in {section[:30]!r}"
        for row in rows[1:]:
            assert all(cell for cell in row), f"empty cell in {row}"
            assert any(NUMBER.search(cell) for cell in row[1:]), f"no number in {row}"
    assert "nan" not in text.lower()
    verdicts = re.findall(r"- \*\*(agrees|differs)\*\*", text)
    assert len(verdicts) >= 12, "a computed verdict per paper trend"
    for figure in ("figure5.png", "curves.png"):
        assert (report.parent / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    assert all(0.0 <= r["correct"] <= r["spec"]["num_draft"] for r in results["runs"].values())
    assert len(results["runs"]) == len(set(results["runs"])) >= 30
    curves = results["curves"]["runs"]
    assert len(curves) == 4 and all([p["step"] for p in r["points"]] == [4, 8] for r in curves.values())
    assert all(0.0 <= p["first_slot"] <= 1.0 for r in curves.values() for p in r["points"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "results.json"}
    _run(out, report)  # resumes: nothing is recomputed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
