"""Loading teachers by name or path, with one-line errors for user mistakes."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .errors import UserError


def load_teacher(name: str, dtype: torch.dtype | str | None = torch.float32, trust_remote_code: bool = False, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(name)`` in eval mode, or a UserError naming the fix."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not name:
        raise UserError("no teacher given: pass MODEL (a local Hugging Face model directory)")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "directory" if os.path.isdir(name) else "model"
        raise UserError(f"cannot load {where} {name!r} ({str(e).splitlines()[0]}): pass a local Hugging Face model directory") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(name, config=config, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as e:
        raise UserError(f"{name!r} is not a causal language model ({str(e).splitlines()[0]}): pass a model AutoModelForCausalLM can load") from None
    except OSError as e:
        raise UserError(f"cannot load weights of {name!r} ({str(e).splitlines()[0]}): check the directory is complete") from None
    return model.eval()
