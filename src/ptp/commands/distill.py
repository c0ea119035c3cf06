"""``ptp distill MODEL DATASET [DIR]``: set up an experiment directory (``DIR/experiment.yaml``).

Every choice is a flag; what is missing is asked for only when stdin is a terminal, otherwise it
takes the paper's default or, when there is none (which column holds the prompts), fails naming
the flag. MODEL, DATASET and the chosen columns are checked before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ..cli import dataclass_arguments, dataclass_from_args, read_line, stdin_open
from ..data import check_columns, check_context, format_fields, is_messages, load_split, text_sequences, turn_pieces
from ..errors import UserError
from ..experiment import DATA_MODES, DataConfig, Experiment
from ..io import absolute_if_local, check_writable
from ..lora import lora_target_names
from ..models import load_config, load_tokenizer
from ..student import MODES

HELP = "Set up an experiment: distill teacher MODEL on DATASET into DIR/experiment.yaml."
SOURCE_FLAGS = "--prompt-column, --messages-column or --prompt-format"


def configure(parser: argparse.ArgumentParser) -> None:
    # The positionals fill the same fields as --teacher and --dataset.
    parser.add_argument("teacher", metavar="MODEL", help="teacher: a local Hugging Face model directory or a ptp short name")
    parser.add_argument("dataset", metavar="DATASET", help="anything datasets.load_dataset takes (e.g. a local .jsonl file)")
    parser.add_argument("dir", metavar="DIR", nargs="?", help="experiment directory (default runs/MODEL-DATASET-MODE, "
                                                              "with -head for --kind head)")
    for cls in Experiment.sections().values():
        dataclass_arguments(parser, cls)


def _interactive() -> bool:
    return stdin_open() and sys.stdin.isatty()


def _ask(question: str, choices: list[str] | None = None, default: str | None = None) -> str:
    """One answer from the terminal, repeated until it is one of ``choices`` (if given)."""
    hint = f" [{'/'.join(choices)}]" if choices else ""
    hint += f" (default {default})" if default else ""
    while True:
        line = read_line(f"{question}{hint}: ")
        if line is None:
            raise UserError(f"no answer to {question!r}: pass it as a flag")
        answer = line.strip() or (default or "")
        if answer and (choices is None or answer in choices):
            return answer
        print(f"  please answer {' or '.join(choices) if choices else 'something'}")


def _default_dir(teacher: str, dataset: str, mode: str) -> Path:
    def base(name: str) -> str:
        path = Path(name.rstrip("/"))
        return path.stem if path.is_file() else path.name

    return Path("runs") / f"{base(teacher)}-{base(dataset)}-{mode}"


def _check_free(directory: Path) -> None:
    """A UserError unless ``directory`` is new (or empty) and can be written."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory} already exists: pass another DIR, or delete it to start over")
    check_writable(directory, "DIR")


def _choose_source(args: argparse.Namespace, rows: Any) -> None:
    """Fill the prompt source (completions) or text column (text modes) into ``args``."""
    columns = list(rows.column_names)
    if args.data_mode == "completions" and any(getattr(args, k) is not None for k in ("prompt_column", "messages_column", "prompt_format")):
        return
    if args.data_mode != "completions" and args.text_column is not None:
        return
    what = "prompt" if args.data_mode == "completions" else "text"
    if len(columns) == 1:
        answer = columns[0]
    elif _interactive():
        print(f"columns of {args.dataset} (first example):")
        for c in columns:
            print(f"  {c}: {str(rows[0][c])[:60]!r}")
        extra = " or a format string such as '{" + columns[0] + "}'" if what == "prompt" else ""
        answer = _ask(f"column holding the {what}{extra}")
    else:
        flags = SOURCE_FLAGS if what == "prompt" else "--text-column"
        raise UserError(f"which column holds the {what}? pass {flags} (columns: {', '.join(columns)})")
    if what == "text":
        args.text_column = answer
    elif "{" in answer:
        args.prompt_format = answer
    elif answer in columns and is_messages(rows[0][answer]):
        args.messages_column = answer
    else:
        args.prompt_column = answer


def _choose_data_mode(args: argparse.Namespace) -> None:
    if args.data_mode is not None:
        return
    if _interactive():
        print("data modes: completions = the teacher's completions of the prompts (the paper's recipe, needs ptp pregenerate);"
              " text = the dataset's text, u from the teacher; inverse = C-PTP from the text alone, no teacher")
        args.data_mode = _ask("data mode", list(DATA_MODES), "completions")
    else:
        args.data_mode = "text" if args.text_column is not None else "completions"


def _choose_ptp_mode(args: argparse.Namespace) -> None:
    if args.mode is not None:
        return
    # Inverse autoregressive training exists only for C-PTP (Sec. 2.2.2): nothing to ask.
    default = "c-ptp" if args.data_mode == "inverse" else "o-ptp"
    if _interactive() and args.data_mode != "inverse":
        args.mode = _ask("PTP mode (o-ptp = one-hot, the paper's best)", list(MODES), default)
    else:
        args.mode = default


def _validate(experiment: Experiment, rows: Any, tokenizer: Any, model_config: Any) -> None:
    """Fail now, not hours into pregeneration, for columns or prompts that cannot work."""
    data = experiment.data
    check_columns(data, list(rows.column_names))
    if data.data_mode == "completions":
        turn_pieces(rows[0], 0, data, tokenizer)  # renders the first prompt: types, template, format, turns
    else:
        text_sequences(rows.select([0]), data, tokenizer)
    check_context(data, model_config)
    if experiment.model.kind == "lora" and experiment.model.lora_targets is not None:
        _check_lora_targets(experiment.model.lora_targets, model_config, experiment.model.trust_remote_code)
    if experiment.model.kind == "head":
        from ..head_data import check_head_experiment

        check_head_experiment(experiment, getattr(model_config, "num_hidden_layers", None))
    available = len(rows) if data.limit is None else min(len(rows), data.limit)
    if data.data_mode == "completions" and available <= data.val_examples:
        raise UserError(f"dataset has {available} examples, not more than --val-examples {data.val_examples}: lower --val-examples or use more data")


def _check_lora_targets(targets: list[str], model_config: Any, trust_remote_code: bool) -> None:
    """``--lora-targets`` must name linear layers of the teacher (its skeleton, on the meta device)."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    lora_target_names(skeleton, targets)


def run(args: argparse.Namespace) -> int:
    # Stored absolute, so later commands find them from any directory (and never on the Hub).
    args.teacher, args.dataset = absolute_if_local(args.teacher), absolute_if_local(args.dataset)
    if args.dir is not None:
        _check_free(Path(args.dir))
    trust = bool(args.trust_remote_code)
    model_config = load_config(args.teacher, trust)
    tokenizer = load_tokenizer(args.teacher, trust_remote_code=trust)
    rows = load_split(args.dataset, args.split or DataConfig.split)
    if args.prompt_format is not None:
        format_fields(args.prompt_format)  # a malformed format string fails before any question
    _choose_data_mode(args)
    _choose_source(args, rows)
    _choose_ptp_mode(args)
    sections = {name: dataclass_from_args(cls, args) for name, cls in Experiment.sections().items()}
    try:
        experiment = Experiment(**sections)
    except ValueError as e:
        raise UserError(str(e)) from None
    _validate(experiment, rows, tokenizer, model_config)
    name = experiment.model.mode + ("-head" if experiment.model.kind == "head" else "")
    directory = Path(args.dir) if args.dir is not None else _default_dir(args.teacher, args.dataset, name)
    _check_free(directory)
    try:
        path = experiment.save(directory)
    except OSError as e:  # what permissions do not tell (a read-only file system, a full disk, root in /proc)
        raise UserError(f"DIR {str(directory)!r} cannot be written ({e.strerror}): pass a directory you can write to") from None
    print(f"wrote {path}")
    if experiment.data.data_mode == "completions":
        print(f"next: ptp pregenerate {directory}   (then ptp train {directory})")
    else:
        print(f"next: ptp train {directory}")
    return 0
