"""How long the suite takes at a scale, from a few timed steps of each of its pieces.

    python benchmarks/paper/suite.py --estimate [--quick]

Times (in CPU seconds of this process, so that other load on the machine does not count) a few
training steps of every distinct student, of the teacher and of both Table 1 models, on an
untrained teacher of the same size (the cost of a step does not depend on the weights), plus the
data preparation and evaluation pieces on a fraction of their samples, and scales them up to the
suite's step and sample counts. Nothing is written.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import torch
from transformers import GPT2LMHeadModel

import evaluation
from figure5 import student_map
from flights import load_flights
from scale import Scale
from specs import curve_specs, defaults, table_specs
from training import RunSpec, dataset_targets, gpt2_config, pregenerate_teacher, train_autoregressive, train_student

PROBE_STEPS = 3
SHRINK = 8


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def estimate(scale: Scale, seed: int = 0) -> dict[str, Any]:
    """Projected CPU seconds of each part of a suite run at ``scale`` (one torch thread).

    Per-sample pieces (pregeneration, evaluation sets, drafts, Figure 5) are timed on 1/``SHRINK``
    of their samples and scaled up: their cost is linear in the number of samples.
    """
    small = replace(scale, teacher_samples=max(1, scale.teacher_samples // SHRINK),
                    eval_contexts=max(1, scale.eval_contexts // SHRINK), table7_contexts=max(1, scale.table7_contexts // SHRINK))
    data = load_flights(scale.chunk_len)
    torch.manual_seed(seed)
    teacher = GPT2LMHeadModel(gpt2_config(scale, 0.1)).eval()
    parts: dict[str, float] = {}
    _, ar = train_autoregressive(data.train, scale, PROBE_STEPS, 0.1, "estimate", seed)
    parts["teacher"] = ar["cpu_seconds_per_step"] * scale.teacher_steps
    sources = {}
    sources["teacher"], cpu = _cpu(lambda: pregenerate_teacher(teacher, data.train, small, "id", seed))
    parts["pregenerate"] = cpu * SHRINK
    sources["dataset"], parts["dataset targets"] = _cpu(lambda: dataset_targets(teacher, data.train, "id"))
    sources["student"] = {"tokens": data.train, "first": torch.ones(len(data.train), dtype=torch.int64)}
    specs = list(dict.fromkeys(spec for table in table_specs(scale).values() for spec in table))
    per_step = {spec: train_student(spec, teacher, sources[spec.proposal], scale, PROBE_STEPS, seed)[1]["cpu_seconds_per_step"]
                for spec in specs}
    parts["students (training)"] = sum(per_step.values()) * scale.steps
    parts["longer runs"] = sum(per_step[spec] for spec in curve_specs(scale)) * scale.curve_steps
    orders = {spec.order for spec in specs}
    main_set, cpu = _cpu(lambda: evaluation.build_eval_set(teacher, data.test, small.eval_contexts, 1, max(scale.table8_n), "id", seed))
    parts["evaluation sets"] = cpu * SHRINK * len(orders)
    optp = train_student(defaults(scale)[0], teacher, sources["teacher"], scale, 1, seed)[0]
    _, cpu = _cpu(lambda: evaluation.correct(optp, main_set, "id"))
    parts["students (evaluation)"] = cpu * SHRINK * (len(specs) + len(curve_specs(scale)) * len(scale.curve_points))
    _, cpu = _cpu(lambda: evaluation.parallel_selection(optp, evaluation.build_eval_set(
        teacher, data.test, small.table7_contexts, max(scale.table7_m), scale.num_draft, "id", seed), scale.table7_m, "id"))
    parts["Table 7"] = cpu * SHRINK
    context = data.test[0, : scale.chunk_len // 2]
    _, cpu = _cpu(lambda: student_map(optp, context, scale.fig5_grid // 4, "id"))
    parts["Figure 5"] = cpu * 16 * 2  # two students, 16 times the grid points
    _, t1_ar = train_autoregressive(data.train, scale, PROBE_STEPS, 0.0, "estimate-ar", seed)
    spec = RunSpec(mode="c-ptp", loss="ce", proposal="inverse", num_draft=scale.table1_num_draft)
    _, t1_c = train_student(spec, None, sources["student"], replace(scale, batch=scale.teacher_batch), PROBE_STEPS, seed)
    parts["Table 1"] = (t1_ar["cpu_seconds_per_step"] + t1_c["cpu_seconds_per_step"]) * scale.table1_steps
    total = sum(parts.values())
    return {"parts_cpu_seconds": {k: round(v) for k, v in parts.items()}, "students": len(specs),
            "total_cpu_minutes": round(total / 60, 1), "note": "data and model loading (about a minute) not included"}
