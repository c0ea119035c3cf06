"""The KV cache argument of Hugging Face models across transformers versions.

transformers 5.x renames ``past_key_values`` to ``cache`` (in ``forward`` and in outputs) and warns
on the old name, which later releases drop; older releases know only the old name.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def cache_kwarg(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes a KV cache (remembered per model class)."""
    cls = type(model)
    name = cls.__dict__.get("_ptp_cache_kwarg")
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cls._ptp_cache_kwarg = name
    return name


def output_cache(output: Any) -> Any:
    """The KV cache a model call returned (None without ``use_cache``)."""
    return output["cache"] if "cache" in output.keys() else output.get("past_key_values")
