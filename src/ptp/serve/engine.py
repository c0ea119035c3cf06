"""The served student: encodes prompts as ``ptp generate`` does, checks a request against the model,
and decodes jobs on the worker thread, streaming verified text and stopping early on a stop string or
when the client has gone."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from typing import Any

import torch
from jinja2 import TemplateError

from ..commands.generate import encode
from ..config import DecodeConfig
from ..errors import UserError
from ..generate import eos_token_ids, generate
from ..student import Student
from .errors import APIError, invalid
from .metrics import Metrics
from .schema import GenerationRequest
from .text import AnswerText
from .worker import Delta, Done, Failed, Job, Worker

log = logging.getLogger("ptp.serve")


class _ClientGone(Exception):
    """Raised from ``on_tokens`` to stop decoding for a client that disconnected."""


class _StopString(Exception):
    """Raised from ``on_tokens`` once the verified text holds a stop string."""


class Engine:
    """One student and its tokenizer behind one decoding worker.

    Args:
        decode: strategy, max_rows, draft_length as ``ptp generate`` takes them; its ``max_new_tokens``
            is the answer length when a request gives no ``max_tokens`` (capped by the context).
        model_id: the name clients must send as ``model``.
        max_queue: answers queued or running beyond which requests get a 503.
    """

    def __init__(self, student: Student, tokenizer: Any, decode: DecodeConfig, model_id: str, max_queue: int = 64) -> None:
        self.student, self.tokenizer, self.decode, self.model_id = student, tokenizer, decode, model_id
        self.metrics = Metrics()
        self.worker = Worker(self._run, max_queue)
        config = student.model.config
        self.context: int | None = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.eos = eos_token_ids(student)
        self.created = int(time.time())
        # The fast tokenizer is shared by the event loop (encoding) and the worker (decoding); its Rust
        # core refuses concurrent use ("Already borrowed"), and each use is short, so one lock serialises them.
        self._tokenizer_lock = threading.Lock()

    def warm_up(self) -> None:
        """Decode two tokens once, so the first request does not pay for pqd's cost-curve measurement."""
        self._generate(torch.zeros(4, dtype=torch.long), 2, self.student.sampling, seed=0)

    def job(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Job:
        """A decodable job for ``request``, or an APIError naming what does not fit the model."""
        ids = self._encode(request)
        where = "messages" if request.chat else "prompt"
        room = None if self.context is None else self.context - len(ids)
        if room is not None and room < 1:
            raise invalid(f"the prompt has {len(ids)} tokens, the model's context is {self.context}: shorten it",
                          param=where, code="context_length_exceeded")
        max_tokens = request.max_tokens
        if max_tokens is None:  # ptp generate's default length, shortened to what the context leaves
            max_tokens = self.decode.max_new_tokens if room is None else min(self.decode.max_new_tokens, room)
        if room is not None and max_tokens > room:
            raise invalid(f"the prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context of "
                          f"{self.context}: lower max_tokens or shorten the prompt", param="max_tokens",
                          code="context_length_exceeded")
        try:
            sampling = dataclasses.replace(self.student.sampling, **request.sampling)  # as ptp generate's flags
        except ValueError as e:
            raise invalid(str(e), param=next(iter(request.sampling), None)) from None
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
        return Job(ids=ids, max_tokens=max_tokens, sampling=sampling, seed=seed, stop=request.stop, loop=loop)

    def _encode(self, request: GenerationRequest) -> torch.Tensor:
        """Token ids exactly as ``ptp generate`` makes them (chat template, or ``--raw`` for completions)."""
        messages = request.messages if request.chat else [{"role": "user", "content": request.prompt}]
        try:
            with self._tokenizer_lock:
                ids = encode(self.tokenizer, messages, raw=not request.chat)
        except (UserError, TemplateError) as e:  # a chat template may refuse a conversation (raise_exception)
            raise invalid(str(e), param="messages" if request.chat else "prompt") from None
        if ids.numel() == 0:
            raise invalid("the prompt encodes to no tokens: send some text", param="messages" if request.chat else "prompt")
        return ids

    def _decode_text(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate(self, ids: torch.Tensor, max_tokens: int, sampling: Any, seed: int, on_tokens: Any = None) -> Any:
        d = self.decode
        return generate(self.student, ids, max_tokens, sampling=sampling, seed=seed, strategy=d.strategy,
                        max_rows=d.max_rows, draft_length=d.draft_length, on_tokens=on_tokens)

    def _run(self, job: Job) -> None:
        """Decode ``job`` on the worker thread, handing its events back to the handler."""
        if job.cancelled.is_set():  # the client left while the job waited: it costs nothing
            self.metrics.cancel()
            return
        text = AnswerText(self._decode_text, job.stop)
        calls = 0
        first_token: float | None = None

        def on_tokens(new: list[int]) -> None:
            # generate calls this after every model call: raising here stops decoding within one call
            nonlocal calls, first_token
            if job.cancelled.is_set():
                raise _ClientGone
            calls += 1
            if first_token is None:
                first_token = time.perf_counter() - job.submitted
            delta = text.add(new)
            if delta:
                job.emit(Delta(delta))
            if text.stopped:
                raise _StopString

        try:
            self._generate(job.ids, job.max_tokens, job.sampling, job.seed, on_tokens)
        except _StopString:
            pass
        except _ClientGone:
            self.metrics.cancel()
            return
        except UserError as e:  # a limit of the decoder that the request checks did not foresee
            job.emit(Failed(invalid(str(e))))
            return
        except Exception:  # a bug, not the client's doing: logged here, a JSON error for the client
            log.exception("decoding failed")
            job.emit(Failed(APIError(500, "decoding failed: see the server log", code="internal_error", type="server_error")))
            return
        rest = text.finish()
        if rest:
            job.emit(Delta(rest))
        stopped = text.stopped or (bool(text.ids) and text.ids[-1] in self.eos)
        done = Done(text=text.text, finish_reason="stop" if stopped else "length", prompt_tokens=job.ids.numel(),
                    completion_tokens=len(text.ids), calls=calls, seed=job.seed, strategy=self.decode.strategy,
                    first_token=first_token)
        self.metrics.answer(done.prompt_tokens, done.completion_tokens, calls, time.perf_counter() - job.submitted, first_token)
        job.emit(done)
