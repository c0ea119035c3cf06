"""The paper's small-scale experiments in miniature: Tables 1, 2, 4-8 and Figure 5 on NYC flights,
and longer runs of O-PTP, C-PTP and MTP (is the budget what separates them?).

    python benchmarks/paper/suite.py            # full: about 90 minutes of one CPU core
    python benchmarks/paper/suite.py --quick    # a few minutes, tiny models (checks the pipeline)

Options: ``--out DIR`` (default ``runs/paper-full`` / ``runs/paper-quick``), ``--report PATH``
(default ``benchmarks/paper/REPORT.md`` for the full suite, ``OUT/REPORT.md`` for ``--quick``),
``--threads N`` (torch threads, default 1: on a busy 2-core machine more threads are slower),
``--estimate`` (only print the projected time of the suite, from a few timed steps of each piece).

One teacher (a GPT-2-style model trained on the data set) serves every table; students are
``ptp.Student``s on copies of it, trained by one loop (``training.train_student``) and shared
between tables where the paper's setup is the same (the default O-PTP is a row of Tables 2, 4, 5,
6, 7 and 8). Every finished part (teacher, pregenerated data, evaluation sets, each student's
result and weights, each table) is stored in OUT and skipped by a rerun, so a killed run resumes;
a rerun with another scale or seed refuses to mix results (use another ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ptp import Student  # noqa: E402
from ptp.io import write_bytes, write_json  # noqa: E402
from safetensors.torch import load_file, save  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

import evaluation  # noqa: E402
from curves import plot_curves  # noqa: E402
from estimate import estimate  # noqa: E402
from figure5 import figure5  # noqa: E402
from flights import load_flights  # noqa: E402
from report import write_report  # noqa: E402
from scale import FULL, QUICK, Scale  # noqa: E402
from specs import curve_specs, defaults, table_specs  # noqa: E402
from training import RunSpec, dataset_targets, pregenerate_teacher, train_autoregressive, train_student  # noqa: E402

SEED = 0


class Store:
    """Results and artefacts under OUT; ``cached`` computes a JSON result once."""

    def __init__(self, out: Path, scale: Scale) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        stamp = {"scale": scale.to_dict(), "seed": SEED}
        path = out / "scale.json"
        if not path.is_file():
            write_json(path, stamp)
        elif json.loads(path.read_text()) != json.loads(json.dumps(stamp)):
            raise SystemExit(f"{out} holds results of another scale or seed: pass another --out or delete it")

    def cached(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.out / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        start, cpu = time.perf_counter(), time.process_time()
        result = compute()
        # CPU seconds of this process: the wall time an idle machine would take (one thread),
        # whatever else shared the CPU during this run.
        result["seconds"], result["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
        write_json(path, result)
        say(f"{name}: {result['seconds']:.0f} s ({result['cpu_seconds']:.0f} s CPU)")
        return result

    def tensors(self, name: str, compute: Callable[[], Any], cls: type | None = None) -> Any:
        """``compute()``'s tensors (a dict, or a dataclass ``cls`` of tensors), cached in safetensors."""
        path = self.out / "data" / f"{name}.safetensors"
        if path.is_file():
            data = load_file(str(path))
            return cls(**data) if cls is not None else data
        value = compute()
        data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        write_bytes(path, save({k: v.contiguous() for k, v in data.items()}))
        return value


def say(message: str) -> None:
    print(f"[paper suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Suite:
    """Trains and evaluates everything the tables need, on demand and cached."""

    def __init__(self, scale: Scale, out: Path) -> None:
        self.scale, self.store = scale, Store(out, scale)
        self.data = load_flights(scale.chunk_len)
        self.teacher = self._teacher()
        self._eval: dict[str, evaluation.EvalSet] = {}

    def _teacher(self) -> GPT2LMHeadModel:
        directory = self.store.out / "teacher"

        def compute() -> dict[str, Any]:
            model, metrics = train_autoregressive(self.data.train, self.scale, self.scale.teacher_steps, 0.1, "teacher", SEED)
            model.save_pretrained(directory)
            return {**metrics, "test_perplexity": evaluation.autoregressive_perplexity(model, self.data.test)}

        self.teacher_metrics = self.store.cached("teacher", compute)
        return GPT2LMHeadModel.from_pretrained(directory).eval()

    def source(self, spec: RunSpec) -> dict[str, torch.Tensor]:
        """Training sequences of the spec's proposal distribution."""
        if spec.proposal == "teacher":
            return self.store.tensors(f"teacher-{spec.order}", lambda: pregenerate_teacher(self.teacher, self.data.train, self.scale, spec.order, SEED))
        if spec.proposal == "dataset":
            return self.store.tensors(f"dataset-{spec.order}", lambda: dataset_targets(self.teacher, self.data.train, spec.order))
        return {"tokens": self.data.train, "first": torch.ones(len(self.data.train), dtype=torch.int64)}

    def eval_set(self, order: str, table7: bool = False) -> evaluation.EvalSet:
        s = self.scale
        contexts, draws, n = (s.table7_contexts, max(s.table7_m), s.num_draft) if table7 else (s.eval_contexts, 1, max(s.table8_n))
        name = f"eval-{order}-{contexts}x{draws}"
        if name not in self._eval:
            self._eval[name] = self.store.tensors(name, lambda: evaluation.build_eval_set(
                self.teacher, self.data.test, contexts, draws, n, order, SEED), evaluation.EvalSet)
        return self._eval[name]

    def student_dir(self, spec: RunSpec) -> Path:
        return self.store.out / "students" / spec.name

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Train and evaluate one student (#correct on held-out contexts), once."""
        def compute() -> dict[str, Any]:
            student, metrics = train_student(spec, self.teacher, self.source(spec), self.scale, self.scale.steps, SEED)
            student.save_pretrained(self.student_dir(spec))
            values = evaluation.correct(student, self.eval_set(spec.order), spec.order)
            return {"spec": spec.__dict__, **metrics, **evaluation.summary(values, spec.num_draft)}

        return self.store.cached(f"students/{spec.name}", compute)

    def student(self, spec: RunSpec) -> Student:
        self.run(spec)
        return Student.from_pretrained(self.student_dir(spec), teacher=copy.deepcopy(self.teacher)).eval()

    def curve(self, spec: RunSpec) -> dict[str, Any]:
        """One student trained ``curve_steps`` steps, #correct measured along the way, once."""
        s = self.scale

        def compute() -> dict[str, Any]:
            es = self.eval_set(spec.order)
            points: list[dict[str, float]] = []

            def measure(done: int, student: Student) -> None:
                if done in s.curve_points:
                    values = evaluation.correct(student, es, spec.order)
                    points.append({"step": done, **evaluation.summary(values, spec.num_draft),
                                   "first_slot": evaluation.first_slot_share(values)})

            _, metrics = train_student(spec, self.teacher, self.source(spec), s, s.curve_steps, SEED, measure)
            return {"spec": spec.__dict__, **metrics, "points": points}

        return self.store.cached(f"curves/{spec.name}", compute)

    def curves(self) -> dict[str, Any]:
        """The longer runs, and the first-slot share a u-ignoring argmax predictor would reach."""
        runs = {spec.name: self.curve(spec) for spec in curve_specs(self.scale)}
        return {"runs": runs, "argmax_share": evaluation.argmax_share(self.teacher, self.eval_set("id"))}

    def table1(self) -> dict[str, Any]:
        """C-PTP from data alone (Alg. 3) vs an autoregressive model, same architecture, steps and batch."""
        s = self.scale

        def compute() -> dict[str, Any]:
            ar, ar_metrics = train_autoregressive(self.data.train, s, s.table1_steps, 0.0, "table1-ar", SEED)
            spec = RunSpec(mode="c-ptp", loss="ce", proposal="inverse", num_draft=s.table1_num_draft)
            cptp, cptp_metrics = train_student(spec, None, self.source(spec), replace(s, batch=s.teacher_batch),
                                               s.table1_steps, SEED)
            params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
            return {"perplexity": evaluation.perplexities(ar, cptp, self.data.test, s.windows, spec.order, SEED),
                    "ar": ar_metrics, "c-ptp": cptp_metrics, "params": {"ar": params(ar), "c-ptp": params(cptp)}}

        return self.store.cached("table1", compute)

    def table7(self) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            spec = defaults(self.scale)[0]
            return {"correct": evaluation.parallel_selection(self.student(spec), self.eval_set("id", table7=True),
                                                             self.scale.table7_m, "id")}

        return self.store.cached("table7", compute)

    def figure(self, path: Path) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            optp, _, mtp = defaults(self.scale)
            students = {"O-PTP": self.student(optp), "MTP": self.student(mtp)}
            return figure5(self.teacher, students, self.data.test, self.data.symbols, self.scale.fig5_grid, "id", SEED,
                           self.store.out / "figure5.png")

        result = self.store.cached("figure5", compute)
        write_bytes(path, (self.store.out / "figure5.png").read_bytes())
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and budgets: a few minutes")
    parser.add_argument("--out", type=Path, help="results directory (resumable)")
    parser.add_argument("--report", type=Path, help="where REPORT.md goes (its figures beside it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--estimate", action="store_true", help="only print the projected CPU time of the suite")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else FULL
    if args.estimate:
        print(json.dumps(estimate(scale, SEED), indent=2))
        return 0
    name = "quick" if args.quick else "full"
    out = args.out or Path("runs") / f"paper-{name}"
    report = args.report or (out / "REPORT.md" if args.quick else HERE / "REPORT.md")
    start = time.perf_counter()
    suite = Suite(scale, out)
    results: dict[str, Any] = {"scale": scale.to_dict(), "variant": name, "teacher": suite.teacher_metrics,
                               "data": {"train_chunks": len(suite.data.train), "test_chunks": len(suite.data.test),
                                        "flights": suite.data.tokens, "symbols": suite.data.symbols}}
    results["table1"] = suite.table1()
    results["runs"] = {}
    for table, specs in table_specs(scale).items():
        results[table] = [spec.name for spec in specs]
        for spec in specs:
            results["runs"][spec.name] = suite.run(spec)
    results["table7"] = suite.table7()
    results["figure5"] = suite.figure(report.parent / "figures" / "figure5.png")
    results["curves"] = suite.curves()
    plot_curves(results["curves"], report.parent / "figures" / "curves.png")
    results["wall_seconds_this_call"] = time.perf_counter() - start
    write_json(out / "results.json", results)
    write_report(results, report, scale)
    say(f"report written to {report} ({results['wall_seconds_this_call']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
