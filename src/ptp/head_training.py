"""Training a draft head from cached teacher features: no teacher layer runs in a step.

A step samples sequences of ``ptp.features`` shards, draws W windows per sequence at bonus
positions i whose N following tokens all have a u interval, draws each token's u inside its
interval (Eq. 9; App. D's Beta(b, b)), and runs ``HeadStudent.windows``. The loss is the
cross-entropy of each slot's logits against its true token (Eq. 10 for O-PTP; for C-PTP and MTP
the cross-entropy of a distribution against samples of the teacher's, Eq. 11). A true token
outside the draft vocabulary adds no loss and counts as a miss.

``train_head`` is resumable: ``DIR/head-checkpoint.safetensors`` (weights, AdamW state and, in
its metadata, the step, config and validation history: one atomic write) is written every
``save_every`` steps, and a rerun continues from it with the same batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save

from .experiment import lr_factor
from .io import write_bytes
from .metrics import num_correct
from .sampling import sample_in_interval
from .student import draft_tokens

CHECKPOINT = "head-checkpoint"


@dataclass
class HeadTrainConfig:
    """How a head is trained from cached features.

    Attributes:
        steps: optimisation steps.
        batch_size: sequences per step.
        windows: draft windows per sequence and step.
        lr: peak learning rate (``ptp.experiment.lr_factor``: linear warm-up, cosine decay to ``final_lr_ratio``).
        warmup_steps: warm-up steps.
        final_lr_ratio: learning rate at the last step as a fraction of ``lr``.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: gradient norm clip (0: off).
        new_lr_factor: learning-rate multiplier of the modules a teacher does not have (the lifts
            and the u embedding): they start from scratch, unlike teacher-initialised layers.
        beta: App. D's Beta(b, b) for u inside intervals (1: uniform).
        val_every: validate every this many steps.
        save_every: checkpoint every this many steps.
        seed: seed of sequence, window and u sampling.
    """

    steps: int = 2000
    batch_size: int = 2
    windows: int = 24
    lr: float = 3e-4
    warmup_steps: int = 100
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    new_lr_factor: float = 10.0
    beta: float = 1.0
    val_every: int = 250
    save_every: int = 100
    seed: int = 0


def valid_starts(lo: torch.Tensor, hi: torch.Tensor, num_draft: int) -> torch.Tensor:
    """``(T,)`` intervals (NaN or empty: no target) -> bonus positions i whose tokens
    ``i+1 .. i+N`` all have a nonempty u interval."""
    ok = (hi > lo) & ~torch.isnan(lo)
    t = ok.shape[0]
    if t < num_draft + 2:
        return torch.zeros(0, dtype=torch.long)
    run = ok.unfold(0, num_draft, 1).all(-1)  # run[j]: tokens j .. j+N-1 all valid
    starts = torch.arange(1, t - num_draft)  # i in [1, T - N - 1]
    return starts[run[starts + 1]]


def draw_starts(example: dict[str, torch.Tensor], windows: int, num_draft: int,
                generator: torch.Generator) -> torch.Tensor | None:
    """``(W,)`` bonus positions drawn uniformly among the example's valid ones; None if it has none."""
    starts = valid_starts(example["lo"], example["hi"], num_draft)
    if not starts.numel():
        return None
    return starts[torch.randint(0, starts.numel(), (windows,), generator=generator)]


def collate_windows(chosen: list[tuple[dict[str, torch.Tensor], torch.Tensor]], num_draft: int,
                    generators: list[torch.Generator], beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Padded batch of examples with their ``(W,)`` window starts; row r's u come from ``generators[r]``.

    Returns ``features (B, T, H)`` bf16, ``tokens (B, T)``, ``starts (B, W)``, ``u (B, W, N)`` float64
    and ``targets (B, W, N)``.
    """
    width = max(e["tokens"].shape[0] for e, _ in chosen)
    hidden = chosen[0][0]["features"].shape[1]
    b = len(chosen)
    features = torch.zeros(b, width, hidden, dtype=torch.bfloat16)
    tokens = torch.zeros(b, width, dtype=torch.long)
    offsets = torch.arange(1, num_draft + 1)
    all_starts, us, targets = [], [], []
    for row, ((e, starts), generator) in enumerate(zip(chosen, generators)):
        t = e["tokens"].shape[0]
        features[row, :t] = e["features"]
        tokens[row, :t] = e["tokens"]
        pos = starts[:, None] + offsets  # (W, N) positions of the predicted tokens
        us.append(sample_in_interval(e["lo"][pos], e["hi"][pos], beta, generator))
        targets.append(e["tokens"][pos])
        all_starts.append(starts)
    return {"features": features, "tokens": tokens, "starts": torch.stack(all_starts), "u": torch.stack(us),
            "targets": torch.stack(targets)}


def make_batch(examples: list[dict[str, torch.Tensor]], picks: list[int], windows: int, num_draft: int,
               generator: torch.Generator, beta: float = 1.0) -> dict[str, torch.Tensor] | None:
    """Padded features, tokens, window starts, u and target tokens of the picked sequences.

    One generator draws every row's starts, then every row's u. Returns ``collate_windows``'s
    batch; None when no picked sequence has a valid window.
    """
    drawn = [(examples[i], draw_starts(examples[i], windows, num_draft, generator)) for i in picks]
    chosen = [(e, starts) for e, starts in drawn if starts is not None]
    if not chosen:
        return None
    return collate_windows(chosen, num_draft, [generator] * len(chosen), beta)


def head_loss(head: Any, batch: dict[str, torch.Tensor], autocast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the slots and their draft tokens. Returns ``(loss, drafts (B, W, N))``.

    With ``autocast`` the matmuls run in bfloat16 on a float32 head (CPUs with bf16 matrix
    units run them several times faster; the features are bf16 anyway). Lightning runs pass
    False: their ``--precision`` decides."""
    dtype = next(head.body.parameters()).dtype
    device = batch["features"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and dtype == torch.float32):
        logits = head.windows(batch["features"].to(dtype), batch["tokens"], batch["starts"], batch["u"])
    index_of = torch.full((head.model.get_output_embeddings().weight.shape[0],), -100, dtype=torch.long, device=device)
    index_of[head.vocab_ids.to(device)] = torch.arange(head.vocab_ids.numel(), device=device)
    target = index_of[batch["targets"]]
    loss = F.cross_entropy(logits.flatten(0, 2).float(), target.flatten(), ignore_index=-100)
    with torch.no_grad():
        drafts = head.vocab_ids[draft_tokens(head.mode, logits.detach(), batch["u"], head.sampling.order)]
    return loss, drafts


def evaluation_batches(examples: list[dict[str, torch.Tensor]], windows: int, num_draft: int,
                       seed: int = 1234) -> list[dict[str, torch.Tensor]]:
    """One batch per held-out sequence that has a valid window: fixed windows and u."""
    generator = torch.Generator().manual_seed(seed)
    batches = (make_batch(examples, [i], windows, num_draft, generator) for i in range(len(examples)))
    return [b for b in batches if b is not None]


@torch.no_grad()
def window_tally(head: Any, batch: dict[str, torch.Tensor], autocast: bool = True) -> torch.Tensor:
    """``(2 + N,)`` float64 sums over a batch's windows: matching draft prefix, windows, hits per slot."""
    _, drafts = head_loss(head, batch, autocast)
    hit = drafts == batch["targets"]
    correct = num_correct(drafts, batch["targets"]).double().sum()
    count = torch.tensor(float(hit.shape[0] * hit.shape[1]), dtype=torch.float64, device=hit.device)
    return torch.cat([correct[None], count[None], hit.double().sum((0, 1))])


def summarise(tally: torch.Tensor) -> dict[str, Any]:
    """``window_tally`` sums -> windows, decode MAT (1 + the matching prefix of the N drafts: the
    tokens per teacher call a decoder would get) and per-slot accuracy."""
    count = int(tally[1])
    if not count:
        return {"windows": 0}
    return {"windows": count, "mat": 1.0 + float(tally[0]) / count,
            "slot_accuracy": [round(float(x) / count, 4) for x in tally[2:]]}


def evaluate(head: Any, examples: list[dict[str, torch.Tensor]], windows: int = 16, seed: int = 1234) -> dict[str, Any]:
    """Per-slot accuracy and the tokens per teacher call a decoder would get (1 + the matching
    prefix of the N drafts) on held-out sequences, with fixed windows and u."""
    head.eval()
    tally = torch.zeros(2 + head.num_draft_tokens, dtype=torch.float64)
    for batch in evaluation_batches(examples, windows, head.num_draft_tokens, seed):
        tally += window_tally(head, batch)
    head.train()
    return summarise(tally)


def train_head(head: Any, train: list[dict[str, torch.Tensor]], val: list[dict[str, torch.Tensor]], cfg: HeadTrainConfig,
               directory: str | Path, log: Callable[[str], None] = print,
               more_data: Callable[[], list[dict[str, torch.Tensor]]] | None = None) -> dict[str, Any]:
    """Train ``head`` on feature examples, resuming from ``directory``'s checkpoint if any.

    ``more_data``, called at each validation, returns examples that have appeared since (features
    still being extracted while training runs). Returns the checkpoint's record: ``step``,
    ``config`` and ``history`` (validations)."""
    directory = Path(directory)
    params = {n: p for n, p in head.named_parameters() if p.requires_grad}
    fresh = [p for n, p in params.items() if not n.startswith("body.")]
    body = [p for n, p in params.items() if n.startswith("body.")]
    optimizer = torch.optim.AdamW([{"params": body, "scale": 1.0}, {"params": fresh, "scale": cfg.new_lr_factor}],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    record: dict[str, Any] = {"step": 0, "config": asdict(cfg), "history": []}
    if (directory / f"{CHECKPOINT}.safetensors").is_file():
        record = _restore(directory / f"{CHECKPOINT}.safetensors", params, optimizer)
        log(f"resumed at step {record['step']}")
    else:
        head.init_from_features(torch.cat([e["features"] for e in train[:64]]))
    head.train()
    start = time.perf_counter()
    for step in range(record["step"], cfg.steps):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # a resumed run draws the same batches
        picks = torch.randint(0, len(train), (cfg.batch_size,), generator=generator).tolist()
        batch = make_batch(train, picks, cfg.windows, head.num_draft_tokens, generator, cfg.beta)
        if batch is None:
            continue
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group["scale"] * lr_factor(step, cfg)
        loss, drafts = head_loss(head, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {step}: the last good checkpoint is kept in {directory}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if done % 25 == 0:
            acc = (drafts == batch["targets"]).float().mean(0).mean(0)
            log(f"step {done} loss {float(loss.detach()):.3f} slot0 {float(acc[0]):.3f} slot1 {float(acc[1]) if acc.numel() > 1 else 0:.3f} "
                f"{(time.perf_counter() - start) / max(1, done - record['step']):.2f} s/step")
        if done % cfg.val_every == 0 or done == cfg.steps:
            metrics = evaluate(head, val)
            if more_data is not None:
                train = train + more_data()
            record["history"].append({"step": done, "train_sequences": len(train), **metrics})
            log(f"val step {done}: {metrics}")
        if done % cfg.save_every == 0 or done == cfg.steps:
            record["step"] = done
            _save(directory, params, optimizer, record)
    return record


def restore_checkpoint(directory: str | Path, params: dict[str, torch.nn.Parameter]) -> dict[str, Any]:
    """Load the weights of ``directory``'s checkpoint into ``params``; returns its record."""
    return _restore(Path(directory) / f"{CHECKPOINT}.safetensors", params, None)


def _save(directory: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in params.items()}
    for n, p in params.items():
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}.{n}"] = state[key].contiguous()
    write_bytes(directory / f"{CHECKPOINT}.safetensors", save(tensors, metadata={"record": json.dumps(record)}))


def _restore(path: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()["record"])
    tensors = load_file(str(path))
    step = record["step"]
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
            if optimizer is not None and f"exp_avg.{n}" in tensors:
                optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": tensors[f"exp_avg.{n}"].clone(),
                                      "exp_avg_sq": tensors[f"exp_avg_sq.{n}"].clone()}
    return record
