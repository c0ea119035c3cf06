"""The README's main job: answer a prompt with the embedded default teacher, offline.

    python -m ptp.demo ["your prompt"] [--max-new-tokens 96] [--dtype bfloat16]

Decodes the same answer, with the same u, with plain decoding (``ar``), prompt lookup (``pld``)
and Partial Quadratic Decoding (``pqd``) with the shipped PTP student, checks the three agree token
for token, and prints tokens per call and wall-clock speedup over ``ar``. Where the shipped student
is missing (a trimmed install), ``pqd`` runs a freshly initialised one: output is still exactly the
teacher's, at about one token per call. The student's measured numbers are in its model card
(``assets/students/smollm2-135m-instruct/README.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .commands.generate import encode
from .config import SamplingConfig
from .default_teacher import DEFAULT_TEACHER
from .errors import UserError
from .generate import generate
from .models import load_teacher, load_tokenizer
from .student import CONFIG_NAME, Student

SHIPPED = Path(__file__).parent / "assets" / "students" / DEFAULT_TEACHER


def load_default_student(dtype: torch.dtype, directory: str | None = None) -> tuple[Student, bool]:
    """The student in ``directory`` (a gated-LoRA student or a draft head of the default teacher),
    else the shipped one, else an untrained one; and whether it is trained."""
    teacher = load_teacher(DEFAULT_TEACHER, dtype=dtype)
    if directory is not None or (SHIPPED / CONFIG_NAME).is_file():
        return Student.from_pretrained(directory or SHIPPED, teacher=teacher).eval(), True
    return Student.from_teacher(teacher, teacher_name=DEFAULT_TEACHER).eval(), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="Write a Python function that checks whether a number is prime.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", metavar="DIR", help="a student directory of the default teacher (default: the shipped one)")
    args = parser.parse_args(argv)
    try:
        student, trained = load_default_student(getattr(torch, args.dtype), args.student)
        tokenizer = load_tokenizer(DEFAULT_TEACHER)
    except UserError as e:
        print(f"ptp demo: error: {e}", file=sys.stderr)
        return 2
    sampling = SamplingConfig(temperature=0.7, top_p=0.95)
    ids = encode(tokenizer, [{"role": "user", "content": args.prompt}], raw=False)
    generate(student, ids[:8], 4, sampling=sampling, seed=1, strategy="ar")  # warm-up
    runs = {s: generate(student, ids, args.max_new_tokens, sampling=sampling, seed=args.seed, strategy=s)
            for s in ("ar", "pld", "pqd")}
    print(f"> {args.prompt}\n{tokenizer.decode(runs['ar'].tokens.tolist(), skip_special_tokens=True)}\n")
    print(f"teacher {DEFAULT_TEACHER} ({args.dtype}), temperature 0.7, top-p 0.95, seed {args.seed}; "
          f"student: {args.student or ('shipped' if trained else 'untrained (no shipped student found)')}")
    print(f"{'method':8s} {'tokens':>6s} {'calls':>6s} {'tok/call':>8s} {'tok/s':>7s} {'speedup':>8s}  identical to ar")
    base = runs["ar"]
    for name, r in runs.items():
        same = r.tokens.tolist() == base.tokens.tolist()
        print(f"{name:8s} {len(r.tokens):6d} {r.calls:6d} {r.tokens_per_call:8.2f} {r.tokens_per_second:7.1f} "
              f"{base.wall_time / r.wall_time:7.2f}x  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
