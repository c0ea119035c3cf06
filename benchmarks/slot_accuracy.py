"""Where a student's drafts go wrong: accuracy per draft slot on an experiment's held-out windows.

    python benchmarks/slot_accuracy.py EXPERIMENT_DIR [STUDENT_DIR ...] [--windows 512] [--out FILE]

For each student (default: EXPERIMENT_DIR/student), on the same held-out windows and u as
``ptp train``'s validation (the last ``val_examples`` pregenerated completions):

* ``slot_accuracy[j]``: share of windows whose slot j drafts the teacher's token under the same u;
* ``chain_accuracy[j]``: the same, among windows whose slots 0..j-1 were all right;
* ``decode_accepted``: 1 + matching prefix of slots 1.. (tokens per call of a decoder, whose
  teacher supplies slot 0's token in the call that drafts);
* ``argmax_share``: share of the teacher's sampled tokens that are its most likely token, i.e. the
  accuracy of a slot 0 that ignored u and drafted the teacher's argmax with the true context.

Results go to ``--out`` (JSON, written atomically) and a table to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ptp.errors import UserError
from ptp.experiment import Experiment
from ptp.io import write_json
from ptp.metrics import decode_accepted
from ptp.models import load_teacher
from ptp.objective import PTPObjective, gather_windows, window_positions
from ptp.student import Student
from ptp.train import load_examples, validation_batches


@torch.no_grad()
def slot_statistics(student: Student, experiment: Experiment, batches: list[dict]) -> dict:
    # As validation in training: u uniform in each interval (beta = 1).
    objective = PTPObjective(loss=experiment.loss.loss, beta=1.0, windows=1,
                             sampling=experiment.sampling)
    hits, chain, windows, decode, argmax_hits, argmax_total = None, None, 0, 0.0, 0, 0
    for batch in batches:
        tokens = batch["tokens"]
        lo, hi = batch["lo_bits"].view(torch.float64), batch["hi_bits"].view(torch.float64)
        generator = torch.Generator().manual_seed(batch["seed"])
        _, _, drafted, teacher = objective.drafts(student, tokens, lo, hi, batch["starts"], generator)
        right = drafted == teacher  # (B, W, N); teacher -1 (no token) never matches
        prefix = right.long().cumprod(-1).bool()
        before = torch.cat([torch.ones_like(prefix[..., :1]), prefix[..., :-1]], -1)  # slots 0..j-1 right
        flat, flat_before = right.flatten(0, 1), before.flatten(0, 1)
        hits = flat.sum(0) if hits is None else hits + flat.sum(0)
        counts = torch.stack([(flat & flat_before).sum(0), flat_before.sum(0)])
        chain = counts if chain is None else chain + counts
        windows += flat.shape[0]
        decode += float(decode_accepted(drafted, teacher).sum())
        # The teacher's argmax at every window token, from the same sequences (gate off).
        logits = student(tokens).logits  # (B, T, V): row t - 1 predicts token t
        positions = window_positions(batch["starts"], student.num_draft_tokens)
        argmax = gather_windows(logits.argmax(-1), positions - 1)
        valid = teacher >= 0
        argmax_hits += int(((argmax == teacher) & valid).sum())
        argmax_total += int(valid.sum())
    return {
        "windows": windows,
        "slot_accuracy": (hits.double() / windows).tolist(),
        "chain_accuracy": (chain[0].double() / chain[1].clamp_min(1)).tolist(),
        "decode_accepted": decode / windows,
        "argmax_share": argmax_hits / max(argmax_total, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path)
    parser.add_argument("students", type=Path, nargs="*")
    parser.add_argument("--windows", type=int, default=512, help="held-out windows (spread over the held-out completions)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/slot_accuracy.json"))
    args = parser.parse_args(argv)
    try:
        experiment = Experiment.load(args.experiment)
        if experiment.data.data_mode != "completions":
            raise UserError(f"{args.experiment} is in {experiment.data.data_mode} mode: this benchmark needs pregenerated completions")
        _, val = load_examples(args.experiment, experiment)
        students = args.students or [args.experiment / "student"]
        results = {}
        for directory in students:
            # A fresh teacher each time: a student adapts its teacher's modules in place.
            teacher = load_teacher(experiment.model.teacher, dtype=torch.float32)
            student = Student.from_pretrained(directory, teacher=teacher).eval()
            batches = validation_batches(val, experiment.optim.batch_size, args.windows, student.num_draft_tokens,
                                         experiment.data.seed)
            start = time.perf_counter()
            results[str(directory)] = slot_statistics(student, experiment, batches)
            results[str(directory)]["seconds"] = time.perf_counter() - start
    except UserError as e:
        print(f"slot_accuracy: error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, {"experiment": str(args.experiment), "results": results})
    for name, r in results.items():
        print(f"{name}: {r['windows']} windows, decode_accepted {r['decode_accepted']:.3f}, "
              f"teacher argmax share {r['argmax_share']:.3f}")
        print("  slot   " + " ".join(f"{j:6d}" for j in range(len(r["slot_accuracy"]))))
        print("  acc    " + " ".join(f"{a:6.3f}" for a in r["slot_accuracy"]))
        print("  chain  " + " ".join(f"{a:6.3f}" for a in r["chain_accuracy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
