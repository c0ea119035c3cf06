"""One process per experiment directory: an exclusive lock held while ``ptp pregenerate`` or
``ptp train`` works on it.

The lock is ``flock`` on ``DIR/.ptp-lock``, which holds the owner's PID. The kernel releases it
when its holder exits, crashes or is killed, so a stale lock never blocks the next run, and a
process that holds it knows that every temporary file it finds was left by a dead writer.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .experiment import EXPERIMENT_FILE

LOCK_FILE = ".ptp-lock"


@contextmanager
def experiment_lock(directory: str | Path, command: str) -> Iterator[None]:
    """Hold the lock of ``directory`` for the block, or a UserError naming the holder's PID.

    A directory that is no experiment gets no lock file: the command's own check reports it."""
    if not (Path(directory) / EXPERIMENT_FILE).is_file():
        yield
        return
    with open(Path(directory) / LOCK_FILE, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{directory} is in use by process {holder}: wait for it to finish (or stop it) before ptp {command}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
