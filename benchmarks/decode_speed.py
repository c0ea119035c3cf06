"""Decoding speed on this machine: cost curve t(k)/t(1), tokens per call and speedup over ``ar``.

For a student directory, every prompt is decoded with ``ar``, ``verify`` and ``pqd`` in the same
run with the same u; the script checks the three agree token for token and reports accepted
tokens per call and wall-clock speedup over ``ar``.

    python benchmarks/decode_speed.py STUDENT_DIR [--prompts FILE] [--dtype bfloat16] [--max-new-tokens 128]

Prompts: a text file with one prompt per line, or a Spec-Bench style jsonl (first turn used);
default: a few built-in prompts. Results go to ``--out`` (JSON, written atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ptp import SamplingConfig, Student
from ptp.commands.generate import encode, student_dir
from ptp.generate import generate, measure_cost_curve
from ptp.io import write_json
from ptp.models import load_tokenizer

DEFAULT_PROMPTS = [
    "Write a Python function that computes the factorial of a number.",
    "Explain in three sentences why the sky is blue.",
    "List five fruits and one fact about each.",
    "What is the capital of France? Answer in one sentence, then describe the city.",
]


def read_prompts(path: str | None, limit: int) -> list[str]:
    if path is None:
        return DEFAULT_PROMPTS[:limit]
    lines = [l for l in Path(path).read_text(encoding="utf-8").splitlines() if l.strip()]
    if path.endswith(".jsonl"):
        lines = [json.loads(l)["turns"][0] for l in lines]
    return lines[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student")
    parser.add_argument("--prompts")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["ar", "verify", "pqd"])
    parser.add_argument("--out", default="benchmarks/results/decode_speed.json")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    student = Student.from_pretrained(student_dir(args.student), dtype=getattr(torch, args.dtype)).eval()
    tokenizer = load_tokenizer(student.config.teacher)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)

    curve = measure_cost_curve(student, context=256)
    print("cost curve t(k)/t(1):", ", ".join(f"{k}: {c:.2f}" for k, c in zip(curve.rows, curve.relative)))

    # warm-up (also learns the pqd acceptance statistics' first counts on throwaway text)
    warm = encode(tokenizer, [{"role": "user", "content": "Hello!"}], raw=False)
    for s in args.strategies:
        generate(student, warm, 16, sampling=sampling, seed=123, strategy=s, cost=curve)

    rows = []
    for i, prompt in enumerate(read_prompts(args.prompts, args.limit)):
        ids = encode(tokenizer, [{"role": "user", "content": prompt}], raw=False)
        u = torch.rand(args.max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed + i))
        runs = {s: generate(student, ids, args.max_new_tokens, sampling=sampling, u=u, strategy=s, cost=curve)
                for s in args.strategies}
        ref = runs["ar"].tokens.tolist()
        row = {"prompt": prompt[:60], "tokens": len(ref)}
        for s, r in runs.items():
            row[s] = {"tokens_per_call": r.tokens_per_call, "wall_time": r.wall_time,
                      "identical": r.tokens.tolist() == ref, "speedup": runs["ar"].wall_time / r.wall_time}
        rows.append(row)
        print(f"[{i}] {len(ref)} tokens  " + "  ".join(
            f"{s}: {row[s]['tokens_per_call']:.2f} tok/call {row[s]['speedup']:.2f}x{'' if row[s]['identical'] else ' DIFFERS'}"
            for s in args.strategies))

    summary = {}
    for s in args.strategies:
        total_tokens = sum(r["tokens"] for r in rows)
        total_time = sum(r[s]["wall_time"] for r in rows)
        summary[s] = {
            "mean_tokens_per_call": statistics.mean(r[s]["tokens_per_call"] for r in rows),
            "tokens_per_second": total_tokens / total_time,
            "speedup_vs_ar": sum(r["ar"]["wall_time"] for r in rows) / total_time,
            "identical_answers": sum(r[s]["identical"] for r in rows),
        }
    print(f"{'strategy':10s} {'tok/call':>9s} {'tok/s':>8s} {'speedup':>8s} {'identical':>10s}")
    for s, m in summary.items():
        print(f"{s:10s} {m['mean_tokens_per_call']:9.2f} {m['tokens_per_second']:8.1f} {m['speedup_vs_ar']:7.2f}x "
              f"{m['identical_answers']:>4d}/{len(rows)}")
    write_json(args.out, {"student": str(args.student), "dtype": args.dtype, "sampling": sampling.to_dict(),
                          "cost_curve": dict(zip(curve.rows, curve.relative)), "prompts": rows, "summary": summary,
                          "date": time.strftime("%Y-%m-%d %H:%M")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
