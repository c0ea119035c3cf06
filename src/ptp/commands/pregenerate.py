"""``ptp pregenerate DIR``: sample the teacher's completions for an experiment (resumable)."""

from __future__ import annotations

import argparse

from ..cli import dataclass_arguments, dataclass_from_args
from ..experiment import Experiment, check_remote_code
from ..pregenerate import DATA_DIR, PregenerateConfig, keep_freed_memory, pregenerate

HELP = "Sample the teacher's completions for an experiment's prompts into DIR/data (resumable)."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="experiment directory written by ptp distill")
    dataclass_arguments(parser, PregenerateConfig)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the teacher's own modeling code when experiment.yaml asks for it (off by default)")


def run(args: argparse.Namespace) -> int:
    check_remote_code(args.dir, args.trust_remote_code, "pregenerate")
    mode = Experiment.load(args.dir).data.data_mode
    if mode != "completions":
        print(f"{args.dir} trains on the dataset's text (data mode {mode!r}): nothing to pregenerate; next: ptp train {args.dir}")
        return 0
    keep_freed_memory()  # this process only pregenerates
    summary = pregenerate(args.dir, dataclass_from_args(PregenerateConfig, args))
    rate = summary["new_tokens"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    total = sum(s["completion_tokens"] for s in summary["shards"])
    print(f"{args.dir}/{DATA_DIR}: {summary['num_examples']} examples, {total} completion tokens"
          f" ({summary['new_tokens']} sampled now, {rate:.0f} tok/s)")
    print(f"next: ptp train {args.dir}")
    return 0
