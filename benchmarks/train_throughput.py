"""Training throughput of ``ptp train`` on this machine, and the validation #correct curve.

    python benchmarks/train_throughput.py [EXPERIMENT_DIR] [--steps 150] [--out FILE]

With EXPERIMENT_DIR, trains it (pregenerate it first in completions mode; an existing run there
is resumed, so pass a fresh directory for a clean measurement). Without one, builds an O-PTP
experiment on the default teacher ``smollm2-135m-instruct`` in ``--workdir``: the prompts ask
the teacher to explain functions of the Python standard library, given their docstrings (real
text shipped with every Python), the teacher's completions are pregenerated, then trained.

Throughput counts only the time inside training steps (validation and checkpoints excluded,
the first step dropped as warm-up):

* sequence tokens/s: token rows of the training forward, padding included (what is computed);
* rows/s: token rows + draft slots (the rows of one training forward);
* windows/s and draft tokens/s: W windows of N slots per sequence.

Results go to ``--out`` (JSON, written atomically).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from ptp.cli import main as ptp
from ptp.default_teacher import DEFAULT_TEACHER
from ptp.experiment import Experiment
from ptp.io import write_json, write_text
from ptp.train import train

DEFAULT_STEPS = 150
STDLIB = ("json", "os", "os.path", "re", "string", "textwrap", "itertools", "functools", "collections", "pathlib",
          "statistics", "math", "random", "shutil", "glob", "fnmatch", "heapq", "bisect", "difflib", "csv", "base64",
          "hashlib", "datetime", "calendar", "fractions", "decimal", "copy", "pprint", "inspect", "typing", "enum")


def docstring_prompts(limit: int) -> list[dict[str, Any]]:
    """Chat messages about documented public functions of the standard library (sorted, deterministic)."""
    prompts = []
    for name in STDLIB:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            doc = inspect.getdoc(obj) if not attr.startswith("_") and inspect.isfunction(obj) else None
            if doc and len(doc) > 40:
                paragraph = doc.split("\n\n")[0][:400]
                question = (f"Explain what the Python function {name}.{attr} does and show an example. "
                            f"Its documentation says: {paragraph}")
                prompts.append({"messages": [{"role": "user", "content": question}]})
    step = max(1, len(prompts) // limit)  # spread over the modules rather than the first few
    return prompts[::step][:limit]


def build_experiment(workdir: Path, args: argparse.Namespace) -> Path:
    """Distill + pregenerate the default experiment (both resume if already done)."""
    directory = workdir / "exp"
    if not (directory / "experiment.yaml").is_file():
        data = workdir / "stdlib_prompts.jsonl"
        write_text(data, "".join(json.dumps(p) + "\n" for p in docstring_prompts(args.prompts)))
        flags = ["--messages-column", "messages", "--completion-tokens", str(args.completion_tokens),
                 "--max-prompt-tokens", "160", "--val-examples", "16", "--temperature", "0.7", "--top-k", "50", "--top-p", "0.9",
                 "--num-draft-tokens", "16", "--lora-rank", "16", "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                 "--warmup-steps", "10", "--val-every", str(args.val_every), "--val-windows", "64",
                 "--checkpoint-every", str(args.val_every), "--steps", str(args.steps or DEFAULT_STEPS)]
        if ptp(["distill", DEFAULT_TEACHER, str(data), str(directory), *flags]) != 0:
            sys.exit("distill failed")
    start = time.perf_counter()
    if ptp(["pregenerate", str(directory), "--batch-size", "16"]) != 0:
        sys.exit("pregenerate failed")
    print(f"pregenerate: {time.perf_counter() - start:.0f} s")
    return directory


class Meter(Callback):
    """Times each training step and records the validation curve."""

    def __init__(self, num_draft: int) -> None:
        self.num_draft = num_draft
        self.steps: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        b, t = batch["tokens"].shape
        windows = batch["starts"].numel()
        self.steps.append({"seconds": time.perf_counter() - self._start, "sequences": b, "tokens": b * t,
                           "windows": windows,
                           "rows": b * t + windows * self.num_draft,
                           "correct": float(trainer.callback_metrics.get("train/correct", float("nan")))})

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        metrics = trainer.callback_metrics
        self.curve.append({"step": trainer.global_step, "val_correct": round(float(metrics["val/correct"]), 4),
                           "val_accepted": round(float(metrics["val/accepted"]), 4), "val_loss": round(float(metrics["val/loss"]), 4)})
        print(f"\nstep {trainer.global_step}: validation #correct {metrics['val/correct']:.3f}, "
              f"#accepted {metrics['val/accepted']:.3f}, loss {metrics['val/loss']:.3f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", help="experiment directory to train (default: build one in --workdir)")
    parser.add_argument("--workdir", default="benchmarks/results/train_throughput")
    parser.add_argument("--prompts", type=int, default=160, help="prompts of the default experiment")
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, help=f"training steps (default: the experiment's; {DEFAULT_STEPS} when built here)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    directory = Path(args.dir) if args.dir else build_experiment(Path(args.workdir), args)
    experiment = Experiment.load(directory)
    meter = Meter(experiment.model.num_draft_tokens)
    start = time.perf_counter()
    result = train(directory, optim={"steps": args.steps} if args.steps else None, callbacks=[meter])
    wall = time.perf_counter() - start

    timed = meter.steps[1:] or meter.steps
    seconds = sum(s["seconds"] for s in timed)
    report = {
        "experiment": str(directory),
        "teacher": experiment.model.teacher,
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "mode": experiment.model.mode,
        "num_draft_tokens": experiment.model.num_draft_tokens,
        "windows_per_sequence": experiment.loss.windows_per_sequence,
        "batch_size": meter.steps[0]["sequences"] if meter.steps else None,
        "steps_timed": len(timed),
        "seconds_per_step": round(statistics.median(s["seconds"] for s in timed), 3) if timed else None,
        "sequence_tokens_per_second": round(sum(s["tokens"] for s in timed) / seconds, 1) if seconds else None,
        "rows_per_second": round(sum(s["rows"] for s in timed) / seconds, 1) if seconds else None,
        "windows_per_second": round(sum(s["windows"] for s in timed) / seconds, 2) if seconds else None,
        "draft_tokens_per_second": round(sum(s["windows"] for s in timed) * meter.num_draft / seconds, 1) if seconds else None,
        "wall_seconds": round(wall, 1),
        "status": result.status,
        "final_step": result.step,
        "val_curve": meter.curve,
        "train_correct_per_step": [round(s["correct"], 4) for s in meter.steps],
    }
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "train_correct_per_step"}, indent=2))
    return 0 if result.status == "done" else 130


if __name__ == "__main__":
    sys.exit(main())
