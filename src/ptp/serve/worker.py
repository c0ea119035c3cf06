"""One decoding thread fed by a first-in-first-out queue, so two decoders never run on one model at
once, and the job handle that carries a request's events from that thread back to the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import SamplingConfig
from .errors import APIError


@dataclass
class Delta:
    """Verified text that may be sent to the client now."""

    text: str


@dataclass
class Done:
    """The answer is complete."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int
    calls: int
    seed: int
    strategy: str
    first_token: float | None  # seconds from submission to the first verified tokens


@dataclass
class Failed:
    """Decoding failed; the error to report."""

    error: APIError


@dataclass
class Gone:
    """The client went away (put by ``Job.cancel`` so a waiting handler wakes up)."""


Event = Delta | Done | Failed | Gone


@dataclass(eq=False)
class Job:
    """One answer to decode: its checked inputs, and the events the handler reads."""

    ids: torch.Tensor
    max_tokens: int
    sampling: SamplingConfig
    seed: int
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def emit(self, event: Event) -> None:
        """Hand an event to the handler (called from the decoding thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop closed (server shutting down): nobody is listening
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop this job (called on the event loop when the client is gone): the decoder stops at its next call."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.events.put_nowait(Gone())


class Worker:
    """Runs jobs one at a time, in arrival order, on a single daemon thread."""

    def __init__(self, run: Callable[[Job], Any], max_queue: int) -> None:
        self._run, self._max_queue = run, max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._busy = 0  # jobs submitted and not yet finished (queued or running)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ptp-decode", daemon=True)

    @property
    def depth(self) -> int:
        return self._busy

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._busy >= self._max_queue:
                raise APIError(503, f"the server has {self._busy} answers queued: retry later",
                               code="server_busy", type="server_error")
            self._busy += 1
        self._queue.put(job)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the running job (queued ones are dropped: their clients are being disconnected)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                self._done()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run(job)
            finally:
                self._done()

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1
