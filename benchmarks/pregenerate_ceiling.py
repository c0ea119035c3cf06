"""The most completion tokens per second pregeneration could reach on this CPU: a matmul bound.

    python benchmarks/pregenerate_ceiling.py [--threads 2] [--out benchmarks/results/pregenerate_ceiling.json]

Every token of a prompt (prefill) and of a completion (decoding) passes through the teacher's
linear layers; each sampled token also passes through the output layer. Attention, norms,
sampling and Python cost extra, so the time of those matmuls alone, at the rate this CPU runs
them, bounds what any sampler can do. This script measures that rate on the teacher's own weight
shapes in bfloat16 (decoding batches of 128 rows, prefill groups of 2,048) and turns it into a
ceiling for two token mixes: the throughput benchmark's (``pregenerate_throughput_2threads.json``:
its prompts and completions) and the chat corpus's (``chat_corpus.json``). The corpus mix counts
each context token once; a later turn of a conversation prefills the earlier turns again, so its
true bound is lower still.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ptp.default_teacher import DEFAULT_TEACHER
from ptp.io import write_json
from ptp.lora import linear_names
from ptp.models import load_teacher

RESULTS = Path(__file__).resolve().parent / "results"


def seconds_per_row(weights: list[torch.Tensor], rows: int, repeats: int = 5) -> float:
    """Seconds per input row of one pass through ``weights`` (bf16 ``(out, in)``) at ``rows`` rows."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=torch.bfloat16) for w in weights}
    for w in weights:  # warm-up
        torch.nn.functional.linear(inputs[w.shape[1]], w)
    start = time.perf_counter()
    for _ in range(repeats):
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)
    return (time.perf_counter() - start) / repeats / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "pregenerate_ceiling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher(DEFAULT_TEACHER, dtype=torch.bfloat16)
    blocks = [teacher.get_submodule(n).weight.detach() for n in linear_names(teacher)]
    output = teacher.get_output_embeddings().weight.detach()
    per_prompt_token = seconds_per_row(blocks, 2048)
    per_decoded_row = seconds_per_row(blocks, 128)
    per_completion_token = per_decoded_row + seconds_per_row([output], 128)
    flops = 2 * sum(w.numel() for w in blocks)
    mixes = {}
    bench = json.loads((RESULTS / "pregenerate_throughput_2threads.json").read_text())
    mixes["throughput benchmark"] = (bench["prompt_tokens"], bench["new"]["tokens"], bench["new"]["tokens_per_s"])
    corpus = RESULTS / "chat_corpus.json"
    if corpus.is_file():
        c = json.loads(corpus.read_text())
        mixes["chat corpus"] = (c["context_tokens"], c["completion_tokens"], c["completion_tokens_per_second"])
    result = {
        "teacher": DEFAULT_TEACHER, "threads": args.threads, "dtype": "bfloat16",
        "block_matmul_gflops_per_s": {"prefill_2048_rows": round(flops / per_prompt_token / 1e9, 1),
                                      "decode_128_rows": round(flops / per_decoded_row / 1e9, 1)},
        "mixes": {},
    }
    for name, (prompt, completion, measured) in mixes.items():
        seconds = prompt * per_prompt_token + completion * per_completion_token
        ceiling = completion / seconds
        result["mixes"][name] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "matmul_ceiling_tokens_per_s": round(ceiling, 1), "measured_tokens_per_s": measured,
                                 "measured_share_of_ceiling": round(measured / ceiling, 3) if measured else None}
    print(json.dumps(result, indent=2))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
