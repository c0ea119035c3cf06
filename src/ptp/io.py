"""File I/O: atomic writes (every result, shard, checkpoint and config goes through here: temp file + rename), UTF-8 checks."""

from __future__ import annotations

import codecs
import itertools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a result file gets the user's usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def inside(directory: str | os.PathLike, name: Any, what: str) -> Path:
    """``directory / name`` for a file an index names, or a UserError when ``name`` is not a
    string or leads outside ``directory`` (``../other/shard``, an absolute path, a link out)."""
    directory = Path(directory)
    path = (directory / str(name)).resolve() if isinstance(name, str) else None
    if path is None or directory.resolve() not in path.parents:
        raise UserError(f"{what} names a file outside {directory} ({name!r}): restore it, or delete {directory} and regenerate")
    return path


def index_problem(index: dict[str, Any], fields: dict[str, type], shard_fields: dict[str, type]) -> str | None:
    """What is wrong with the fields of a shard index (``index.json``), e.g. ``no done, shards`` or
    ``shard 3: file is not of type str``; None when they and every entry of ``shards`` have their types."""
    missing = sorted(set(fields) - set(index))
    if missing:
        return f"no {', '.join(missing)}"
    problem = _mistyped(index, fields)
    if problem:
        return problem
    for number, shard in enumerate(index["shards"]):
        problem = _mistyped(shard, shard_fields) if isinstance(shard, dict) else "not a mapping"
        if problem:
            return f"shard {number}: {problem}"
    return None


def _mistyped(entry: dict[str, Any], fields: dict[str, type]) -> str | None:
    for name, kind in fields.items():
        value = entry.get(name)
        # JSON true is a Python int too, but no count is a bool
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{name} is not of type {kind.__name__}"
    return None


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path (absolute, or starting with ``.`` or ``~``), never a Hub id."""
    return os.path.isabs(name) or name.startswith((".", "~"))


def absolute_if_local(name: str) -> str:
    """``name`` made absolute when it is an existing local file or directory, else unchanged (a Hub
    id, a ptp short name). Experiments store their paths so: a relative path would be read against
    whatever directory a later command runs in, and from elsewhere pass for a Hub id."""
    path = os.path.expanduser(name)
    return os.path.abspath(path) if os.path.exists(path) else name


def check_writable(path: Path, what: str) -> None:
    """A UserError now, not after the work, when directory ``path`` (given as ``what``, e.g. ``--out``)
    could not be created or written; checked on its nearest existing ancestor, so nothing is created."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "a file is in the way" if not existing.is_dir() else "no write permission"
        raise UserError(f"{what} {str(path)!r} cannot be written ({why} at {existing}): pass a directory you can write to")


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Delete the temporary files of writes that a killed process left in ``directory``.

    Only for directories one process writes at a time (an experiment's data or checkpoints):
    there, any temporary file at start-up belongs to a write that can no longer finish.
    """
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_utf8(path: str | os.PathLike, what: str) -> bool:
    """UserError unless the file ``path`` is UTF-8 text; returns whether it holds more than whitespace.

    Reads in chunks, so a large dataset costs one pass and little memory.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank, offset = True, 0
    with open(path, "rb") as f:
        for chunk in itertools.chain(iter(lambda: f.read(1 << 20), b""), [b""]):  # b"": the end
            pending = len(decoder.getstate()[0])  # bytes of a character split between chunks
            try:
                blank = not decoder.decode(chunk, final=not chunk).strip() and blank
            except UnicodeDecodeError as e:
                raise UserError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason} at byte {offset - pending + e.start}): "
                                "convert it to UTF-8, e.g. with iconv -t utf-8") from None
            offset += len(chunk)
    return not blank
