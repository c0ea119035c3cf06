"""Teacher completions for every prompt, sampled once and stored as shards that training consumes.

Layout of ``DIR/data`` (every file written atomically):

* ``shard-00000.safetensors``, ...: a contiguous range of examples each, holding
  ``tokens`` (int32, all examples' prompt + completion tokens concatenated), ``offsets`` (int64,
  ``n + 1``: example j is ``tokens[offsets[j]:offsets[j+1]]``), ``prompt_lens`` (int32, ``n``),
  ``examples`` (int64, ``n``: example indices) and ``lo``/``hi`` (float64, aligned with
  ``tokens``): the interval ``[F_{t-1}, F_t)`` of u that makes the teacher pick each completion
  token (Eq. 9), computed from the very distribution it was sampled from. Prompt positions hold
  NaN there: prompts are dataset text, not teacher samples.
* ``index.json``: the configuration the shards were made with, the number of examples and the
  shards written so far. A shard counts only once the index lists it, so a killed run resumes
  with the next example and never duplicates or loses one.

Sampling is Eq. (2) with the experiment's SamplingConfig: token k of example i is
``pick(u_k, warp(logits))`` with ``u`` drawn from a seed derived from (experiment seed, i), so the
output does not depend on batch size, shard size or resumption (up to floating-point differences
between batch shapes, which can only flip a token whose u lies within rounding of a boundary).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import SamplingConfig
from .data import check_context, load_rows, prompt_ids
from .errors import UserError
from .hf_cache import cache_kwarg, output_cache
from .experiment import Experiment
from .io import remove_stale_temps, write_bytes, write_json
from .generate import eos_token_ids
from .models import load_teacher, load_tokenizer
from .sampling import draw_uniform, pick, token_interval, warp

DATA_DIR = "data"
INDEX_FILE = "index.json"
SHARD_FORMAT = "ptp-completions-1"
INDEX_KEYS = {"format", "config", "num_examples", "done", "complete", "shards"}
SHARD_TENSORS = {"tokens", "offsets", "prompt_lens", "examples", "lo", "hi"}


@dataclass
class PregenerateConfig:
    """How pregeneration runs; none of it changes the data produced.

    Attributes:
        batch_size: prompts sampled together (left-padded, with a KV cache).
        shard_size: examples per shard file, the unit a killed run resumes from.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        progress: show a progress bar with tokens per second.
    """

    batch_size: int = 16
    shard_size: int = 256
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}, shard_size={self.shard_size!r}: use integers >= 1")


def example_seed(seed: int, index: int) -> int:
    """Seed of example ``index``'s u, independent of every other example (a hash, no collisions
    between nearby (seed, index) pairs as a sum or product would give)."""
    digest = hashlib.sha256(f"ptp-u:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def fingerprint(experiment: Experiment) -> dict[str, Any]:
    """Everything the shards' content depends on; resuming under another fingerprint is refused."""
    data = asdict(experiment.data)
    keep = ("dataset", "split", "prompt_column", "messages_column", "prompt_format", "max_prompt_tokens",
            "completion_tokens", "limit", "shuffle", "seed")
    return {
        "teacher": experiment.model.teacher,
        "teacher_dtype": experiment.model.teacher_dtype,
        "data": {k: data[k] for k in keep},
        "sampling": experiment.sampling.to_dict(),
    }


@torch.inference_mode()
def sample_completions(
    teacher: torch.nn.Module, prompts: list[list[int]], u: torch.Tensor, sampling: SamplingConfig, eos_ids: set[int]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Sample one completion per prompt, batched with left padding and a KV cache.

    Args:
        prompts: B prompts' token ids (non-empty).
        u: ``(B, K)`` auxiliary variables: token k of row b is ``pick(u[b, k], warp(logits))``.
        eos_ids: tokens that end a completion (kept as its last token).
    Returns:
        Per prompt ``(tokens int64, lo float64, hi float64)`` of its completion (at most K tokens).
    """
    device = teacher.get_input_embeddings().weight.device
    batch, new = u.shape
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    input_ids, mask, u = input_ids.to(device), mask.to(device), u.to(device)
    # Positions count real tokens only, so a padded row sees exactly the positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(teacher.forward).parameters else {}

    tokens = torch.zeros(batch, new, dtype=torch.long, device=device)
    lo = torch.zeros(batch, new, dtype=torch.float64, device=device)
    hi = torch.zeros_like(lo)
    lengths = torch.full((batch,), new, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = teacher(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    for k in range(new):
        probs = warp(out.logits[:, -1], sampling)
        tokens[:, k] = pick(u[:, k], probs, sampling.order)
        lo[:, k], hi[:, k] = token_interval(probs, tokens[:, k], sampling.order)
        ended = ~done & torch.isin(tokens[:, k], eos)
        lengths[ended] = k + 1
        done |= ended
        if k == new - 1 or bool(done.all()):
            break
        # Finished rows keep decoding (their tokens are dropped) so the batch stays rectangular.
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = teacher(input_ids=tokens[:, k : k + 1], attention_mask=mask, position_ids=positions, use_cache=True,
                      **{cache_kwarg(teacher): output_cache(out)})
    return [(tokens[r, :n].cpu(), lo[r, :n].cpu(), hi[r, :n].cpu()) for r, n in enumerate(lengths.tolist())]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} is not available here: use --device cpu")
    return device


def _read_index(data_dir: Path, expected: dict[str, Any], num_examples: int) -> dict[str, Any]:
    """The index of a previous run (checked against this configuration), or a fresh one."""
    path = data_dir / INDEX_FILE
    if not path.is_file():
        return {"format": SHARD_FORMAT, "config": expected, "num_examples": num_examples, "done": 0, "complete": False, "shards": []}
    index = _load_json(path)
    if index["config"] != expected or index["num_examples"] != num_examples:
        raise _made_otherwise(data_dir)
    return index


def _made_otherwise(data_dir: Path) -> UserError:
    return UserError(f"{data_dir} was generated with another configuration or dataset: delete {data_dir} to regenerate, "
                     "or restore the experiment.yaml and dataset it was made with")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}): delete its directory and rerun ptp pregenerate") from None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise UserError(f"{path} is not a ptp pregeneration index: delete its directory and rerun ptp pregenerate")
    missing = sorted(INDEX_KEYS - set(index))
    if missing:
        raise UserError(f"{path} is damaged (no {', '.join(missing)}): delete its directory and rerun ptp pregenerate")
    return index


def _write_shard(path: Path, examples: list[int], prompts: list[list[int]], completions: list[tuple[torch.Tensor, ...]]) -> int:
    """Write one shard atomically; returns its number of completion tokens."""
    tokens, lo, hi, lengths = [], [], [], []
    for prompt, (completion, c_lo, c_hi) in zip(prompts, completions):
        nan = torch.full((len(prompt),), float("nan"), dtype=torch.float64)
        tokens += [torch.tensor(prompt, dtype=torch.int32), completion.to(torch.int32)]
        lo += [nan, c_lo]
        hi += [nan, c_hi]
        lengths.append(len(prompt) + len(completion))
    offsets = torch.zeros(len(examples) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    tensors = {
        "tokens": torch.cat(tokens),
        "offsets": offsets,
        "prompt_lens": torch.tensor([len(p) for p in prompts], dtype=torch.int32),
        "examples": torch.tensor(examples, dtype=torch.int64),
        "lo": torch.cat(lo),
        "hi": torch.cat(hi),
    }
    # Serialized here and written by write_bytes: safetensors' own save_file writes through a
    # temporary file of its own (.tmpXXXXXX), which a kill would leave behind.
    write_bytes(path, save(tensors, metadata={"format": SHARD_FORMAT}))
    return sum(len(c[0]) for c in completions)


def pregenerate(directory: str | Path, run: PregenerateConfig | None = None) -> dict[str, Any]:
    """Sample the teacher's completions for every example of the experiment in ``directory``.

    Resumes where a previous run stopped. Returns the index (as written to ``data/index.json``)
    plus ``"new_tokens"`` and ``"seconds"`` of this run.
    """
    run = run or PregenerateConfig()
    directory = Path(directory)
    experiment = Experiment.load(directory)
    data, model = experiment.data, experiment.model
    if data.data_mode != "completions":
        raise UserError(f"{directory} uses data mode {data.data_mode!r}: ptp train reads its text directly, no pregeneration needed")
    data_dir = directory / DATA_DIR
    remove_stale_temps(data_dir)  # left by a run killed mid-write
    tokenizer = load_tokenizer(model.teacher, trust_remote_code=model.trust_remote_code)
    rows = load_rows(data)
    index = _read_index(data_dir, fingerprint(experiment), len(rows))
    stats = {"new_tokens": 0, "seconds": 0.0}
    if index["complete"]:
        return {**index, **stats}

    device = _device(run.device)
    teacher = load_teacher(model.teacher, dtype=getattr(torch, model.teacher_dtype), trust_remote_code=model.trust_remote_code).to(device)
    check_context(data, teacher.config)  # experiment.yaml may have been edited since ptp distill
    eos_ids = eos_token_ids(teacher, tokenizer)
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    with tqdm(total=len(rows), initial=index["done"], unit="ex", desc="pregenerate", disable=not run.progress) as bar:
        while index["done"] < len(rows):
            start, stop = index["done"], min(len(rows), index["done"] + run.shard_size)
            examples = list(range(start, stop))
            prompts = [prompt_ids(row, i, data, tokenizer) for i, row in zip(examples, rows.select(examples))]
            completions: list[Any] = [None] * len(examples)
            # Similar lengths share a batch (less padding); results return to example order below.
            order = sorted(range(len(examples)), key=lambda j: len(prompts[j]))
            for b in range(0, len(order), run.batch_size):
                batch = order[b : b + run.batch_size]
                u = torch.stack([draw_uniform(data.completion_tokens, seed=example_seed(data.seed, examples[j])) for j in batch])
                for j, result in zip(batch, sample_completions(teacher, [prompts[j] for j in batch], u, experiment.sampling, eos_ids)):
                    completions[j] = result
                    stats["new_tokens"] += len(result[0])
                bar.update(len(batch))
                bar.set_postfix_str(f"{stats['new_tokens'] / (time.perf_counter() - start_time):.0f} tok/s")
            name = f"shard-{len(index['shards']):05d}.safetensors"
            count = _write_shard(data_dir / name, examples, prompts, completions)
            index["shards"].append({"file": name, "start": start, "stop": stop, "completion_tokens": count})
            index["done"] = stop
            index["complete"] = stop == len(rows)
            # The shard is on disk before the index names it: a kill in between only leaves an
            # unlisted file that the next run overwrites.
            write_json(data_dir / INDEX_FILE, index)
    stats["seconds"] = time.perf_counter() - start_time
    return {**index, **stats}


def load_shards(directory: str | Path, require_complete: bool = True) -> list[dict[str, Any]]:
    """The pregenerated examples of an experiment directory, in example order.

    Returns:
        One dict per example: ``tokens`` (int64 ``(T,)``, prompt then completion), ``prompt_len``
        (int), ``lo``/``hi`` (float64 ``(T,)``, the u interval of each completion token; NaN at
        the ``prompt_len`` prompt positions) and ``example`` (its index in the dataset order).
    Raises:
        UserError: no pregenerated data, unfinished pregeneration (with ``require_complete``),
            or a missing or damaged shard.
    """
    data_dir = Path(directory) / DATA_DIR
    path = data_dir / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{directory} has no pregenerated data: run ptp pregenerate {directory}")
    index = _load_json(path)
    if index["config"] != fingerprint(Experiment.load(directory)):  # e.g. another teacher: its vocabulary may differ
        raise _made_otherwise(data_dir)
    if require_complete and not index["complete"]:
        raise UserError(f"pregeneration in {directory} stopped at example {index['done']} of {index['num_examples']}: rerun ptp pregenerate {directory} to finish it")
    examples = []
    for shard in index["shards"]:
        try:
            tensors = load_file(str(data_dir / shard["file"]))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"shard {data_dir / shard['file']} is missing or damaged ({e}): delete {data_dir} and rerun ptp pregenerate") from None
        if not SHARD_TENSORS <= set(tensors):
            raise UserError(f"shard {data_dir / shard['file']} is damaged (no {', '.join(sorted(SHARD_TENSORS - set(tensors)))}): "
                            f"delete {data_dir} and rerun ptp pregenerate")
        offsets = tensors["offsets"].tolist()
        for j, example in enumerate(tensors["examples"].tolist()):
            a, b = offsets[j], offsets[j + 1]
            examples.append({
                "tokens": tensors["tokens"][a:b].to(torch.int64),
                "prompt_len": int(tensors["prompt_lens"][j]),
                "lo": tensors["lo"][a:b],
                "hi": tensors["hi"][a:b],
                "example": example,
            })
    return examples
