"""Configuration dataclasses shared by every part of ptp (one object per concern)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    """The one description of the sampling distribution P of Eq. (1).

    The same object is used for pregenerating teacher completions, for extracting the auxiliary
    variables u during training and for decoding, so that all three see identical distributions.

    Attributes:
        temperature: logits are divided by it; ``0`` means greedy (argmax, lowest id on ties).
        top_k: keep only the ``top_k`` most likely tokens (ties at the boundary are kept, as in
            transformers); ``0`` disables it.
        top_p: keep the smallest set of most likely tokens whose mass reaches ``top_p`` (at
            least one token); ``1.0`` disables it.
        order: token order of the inverse CDF that turns u into a token (Eq. 2): ``rank``
            (decreasing probability, ties by id: small u picks likely tokens, which students learn
            far more easily) or ``id`` (increasing token id, the paper's literal Eq. 2). Both
            sample P exactly; a student must be decoded with the order it was trained with.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    order: str = "rank"

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise ValueError(
                f"temperature={self.temperature!r} is invalid: use a finite value >= 0 (0 means greedy)"
            )
        if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} is invalid: use an integer >= 0 (0 disables top-k)")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p!r} is invalid: use a value in (0, 1] (1 disables top-p)")
        if self.order not in ("rank", "id"):
            raise ValueError(f"order={self.order!r} is invalid: use rank or id")
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplingConfig":
        unknown = set(data) - {"temperature", "top_k", "top_p", "order"}
        if unknown:
            raise ValueError(f"unknown sampling keys {sorted(unknown)}: use temperature, top_k, top_p, order")
        return cls(**data)


@dataclass
class DecodeConfig:
    """How ``ptp generate`` decodes (the sampling distribution itself is ``SamplingConfig``).

    Attributes:
        strategy: pqd (Partial Quadratic Decoding, default), verify (Algorithm 1), ar (plain
            one-token-per-call decoding, the baseline) or pld (prompt lookup baseline).
        max_new_tokens: stop after this many generated tokens (or at the first EOS).
        max_rows: cap on rows computed per call by pqd; unset: chosen from the measured cost curve.
        draft_length: draft slots per window, at most the student's N; unset: N.
        seed: seed of the auxiliary variables u; unset: a fresh random seed (printed with --json).
        dtype: float32, bfloat16 or float64 for the model weights and activations.
    """

    strategy: str = "pqd"
    max_new_tokens: int = 256
    max_rows: int | None = None
    draft_length: int | None = None
    seed: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.strategy not in ("pqd", "verify", "ar", "pld"):
            raise ValueError(f"strategy={self.strategy!r} is invalid: use pqd, verify, ar or pld")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} is invalid: use an integer >= 1")
        if self.max_rows is not None and int(self.max_rows) < 2:
            raise ValueError(f"max_rows={self.max_rows!r} is invalid: use an integer >= 2")
        if self.draft_length is not None and int(self.draft_length) < 2:
            raise ValueError(f"draft_length={self.draft_length!r} is invalid: use an integer >= 2")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is invalid: use one of {', '.join(DTYPES)}")
        if self.seed is not None and not 0 <= int(self.seed) < 2**64:
            raise ValueError(f"seed={self.seed!r} is invalid: use an integer in [0, 2**64)")


DTYPES = ("float32", "bfloat16", "float64")


def config_from_dict(cls: type, data: Any, where: str) -> Any:
    """A config dataclass from a mapping, checking keys and value types against its fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where} has unknown keys {unknown}: remove them (known: {sorted(known)})")
    values = {key: _typed(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` if it has type ``hint`` (ints accepted for floats; the first member of a union that
    fits), else a UserError."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members:
            try:
                return _typed(member, value, where)
            except UserError:
                continue
        raise _mistyped(value, where, members)
    if typing.get_origin(hint) is list:
        if isinstance(value, list) and all(isinstance(v, args[0]) for v in value):
            return value
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (str, bool) and isinstance(value, hint):
        return value
    elif typing.get_origin(hint) is dict and isinstance(value, dict):
        return value
    raise _mistyped(value, where, [hint])


def _mistyped(value: Any, where: str, hints: list[Any]) -> UserError:
    names = " or ".join(getattr(hint, "__name__", str(hint)) for hint in hints)
    return UserError(f"{where} = {value!r} is invalid: expected a {names}")
