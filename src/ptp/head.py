"""The PTP draft head: the teacher's last K decoder layers reading its own hidden states.

Where the gated-LoRA student (``ptp.student``) runs all L teacher layers on its draft slots, the
head runs only K (1-2) of them, entered at depth ``L - K``. A head call over one sequence lays
out, in this row order and position order:

* context rows, one per token ``j`` the teacher has processed: the teacher's hidden state
  entering layer ``L - K`` at ``j`` (``ptp.features``). At initialisation the head's layers are
  the teacher's, so these rows continue the teacher's own computation exactly;
* the bonus row at position ``i``: the token ``t_i`` the teacher has just verified (its correction
  or bonus token), which the teacher has not run yet. Its input fuses the hidden state of
  position ``i - 1``, the embedding of ``t_i`` and its u (``lift_token``); it predicts ``t_{i+1}``;
* N - 1 draft slots at positions ``i + 1 .. i + N - 1``, whose tokens are not known yet: slot k
  carries a u (``lift_slot``) and predicts ``t_{i+1+k}``.

As in the teacher, the row at position p predicts the token at p + 1, so teacher-initialised
layers keep their job. Window row k carries ``ptp.student.slot_u(mode, u_{i+1} .. u_{i+N})[k]``:
O-PTP the u of the token it predicts (its argmax is that token, Eq. 5), C-PTP the u of the token
at its own position (none on the bonus row, whose token is given), MTP none. N tokens that are
consistent with each other come from ONE call (Theorem 1).

Training sees exactly these rows (``windows``, with ``ptp.masks.training_layout``: each window's
bonus row and slots see only the context before it), so there is no exposure bias and nothing
to unroll. Output goes through the teacher's final norm and output layer, optionally restricted
to a draft vocabulary of frequent tokens (``vocab_ids``); a true token outside it is a miss.

An *autoregressive* head (``autoregressive=True``, the EAGLE-1-style baseline of the same size)
replaces the slots by token rows: row k (k >= 1) fuses the previous row's input, the embedding of
``t_{i+k}`` and its u exactly as the bonus row does, so it needs the token before the one it
predicts. Training feeds the true tokens (all rows in one call); decoding feeds the head's own
drafts, one head call per token. Only drafts after an accepted prefix can be accepted, so the
true-token rows of training are the ones that matter.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .aux_embedding import AuxEmbedding
from .config import config_from_dict
from .errors import UserError
from .features import capture_layer_input, decoder_layers, run_until_captured
from .hf_cache import cache_kwarg, output_cache
from .io import write_bytes, write_json
from .masks import additive_mask, training_layout
from .student import (CONFIG_NAME, WEIGHTS_NAME, StudentBase, check_draft_config, draft_tokens, read_student_config, slot_u,
                      teacher_fingerprint, teacher_signature, warn_if_other_teacher)

INITS = ("teacher", "fresh")  # or a head's directory, whose weights a new head starts from
DRAFT_CANDIDATES = 64  # tokens a C-PTP / MTP slot picks among while decoding


@dataclass
class HeadConfig:
    """Everything that defines a draft head besides its teacher's weights.

    Attributes:
        kind: always ``head`` (the key that tells a head's directory from a LoRA student's).
        mode: ``o-ptp``, ``c-ptp`` or ``mtp`` (see ``ptp.student``).
        num_draft_tokens: N, slots per head call (tokens proposed per teacher call).
        num_layers: K, decoder layers of the head; it reads the teacher's states entering layer L - K.
        init: ``teacher`` (copies of the teacher's last K layers, option (b)), ``fresh``
            (randomly initialised layers of the same architecture, EAGLE-style option (a)), or
            the directory of a head whose weights and draft vocabulary this one started from
            (e.g. pretrained on dataset text, then fine-tuned on teacher completions).
        autoregressive: draft one token per head call from token rows fed the head's own drafts
            (the autoregressive baseline) instead of N slots in one call.
        draft_vocab: size of the draft vocabulary (the most frequent training tokens); 0 = all.
        aux_embedding: embedding of u, ``FEATURE+HEAD`` (App. C.1).
        aux_dim: features of the auxiliary embedding.
        teacher: name or path of the teacher (recorded for ``from_pretrained``).
        teacher_signature: architecture facts checked on reload.
        teacher_fingerprint: a few of the teacher's weights; a reload onto other weights warns.
        sampling: the SamplingConfig (as a dict) the head was trained for.
    """

    kind: str = "head"
    mode: str = "o-ptp"
    num_draft_tokens: int = 8
    num_layers: int = 2
    init: str = "teacher"
    autoregressive: bool = False
    draft_vocab: int = 0
    aux_embedding: str = "ar+lin"
    aux_dim: int = 32
    teacher: str = ""
    teacher_signature: dict[str, Any] = field(default_factory=dict)
    teacher_fingerprint: list[float] | None = None
    sampling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind != "head":
            raise UserError(f"kind={self.kind!r} is invalid for a head config: use head")
        check_draft_config(self, "head config")
        checks = [
            (int(self.num_layers) >= 1, f"num_layers={self.num_layers!r} is invalid: use an integer >= 1"),
            (isinstance(self.init, str) and bool(self.init), f"init={self.init!r} is invalid: use one of {', '.join(INITS)} or a head's directory"),
            (int(self.draft_vocab) >= 0, f"draft_vocab={self.draft_vocab!r} is invalid: use 0 (all) or a size >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


class Lift(nn.Module):
    """Maps inputs of other scales (a state, an embedding, a u feature) into the residual stream
    at depth L - K: ``mean + gain * linear([rms_norm(x_1), ..., rms_norm(x_m)])``. Each part is
    normalised on its own: a deep state's few huge channels would otherwise drown an embedding.
    It starts at the teacher's average state there (per channel), with a small input-dependent
    part."""

    def __init__(self, in_dim: int, hidden: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, hidden, bias=False)
        self.gain = nn.Parameter(0.5 * std.float().clone())
        self.mean = nn.Parameter(mean.float().clone())

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # (..., d_1), ..., (..., d_m) -> (..., hidden)
        x = torch.cat([F.rms_norm(p, (p.shape[-1],)) for p in parts], dim=-1)
        return self.mean + self.gain * self.linear(x)


def _build_body(teacher: nn.Module, num_layers: int, init: str) -> nn.Module:
    """A base model of the teacher's class with K layers (the teacher's last K, or fresh), the
    teacher's final norm, and no token or position embedding (inputs are hidden states)."""
    layers = decoder_layers(teacher)
    total = len(layers)
    if not 1 <= num_layers < total:
        raise UserError(f"num_layers={num_layers} is invalid for a teacher of {total} layers: use 1..{total - 1}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[total - num_layers :]
    base_teacher = teacher.base_model
    dtype = teacher.get_input_embeddings().weight.dtype
    body = type(teacher)(config).base_model.to(dtype)
    body.set_input_embeddings(nn.Embedding(1, config.hidden_size))  # unused: rows come as hidden states
    own = body.state_dict()
    source = base_teacher.state_dict()
    prefix = next(name for name, m in body.named_modules() if m is decoder_layers(body))
    with torch.no_grad():
        for key, value in own.items():
            if key.startswith(prefix + "."):
                if init == "teacher":
                    index, rest = key[len(prefix) + 1 :].split(".", 1)
                    value.copy_(source[f"{prefix}.{total - num_layers + int(index)}.{rest}"])
            elif key in source and source[key].shape == value.shape:
                value.copy_(source[key])  # final norm, rotary buffers
        for module in body.modules():
            # Absolute position embeddings (GPT-2's wpe) are already inside the teacher's states.
            if isinstance(module, nn.Embedding) and module is not body.get_input_embeddings():
                module.weight.zero_()
    return body.eval()


class HeadStudent(StudentBase):
    """Teacher (frozen, verifies) + a K-layer draft head (trained). ``model`` is the teacher."""

    kind = "head"

    def __init__(self, teacher: nn.Module, config: HeadConfig, vocab_ids: torch.Tensor | None = None) -> None:
        super().__init__()
        config.teacher_signature = teacher_signature(teacher)
        if config.teacher_fingerprint is None:
            config.teacher_fingerprint = teacher_fingerprint(teacher)
        if not config.teacher:
            config.teacher = str(getattr(teacher.config, "_name_or_path", "") or "")
        self.config = config
        self.model = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.feature_layer = len(decoder_layers(teacher)) - config.num_layers
        self.body = _build_body(teacher, config.num_layers, "fresh" if config.init == "fresh" else "teacher")
        for p in self.body.parameters():
            p.requires_grad_(True)
        embed = teacher.get_input_embeddings().weight
        hidden = embed.shape[1]
        mean, std = self._feature_stats()
        self.lift_token = Lift(3 * hidden, hidden, mean, std)  # [state of i - 1, embedding of t_i, u feature]
        self.lift_slot = Lift(hidden, hidden, mean, std)
        self.aux = AuxEmbedding(hidden, config.aux_embedding, config.aux_dim)
        if vocab_ids is None:
            vocab_ids = torch.arange(teacher.get_output_embeddings().weight.shape[0])
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long).to(embed.device))
        self.to(device=embed.device)
        for module in (self.lift_token, self.lift_slot, self.aux):
            module.to(dtype=embed.dtype)

    @classmethod
    def create(cls, teacher: nn.Module, config: HeadConfig, vocab_ids: torch.Tensor | None = None) -> "HeadStudent":
        """A new head; with ``config.init`` a trained head's directory, one that starts from its
        weights and draft vocabulary (``vocab_ids`` is then ignored)."""
        if config.init in INITS:
            return cls(teacher, config, vocab_ids=vocab_ids)
        start = pretrained_head(config.init, teacher, config.num_layers)
        config.draft_vocab = start.config.draft_vocab
        head = cls(teacher, config, vocab_ids=start.vocab_ids)
        head.copy_weights(start)
        return head

    @torch.no_grad()
    def _feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std ``(H,)`` of the teacher's states entering layer L - K, on a
        fixed short input (positions after the first: the first token's state is an outlier)."""
        device = self.model.get_input_embeddings().weight.device
        ids = torch.arange(1, 65, device=device).clamp_max(self.model.get_input_embeddings().weight.shape[0] - 1)
        with capture_layer_input(self.model, self.feature_layer, stop=True) as captured:
            run_until_captured(self.model, input_ids=ids.unsqueeze(0))
        states = captured[0][0, 1:].float()
        return states.mean(0), states.std(0)

    # ---------------------------------------------------------------- rows and outputs
    @torch.no_grad()
    def init_from_features(self, states: torch.Tensor) -> None:
        """Start the lifts at the per-channel mean and spread of real teacher states ``(M, H)``
        entering layer L - K (what training data gives; the constructor can only probe a short
        fixed input)."""
        states = states.float()
        for lift in (self.lift_token, self.lift_slot):
            lift.mean.copy_(states.mean(0))
            lift.gain.copy_(0.5 * states.std(0))

    def bonus_rows(self, previous: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` states at i - 1, ``(...)`` tokens t_i and ``(...)`` row u -> ``(..., H)`` bonus-row inputs."""
        emb = self.model.get_input_embeddings()(tokens)
        return self.lift_token(previous.to(emb.dtype), emb, self.aux(u).to(emb.dtype))

    def token_rows(self, first: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """An autoregressive head's window inputs: ``(..., H)`` bonus-row inputs, ``(..., N - 1)``
        tokens ``t_{i+1} ..`` and row u -> ``(..., N, H)``; each row fuses the row before it."""
        rows = [first]
        for k in range(tokens.shape[-1]):
            rows.append(self.bonus_rows(rows[-1], tokens[..., k], u[..., k]))
        return torch.stack(rows, dim=-2)

    def slot_rows(self, u: torch.Tensor) -> torch.Tensor:
        """``(...)`` slot u (NaN: none) -> ``(..., H)`` slot inputs."""
        return self.lift_slot(self.aux(u))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` normed head outputs -> ``(..., V')`` logits over the draft vocabulary."""
        flat = hidden.reshape(-1, hidden.shape[-1]) @ self._output_weight(hidden.dtype).T  # one 2-D matmul, no broadcast copies
        return flat.reshape(*hidden.shape[:-1], -1)

    def _output_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``(V', H)`` rows of the teacher's (frozen) output layer for the draft vocabulary, gathered
        once per dtype: gathering 16k rows on every decoding call would cost as much as the call."""
        weight = self.model.get_output_embeddings().weight
        if self.vocab_ids.numel() == weight.shape[0]:
            return weight.to(dtype)
        key = (dtype, weight.device, weight._version, self.vocab_ids._version)
        if self.__dict__.get("_weight_key") != key:
            self.__dict__["_weight"] = weight[self.vocab_ids].to(dtype).contiguous()
            self.__dict__["_weight_key"] = key
        return self.__dict__["_weight"]

    def _body(self, rows: torch.Tensor, **kwargs: Any) -> Any:
        return self.body(inputs_embeds=rows, **kwargs)

    # ---------------------------------------------------------------- training
    def windows(self, features: torch.Tensor, tokens: torch.Tensor, starts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One training call over cached teacher features.

        Args:
            features: ``(B, T, H)`` teacher states entering layer L - K.
            tokens: ``(B, T)`` token ids.
            starts: ``(B, W)`` bonus positions i, each in ``[1, T - N - 1]``.
            u: ``(B, W, N)`` u of the tokens ``t_{i+1} .. t_{i+N}`` each window predicts.
        Returns:
            ``(B, W, N, V')`` logits of the window rows over the draft vocabulary.
        """
        b, t, _ = features.shape
        w, n = starts.shape[1], self.num_draft_tokens
        batch = torch.arange(b, device=features.device)[:, None]
        row_u = slot_u(self.mode, u)  # (B, W, N)
        bonus = self.bonus_rows(features[batch, starts - 1], tokens[batch, starts], row_u[..., 0])  # (B, W, H)
        if self.config.autoregressive:
            later = tokens[batch[..., None], starts[..., None] + torch.arange(1, n, device=starts.device)]  # (B, W, N - 1)
            windows = self.token_rows(bonus, later, row_u[..., 1:]).reshape(b, w * n, -1)
        else:
            slots = self.slot_rows(row_u[..., 1:])  # (B, W, N - 1, H)
            windows = torch.cat([bonus.unsqueeze(2), slots.to(bonus.dtype)], dim=2).reshape(b, w * n, -1)
        rows = torch.cat([features.to(windows.dtype), windows], dim=1)
        visible, positions, _ = training_layout(t, starts.cpu(), n)
        out = self._body(rows, attention_mask=additive_mask(visible.to(rows.device), rows.dtype),
                         position_ids=positions.to(rows.device)).last_hidden_state
        return self.logits(out[:, t:].reshape(b, w, n, -1))

    # ---------------------------------------------------------------- decoding
    def draft(self, context: torch.Tensor, previous: torch.Tensor, bonus: int, u: torch.Tensor,
              cache: Any, past: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One head call while decoding one sequence.

        Args:
            context: ``(C, H)`` teacher states of the tokens newly in the teacher's cache.
            previous: ``(H,)`` the teacher state of the token before the bonus token.
            bonus: the verified token t_i the teacher has not run yet, at position ``past + C``.
            u: ``(N,)`` u of ``t_{i+1} .. t_{i+N}``.
            cache: the head's KV cache over ``past`` context rows (extended by the C new ones).
        Returns:
            ``(tokens (N,), confidence (N,) float64, cache)``: draft tokens and the head's
            probability of each.
        """
        n = u.shape[0]
        row_u = slot_u(self.mode, u).to(self.device)
        bonus_row = self.bonus_rows(previous.unsqueeze(0), torch.tensor([bonus], device=self.device), row_u[:1])
        if self.config.autoregressive:
            return self._draft_autoregressive(context.to(bonus_row.dtype), bonus_row, u, row_u, cache, past)
        slots = self.slot_rows(row_u[1:])
        rows = torch.cat([context.to(bonus_row.dtype), bonus_row, slots.to(bonus_row.dtype)]).unsqueeze(0)
        positions = torch.arange(past, past + rows.shape[1], device=self.device).unsqueeze(0)
        out = self._body(rows, position_ids=positions, use_cache=True, **{cache_kwarg(self.body): cache})
        cache = output_cache(out)
        cache.crop(-n)  # keep context rows only: the bonus row comes back as context next time
        tokens, confidence = self._pick(self.logits(out.last_hidden_state[0, -n:]), u)
        return tokens, confidence, cache

    def _draft_autoregressive(self, context: torch.Tensor, row: torch.Tensor, u: torch.Tensor, row_u: torch.Tensor,
                              cache: Any, past: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``draft`` of an autoregressive head: one call per token, each row fed the draft before it."""
        n, rows, start = u.shape[0], torch.cat([context, row]), past
        tokens, confidence = [], []
        for k in range(n):
            positions = torch.arange(start, start + rows.shape[0], device=self.device).unsqueeze(0)
            out = self._body(rows.unsqueeze(0), position_ids=positions, use_cache=True, **{cache_kwarg(self.body): cache})
            cache = output_cache(out)
            token, conf = self._pick(self.logits(out.last_hidden_state[0, -1:]), u[k : k + 1])
            tokens.append(token)
            confidence.append(conf)
            start += rows.shape[0]
            if k + 1 < n:
                row = rows = self.bonus_rows(row, token, row_u[k + 1 : k + 2])
        cache.crop(-n)  # keep context rows only, as draft's
        return torch.cat(tokens), torch.cat(confidence), cache

    def _pick(self, logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, V')`` row logits and ``(n,)`` u -> draft token ids ``(n,)`` and the head's
        probability of each ``(n,)`` float64."""
        if self.mode != "o-ptp":
            # Pick among the most likely candidates only: a full float64 sort of the draft
            # vocabulary per slot cost as much as the rest of the call; a draft that differs
            # where u falls in the far tail is merely rejected.
            top = logits.topk(min(DRAFT_CANDIDATES, logits.shape[-1]), dim=-1)
            logits = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
        index = draft_tokens(self.mode, logits, u, self.sampling.order)
        logp = logits.float().log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return self.vocab_ids[index], logp.exp().to(torch.float64)

    # ---------------------------------------------------------------- persistence
    @torch.no_grad()
    def copy_weights(self, other: "HeadStudent") -> None:
        """Take ``other``'s trained weights (a head of the same shape; its mode and N may differ)."""
        theirs = dict(other.named_parameters())
        for name, p in self.named_parameters():
            if p.requires_grad:
                p.copy_(theirs[name])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's weights and its draft vocabulary (never the teacher's)."""
        state = {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}
        state["vocab_ids"] = self.vocab_ids
        return state

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``student.safetensors`` and ``ptp_student.json`` (with ``kind: head``), atomically."""
        directory = Path(directory)
        tensors = {k: (v if k == "vocab_ids" else v.to(dtype or v.dtype)).contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt", "ptp": "head"}))
        write_json(directory / CONFIG_NAME, asdict(self.config))

    @classmethod
    def from_config_dict(cls, data: dict[str, Any], directory: Path, teacher: nn.Module | None, **teacher_kwargs: Any) -> "HeadStudent":
        """Reload a saved head (``Student.from_pretrained`` dispatches here on ``kind: head``)."""
        config = config_from_dict(HeadConfig, data, str(directory / CONFIG_NAME))
        if teacher is None:
            from .models import load_teacher

            teacher = load_teacher(config.teacher, **teacher_kwargs)
        _check_signature(config, teacher, directory)
        warn_if_other_teacher(config, teacher, directory)
        weights = directory / WEIGHTS_NAME
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{weights} is missing or damaged ({e}): restore it or retrain the head") from None
        vocab = state.get("vocab_ids")
        if vocab is None or vocab.dim() != 1 or (vocab.numel() and int(vocab.max()) >= teacher.get_output_embeddings().weight.shape[0]):
            raise UserError(f"{weights} has no valid vocab_ids: restore it or retrain the head")
        head = cls(teacher, config, vocab_ids=vocab)
        own = head.trainable_state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise UserError(f"{weights} does not fit this teacher: pass the teacher it was trained on ({config.teacher!r})")
        with torch.no_grad():
            params = dict(head.named_parameters())
            for k, v in state.items():
                if k != "vocab_ids":
                    params[k].copy_(v)
        return head


def pretrained_head(directory: str | Path, teacher: nn.Module, num_layers: int) -> HeadStudent:
    """The trained head in ``directory`` that a new head of ``num_layers`` layers starts from."""
    if not (Path(directory) / CONFIG_NAME).is_file():
        raise UserError(f"init={str(directory)!r} is invalid: use one of {', '.join(INITS)} or the directory of a trained head")
    data = read_student_config(directory)
    if data.get("kind") != "head":
        raise UserError(f"init={str(directory)!r} is not a draft head's directory: pass one written by ptp train for --kind head")
    head = HeadStudent.from_config_dict(data, Path(directory), teacher)
    if head.config.num_layers != num_layers:
        raise UserError(f"init={str(directory)!r} is a head of {head.config.num_layers} layers: pass --num-layers {head.config.num_layers}")
    return head


def _check_signature(config: HeadConfig, teacher: nn.Module, directory: Path) -> None:
    expected, actual = config.teacher_signature, teacher_signature(teacher)
    diff = {k: (expected[k], actual.get(k)) for k in expected if expected[k] != actual.get(k)}
    if diff:
        detail = ", ".join(f"{k}: head {a!r} vs teacher {b!r}" for k, (a, b) in diff.items())
        raise UserError(f"teacher does not match the head in {directory} ({detail}): pass the teacher it was trained on ({config.teacher!r})")


def frequent_tokens(sequences: list[torch.Tensor], size: int, vocab: int) -> torch.Tensor:
    """The ``size`` most frequent ids of ``sequences`` (ties by id), sorted: a draft vocabulary."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for seq in sequences:
        counts += torch.bincount(seq.long(), minlength=vocab)
    order = sorted(range(vocab), key=lambda i: (-int(counts[i]), i))[:size]
    return torch.tensor(sorted(order), dtype=torch.long)

