"""Cost of one forward of k new tokens over a KV cache, for k = 1..64: how many tokens a pass gets for free.

    python benchmarks/cost_curve.py [MODEL ...] [--context 256] [--out benchmarks/results/cost_curve.json]

MODEL defaults to the embedded default teacher. Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from ptp.default_teacher import DEFAULT_TEACHER
from ptp.hf_cache import cache_kwarg, output_cache
from ptp.io import write_json
from ptp.models import load_teacher

KS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def cost_curve(model: torch.nn.Module, context: int, ks: tuple[int, ...], repeats: int, warmup: int) -> dict[int, list[float]]:
    """Milliseconds per forward of k new tokens after ``context`` cached tokens, ``repeats`` samples per k."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(vocab, (1, context), generator=g)
    cache = output_cache(model(prompt, use_cache=True))  # prefill once
    new = {k: torch.randint(vocab, (1, k), generator=g) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    # Rounds over all k, rather than all repeats of one k in a row, so that slow drift
    # (other processes, clock changes) spreads over every k instead of biasing some.
    for round_ in range(warmup + repeats):
        for k in ks:
            # DynamicCache.crop takes minus the number of tokens to drop (positive values raise in 5.x).
            cache.crop(context - cache.get_seq_length())
            start = time.perf_counter()
            model(new[k], use_cache=True, **{cache_kwarg(model): cache})
            if round_ >= warmup:
                times[k].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[DEFAULT_TEACHER], metavar="MODEL")
    parser.add_argument("--context", type=int, default=256, help="cached tokens before the k new ones")
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated numbers of new tokens")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, from: " + ", ".join(DTYPES))
    parser.add_argument("--repeats", type=int, default=9, help="timed forwards per k (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--out", default="benchmarks/results/cost_curve.json")
    args = parser.parse_args(argv)
    ks = tuple(int(k) for k in args.ks.split(","))

    results = []
    for name in args.models:
        for dtype_name in args.dtypes.split(","):
            model = load_teacher(name, dtype=DTYPES[dtype_name])
            times = cost_curve(model, args.context, ks, args.repeats, args.warmup)
            base = statistics.median(times[1]) if 1 in times else None
            print(f"\n{name}  {dtype_name}  context {args.context}")
            print(f"{'k':>4} {'ms':>8} {'t(k)/t(1)':>10}")
            for k in ks:
                ms = statistics.median(times[k])
                ratio = ms / base if base else None
                print(f"{k:>4} {ms:>8.1f} {ratio:>10.2f}" if ratio else f"{k:>4} {ms:>8.1f}")
                results.append({"model": name, "dtype": dtype_name, "k": k, "ms": round(ms, 3),
                                "ratio": round(ratio, 4) if ratio else None, "samples_ms": [round(t, 3) for t in times[k]]})
            sys.stdout.flush()
            del model
    write_json(args.out, {
        "context": args.context, "repeats": args.repeats, "warmup": args.warmup,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        # Other processes skew CPU timings: the load average tells a reader how quiet the machine was.
        "load_average_at_end": os.getloadavg(),
        "results": results,
    })
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
