"""Size, mix and timing of a pregenerated chat corpus (issue 16).

    python benchmarks/chat_corpus_stats.py EXPERIMENT_DIR [--out benchmarks/results/chat_corpus.json]

Counts what ``ptp pregenerate`` wrote to ``EXPERIMENT_DIR/data``: examples, answered turns,
completion tokens (the teacher's own samples, each with its u interval) and context tokens, by the
``task`` of each prompt row; the wall time from the first to the last shard (file times, so a
resumed run counts its pause) and, if present, of the feature shards.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ptp.data import load_rows
from ptp.experiment import Experiment
from ptp.io import write_json
from ptp.pregenerate import load_shards


def span(files: list[Path]) -> float:
    times = [f.stat().st_mtime for f in files]
    return max(times) - min(times) if times else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    experiment = Experiment.load(args.directory)
    rows = load_rows(experiment.data)
    examples = load_shards(args.directory, require_complete=False)
    by_task: Counter = Counter()
    turns = completion = context = 0
    for e in examples:
        answered = ~e["lo"].isnan()
        n = int(answered.sum())
        starts = int((answered[1:] & ~answered[:-1]).sum()) + int(answered[0])
        turns += starts
        completion += n
        context += len(e["tokens"]) - n
        by_task[rows[e["example"]].get("task", "?")] += n
    shards = sorted((args.directory / "data").glob("shard-*.safetensors"))
    features = sorted((args.directory / "features").glob("shard-*.safetensors"))
    # The first shard's own sampling time is not in the span: estimate it as the mean shard time.
    sampling_seconds = span(shards) * len(shards) / max(1, len(shards) - 1)
    stats = {
        "examples": len(examples), "answered_turns": turns, "completion_tokens": completion, "context_tokens": context,
        "completion_tokens_by_task": dict(by_task.most_common()), "sampling": experiment.sampling.to_dict(),
        "data_shards": len(shards), "sampling_wall_seconds_estimate": round(sampling_seconds, 1),
        "completion_tokens_per_second": round(completion / sampling_seconds, 1) if sampling_seconds else None,
        "feature_shards": len(features), "feature_wall_seconds": round(span(features), 1),
    }
    print(json.dumps(stats, indent=2))
    if args.out:
        write_json(args.out, stats)


if __name__ == "__main__":
    main()
