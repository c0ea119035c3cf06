"""Gated LoRA: a low-rank adapter that acts only on draft positions.

Each adapted linear layer computes ``y = W x`` for every position and adds ``B A x * scale`` only on
the rows where the gate is on (in the activations' dtype; the factors are stored in float32). Rows where the gate is off are never touched, so at context and
verification positions the student *is* the teacher, bit for bit (as peft's activated LoRA).
``B`` starts at zero, so a new student also equals the teacher on draft positions.

Gated rows are kept finite and bounded (``finite``): a broken student (NaN, Inf or huge weights)
must not reach the teacher's rows, yet attention multiplies every value row by its weight, and
``0 x NaN = NaN`` even where the mask gives a draft row weight 0.

The gate is a ``(batch, seq)`` bool tensor held by a :class:`Gate` shared by all adapted layers and
set for the duration of one forward call, which keeps the base model's modeling code untouched.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import UserError

try:  # GPT-2 style models use a transposed linear layer.
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]


FINITE = 65504.0  # the largest float16: bounded in every dtype a model runs in, far above honest activations


def finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN as 0 and everything clamped to ``[-FINITE, FINITE]`` (a new tensor)."""
    return torch.nan_to_num(x, nan=0.0, posinf=FINITE, neginf=-FINITE).clamp(-FINITE, FINITE)


class Gate:
    """Holds the per-token gate of the forward call in progress.

    ``tail`` is set when the gated rows are exactly the last ``tail`` rows of every sequence (as in
    decoding and training calls, where draft slots follow the token rows): the adapters then
    compute and add their delta on those rows alone.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, seq) bool, or None = all off
        self.tail: int | None = None

    @contextmanager
    def set(self, mask: torch.Tensor | None) -> Iterator[None]:
        previous = self.mask, self.tail
        self.mask, self.tail = mask, _tail(mask)
        try:
            yield
        finally:
            self.mask, self.tail = previous


def _tail(mask: torch.Tensor | None) -> int | None:
    """The number of gated rows if they are exactly the last rows of every sequence, else None."""
    if mask is None:
        return None
    n = int(mask[0].sum())
    return n if n and bool(mask[:, -n:].all()) and not bool(mask[:, :-n].any()) else None


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear-like layer, or None if it is not one."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


class GatedLoRA(nn.Module):
    """Wraps a linear layer ``base``; adds ``scale * B(A(x))`` on gated rows only."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, gate: Gate) -> None:
        super().__init__()
        shape = linear_shape(base)
        if shape is None:
            raise TypeError(f"cannot adapt {type(base).__name__}: only Linear and Conv1D layers")
        in_features, out_features = shape
        self.base = base
        self.gate = gate
        self.scale = alpha / rank
        weight = next(base.parameters())
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A^T, scale * B^T)``, ``(in, r)`` and ``(r, out)``, in the activations' dtype.

        Without autograd (decoding) they are cached as contiguous copies until the weights change in
        place (``_version`` counts in-place updates: optimizer steps, ``copy_`` on load), which saves
        two small copies per layer and call.
        """
        if torch.is_grad_enabled():
            return self.lora_A.to(dtype).t(), (self.lora_B * self.scale).to(dtype).t()
        key = (dtype, self.lora_A.device, self.lora_A._version, self.lora_B._version)
        if getattr(self, "_cached_key", None) != key:
            with torch.no_grad():
                self._cached = (self.lora_A.to(dtype).t().contiguous(), (self.lora_B * self.scale).to(dtype).t().contiguous())
            self._cached_key = key
        return self._cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, in)
        y = self.base(x)
        mask, tail = self.gate.mask, self.gate.tail
        if mask is None or x.dim() != 3:
            return y
        if tail is not None and tail < x.shape[1] and x.shape[0] == 1 and not torch.is_grad_enabled():
            # Decoding: the delta of the slot rows by 2-D matmuls (small calls here cost their
            # overhead), in place. Half-precision matmuls this small cost 3-5x their float32
            # version on CPU, so there the delta is computed in float32 and rounded once.
            rows = x[0, -tail:]
            out = y[0, -tail:]
            if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
                a_t, b_t = self.factors(torch.float32)
                out.add_(torch.mm(torch.mm(rows.float(), a_t), b_t))
            else:
                a_t, b_t = self.factors(x.dtype)
                out.addmm_(torch.mm(rows, a_t), b_t)
            out.nan_to_num_(nan=0.0, posinf=FINITE, neginf=-FINITE).clamp_(-FINITE, FINITE)
            return y
        a_t, b_t = self.factors(x.dtype)
        if tail == x.shape[1]:
            return finite(y + (x @ a_t) @ b_t)
        if tail is not None:
            # Slots after the token rows: the delta of those rows alone, written in place (a linear
            # layer's output is not needed by its backward); token rows keep their exact bits.
            y[:, -tail:] = finite(y[:, -tail:] + (x[:, -tail:] @ a_t) @ b_t)
            return y
        # Any other layout: the delta of every row, kept only on gated rows by where().
        return torch.where(mask.unsqueeze(-1), finite(y + (x @ a_t) @ b_t), y)


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the linear layers a gated LoRA may adapt (all but the output layer)."""
    output = model.get_output_embeddings()
    return [name for name, module in model.named_modules() if module is not output and linear_shape(module) is not None]


def lora_target_names(model: nn.Module, targets: list[str] | None) -> list[str]:
    """The linear layers ``targets`` (module-name suffixes; None: all) select, in order; a
    UserError naming some that exist when they select none."""
    names = linear_names(model)
    chosen = [n for n in names if targets is None or any(n == t or n.endswith("." + t) for t in targets)]
    if not chosen:
        raise UserError(f"lora_targets={targets!r} match no linear layer of the teacher: name module suffixes it has "
                        f"(e.g. {', '.join(sorted({n.rpartition('.')[2] for n in names})[:6])})")
    return chosen


def inject_gated_lora(
    model: nn.Module, gate: Gate, rank: int, alpha: float, targets: list[str] | None = None
) -> list[str]:
    """Replace linear layers inside the transformer blocks by :class:`GatedLoRA` wrappers.

    Args:
        model: a ``PreTrainedModel``; its modeling code is not changed, only submodules swapped.
        targets: module-name suffixes to adapt (e.g. ``["q_proj", "v_proj"]``); ``None`` adapts
            every linear layer except the embeddings and the output head.
    Returns:
        The qualified names of the adapted modules, in order.
    """
    if any(isinstance(module, GatedLoRA) for module in model.modules()):
        raise UserError("this model already carries a student's gated LoRA (a student adapts its teacher in place): "
                        "load a fresh teacher for each student")
    adapted = lora_target_names(model, targets)
    for name in adapted:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, GatedLoRA(model.get_submodule(name), rank, alpha, gate))
    return adapted
