"""``ptp bench STUDENT_DIR``: Spec-Bench style speed and losslessness benchmark of every decoding method."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..bench import METHODS, Models, check_methods, load_questions, markdown, run_bench, summarize, write_outputs
from ..cli import dataclass_arguments, dataclass_from_args
from ..config import DTYPES, DecodeConfig, SamplingConfig
from ..default_teacher import DEFAULT_TEACHER
from ..demo import SHIPPED
from ..errors import UserError
from ..io import check_writable
from ..models import load_teacher
from ..student import Student
from .generate import check_order, encode, has_chat_template, load, student_dir

HELP = "benchmark decoding methods (ours and transformers') on Spec-Bench style questions: MAT, tokens/s, speedup, lossless check"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student", metavar="STUDENT_DIR", nargs="?", default=str(SHIPPED),
                        help="a student directory (or an experiment directory holding student/); default: the shipped "
                             f"student of the default teacher {DEFAULT_TEACHER}")
    parser.add_argument("--questions", metavar="FILE.jsonl", help="Spec-Bench questions (default: the packaged dev_questions.jsonl)")
    # no argparse choices: an unknown method must be a one-line UserError like every other mistake
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"methods to compare among {', '.join(METHODS)} (ar is always run: it is the baseline); "
                             "default: all whose models are given")
    parser.add_argument("--mtp", metavar="MTP_DIR", help="a student of the same teacher trained with --mode mtp "
                        "(the independent-prediction baseline), decoded with PQD as method mtp")
    parser.add_argument("--drafters", nargs="+", metavar="NAME=DIR", default=[],
                        help="more students of the same teacher (draft heads or gated-LoRA students), each decoded "
                             "with PQD through the same verifier as method NAME")
    parser.add_argument("--assistant", metavar="MODEL", help="assistant model of transformers' assisted generation "
                        "(method assisted); it must share the teacher's tokenizer")
    parser.add_argument("--limit", type=int, help="only the first N questions (after --categories)")
    parser.add_argument("--categories", nargs="+", metavar="CATEGORY", help="only questions of these categories")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer turn (default 128)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole benchmark R times for mean/std timings")
    parser.add_argument("--seed", type=int, default=0, help="seed of u (per question and turn) and of hf's sampling")
    parser.add_argument("--dtype", default="float32", help=f"{', '.join(DTYPES)} (float32: lossless bit for bit)")
    parser.add_argument("--out", default="bench-out", metavar="DIR", help="output directory (default bench-out)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the teacher's own modeling code (off by default)")
    dataclass_arguments(parser, SamplingConfig, group="sampling (default: what the student was trained for)")


def load_mtp(args: argparse.Namespace, decode: DecodeConfig, student: Any, sampling: SamplingConfig) -> Any:
    """The ``--mtp`` student (on its own copy of the teacher), checked to be an MTP baseline of it for ``sampling``."""
    mtp = Student.from_pretrained(student_dir(args.mtp), dtype=getattr(torch, decode.dtype), trust_remote_code=args.trust_remote_code)
    if mtp.mode != "mtp":
        raise UserError(f"--mtp {args.mtp!r} holds a {mtp.mode} student: pass one trained with --mode mtp")
    if mtp.config.teacher_signature != student.config.teacher_signature:
        raise UserError(f"--mtp {args.mtp!r} was trained on another teacher: pass an MTP student of {student.config.teacher!r}")
    check_order(mtp, sampling, what=f"--mtp {args.mtp!r}")
    return mtp.eval()


def load_drafters(args: argparse.Namespace, decode: DecodeConfig, student: Any, sampling: SamplingConfig) -> dict[str, Any]:
    """The ``--drafters NAME=DIR`` students, each on its own copy of the teacher, checked against ``student``'s teacher."""
    drafters = {}
    for spec in args.drafters:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--drafters {spec!r} is invalid: write NAME=STUDENT_DIR")
        model = Student.from_pretrained(student_dir(path), dtype=getattr(torch, decode.dtype), trust_remote_code=args.trust_remote_code)
        if model.config.teacher_signature != student.config.teacher_signature:
            raise UserError(f"--drafters {spec!r} was trained on another teacher: pass a student of {student.config.teacher!r}")
        check_order(model, sampling, what=f"--drafters {spec!r}")
        drafters[name] = model.eval()
    return drafters


def default_questions() -> Path:
    return Path(str(resources.files("ptp") / "assets" / "dev_questions.jsonl"))


def run(args: argparse.Namespace) -> int:
    dataclass_from_args(SamplingConfig, args)  # bad values fail now, before the slow model load
    decode = dataclass_from_args(DecodeConfig, argparse.Namespace(max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                                                                 seed=args.seed, strategy="ar"))
    if args.runs < 1:
        raise UserError(f"--runs {args.runs} is invalid: use an integer >= 1")
    names = tuple(spec.partition("=")[0] for spec in args.drafters)
    methods = check_methods(args.methods, {flag for flag, value in (("--mtp", args.mtp), ("--assistant", args.assistant)) if value},
                            names)
    questions_file = Path(args.questions or default_questions())
    questions = load_questions(questions_file, args.categories, args.limit)
    directory = student_dir(args.student)  # checked before the slow model load
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # found now, not after the whole benchmark
        raise UserError(f"--out {str(out)!r} is a file: pass a directory for the results")
    check_writable(out, "--out")
    if args.mtp and "mtp" in methods:
        student_dir(args.mtp)
    student, tokenizer = load(directory, decode, args.trust_remote_code)
    sampling = dataclass_from_args(SamplingConfig, args, base=student.sampling)  # flags over the student's own
    check_order(student, sampling)
    models = Models(student, mtp=load_mtp(args, decode, student, sampling) if "mtp" in methods else None,
                    assistant=load_teacher(args.assistant, dtype=getattr(torch, decode.dtype), trust_remote_code=args.trust_remote_code)
                    if "assisted" in methods else None,
                    drafters=load_drafters(args, decode, student, sampling))
    if not has_chat_template(tokenizer) and any(len(q["turns"]) > 1 for q in questions):
        raise UserError(f"the teacher's tokenizer ({student.config.teacher!r}) has no chat template, which multi-turn "
                        "questions need: use a chat teacher, or --questions with one turn per question")

    from tqdm import tqdm

    total = args.runs * sum(len(q["turns"]) for q in questions)
    with tqdm(total=total, desc="bench (question, turn)", unit="turn", file=sys.stderr) as progress:
        result = run_bench(models, tokenizer, questions, methods, sampling, decode.max_new_tokens, args.runs, args.seed,
                           lambda tok, messages: encode(tok, messages, raw=False), directory.resolve().name, progress)
    config = {"student": str(directory), "mtp": args.mtp, "assistant": args.assistant, "drafters": args.drafters,
              "questions": str(questions_file), "methods": methods,
              "num_questions": len(questions), "max_new_tokens": decode.max_new_tokens, "runs": args.runs,
              "seed": args.seed, "dtype": decode.dtype, "sampling": asdict(sampling)}
    summary = summarize(result, config)
    for note in write_outputs(out, result, summary):
        print(note, file=sys.stderr)
    print(markdown(summary))
    print(f"results in {out}/ (answers <method>.jsonl, summary.json, summary.md, plots)", file=sys.stderr)
    return 0
