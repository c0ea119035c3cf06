"""Loading teachers and tokenizers by short name or path, with one-line errors for user mistakes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .default_teacher import DEFAULT_TEACHER, ensure_default_teacher
from .errors import UserError
from .io import looks_like_path

# Short names of models ptp can provide itself: name -> function returning a local directory.
REGISTRY: dict[str, Callable[[], Path]] = {DEFAULT_TEACHER: ensure_default_teacher}

FIX = "pass a local Hugging Face model directory or " + ", ".join(repr(n) for n in REGISTRY)


def resolve_model(name: str) -> str:
    """The directory for a registered short name (preparing it if needed); anything else unchanged.

    An existing path wins over a short name of the same spelling, so a user's own directory is
    never shadowed. A path that cannot be a hub id and does not exist is a UserError here, since
    from_pretrained would otherwise report it as a failed hub download.
    """
    if not name:
        raise UserError(f"no model given: {FIX}")
    if os.path.exists(name):
        return name
    if name in REGISTRY:
        return str(REGISTRY[name]())
    if looks_like_path(name):
        raise UserError(f"no such directory {name!r}: {FIX}")
    return name


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load_config(name: str, trust_remote_code: bool = False) -> Any:
    """``AutoConfig`` of the resolved ``name``, or a UserError unless it describes a causal LM."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "directory" if os.path.isdir(path) else "model"
        raise UserError(f"cannot load {where} {name!r} ({_first_line(e)}): {FIX}") from None
    # Remote-code models declare their causal-LM class in auto_map instead of the mapping.
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and "AutoModelForCausalLM" not in (getattr(config, "auto_map", None) or {}):
        raise UserError(f"{name!r} is not a causal language model (model type {config.model_type!r}): "
                        "pass a model AutoModelForCausalLM can load, e.g. a Llama, Qwen2 or GPT-2 directory")
    return config


def load_teacher(name: str, dtype: torch.dtype | str | None = torch.float32, trust_remote_code: bool = False, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` of the resolved ``name`` in eval mode, or a UserError naming the fix."""
    from transformers import AutoModelForCausalLM

    config = load_config(name, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name), config=config, dtype=dtype,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as e:
        raise UserError(f"{name!r} is not a causal language model ({_first_line(e)}): pass a model AutoModelForCausalLM can load") from None
    except OSError as e:
        raise UserError(f"cannot load weights of {name!r} ({_first_line(e)}): check the directory is complete") from None
    return model.eval()


def load_tokenizer(name: str, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` of the resolved ``name``, or a UserError naming the fix."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        where = "directory" if os.path.isdir(path) else "model"
        raise UserError(f"cannot load a tokenizer from {where} {name!r} ({_first_line(e)}): {FIX}") from None
