"""The PTP student: any causal LM teacher + auxiliary embedding of u + gated LoRA on draft slots.

A forward call mixes two kinds of rows:

* token rows (gate off) run the unchanged teacher: their logits are the teacher's, bit for bit;
* draft slots (gate on) carry the embedding of an auxiliary variable instead of a token and run the
  teacher with the LoRA delta added; slot ``j`` of a window starting at ``i`` predicts ``t_{i+j}``.

Which u a slot carries depends on the mode (Sec. 2.1 and App. H):

* ``o-ptp``: slot j carries ``u_{i+j}``, so with the causal window it sees ``u_i..u_{i+j}`` (Eq. 5)
  and predicts the token itself (argmax).
* ``c-ptp``: slot j carries ``u_{i+j-1}`` (slot 0: none), sees ``u_i..u_{i+j-1}`` and predicts a
  full distribution, sampled with ``pick(u_{i+j}, .)`` (Eq. 7).
* ``mtp``: no slot carries u (independent prediction baseline), sampled like C-PTP.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .aux_embedding import AuxEmbedding, parse_aux_embedding
from .config import SamplingConfig, config_from_dict
from .errors import UserError
from .hf_cache import cache_kwarg
from .io import write_bytes, write_json
from .lora import Gate, GatedLoRA, finite, inject_gated_lora, linear_names
from .masks import additive_mask
from .sampling import pick

MODES = ("o-ptp", "c-ptp", "mtp")
CONFIG_NAME = "ptp_student.json"
WEIGHTS_NAME = "student.safetensors"
FINGERPRINT_VALUES = 8  # weights read from each of three tensors of the teacher
FINGERPRINT_TOLERANCE = 1e-2  # relative: a teacher reloaded in bfloat16 or float16 still matches


class TeacherMismatchWarning(UserWarning):
    """A student was loaded onto a teacher of the right shape whose weights are not the ones it
    was trained on: decoding stays the teacher's own, but few drafts will be accepted."""


@dataclass
class StudentConfig:
    """Everything that defines a student besides its teacher's weights.

    Attributes:
        mode: ``o-ptp`` (one-hot), ``c-ptp`` (categorical) or ``mtp`` (independent baseline).
        num_draft_tokens: N, draft slots per window (tokens proposed per call).
        lora_rank: rank r of the gated LoRA.
        lora_alpha: LoRA scale numerator (delta is scaled by alpha / r).
        lora_targets: module-name suffixes to adapt; None adapts every linear layer of the blocks.
        aux_embedding: ``FEATURE+HEAD`` (App. C.1), e.g. ``ar+lin`` (default, the paper's best).
        aux_dim: n, the number of threshold / arithmetic-coding features.
        teacher: name or path the teacher is loaded from (recorded for ``from_pretrained``).
        teacher_signature: architecture facts checked when the student is reloaded.
        teacher_fingerprint: a few of the teacher's weights (``teacher_fingerprint``); a reload
            onto other weights warns. None: not recorded (students saved before it existed).
        sampling: the ``SamplingConfig`` (as a dict) of the teacher samples it was trained on:
            decoding defaults to it (its token ``order`` above all: drafts learned for one order
            are wrong under another). None: not recorded.
    """

    mode: str = "o-ptp"
    num_draft_tokens: int = 16
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] | None = None
    aux_embedding: str = "ar+lin"
    aux_dim: int = 32
    teacher: str = ""
    teacher_signature: dict[str, Any] = field(default_factory=dict)
    teacher_fingerprint: list[float] | None = None
    sampling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_draft_config(self, "student config")
        if int(self.lora_rank) < 1:
            raise UserError(f"lora_rank={self.lora_rank!r} is invalid: use an integer >= 1")
        if self.lora_targets is not None and (not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets)):
            raise UserError(f"lora_targets={self.lora_targets!r} is invalid: name module suffixes (e.g. q_proj v_proj), "
                            "or leave it unset to adapt every linear layer of the blocks")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "student config") -> "StudentConfig":
        """From a saved config, with a UserError for unknown or missing keys and mistyped values."""
        missing = sorted({"mode", "num_draft_tokens", "teacher"} - set(data))
        if missing:
            raise UserError(f"{source} lacks keys {missing}: re-save the student with Student.save_pretrained")
        return config_from_dict(cls, data, source)


def check_draft_config(config: Any, what: str) -> None:
    """The checks every kind of student config shares (its ``mode``, ``num_draft_tokens``,
    ``aux_embedding`` and ``sampling``): a UserError naming the first bad value."""
    if config.mode not in MODES:
        raise UserError(f"mode={config.mode!r} is invalid: use one of {', '.join(MODES)}")
    if int(config.num_draft_tokens) < 1:
        raise UserError(f"num_draft_tokens={config.num_draft_tokens!r} is invalid: use an integer >= 1")
    if int(config.aux_dim) < 1:
        raise UserError(f"aux_dim={config.aux_dim!r} is invalid: use an integer >= 1")
    try:
        parse_aux_embedding(config.aux_embedding)
        if config.sampling is not None:
            SamplingConfig.from_dict(config.sampling)
    except (ValueError, TypeError) as e:
        raise UserError(f"{what}: {e}") from None


def slot_u(mode: str, u: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` u of a window's tokens -> ``(..., N)`` u carried by its slots (NaN = none):
    O-PTP slot j carries ``u_{i+j}``, C-PTP ``u_{i+j-1}`` (slot 0 none), MTP none."""
    if mode == "o-ptp":
        return u.to(torch.float64)
    nan = torch.full_like(u[..., :1], float("nan"), dtype=torch.float64)
    if mode == "c-ptp":
        return torch.cat([nan, u[..., :-1].to(torch.float64)], dim=-1)
    return nan.expand(u.shape).clone()


def draft_tokens(mode: str, logits: torch.Tensor, u: torch.Tensor, order: str = "rank") -> torch.Tensor:
    """``(..., V)`` slot logits and ``(...)`` u of the predicted tokens -> ``(...)`` draft token indices.

    O-PTP takes the argmax (Eq. 5); C-PTP and MTP model the final sampling distribution and pick
    with the token's own u (Eq. 7), in the sampler's token ``order``.
    """
    if mode == "o-ptp":
        return logits.argmax(-1)
    return pick(u.to(logits.device), logits.to(torch.float64).softmax(-1), order)


def read_student_config(directory: str | Path) -> dict[str, Any]:
    """The JSON object of ``directory/ptp_student.json`` (a UserError if missing or unreadable)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"{directory} is not a student directory (no {CONFIG_NAME}): pass a directory written by ptp train")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}): restore it or re-save the student") from None
    if not isinstance(data, dict):
        raise UserError(f"{config_path} must hold a JSON object: restore it or re-save the student")
    return data


def teacher_fingerprint(teacher: nn.Module) -> list[float]:
    """``3 * FINGERPRINT_VALUES`` of the teacher's weights at fixed places of its input embedding and
    of the first and last linear layers of its blocks: teachers of one architecture but other
    weights (another checkpoint, another fine-tune) differ there. Call it before a LoRA adapts them."""
    linears = [teacher.get_submodule(name).weight for name in linear_names(teacher)]
    values = []
    for weight in (teacher.get_input_embeddings().weight, *linears[:1], *linears[-1:]):
        flat = weight.detach().reshape(-1)
        # Integer positions: a float32 linspace over 28M entries rounds its last one out of range.
        index = torch.arange(FINGERPRINT_VALUES, device=flat.device) * (flat.numel() - 1) // (FINGERPRINT_VALUES - 1)
        values += [round(float(v), 6) for v in flat[index].float().cpu()]
    return values


def warn_if_other_teacher(config: Any, teacher: nn.Module, directory: Path) -> None:
    """Warn (``TeacherMismatchWarning``) when ``teacher``'s weights are not the recorded ones."""
    recorded = config.teacher_fingerprint
    if not recorded:
        return
    actual = teacher_fingerprint(teacher)
    scale = [max(abs(a), abs(b)) for a, b in zip(recorded, actual)]
    if len(actual) != len(recorded) or any(abs(a - b) > FINGERPRINT_TOLERANCE * s + 1e-6 for a, b, s in zip(recorded, actual, scale)):
        warnings.warn(f"the teacher's weights are not those the student in {directory} was trained on: its output stays the "
                      f"teacher's own, but few drafts will be accepted; pass the teacher it was trained on ({config.teacher!r})",
                      TeacherMismatchWarning, stacklevel=3)


def teacher_signature(teacher: nn.Module) -> dict[str, Any]:
    """Architecture facts a saved student must match: type, vocabulary and width."""
    emb = teacher.get_input_embeddings().weight
    return {
        "model_type": getattr(teacher.config, "model_type", type(teacher).__name__),
        "vocab_size": int(teacher.get_output_embeddings().weight.shape[0]),
        "hidden_size": int(emb.shape[1]),
    }


class StudentBase(nn.Module):
    """What every kind of student shares: the teacher as ``model``, a ``config`` with its mode, N
    and training sampling, and the teacher's dtype and device."""

    kind = ""
    config: Any
    model: nn.Module

    @property
    def sampling(self) -> SamplingConfig:
        """The sampling the student was trained for (defaults where none was recorded)."""
        return SamplingConfig.from_dict(self.config.sampling) if self.config.sampling else SamplingConfig()

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def num_draft_tokens(self) -> int:
        return self.config.num_draft_tokens

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


class Student(StudentBase):
    """Teacher + auxiliary embedding + gated LoRA. Gate-off rows are the teacher exactly."""

    kind = "lora"

    def __init__(self, teacher: nn.Module, config: StudentConfig) -> None:
        super().__init__()
        config.teacher_signature = teacher_signature(teacher)
        if config.teacher_fingerprint is None:  # before the LoRA adapts the teacher's layers
            config.teacher_fingerprint = teacher_fingerprint(teacher)
        if not config.teacher:
            config.teacher = str(getattr(teacher.config, "_name_or_path", "") or "")
        self.config = config
        self.model = teacher
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.gate = Gate()
        self.adapted = inject_gated_lora(teacher, self.gate, config.lora_rank, config.lora_alpha, config.lora_targets)
        self._keeps_logits = "logits_to_keep" in inspect.signature(teacher.forward).parameters
        token_emb = teacher.get_input_embeddings().weight.detach()
        self.aux = AuxEmbedding(
            token_emb.shape[1], config.aux_embedding, config.aux_dim, init_bias=token_emb.float().mean(0)
        ).to(token_emb.device)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        mode: str = "o-ptp",
        num_draft_tokens: int = 16,
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: list[str] | None = None,
        aux_embedding: str = "ar+lin",
        aux_dim: int = 32,
        teacher_name: str = "",
        sampling: SamplingConfig | None = None,
        kind: str = "lora",
        **head_options: Any,
    ) -> Any:
        """Wrap any ``AutoModelForCausalLM`` (its weights frozen).

        ``kind="lora"`` (default) adapts the teacher's modules in place with a gated LoRA;
        ``kind="head"`` returns a ``ptp.head.HeadStudent`` (K-layer draft head on the teacher's
        hidden states; ``head_options``: ``num_layers``, ``init`` (``teacher``, ``fresh`` or a
        trained head's directory to start from), ``autoregressive``, ``draft_vocab``, ``vocab_ids``).
        """
        if kind == "head":
            from .head import HeadConfig, HeadStudent

            vocab_ids = head_options.pop("vocab_ids", None)
            config = HeadConfig(mode=mode, num_draft_tokens=num_draft_tokens, aux_embedding=aux_embedding, aux_dim=aux_dim,
                                teacher=teacher_name, sampling=sampling.to_dict() if sampling is not None else None, **head_options)
            return HeadStudent.create(teacher, config, vocab_ids=vocab_ids)
        if kind != "lora" or head_options:
            raise UserError(f"kind={kind!r} is invalid: use lora or head (options {sorted(head_options)} are for heads)")
        config = StudentConfig(
            mode=mode,
            num_draft_tokens=num_draft_tokens,
            lora_rank=lora_rank,
            lora_alpha=float(lora_alpha if lora_alpha is not None else 2 * lora_rank),
            lora_targets=lora_targets,
            aux_embedding=aux_embedding,
            aux_dim=aux_dim,
            teacher=teacher_name,
            sampling=sampling.to_dict() if sampling is not None else None,
        )
        return cls(teacher, config)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        draft: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Any:
        """One call over token rows and draft slots.

        Args:
            input_ids: ``(B, T)`` token ids (ignored on draft rows).
            draft: ``(B, T)`` bool, True on draft slots (gate on). None: all token rows (teacher).
            u: ``(B, T)`` float, the u each draft slot carries (NaN: none; see ``slot_u``).
            position_ids: ``(B, T)``; required with ``visible``.
            visible: ``(B, T, past + T)`` bool attention layout (see ``ptp.masks``); None: causal.
            past_key_values: a transformers cache holding ``past`` positions.
            logits_to_keep: compute logits for the last this many rows only (0: all), where the
                model supports it: the output layer is a large share of a small model's cost.
        Returns:
            The model's output (``.logits``: ``(B, T, V)``; ``ptp.hf_cache.output_cache`` gives its cache).
        """
        embed = self.model.get_input_embeddings()
        if draft is None or not bool(draft.any()):
            inputs_embeds = embed(input_ids)
            draft = None
        else:
            token_emb = embed(torch.where(draft, torch.zeros_like(input_ids), input_ids))
            slot_emb = finite(self.aux(u)).to(token_emb.dtype)  # a broken u embedding must not reach token rows
            inputs_embeds = torch.where(draft.unsqueeze(-1), slot_emb, token_emb)
        mask = additive_mask(visible, inputs_embeds.dtype) if visible is not None else None
        extra = {"logits_to_keep": logits_to_keep} if logits_to_keep and self._keeps_logits else {}
        with self.gate.set(draft):
            return self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{cache_kwarg(self.model): past_key_values},
                **extra,
            )

    def slot_u(self, u: torch.Tensor) -> torch.Tensor:
        """``(..., N)`` u of the window's tokens -> ``(..., N)`` u carried by its slots (NaN = none)."""
        return slot_u(self.mode, u)

    def draft_tokens(self, logits: torch.Tensor, u: torch.Tensor, order: str = "rank") -> torch.Tensor:
        """``(..., V)`` slot logits and ``(...)`` u of the predicted tokens -> ``(...)`` draft tokens."""
        return draft_tokens(self.mode, logits, u, order)

    # ---------------------------------------------------------------- persistence
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: LoRA factors and the auxiliary embedding."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``student.safetensors`` (adapter + aux embedding) and ``ptp_student.json``, atomically.

        Args:
            dtype: store the weights in this dtype (e.g. ``torch.bfloat16`` halves the file);
                None keeps float32. Loading casts them back.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to(dtype or v.dtype).contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        # Serialised here and written by ptp.io (safetensors' own file writing leaves temporary
        # files behind when killed).
        write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt", "ptp": "student"}))
        write_json(directory / CONFIG_NAME, asdict(self.config))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, teacher: nn.Module | None = None, **teacher_kwargs: Any
    ) -> "Student":
        """Reload a saved student; loads the recorded teacher when none is given.

        Raises:
            UserError: missing or damaged files, unknown config keys, or a teacher that does not
                match the one the student was trained on.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        data = read_student_config(directory)
        if data.get("kind") == "head":
            from .head import HeadStudent

            return HeadStudent.from_config_dict(data, directory, teacher, **teacher_kwargs)
        config = StudentConfig.from_dict(data, source=str(config_path))
        if teacher is None:
            from .models import load_teacher

            teacher = load_teacher(config.teacher, **teacher_kwargs)
        expected = config.teacher_signature
        actual = teacher_signature(teacher)
        diff = {k: (expected[k], actual.get(k)) for k in expected if expected[k] != actual.get(k)}
        if diff:
            detail = ", ".join(f"{k}: student {a!r} vs teacher {b!r}" for k, (a, b) in diff.items())
            raise UserError(
                f"teacher does not match the student in {directory} ({detail}): pass the teacher it was trained on ({config.teacher!r})"
            )
        warn_if_other_teacher(config, teacher, directory)
        # Read the weights before wrapping the teacher, so a refused load leaves it untouched.
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise UserError(f"{weights} is missing: copy the whole student directory or retrain")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{weights} is damaged ({e}): restore it or retrain the student") from None
        student = cls(teacher, config)
        own = student.trainable_state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise UserError(f"{weights} does not fit this teacher's layers: pass the teacher it was trained on ({config.teacher!r})")
        with torch.no_grad():
            params = dict(student.named_parameters())
            for k, v in state.items():
                params[k].copy_(v)
        return student

    def lora_modules(self) -> list[GatedLoRA]:
        return [m for m in self.model.modules() if isinstance(m, GatedLoRA)]
