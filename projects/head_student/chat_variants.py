"""Head variants that share one experiment's teacher completions and features (issue 19).

    python projects/head_student/chat_variants.py SOURCE_DIR RUNS_DIR --init HEAD_DIR --steps 300

SOURCE_DIR is a head experiment made by ``ptp distill ... --kind head`` and filled by ``ptp
pregenerate``. Each variant is a copy of its ``experiment.yaml`` with another model section and
hard links to its ``data/`` and ``features/`` (no copy of the 2.5 GB of features; the shards'
fingerprint covers teacher, data and sampling only, so every variant reads them):

* ``chat-ptp``: C-PTP head (u in its slots), the PTP draft head;
* ``chat-mtp``: the same head without u (MTP): what u pays;
* ``chat-ar``: the autoregressive head of the same size (MTP rows, one token per head call fed its
  own drafts, as EAGLE-1).

All start from ``--init`` (a head pretrained on ShareGPT text) with the same optimiser settings and
steps; train each with ``ptp train RUNS_DIR/NAME``.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

VARIANTS = {
    "chat-ptp": {"mode": "c-ptp", "autoregressive": False},
    "chat-mtp": {"mode": "mtp", "autoregressive": False},
    "chat-ar": {"mode": "mtp", "autoregressive": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--init", type=Path, required=True, help="a trained head's directory to start from")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-draft", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--windows", type=int, default=48, help="draft windows per sequence and step")
    args = parser.parse_args()
    base = yaml.safe_load((args.source / "experiment.yaml").read_text())
    for name, model in VARIANTS.items():
        directory = args.runs / name
        directory.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load(yaml.safe_dump(base))
        config["model"].update(model, init=str(args.init.resolve()), num_draft_tokens=args.num_draft)
        config["loss"]["windows_per_sequence"] = args.windows  # windows amortise the context rows of a sequence
        config["optim"].update(lr=args.lr, warmup_steps=20, final_lr_ratio=0.1, batch_size=2, steps=args.steps,
                               val_every=10**6, val_windows=512)  # validation once, at the end
        config["trainer"].update(checkpoint_every=50, keep_checkpoints=1, devices=1, precision="bf16-mixed")  # bf16 matmul units
        (directory / "experiment.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for part in ("data", "features"):
            if not (directory / part).exists():
                subprocess.run(["cp", "-al", str(args.source / part), str(directory / part)], check=True)
        print(f"ptp train {directory}")


if __name__ == "__main__":
    main()
