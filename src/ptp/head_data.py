"""Cached teacher features of a head experiment (``kind: head``): ``DIR/features``.

A draft head (``ptp.head``) reads the teacher's hidden states entering layer ``L - K``. After
``ptp pregenerate`` has sampled the completions, ``write_features`` runs the teacher once per
batch of them, stopping the forward at that layer (``ptp.features.completion_features``), and
stores the states beside the completions' tokens and u intervals as ``ptp.features`` shards. ``ptp
train`` then trains the head from these shards without running any teacher layer.

Disk cost: bf16 features take ``2 H`` bytes per token, plus 20 bytes (int32 token, float64 ``lo``
and ``hi``): ``2 H + 20`` MB per million tokens (prompt and completion tokens alike), 1.17 GB for
SmolLM2-135M (H = 576). Resumable: a shard counts once ``index.json`` lists it, and a rerun
continues after the last listed shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .experiment import Experiment
from .features import FeatureShardWriter, completion_features, decoder_layers, load_feature_shards
from .models import load_teacher
from .pregenerate import fingerprint, load_shards

FEATURES_DIR = "features"


def check_head_experiment(experiment: Experiment, num_teacher_layers: int | None = None) -> None:
    """UserError unless a head can train on ``experiment``: completions data, cross-entropy, and
    (when known) ``num_layers`` below the teacher's number of layers."""
    k = experiment.model.num_layers
    if experiment.data.data_mode != "completions":
        raise UserError(f"a head trains on cached features of pregenerated completions, not data mode "
                        f"{experiment.data.data_mode!r}: use --data-mode completions")
    if experiment.loss.loss != "ce":
        raise UserError(f"a head trains with cross-entropy, not loss {experiment.loss.loss!r}: use --loss ce")
    if num_teacher_layers is not None and not 1 <= int(k) < num_teacher_layers:
        raise UserError(f"num_layers={k} is invalid for a teacher of {num_teacher_layers} layers: "
                        f"use 1..{num_teacher_layers - 1}")


def load_experiment_teacher(experiment: Experiment) -> torch.nn.Module:
    """The experiment's teacher in its configured dtype."""
    model = experiment.model
    return load_teacher(model.teacher, dtype=getattr(torch, model.teacher_dtype), trust_remote_code=model.trust_remote_code)


def feature_layer(experiment: Experiment, teacher: torch.nn.Module) -> int:
    """``L - K``: the decoder block whose input a head of ``num_layers`` K reads (UserError unless 1 <= K < L)."""
    total = len(decoder_layers(teacher))
    check_head_experiment(experiment, total)
    return total - int(experiment.model.num_layers)


def feature_config(experiment: Experiment, layer: int, sequences: int) -> dict[str, Any]:
    """What the feature shards depend on: the completions (their fingerprint and count) and the layer."""
    return {"completions": fingerprint(experiment), "layer": layer, "sequences": sequences}


def write_features(directory: str | Path, device: torch.device | str = "cpu", batch_size: int = 16,
                   shard_size: int = 256, progress: bool = False) -> dict[str, int]:
    """Extract the features of every pregenerated completion of ``directory`` (resumable).

    Args:
        device: where the teacher runs.
        batch_size: sequences per teacher forward (right-padded; causal attention keeps each
            row's states those of the row alone).
        shard_size: sequences per shard, the unit a killed run resumes from.
    Returns:
        ``sequences`` and ``tokens`` in the shards, ``new_sequences`` extracted by this call.
    Raises:
        UserError: not a head experiment, no complete pregenerated data, features of another
            configuration in ``DIR/features``.
    """
    directory = Path(directory)
    experiment = Experiment.load(directory)
    if experiment.model.kind != "head":
        raise UserError(f"{directory} trains a {experiment.model.kind} student: only heads (--kind head) need cached features")
    check_head_experiment(experiment)
    examples = load_shards(directory)
    teacher = load_experiment_teacher(experiment).to(device)
    layer = feature_layer(experiment, teacher)
    writer = FeatureShardWriter(directory / FEATURES_DIR, feature_config(experiment, layer, len(examples)))
    start = writer.done
    from tqdm.auto import tqdm

    with tqdm(total=len(examples), initial=start, unit="seq", desc="features", disable=not progress) as bar:
        for first in range(start, len(examples), shard_size):
            shard = examples[first : first + shard_size]
            features: list[torch.Tensor | None] = [None] * len(shard)
            # Batches of similar lengths: right padding to a batch's longest costs compute for nothing.
            order = sorted(range(len(shard)), key=lambda j: len(shard[j]["tokens"]))
            for b in range(0, len(order), batch_size):
                batch = order[b : b + batch_size]
                for j, f in zip(batch, completion_features(teacher, [shard[j]["tokens"].tolist() for j in batch], layer)):
                    features[j] = f
                bar.update(len(batch))
            writer.write([(e["tokens"], f, e["lo"], e["hi"]) for e, f in zip(shard, features)])
    return {"sequences": writer.done, "tokens": int(writer.index["tokens"]), "new_sequences": writer.done - start}


def pregenerated_features(directory: Path, experiment: Experiment, device: torch.device, batch_size: int,
                          shard_size: int, progress: bool) -> dict[str, Any]:
    """``ptp pregenerate``'s last step: ``{"features": write_features(...)}`` for a head experiment
    whose completions are complete, ``{}`` for any other."""
    if experiment.model.kind != "head":
        return {}
    return {"features": write_features(directory, device, batch_size, shard_size, progress)}


def load_features(directory: str | Path, experiment: Experiment, layer: int) -> list[dict[str, torch.Tensor]]:
    """The feature sequences of a head experiment, in example order (``ptp.features`` dicts).

    Raises:
        UserError: no features, unfinished extraction, or features of another configuration
            (other completions, another ``num_layers``).
    """
    features_dir = Path(directory) / FEATURES_DIR
    if not (features_dir / "index.json").is_file():
        raise UserError(f"{directory} has no cached features: run ptp pregenerate {directory}")
    count = len(load_shards(directory))
    # The writer reads and checks the index (same completions, same layer); nothing is written.
    done = FeatureShardWriter(features_dir, feature_config(experiment, layer, count)).done
    if done < count:
        raise UserError(f"feature extraction in {directory} stopped at sequence {done} of {count}: "
                        f"rerun ptp pregenerate {directory} to finish it")
    return load_feature_shards(features_dir)
