"""Issue 21's first list: ``ptp.generate`` is the function, a used teacher is refused in one line,
and ``ptp bench`` refuses a token order the student was not trained with."""

from __future__ import annotations

import importlib
import inspect

import pytest

from ptp import SamplingConfig, Student, UserError
from ptp.cli import main
from ptp.models import load_teacher
from tiny_models import write_assets


def test_ptp_generate_is_the_function_and_the_module_still_imports():
    from ptp import generate
    from ptp.generate import GenerationResult, generate as from_module

    assert inspect.isfunction(generate) and generate is from_module
    assert list(inspect.signature(generate).parameters)[:2] == ["model", "input_ids"]
    module = importlib.import_module("ptp.generate")
    assert inspect.ismodule(module) and module.GenerationResult is GenerationResult and module.generate is generate


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("cli-fixes"), 4)


def test_a_second_student_of_one_teacher_object_is_a_one_line_user_error(assets):
    teacher = load_teacher(assets["model"])
    Student.from_teacher(teacher, num_draft_tokens=4, lora_rank=4)
    with pytest.raises(UserError, match="already carries a student's gated LoRA.*load a fresh teacher") as error:
        Student.from_teacher(teacher, num_draft_tokens=4, lora_rank=4)
    assert "\n" not in str(error.value)
    Student.from_teacher(load_teacher(assets["model"]), num_draft_tokens=4, lora_rank=4)  # a fresh teacher works


def test_bench_refuses_an_order_the_student_was_not_trained_with(assets, tmp_path, capsys):
    student = Student.from_teacher(load_teacher(assets["model"]), num_draft_tokens=4, lora_rank=4,
                                   teacher_name=assets["model"], sampling=SamplingConfig(order="rank"))
    student.save_pretrained(tmp_path / "student")
    assert main(["bench", str(tmp_path / "student"), "--order", "id", "--limit", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ptp bench: error:") and "trained with token order 'rank', not 'id'" in err
    assert not (tmp_path / "out").exists()
