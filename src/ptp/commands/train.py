"""``ptp train DIR``: train an experiment's student (gated LoRA or draft head) with PyTorch Lightning
(resumes automatically)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..cli import dataclass_arguments
from ..experiment import OptimConfig, TrainerConfig, check_remote_code
from ..train import export_student, train

HELP = "Train the student of experiment DIR (Lightning; Ctrl-C saves, rerunning resumes) into DIR/student."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="experiment directory written by ptp distill (and ptp pregenerate)")
    dataclass_arguments(parser, OptimConfig, group="optimisation (overrides experiment.yaml)")
    dataclass_arguments(parser, TrainerConfig, group="trainer (overrides experiment.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or model summary")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the teacher's own modeling code when experiment.yaml asks for it (off by default)")
    parser.add_argument("--export", nargs="?", const="newest", metavar="CHECKPOINT",
                        help="do not train: write DIR/student from the newest checkpoint (or CHECKPOINT), e.g. to try "
                             "a run in progress")


def _flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def run(args: argparse.Namespace) -> int:
    check_remote_code(args.dir, args.trust_remote_code, "train")
    if args.export:
        student, step = export_student(args.dir, None if args.export == "newest" else args.export)
        print(f"{student}: the student of step {step}")
        print(f'next: ptp generate {args.dir} "PROMPT"')
        return 0
    result = train(args.dir, optim=_flags(OptimConfig, args), trainer=_flags(TrainerConfig, args), progress=not args.no_progress)
    if result.rank != 0:  # other processes of a multi-process run stay quiet
        return 130 if result.status == "interrupted" else 0
    if result.status == "interrupted":
        where = f"saved {result.checkpoint}" if result.checkpoint else "no checkpoint yet"
        print(f"ptp train: stopped at step {result.step} of {result.steps} ({where}); rerun ptp train {args.dir} to resume",
              file=sys.stderr)
        return 130
    summary = ", ".join(f"{name} {result.metrics[key]:.3f}" for name, key in
                        (("validation #correct", "val/correct"), ("#accepted", "val/accepted"), ("decode MAT", "val/mat"))
                        if key in result.metrics)
    print(f"{result.student}: trained {result.steps} steps" + (f"; {summary}" if summary else ""))
    print(f'next: ptp generate {args.dir} "PROMPT"')
    return 0
