"""The whole command line on a tiny random Llama: distill -> (pregenerate) -> train -> generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptp.cli import main
from tiny_models import write_assets

TRAIN = ["--num-draft-tokens", "4", "--lora-rank", "4", "--batch-size", "4", "--steps", "4", "--val-every", "2",
         "--checkpoint-every", "2", "--val-windows", "8", "--warmup-steps", "1", "--val-examples", "2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return write_assets(tmp_path_factory.mktemp("e2e-assets"), 20)


def generate_json(directory: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["generate", str(directory), "what is the cat ?", "--json", "--max-new-tokens", "8", "--seed", "0"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("name", "flags", "pregenerate"),
    [
        ("o-ptp", ["--prompt-format", "Q: {question} ?", "--completion-tokens", "12", "--max-prompt-tokens", "64",
                   "--temperature", "0.9", "--top-k", "40"], True),
        # Inverse autoregressive C-PTP (Alg. 3): text only, no teacher u, nothing to pregenerate.
        ("c-ptp-inverse", ["--data-mode", "inverse", "--text-column", "text", "--mode", "c-ptp", "--seq-len", "16"], False),
    ],
)
def test_distill_train_generate(assets, tmp_path, capsys, name, flags, pregenerate):
    directory = tmp_path / name
    assert main(["distill", assets["model"], assets["data"], str(directory), *flags, *TRAIN]) == 0
    if pregenerate:
        assert main(["pregenerate", str(directory), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", str(directory), "--no-progress"]) == 0
    assert f"next: ptp generate {directory}" in capsys.readouterr().out
    stats = generate_json(directory, capsys)
    assert stats["tokens"] > 0 and stats["identical_to_ar"] is True
