"""Completion tokens per second of pregeneration's sampler, before and after continuous batching.

    python benchmarks/pregenerate_throughput.py [--prompts 128] [--new-tokens 128] [--threads 2]
        [--dtype bfloat16] [--batch-size 128] [--old-batch-size 16] [--out benchmarks/results/pregenerate_throughput.json]

Both samplers run in this process on the same prompts (the first N of the default student's
prompt file, chat-templated as ``ptp pregenerate`` renders them) with the same u and sampling
(T=0.7, top-p 0.95, the default student's):

* ``old``: pregeneration as it was before issue 16 (commit fccbd98), kept here as the baseline:
  rectangular batches of length-sorted prompts that decode until their last row ends, a
  ``DynamicCache``, sdpa attention and ``warp``/``pick``/``token_interval`` over the whole
  vocabulary in float64.
* ``new``: ``ptp.pregenerate.sample_requests`` (``SlotBatch``: continuous batching, finished rows
  leave at once, one-query attention, warp restricted to the kept tokens).

Prints both rates and writes the JSON atomically, with the load average before and after (other
processes slow both samplers down). Tokens are counted as pregeneration stores them: each
completion up to and including its EOS. Both run after ``keep_freed_memory()``, as ``ptp
pregenerate`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ptp.config import SamplingConfig
from ptp.data import prompt_ids
from ptp.default_teacher import DEFAULT_TEACHER
from ptp.experiment import DataConfig
from ptp.generate import eos_token_ids
from ptp.hf_cache import cache_kwarg, output_cache
from ptp.io import write_json
from ptp.models import load_teacher, load_tokenizer
from ptp.pregenerate import Request, example_seed, keep_freed_memory, sample_requests
from ptp.sampling import draw_uniform, pick, token_interval, warp

ROOT = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def old_sampler(teacher: torch.nn.Module, prompts: list[list[int]], u: torch.Tensor, sampling: SamplingConfig,
                eos_ids: set[int]) -> list[torch.Tensor]:
    """The pre-issue-16 ``sample_completions`` (commit fccbd98): ``(B, K)`` u, one token tensor per prompt."""
    batch, new = u.shape
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
    tokens = torch.zeros(batch, new, dtype=torch.long)
    lo = torch.zeros(batch, new, dtype=torch.float64)
    hi = torch.zeros_like(lo)
    lengths = torch.full((batch,), new, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    out = teacher(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    for k in range(new):
        probs = warp(out.logits[:, -1], sampling)
        tokens[:, k] = pick(u[:, k], probs, sampling.order)
        lo[:, k], hi[:, k] = token_interval(probs, tokens[:, k], sampling.order)
        ended = ~done & torch.isin(tokens[:, k], eos)
        lengths[ended] = k + 1
        done |= ended
        if k == new - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = teacher(input_ids=tokens[:, k : k + 1], attention_mask=mask, position_ids=positions, use_cache=True,
                      **{cache_kwarg(teacher): output_cache(out)})
    return [tokens[r, :n].clone() for r, n in enumerate(lengths.tolist())]


def run_old(teacher, prompts, u, sampling, eos_ids, batch_size) -> list[torch.Tensor]:
    """Old pregeneration's loop: prompts sorted by length, batches of ``batch_size``."""
    order = sorted(range(len(prompts)), key=lambda j: len(prompts[j]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        for j, tokens in zip(batch, old_sampler(teacher, [prompts[j] for j in batch], u[batch], sampling, eos_ids)):
            out[j] = tokens
    return out


def run_new(teacher, prompts, u, sampling, eos_ids, batch_size) -> list[torch.Tensor]:
    """``sample_requests`` over all prompts, shortest first as pregeneration hands them out."""
    pending = sorted((Request(p, u[j], j) for j, p in enumerate(prompts)), key=lambda r: len(r.prompt))

    def take(n: int) -> list[Request]:
        out = pending[:n]
        del pending[:n]
        return out

    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for request, (tokens, _, _) in sample_requests(teacher, take, sampling, eos_ids, batch_size, u.shape[1]):
        out[request.owner] = tokens
    return out


def timed(fn, *args) -> tuple[list[torch.Tensor], float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="number of prompts (the first N of --file)")
    parser.add_argument("--file", default=str(ROOT / "projects/default_student/prompts.jsonl"), help="jsonl with a messages column")
    parser.add_argument("--new-tokens", type=int, default=128, help="completion tokens per prompt at most")
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--batch-size", type=int, default=128, help="new sampler's sequences per call")
    parser.add_argument("--old-batch-size", type=int, default=16, help="old sampler's batch (pregeneration's old default)")
    parser.add_argument("--skip-old", action="store_true", help="measure the new sampler only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/pregenerate_throughput.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as ptp pregenerate does; both samplers gain from it
    load_before = os.getloadavg()

    teacher = load_teacher(DEFAULT_TEACHER, dtype=getattr(torch, args.dtype))
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    data = DataConfig(dataset=args.file, messages_column="messages", max_prompt_tokens=args.max_prompt_tokens,
                      completion_tokens=args.new_tokens)
    with open(args.file, encoding="utf-8") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(args.prompts))]
    prompts = [prompt_ids(row, i, data, tokenizer) for i, row in enumerate(rows)]
    u = torch.stack([draw_uniform(args.new_tokens, seed=example_seed(0, i)) for i in range(len(prompts))])
    sampling = SamplingConfig(temperature=0.7, top_p=0.95)
    eos_ids = eos_token_ids(teacher, tokenizer)

    result = {
        "teacher": DEFAULT_TEACHER, "dtype": args.dtype, "threads": args.threads, "prompts": len(prompts),
        "prompt_tokens": sum(map(len, prompts)), "new_tokens": args.new_tokens, "sampling": sampling.to_dict(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before]},
    }
    runs = {"new": (run_new, args.batch_size)} if args.skip_old else {"old": (run_old, args.old_batch_size), "new": (run_new, args.batch_size)}
    outputs = {}
    for name, (fn, batch_size) in runs.items():
        outputs[name], seconds = timed(fn, teacher, prompts, u, sampling, eos_ids, batch_size)
        tokens = sum(len(t) for t in outputs[name])
        result[name] = {"batch_size": batch_size, "tokens": tokens, "seconds": round(seconds, 2),
                        "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{name}: batch {batch_size}, {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.0f} tok/s "
              f"({args.threads} threads, {args.dtype})", flush=True)
    if "old" in outputs:
        result["speedup"] = round(result["new"]["tokens_per_s"] / result["old"]["tokens_per_s"], 2)
        # In bfloat16 batch shapes round differently, so a few completions may part ways (float32: none).
        result["identical_completions"] = sum(torch.equal(a, b) for a, b in zip(outputs["old"], outputs["new"]))
        print(f"speedup {result['speedup']}x; {result['identical_completions']} of {len(prompts)} completions identical")
    # Other processes' load makes the rates lower than on a quiet machine.
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
