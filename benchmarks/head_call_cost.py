"""Cost of a draft head's call against the teacher's verifying call of the same decoding step.

    python benchmarks/head_call_cost.py [STUDENT_DIR] [--context 256] [--repeats 30] [--threads 1] [--out FILE]

One decoding step of a head student: the teacher verifies 1 + N rows after ``--context`` cached
tokens (and hands over its states entering layer L - K), then the head runs its call over the
kept rows, the bonus row and N - 1 slots. Both calls are timed in the same process, alternating,
in the teacher's dtype (bf16 by default); the median of ``--repeats`` is reported with the ratio.
Without STUDENT_DIR an untrained head of the default teacher (K = 2, 16,384-token draft vocabulary,
N = 6) is timed: the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ptp import Student
from ptp.generate import _token_chain
from ptp.io import write_json
from ptp.models import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", nargs="?")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/head_call_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.student:
        head = Student.from_pretrained(args.student, dtype=dtype)
    else:
        head = Student.from_teacher(load_teacher("smollm2-135m-instruct", dtype=dtype), kind="head", mode="c-ptp",
                                    num_draft_tokens=6, num_layers=2, vocab_ids=torch.arange(16384))
    teacher, n = head.model, head.num_draft_tokens
    ids = torch.randint(0, 49152, (args.context + 1 + n,), generator=torch.Generator().manual_seed(0)).tolist()
    times = {"teacher": [], "head": []}
    with torch.no_grad():
        _, cache, feats = _token_chain(teacher, ids[: args.context], None, 0, head.feature_layer)
        from transformers import DynamicCache

        head_cache = DynamicCache()
        _, _, head_cache = head.draft(feats[:-1], feats[-2], ids[args.context - 1], torch.rand(n, dtype=torch.float64),
                                      head_cache, 0)
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            _, cache, step_feats = _token_chain(teacher, ids[args.context : args.context + 1 + n], cache, args.context,
                                                head.feature_layer)
            cache.crop(-(1 + n))
            times["teacher"].append(time.perf_counter() - start)
            start = time.perf_counter()
            # a typical step keeps the pending token and two accepted drafts
            _, _, head_cache = head.draft(step_feats[:3], step_feats[2], ids[args.context + 3],
                                          torch.rand(n, dtype=torch.float64), head_cache, args.context - 1)
            head_cache.crop(-3)
            times["head"].append(time.perf_counter() - start)
    result = {k: statistics.median(v[1:]) for k, v in times.items()}
    result["ratio"] = result["head"] / result["teacher"]
    result["setup"] = {"context": args.context, "num_draft": n, "num_layers": head.config.num_layers,
                       "draft_vocab": int(head.vocab_ids.numel()), "dtype": args.dtype, "threads": args.threads,
                       "student": args.student or "untrained default-shaped head"}
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
