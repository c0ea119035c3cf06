"""An experiment directory's configuration: one dataclass per concern, saved as ``experiment.yaml``.

The dataclasses are the source of truth: their fields are the YAML keys and (through
``ptp.cli.dataclass_arguments``) the command-line flags, and their ``Attributes:`` docstrings are
the help texts. YAML is only their serialisation.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import SamplingConfig, config_from_dict
from .errors import UserError
from .io import write_text
from .head import INITS as HEAD_INITS, HeadConfig
from .student import CONFIG_NAME, StudentConfig

EXPERIMENT_FILE = "experiment.yaml"
DATA_MODES = ("completions", "text", "inverse")
LOSSES = ("ce", "kl", "rev-kl", "bce")
DTYPES = ("float32", "bfloat16", "float16", "float64")
KINDS = ("lora", "head")
# Which losses fit which PTP mode: O-PTP predicts tokens (cross-entropy of Eq. 10 or per-token
# binary cross-entropy), C-PTP and MTP predict distributions (Eq. 11, or Eq. 12 with a divergence).
LOSSES_BY_MODE = {"o-ptp": ("ce", "bce"), "c-ptp": ("ce", "kl", "rev-kl"), "mtp": ("ce", "kl", "rev-kl")}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _head_directory(path: str) -> str:
    """A head's directory given as ``init``, made absolute (the experiment may run from elsewhere)."""
    directory = Path(path).expanduser()
    _check((directory / CONFIG_NAME).is_file(),
           f"init={path!r} is invalid: use teacher, fresh or the directory of a trained head (with {CONFIG_NAME})")
    return str(directory.resolve())


@dataclass
class DataConfig:
    """Where training sequences come from.

    Attributes:
        dataset: anything ``datasets.load_dataset`` takes: a local json/jsonl/csv/parquet/txt file,
            a directory of such files, or a dataset name.
        split: dataset split to use (slices such as ``train[:1000]`` work too).
        data_mode: ``completions`` (teacher completions of the dataset's prompts, the paper's main
            recipe), ``text`` (the dataset's text used directly; the teacher gives u) or
            ``inverse`` (inverse autoregressive C-PTP from the text alone, no teacher u).
        prompt_column: column holding the prompt as plain text (completions mode).
        messages_column: column holding chat messages (a list of role/content dicts), rendered with
            the tokenizer's chat template and a generation prompt (completions mode). Several user
            turns and no assistant turn make a conversation the teacher answers turn by turn.
        prompt_format: Python format string over columns building the prompt, e.g.
            ``"Q: {question}\\nA:"`` (completions mode).
        text_column: column holding the training text (text and inverse modes).
        max_prompt_tokens: longer prompts keep their first token (BOS) and their last tokens; a
            conversation stops before a turn whose context (earlier turns included) would be longer.
        completion_tokens: new tokens the teacher samples per prompt, or per turn of a
            conversation (fewer if it stops at EOS).
        seq_len: tokens per training sequence in text and inverse modes (texts are packed).
        limit: use only this many examples (after shuffling); unset uses all.
        shuffle: shuffle the examples (with ``seed``) before applying ``limit``.
        val_examples: the last this many examples (completions) or sequences (text modes) are held
            out for validation.
        seed: seed of the experiment: example order and the teacher's u in pregeneration.
    """

    dataset: str = ""
    split: str = "train"
    data_mode: str = "completions"
    prompt_column: str | None = None
    messages_column: str | None = None
    prompt_format: str | None = None
    text_column: str | None = None
    max_prompt_tokens: int = 512
    completion_tokens: int = 256
    seq_len: int = 512
    limit: int | None = None
    shuffle: bool = True
    val_examples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.dataset), "no dataset given: pass DATASET (a local file or directory, or a dataset name)")
        _check(self.data_mode in DATA_MODES, f"data_mode={self.data_mode!r} is invalid: use one of {', '.join(DATA_MODES)}")
        sources = {k: v for k, v in self.prompt_sources().items() if v is not None}
        if self.data_mode == "completions":
            _check(len(sources) == 1, (
                f"completions mode needs exactly one prompt source, got {len(sources)}"
                f"{' (' + ', '.join(sources) + ')' if sources else ''}: pass one of --prompt-column, --messages-column, --prompt-format"
            ))
        else:
            _check(self.text_column is not None, f"{self.data_mode} mode needs the text: pass --text-column")
        for name in ("max_prompt_tokens", "completion_tokens", "val_examples"):
            minimum = 0 if name == "val_examples" else 1
            _check(getattr(self, name) >= minimum, f"{name}={getattr(self, name)!r} is invalid: use an integer >= {minimum}")
        _check(self.seq_len >= 2, f"seq_len={self.seq_len!r} is invalid: use an integer >= 2")
        _check(self.limit is None or self.limit >= 1, f"limit={self.limit!r} is invalid: use an integer >= 1 (or leave it unset)")

    def prompt_sources(self) -> dict[str, str | None]:
        return {"prompt_column": self.prompt_column, "messages_column": self.messages_column, "prompt_format": self.prompt_format}

    def columns(self) -> list[str]:
        """Columns this configuration reads directly (a format string's columns excluded)."""
        names = [self.prompt_column, self.messages_column] if self.data_mode == "completions" else [self.text_column]
        return [n for n in names if n is not None]


@dataclass
class ModelConfig:
    """The teacher and the student built on it.

    Attributes:
        teacher: the teacher MODEL, anything ``AutoModelForCausalLM.from_pretrained`` takes.
        teacher_dtype: dtype the teacher is loaded in (float32, bfloat16, float16, float64).
        trust_remote_code: allow the teacher's own modelling code (only for models you trust).
        mode: ``o-ptp`` (one-hot, the paper's best), ``c-ptp`` (categorical) or ``mtp``
            (independent prediction baseline).
        num_draft_tokens: N, tokens the student proposes per call.
        lora_rank: rank r of the gated LoRA.
        lora_alpha: LoRA scale numerator (delta scaled by alpha / r); unset means 2 r.
        lora_targets: module-name suffixes to adapt; unset adapts every linear layer of the blocks.
        aux_embedding: embedding of u, ``FEATURE+HEAD`` (App. C.1), e.g. ``ar+lin``.
        aux_dim: number of features of the auxiliary embedding.
        kind: ``lora`` (a gated LoRA that runs the teacher's layers on the draft slots) or ``head``
            (a K-layer draft head on the teacher's hidden states, trained from cached features).
        num_layers: K, decoder layers of a head (``kind: head``; default 2); it reads the teacher's
            states entering layer L - K.
        init: a head's layers: ``teacher`` (copies of the teacher's last K), ``fresh``, or the
            directory of a trained head to start from, its weights and draft vocabulary (e.g.
            pretrained on dataset text; ``kind: head``; default teacher).
        autoregressive: a head that drafts one token per call, fed its own drafts (the
            autoregressive baseline; ``kind: head``; default false).
        draft_vocab: a head's output vocabulary, the this many most frequent training tokens; 0 is
            the teacher's whole vocabulary (``kind: head``; default 0).
    """

    teacher: str = ""
    teacher_dtype: str = "float32"
    trust_remote_code: bool = False
    mode: str = "o-ptp"
    num_draft_tokens: int = 16
    lora_rank: int = 16
    lora_alpha: float | None = None
    lora_targets: list[str] | None = None
    aux_embedding: str = "ar+lin"
    aux_dim: int = 32
    kind: str = "lora"
    num_layers: int | None = None
    init: str | None = None
    autoregressive: bool | None = None
    draft_vocab: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.teacher), "no teacher given: pass MODEL (a local Hugging Face model directory)")
        _check(self.teacher_dtype in DTYPES, f"teacher_dtype={self.teacher_dtype!r} is invalid: use one of {', '.join(DTYPES)}")
        _check(self.kind in KINDS, f"kind={self.kind!r} is invalid: use one of {', '.join(KINDS)}")
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_rank
        self.lora_alpha = float(self.lora_alpha)
        self.student_config()  # the student's own checks
        head_options = ("num_layers", "init", "autoregressive", "draft_vocab")
        if self.kind == "head":
            for name in head_options:  # unset: the head's own default
                if getattr(self, name) is None:
                    setattr(self, name, getattr(HeadConfig, name))
            self.head_config()  # the head's own checks
            if self.init not in HEAD_INITS:
                self.init = _head_directory(self.init)
        else:
            given = [name for name in head_options if getattr(self, name) is not None]
            _check(not given, f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of kind head: "
                              "pass --kind head, or leave them out")

    def student_config(self) -> StudentConfig:
        return StudentConfig(
            mode=self.mode,
            num_draft_tokens=self.num_draft_tokens,
            lora_rank=self.lora_rank,
            lora_alpha=float(self.lora_alpha),
            lora_targets=self.lora_targets,
            aux_embedding=self.aux_embedding,
            aux_dim=self.aux_dim,
            teacher=self.teacher,
        )

    def head_config(self) -> HeadConfig:
        """The draft head's configuration (``kind: head``)."""
        return HeadConfig(mode=self.mode, num_draft_tokens=self.num_draft_tokens, num_layers=int(self.num_layers),
                          init=str(self.init), autoregressive=bool(self.autoregressive), draft_vocab=int(self.draft_vocab),
                          aux_embedding=self.aux_embedding,
                          aux_dim=self.aux_dim, teacher=self.teacher)


@dataclass
class LossConfig:
    """The training objective (Sec. 2.2, App. C.2 and D).

    Attributes:
        loss: ``ce`` (cross-entropy, Eqs. 10/11), ``bce`` (binary cross-entropy, O-PTP), ``kl`` or
            ``rev-kl`` (divergence to the teacher distribution, Eq. 12, C-PTP and MTP).
        beta: b of App. D: training u are drawn as ``lo + Beta(b, b) (hi - lo)``; 1 is uniform.
        windows_per_sequence: split positions i sampled per training sequence and step.
    """

    loss: str = "ce"
    beta: float = 1.0
    windows_per_sequence: int = 4

    def __post_init__(self) -> None:
        _check(self.loss in LOSSES, f"loss={self.loss!r} is invalid: use one of {', '.join(LOSSES)}")
        _check(self.beta > 0, f"beta={self.beta!r} is invalid: use a value > 0")
        _check(self.windows_per_sequence >= 1, f"windows_per_sequence={self.windows_per_sequence!r} is invalid: use an integer >= 1")


@dataclass
class OptimConfig:
    """Optimisation schedule.

    Attributes:
        optimizer: optimizer name (``adamw``).
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        warmup_steps: linear warm-up steps before the peak learning rate.
        final_lr_ratio: learning rate at the last step as a fraction of ``lr``, reached by a
            cosine decay after the warm-up; 1 keeps the rate constant.
        batch_size: training sequences per step (per device).
        steps: total optimisation steps.
        grad_clip: gradient norm clipping threshold; 0 disables it.
        val_every: validate every this many steps.
        val_windows: windows evaluated per validation.
    """

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    final_lr_ratio: float = 1.0
    batch_size: int = 8
    steps: int = 10000
    grad_clip: float = 1.0
    val_every: int = 500
    val_windows: int = 256

    def __post_init__(self) -> None:
        _check(self.optimizer == "adamw", f"optimizer={self.optimizer!r} is invalid: use adamw")
        _check(self.lr > 0, f"lr={self.lr!r} is invalid: use a value > 0")
        _check(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        for name in ("batch_size", "steps", "val_every", "val_windows"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)!r} is invalid: use an integer >= 1")
        _check(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps!r} is invalid: use an integer >= 0")
        _check(0 <= self.final_lr_ratio <= 1, f"final_lr_ratio={self.final_lr_ratio!r} is invalid: use a value in [0, 1]")


def lr_factor(step: int, optim: Any) -> float:
    """Learning rate of step ``step`` relative to ``optim.lr``: linear warm-up, then constant or a
    cosine decay to ``final_lr_ratio`` at the last step. ``optim``: an OptimConfig, or any config
    with its ``warmup_steps``, ``steps`` and ``final_lr_ratio`` (a head's plain training loop)."""
    warmup = optim.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, optim.steps - 1 - warmup))
    return optim.final_lr_ratio + (1 - optim.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainerConfig:
    """Hardware, logging and checkpoints (passed to the Lightning trainer).

    Attributes:
        precision: Lightning precision, e.g. ``32-true``, ``bf16-mixed``.
        accelerator: ``auto``, ``cpu``, ``gpu``, ...
        devices: ``auto``, a device count, or a comma-separated list of device ids.
        strategy: ``auto``, ``ddp``, ``fsdp``, ...
        num_nodes: number of machines.
        logger: ``csv``, ``tensorboard`` or ``wandb``.
        checkpoint_every: save a checkpoint every this many steps.
        keep_checkpoints: number of most recent checkpoints kept.
    """

    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    logger: str = "csv"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        self.devices = str(self.devices)  # so devices: 1 in YAML is what --devices 1 is
        _check(self.logger in ("csv", "tensorboard", "wandb"), f"logger={self.logger!r} is invalid: use csv, tensorboard or wandb")
        for name in ("num_nodes", "checkpoint_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)!r} is invalid: use an integer >= 1")


@dataclass
class Experiment:
    """Everything ``ptp pregenerate`` and ``ptp train`` need, as written by ``ptp distill``.

    Attributes:
        data: the training data.
        model: the teacher and the student.
        loss: the training objective.
        sampling: the teacher's sampling distribution (for pregeneration, u extraction, decoding).
        optim: the optimisation schedule.
        trainer: hardware, logging and checkpoints.
    """

    data: DataConfig
    model: ModelConfig
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        mode, loss = self.model.mode, self.loss.loss
        _check(loss in LOSSES_BY_MODE[mode], f"loss {loss!r} does not fit mode {mode!r}: use one of {', '.join(LOSSES_BY_MODE[mode])}")
        if self.data.data_mode == "inverse":
            # Inverse autoregressive training (Sec. 2.2.2) draws u from the student's own categorical.
            _check(mode == "c-ptp" and loss == "ce", "inverse data mode trains a C-PTP with cross-entropy: pass --mode c-ptp --loss ce")

    @classmethod
    def sections(cls) -> dict[str, type]:
        """Section name -> its config dataclass, in file order."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "experiment") -> "Experiment":
        """Build from plain data, raising UserError naming unknown keys, missing sections, bad values."""
        if not isinstance(data, dict):
            raise UserError(f"{source} must hold a mapping of sections: restore it or rerun ptp distill")
        sections = cls.sections()
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise UserError(f"{source} has unknown sections {unknown}: remove them (known: {sorted(sections)})")
        missing = sorted({"data", "model"} - set(data))
        if missing:
            raise UserError(f"{source} lacks sections {missing}: rerun ptp distill")
        built = {name: config_from_dict(section_cls, data[name], f"{source}: {name}") for name, section_cls in sections.items() if name in data}
        try:
            return cls(**built)
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/experiment.yaml`` atomically; returns its path."""
        path = Path(directory) / EXPERIMENT_FILE
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "Experiment":
        directory = Path(directory)
        path = directory / EXPERIMENT_FILE
        if not directory.is_dir():
            raise UserError(f"{directory} is not a directory: pass an experiment directory written by ptp distill")
        if not path.is_file():
            raise UserError(f"{directory} is not an experiment directory (no {EXPERIMENT_FILE}): create it with ptp distill MODEL DATASET {directory}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix it or rerun ptp distill") from None
        return cls.from_dict(data, source=str(path))


def check_remote_code(directory: str | Path, allowed: bool, command: str) -> None:
    """A UserError when ``DIR/experiment.yaml`` asks for the teacher's own code and the command
    line did not allow it: a config file alone never makes ptp import code."""
    if Experiment.load(directory).model.trust_remote_code and not allowed:
        raise UserError(f"{Path(directory) / EXPERIMENT_FILE} sets model.trust_remote_code: true, which runs the teacher's own "
                        f"Python code: pass --trust-remote-code to ptp {command} if you trust it, or set it to false")
