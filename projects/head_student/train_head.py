"""Train a PTP draft head of SmolLM2-135M-Instruct from cached teacher features.

    python projects/head_student/train_head.py FEATURES_DIR RUN_DIR [--mode o-ptp] [--layers 2]
        [--init teacher] [--num-draft 8] [--draft-vocab 16384] [--steps 3000] [--lr 3e-4] [--threads 1]

The first ``--val`` sequences of the features are held out. Features still being extracted are
picked up at each validation (the extraction can run beside the training). RUN_DIR receives the resumable
checkpoint, ``train.log`` lines on stdout and, at the end, the head as a student directory
(``RUN_DIR/student``, bf16 safetensors) that ``ptp generate`` and ``ptp bench`` load.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from ptp import SamplingConfig, Student
from ptp.features import load_feature_shards
from ptp.head import frequent_tokens
from ptp.head_training import HeadTrainConfig, restore_checkpoint, train_head
from ptp.io import write_json
from ptp.models import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("--mode", default="o-ptp")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--init", default="teacher")
    parser.add_argument("--num-draft", type=int, default=8)
    parser.add_argument("--draft-vocab", type=int, default=16384)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--export", action="store_true", help="write RUN_DIR/student from the last checkpoint and stop")
    for f in fields(HeadTrainConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = load_feature_shards(args.features)
    index = json.loads((args.features / "index.json").read_text())
    sampling = SamplingConfig.from_dict(index["config"]["sampling"])
    val, train = examples[: args.val], examples[args.val :]
    seen = len(examples)

    def more_data() -> list[dict[str, torch.Tensor]]:
        nonlocal seen
        fresh = load_feature_shards(args.features)[seen:]
        seen += len(fresh)
        return fresh

    teacher = load_teacher(args.teacher, dtype=torch.float32)
    vocab = frequent_tokens([e["tokens"] for e in train], args.draft_vocab, teacher.get_output_embeddings().weight.shape[0]) \
        if args.draft_vocab else None
    head = Student.from_teacher(teacher, kind="head", mode=args.mode, num_draft_tokens=args.num_draft, num_layers=args.layers,
                                init=args.init, draft_vocab=args.draft_vocab, vocab_ids=vocab, teacher_name=args.teacher,
                                sampling=sampling)
    assert head.feature_layer == index["config"]["layer"], "the features were captured at another layer"
    cfg = HeadTrainConfig(**{f.name: getattr(args, f.name) for f in fields(HeadTrainConfig)})
    args.run.mkdir(parents=True, exist_ok=True)
    if args.export:
        params = {n: p for n, p in head.named_parameters() if p.requires_grad}
        record = restore_checkpoint(args.run, params)
        head.save_pretrained(args.run / "student", dtype=torch.bfloat16)
        print(f"wrote {args.run / 'student'} from step {record['step']}")
        return
    print(f"{len(train)} training sequences ({sum(len(e['tokens']) for e in train)} tokens), {len(val)} held out", flush=True)
    record = train_head(head, train, val, cfg, args.run, log=lambda line: print(line, flush=True), more_data=more_data)
    head.save_pretrained(args.run / "student", dtype=torch.bfloat16)
    write_json(args.run / "history.json", record)


if __name__ == "__main__":
    main()
