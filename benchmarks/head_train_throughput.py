"""Draft rows per second of head training (cached features) against gated-LoRA training.

    python benchmarks/head_train_throughput.py FEATURES_DIR [--steps 6] [--threads 1] [--out FILE]

Both students of the default teacher train on the same batches (sequences of FEATURES_DIR, W
windows of N draft slots each) in the same process, alternating step by step so that machine
load hits both alike: the gated-LoRA student runs all L teacher layers over the token rows and
its slots (its training step, ``Student.forward`` with ``ptp.masks.training_layout`` and the
slot cross-entropy), the head only its K layers over the cached features (``head_loss``).
Forward and backward are timed; draft rows are the W x N slots. Results go to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ptp import Student
from ptp.features import load_feature_shards
from ptp.head_training import head_loss, make_batch
from ptp.io import write_json
from ptp.masks import training_layout
from ptp.models import load_teacher


def lora_step(student: Student, batch: dict[str, torch.Tensor]) -> None:
    """One gated-LoRA training step on the batch's windows (the slots carry the same u)."""
    tokens, starts, u = batch["tokens"], batch["starts"] + 1, batch["u"]  # slot j of the LoRA window sits at t_{i+1+j}
    b, t = tokens.shape
    n = u.shape[-1]
    visible, positions, draft = training_layout(t, starts, n)
    ids = torch.cat([tokens, torch.zeros(b, starts.shape[1] * n, dtype=torch.long)], dim=1)
    slot_u = torch.cat([torch.full((b, t), float("nan"), dtype=torch.float64), student.slot_u(u).reshape(b, -1)], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = student(ids, draft=draft, u=slot_u, position_ids=positions, visible=visible).logits[:, t:]
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten())
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--num-draft", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/head_train_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = load_feature_shards(args.features)[:64]
    lora = Student.from_teacher(load_teacher("smollm2-135m-instruct"), mode="o-ptp", num_draft_tokens=args.num_draft, lora_rank=32)
    head = Student.from_teacher(load_teacher("smollm2-135m-instruct"), kind="head", mode="o-ptp", num_draft_tokens=args.num_draft,
                                num_layers=2, vocab_ids=torch.arange(16384))
    seconds = {"lora": [], "head": []}
    for step in range(args.steps + 1):  # step 0 is a warm-up
        batch = make_batch(examples, [2 * step % len(examples), (2 * step + 1) % len(examples)], args.windows, args.num_draft,
                           torch.Generator().manual_seed(step))
        for name, run in (("lora", lambda: lora_step(lora, batch)), ("head", lambda: head_loss(head, batch)[0].backward())):
            start = time.perf_counter()
            run()
            if step:
                seconds[name].append(time.perf_counter() - start)
    rows = 2 * args.windows * args.num_draft
    result = {name: {"seconds_per_step": sum(s) / len(s), "draft_rows_per_second": rows / (sum(s) / len(s))} for name, s in seconds.items()}
    result["ratio"] = result["head"]["draft_rows_per_second"] / result["lora"]["draft_rows_per_second"]
    result["setup"] = {"threads": args.threads, "steps": args.steps, "batch_sequences": 2, "windows": args.windows,
                       "num_draft": args.num_draft, "lora_rank": 32, "head_layers": 2, "draft_vocab": 16384,
                       "tokens_per_sequence": [int(e["tokens"].numel()) for e in examples[:4]]}
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
