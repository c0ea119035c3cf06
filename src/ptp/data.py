"""Training data from a dataset: loading it, prompt token ids (completions) and packed text (text modes).

Every problem a user can fix (a missing file, column or chat template, a value of the wrong type)
is a UserError naming the example or column and the fix.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from .errors import UserError
from .experiment import DataConfig
from .io import check_utf8, looks_like_path

# Builders of datasets.load_dataset for single local files, by extension.
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load_split(dataset: str, split: str) -> Any:
    """``datasets.load_dataset`` of a local file (builder from its extension), directory or name."""
    import datasets

    path = Path(dataset).expanduser()
    if looks_like_path(dataset) and not path.exists():  # never looked up on the Hub
        raise UserError(f"no such file or directory {dataset!r}: pass an existing dataset file or directory")
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UserError(f"cannot tell the format of {dataset!r}: use a {'/'.join(sorted(BUILDERS))} file")
        args: tuple[Any, ...] = (builder,)
        kwargs: dict[str, Any] = {"data_files": str(path)}
    else:
        args, kwargs = (str(path) if path.is_dir() else dataset,), {}
    _check_text_files(path)
    verbosity = datasets.logging.get_verbosity()
    # datasets logs its failures as errors of its own; each is reported below in one line instead.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        # Never a dataset's own loading script (older datasets versions would run one).
        rows = datasets.load_dataset(*args, split=split, trust_remote_code=False, **kwargs)
    except Exception as e:  # datasets raises many unrelated types for unloadable inputs
        if "corresponds to no data" in str(e):  # datasets' words for a split without rows, e.g. a CSV header alone
            raise _empty(dataset, split) from None
        _check_json_files(path)  # datasets does not say where a JSON file breaks
        raise UserError(
            f"cannot load dataset {dataset!r} split {split!r} ({_first_line(e)}): "
            "pass a local json/jsonl/csv/parquet/txt file or directory, or a dataset name datasets.load_dataset knows"
        ) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if len(rows) == 0:
        raise _empty(dataset, split)
    return rows


def _check_text_files(path: Path) -> None:
    """UserError for a local text dataset file (or one in a local directory) that is empty or not UTF-8.

    datasets reports an empty file with an unrelated error, and bytes that are not UTF-8 only
    when the example holding them is read, possibly hours into pregeneration.
    """
    for file in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
        if BUILDERS.get(file.suffix.lower(), "parquet") != "parquet" and not check_utf8(file, "dataset file"):
            raise UserError(f"dataset file {str(file)!r} is empty: pass a file with examples")


def _check_json_files(path: Path) -> None:
    """UserError naming the file and line where a local JSON (lines) dataset file stops being JSON."""
    for file in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
        if BUILDERS.get(file.suffix.lower()) == "json" and (where := _json_error(file)):
            raise UserError(f"dataset file {str(file)!r} is not valid JSON ({where}): fix that line, or pass one JSON object per line")


def _json_error(file: Path) -> str | None:
    """Where ``file`` (one JSON document, or one per line) is not JSON: ``line 7: Expecting ...``; None if it parses."""
    text = file.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as e:
        whole = f"line {e.lineno}: {e.msg}"
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for number, line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            # A first line that is not JSON alone: one document over many lines, broken where it says.
            return whole if number == lines[0][0] else f"line {number}: {e.msg}"
    return None


def _empty(dataset: str, split: str) -> UserError:
    return UserError(f"dataset {dataset!r} split {split!r} is empty: pass a dataset with examples")


def load_rows(cfg: DataConfig) -> Any:
    """The configured split as a ``datasets.Dataset``, shuffled with the seed and limited.

    The order returned here defines the example indices used everywhere else (pregeneration
    seeds, shards, the validation hold-out), so it depends only on the dataset and ``cfg``.
    """
    rows = load_split(cfg.dataset, cfg.split)
    if cfg.shuffle:
        rows = rows.shuffle(seed=cfg.seed)
    if cfg.limit is not None and cfg.limit < len(rows):
        rows = rows.select(range(cfg.limit))
    return rows


def format_fields(fmt: str) -> list[str]:
    """Column names a format string reads (``"{q[0]}"`` reads ``q``); a UserError if it is malformed."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as e:
        raise UserError(f"prompt format {fmt!r} is malformed ({e}): use a Python format string such as 'Q: {{question}}\\nA:'") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = name.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise UserError(f"prompt format {fmt!r} has a positional field {{{name}}}: name a column, e.g. {{question}}")
        names.append(base)
    return names


def check_columns(cfg: DataConfig, columns: list[str]) -> None:
    """UserError unless every column ``cfg`` reads (directly or in its format string) exists."""
    wanted = cfg.columns()
    if cfg.data_mode == "completions" and cfg.prompt_format is not None:
        wanted += format_fields(cfg.prompt_format)
    missing = [c for c in dict.fromkeys(wanted) if c not in columns]
    if missing:
        raise UserError(f"dataset {cfg.dataset!r} has no column {', '.join(map(repr, missing))}: use one of {', '.join(columns)}")


def check_context(cfg: DataConfig, model_config: Any) -> None:
    """UserError if the sequences ``cfg`` builds can be longer than the teacher's context."""
    if cfg.data_mode == "completions":
        length, what = cfg.max_prompt_tokens + cfg.completion_tokens, "max_prompt_tokens + completion_tokens"
        flags = "--max-prompt-tokens or --completion-tokens"
    else:
        length, what, flags = cfg.seq_len, "seq_len", "--seq-len"
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise UserError(f"{what} = {length} exceeds the teacher's context of {limit} tokens: lower {flags} (data section of experiment.yaml)")


def is_messages(value: Any) -> bool:
    """Whether a value looks like chat messages: a list of dicts with role and content."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value)


def prompt_text(row: dict[str, Any], index: int, cfg: DataConfig, tokenizer: Any) -> str:
    """Example ``index``'s prompt as text (chat messages rendered with a generation prompt)."""
    if cfg.messages_column is not None:
        messages = row[cfg.messages_column]
        if not is_messages(messages):
            raise UserError(f"example {index}: column {cfg.messages_column!r} is not a list of role/content messages: use --prompt-column for plain text")
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError("the teacher's tokenizer has no chat template: use --prompt-column or --prompt-format instead of --messages-column")
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if cfg.prompt_format is not None:
        try:
            return cfg.prompt_format.format(**row)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise UserError(f"example {index}: prompt format {cfg.prompt_format!r} fails ({e!r}): fix the format string") from None
    value = row[cfg.prompt_column]
    if not isinstance(value, str):
        raise UserError(f"example {index}: column {cfg.prompt_column!r} holds {type(value).__name__}, not text: use --messages-column or --prompt-format")
    return value


def prompt_ids(row: dict[str, Any], index: int, cfg: DataConfig, tokenizer: Any) -> list[int]:
    """Token ids of example ``index``'s prompt, at most ``cfg.max_prompt_tokens`` and never empty."""
    text = prompt_text(row, index, cfg, tokenizer)
    # A chat template writes its own special tokens (BOS included); plain prompts get the tokenizer's.
    return _fit_prompt(list(tokenizer(text, add_special_tokens=cfg.messages_column is None)["input_ids"]), cfg, tokenizer)


def _fit_prompt(ids: list[int], cfg: DataConfig, tokenizer: Any) -> list[int]:
    """A prompt's ids cut to ``cfg.max_prompt_tokens`` (never empty)."""
    if not ids:
        ids = [_start_token(tokenizer)]
    if len(ids) > cfg.max_prompt_tokens:
        # Keep the end the completion continues, and the BOS the teacher was trained to see first.
        keep_bos = ids[0] == tokenizer.bos_token_id and cfg.max_prompt_tokens > 1
        ids = ids[:1] + ids[len(ids) - cfg.max_prompt_tokens + 1 :] if keep_bos else ids[-cfg.max_prompt_tokens :]
    return ids


def is_multi_turn(messages: Any) -> bool:
    """Whether chat messages are several user turns for the teacher to answer one by one: at least
    two user messages and no assistant message."""
    roles = [m["role"] for m in messages] if is_messages(messages) else []
    return roles.count("user") >= 2 and "assistant" not in roles


def turn_pieces(row: dict[str, Any], index: int, cfg: DataConfig, tokenizer: Any) -> list[list[int]]:
    """Template token ids around the teacher's answers: the teacher's answer t follows piece t.

    A single prompt gives ``[prompt_ids(...)]``. Messages of several user turns and no assistant
    turn (``is_multi_turn``) give one piece per user turn: piece 0 is the first turn's prompt (as
    ``prompt_ids`` renders those messages alone, cut to ``max_prompt_tokens`` the same way), piece
    t > 0 what the chat template writes between answer t - 1 and answer t (the end of the assistant
    turn, the next user turn, the generation prompt). Pieces after the first are not cut:
    pregeneration stops a conversation whose next context would be too long.
    """
    messages = row[cfg.messages_column] if cfg.messages_column is not None else None
    if not is_multi_turn(messages):
        return [prompt_ids(row, index, cfg, tokenizer)]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    markers = [f"\x00ptp-answer-{t}\x00" for t in range(len(users) - 1)]
    chat: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        chat.append(message)
        if i in users[:-1]:  # the teacher answers each user turn but the last right after it
            chat.append({"role": "assistant", "content": markers[users.index(i)]})
    text = prompt_text({cfg.messages_column: chat}, index, cfg, tokenizer)
    texts = []
    for marker in markers:
        before, found, text = text.partition(marker)
        if not found or marker in text:
            raise UserError(f"example {index}: the chat template does not write assistant messages verbatim, "
                            "so the teacher cannot answer its user turns one by one: pass single-turn prompts")
        texts.append(before)
    pieces = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in [*texts, text]]
    first = prompt_ids({cfg.messages_column: messages[: users[0] + 1]}, index, cfg, tokenizer)
    if _fit_prompt(pieces[0], cfg, tokenizer) != first:
        raise UserError(f"example {index}: the chat template renders the first turn differently within the conversation, "
                        "so the teacher cannot answer its user turns one by one: pass single-turn prompts")
    return [first, *pieces[1:]]


def _start_token(tokenizer: Any) -> int:
    """The token an empty prompt starts from: BOS, else EOS (the usual document separator)."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise UserError("an example has an empty prompt and the tokenizer has neither BOS nor EOS: remove empty prompts")


def text_sequences(rows: Any, cfg: DataConfig, tokenizer: Any) -> list[list[int]]:
    """Text and inverse modes: all texts tokenized, joined with EOS and cut into ``seq_len`` chunks.

    The last chunk may be shorter (it is kept if it has at least two tokens).
    """
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    stream: list[int] = []
    for index, row in enumerate(rows):
        value = row[cfg.text_column]
        if not isinstance(value, str):
            raise UserError(f"example {index}: column {cfg.text_column!r} holds {type(value).__name__}, not text: pick a text column")
        stream += list(tokenizer(value)["input_ids"]) + eos
    chunks = [stream[i : i + cfg.seq_len] for i in range(0, len(stream), cfg.seq_len)]
    return [c for c in chunks if len(c) >= 2]
