"""The teacher's hidden states, captured where a draft head reads them, and cached as shards.

A draft head (``ptp.head``) runs the teacher's last K decoder layers. Its context rows are the
teacher's own hidden states *entering* layer ``L - K``, so one teacher forward per sequence gives
everything head training needs, and the head trains without running the teacher again:

* ``decoder_layers(model)``: the teacher's list of decoder blocks, for any architecture;
* ``capture_layer_input(model, layer)``: a context manager recording the input of one block,
  optionally stopping the forward right there (the rest of the model is not needed then);
* ``text_features``: for dataset text (the paper's "dataset" proposal, Table 4), the features and
  the u interval of every token under the teacher's own sampling distribution (Eq. 9 holds for
  any text) from one forward;
* ``FeatureShardWriter`` / ``load_feature_shards``: resumable, atomically written shards
  (``tokens`` int32, ``offsets`` int64, ``features`` bf16 ``(sum T, H)``, ``lo``/``hi`` float64 with
  NaN where a token is not a training target).

Disk cost: ``2 H`` bytes of features plus 20 bytes per token; 1.17 GB per million tokens for
SmolLM2-135M (H = 576).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .config import SamplingConfig
from .errors import UserError
from .io import index_problem, inside, write_bytes, write_json
from .sampling import token_interval, warp

FEATURE_FORMAT = "ptp-features-1"
FEATURE_TENSORS = ("tokens", "offsets", "features", "lo", "hi")
INDEX_FIELDS = {"format": str, "config": dict, "done": int, "tokens": int, "shards": list}
SHARD_FIELDS = {"file": str}  # what is read of a shard entry


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM: its longest ``nn.ModuleList`` (Llama's ``model.layers``,
    GPT-2's ``transformer.h``, GPT-NeoX's ``gpt_neox.layers``, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UserError(f"{type(model).__name__} has no list of decoder layers: a draft head needs a transformer decoder")
    return max(lists, key=len)


class _Stop(Exception):
    """Raised by the capture hook to end a forward once the wanted input is recorded."""


@contextmanager
def capture_layer_input(model: nn.Module, layer: int, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record the hidden states entering decoder block ``layer`` (``(B, T, H)``) during forwards.

    With ``stop`` the forward ends there (call ``run_until_captured``), which skips the blocks
    above and the output layer.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.detach())
        if stop:
            raise _Stop

    handle = decoder_layers(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def run_until_captured(model: nn.Module, **inputs: Any) -> None:
    """Run ``model(**inputs)`` inside ``capture_layer_input(..., stop=True)``."""
    try:
        model(**inputs)
    except _Stop:
        pass


def _right_padded(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` token ids right-padded with 0 and their attention mask (1 on real tokens)."""
    ids = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def text_features(
    teacher: nn.Module, sequences: list[list[int]], layer: int, sampling: SamplingConfig, targets: list[torch.Tensor] | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Features and teacher u intervals of dataset text, one right-padded forward for the batch.

    Args:
        sequences: B token id lists.
        layer: the decoder block whose input is captured.
        targets: per sequence a ``(T,)`` bool, True where a token is a training target (e.g. the
            assistant's turns); None: every token after the first.
    Returns:
        Per sequence ``(features (T, H) bf16, lo (T,) float64, hi (T,) float64)``; ``lo``/``hi``
        are NaN at non-targets and where the token lies outside the sampling distribution's
        support (an empty interval: no u picks it).
    """
    device = teacher.get_input_embeddings().weight.device
    ids, mask = _right_padded(sequences)
    with capture_layer_input(teacher, layer) as captured:
        logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    hidden = captured[0]
    out = []
    for row, seq in enumerate(sequences):
        n = len(seq)
        lo = torch.full((n,), float("nan"), dtype=torch.float64)
        hi = lo.clone()
        # The logits at position j give the distribution of token j + 1.
        tok_lo, tok_hi = text_intervals(logits[row, : n - 1], ids[row, 1:n].to(logits.device), sampling)
        keep = tok_hi.cpu() > tok_lo.cpu()
        if targets is not None:
            keep &= targets[row][1:n]
        lo[1:] = torch.where(keep, tok_lo.cpu(), float("nan"))
        hi[1:] = torch.where(keep, tok_hi.cpu(), float("nan"))
        out.append((hidden[row, :n].to(torch.bfloat16).cpu(), lo, hi))
    return out


CANDIDATES = 256  # tokens the fast interval path considers per position


def text_intervals(logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, V)`` logits and ``(T,)`` next tokens -> their u intervals ``(lo, hi)`` under ``sampling``.

    ``warp`` + ``token_interval`` in float64 over a 49k vocabulary cost 3x the teacher forward on
    a CPU; in rank order only the top candidates matter, so the normaliser is taken over the full
    vocabulary in float32 and the CDF over the top ``CANDIDATES`` in float64 (equal to the exact
    intervals up to float32 rounding of the normaliser, which training does not notice). Rows
    whose kept set reaches past the candidates, and other orders, take the exact path.
    """
    if sampling.order != "rank" or sampling.greedy or logits.shape[-1] <= CANDIDATES:
        return token_interval(warp(logits, sampling), tokens, sampling.order)
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = scores.topk(sampling.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    norm = scores.logsumexp(-1, keepdim=True).double()
    values, ids = scores.topk(CANDIDATES, dim=-1)
    probs = (values.double() - norm).exp()
    keep = probs.cumsum(-1) - probs < sampling.top_p
    keep[:, 0] = True
    probs = probs * keep
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    match = ids == tokens.unsqueeze(-1)
    index = match.long().argmax(-1, keepdim=True)
    hi = cdf.gather(-1, index).squeeze(-1)
    lo = torch.where(index.squeeze(-1) > 0, cdf.gather(-1, (index - 1).clamp_min(0)).squeeze(-1), torch.zeros_like(hi))
    inside = match.any(-1) & keep.gather(-1, index).squeeze(-1)
    lo, hi = torch.where(inside, lo, 1.0), torch.where(inside, hi, 1.0)
    wide = keep[:, -1]  # the kept set may extend past the candidates: exact path
    if bool(wide.any()):
        lo[wide], hi[wide] = token_interval(warp(logits[wide], sampling), tokens[wide], sampling.order)
    return lo, hi


@torch.inference_mode()
def completion_features(teacher: nn.Module, sequences: list[list[int]], layer: int) -> list[torch.Tensor]:
    """Features of sequences whose u intervals are already known (pregenerated completions):
    the forward stops at ``layer``. Returns per sequence ``(T, H)`` bf16."""
    device = teacher.get_input_embeddings().weight.device
    ids, mask = _right_padded(sequences)
    with capture_layer_input(teacher, layer, stop=True) as captured:
        run_until_captured(teacher, input_ids=ids.to(device), attention_mask=mask.to(device))
    return [captured[0][row, : len(seq)].to(torch.bfloat16).cpu() for row, seq in enumerate(sequences)]


class FeatureShardWriter:
    """Shards of features in ``directory``, resumable: ``index.json`` lists finished shards, and a
    shard counts only once listed (written after the shard itself)."""

    def __init__(self, directory: str | Path, config: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.index_path = self.directory / "index.json"
        if self.index_path.is_file():
            self.index = _read_index(self.index_path)
            if self.index["config"] != config:
                raise UserError(f"{self.directory} holds features made with another configuration: delete it or pass another directory")
        else:
            self.index = {"format": FEATURE_FORMAT, "config": config, "done": 0, "tokens": 0, "shards": []}

    @property
    def done(self) -> int:
        """Sequences already written (the next shard starts there)."""
        return int(self.index["done"])

    def write(self, examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Append one shard of ``(tokens (T,), features (T, H), lo (T,), hi (T,))`` examples."""
        lengths = torch.tensor([len(e[0]) for e in examples], dtype=torch.int64)
        offsets = torch.zeros(len(examples) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        tensors = {
            "tokens": torch.cat([e[0] for e in examples]).to(torch.int32),
            "offsets": offsets,
            "features": torch.cat([e[1] for e in examples]).to(torch.bfloat16).contiguous(),
            "lo": torch.cat([e[2] for e in examples]).to(torch.float64),
            "hi": torch.cat([e[3] for e in examples]).to(torch.float64),
        }
        name = f"shard-{len(self.index['shards']):05d}.safetensors"
        write_bytes(self.directory / name, save(tensors, metadata={"format": FEATURE_FORMAT}))
        self.index["shards"].append({"file": name, "sequences": len(examples), "tokens": int(offsets[-1])})
        self.index["done"] += len(examples)
        self.index["tokens"] += int(offsets[-1])
        write_json(self.index_path, self.index)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}): delete its directory and extract the features again") from None
    if not isinstance(index, dict) or index.get("format") != FEATURE_FORMAT:
        raise UserError(f"{path} is not a ptp feature index: delete its directory and extract the features again")
    problem = index_problem(index, INDEX_FIELDS, SHARD_FIELDS)
    if problem:
        raise UserError(f"{path} is damaged ({problem}): delete its directory and extract the features again")
    return index


def load_feature_shards(directory: str | Path) -> list[dict[str, torch.Tensor]]:
    """The cached sequences of a feature directory: dicts of ``tokens`` (int64 ``(T,)``),
    ``features`` (bf16 ``(T, H)``), ``lo``/``hi`` (float64 ``(T,)``). Views into the shards."""
    directory = Path(directory)
    path = directory / "index.json"
    if not path.is_file():
        raise UserError(f"{directory} has no extracted features (no index.json): extract them first")
    out = []
    for shard in _read_index(path)["shards"]:
        file = inside(directory, shard.get("file") if isinstance(shard, dict) else None, str(path))
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"feature shard {file} is missing or damaged ({e}): delete {directory} and extract again") from None
        if set(FEATURE_TENSORS) - set(tensors):
            raise UserError(f"feature shard {file} is damaged: delete {directory} and extract again")
        offsets = tensors["offsets"].tolist()
        tokens = tensors["tokens"].to(torch.int64)
        for a, b in zip(offsets[:-1], offsets[1:]):
            out.append({"tokens": tokens[a:b], "features": tensors["features"][a:b], "lo": tensors["lo"][a:b], "hi": tensors["hi"][a:b]})
    return out
