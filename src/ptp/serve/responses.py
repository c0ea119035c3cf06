"""OpenAI response objects (chat.completion, text_completion and their stream chunks) plus ptp's own statistics."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .worker import Done


@dataclass(frozen=True)
class Envelope:
    """The fields every object of one response shares."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex)

    def head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def ptp_stats(done: Done) -> dict[str, Any]:
    """What verified decoding did: teacher calls, verified tokens per call, the seed of u, the strategy."""
    rate = done.completion_tokens / done.calls if done.calls else 0.0
    return {"teacher_calls": done.calls, "accepted_tokens_per_call": round(rate, 4), "seed": done.seed,
            "strategy": done.strategy}


def completion(envelope: Envelope, done: Done) -> dict[str, Any]:
    """The whole answer of a non-streaming request."""
    if envelope.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                  "finish_reason": done.finish_reason}
    else:
        choice = {"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason}
    return {**envelope.head(chunk=False), "choices": [choice], "usage": usage(done), "ptp": ptp_stats(done)}


def chunk(envelope: Envelope, text: str | None = None, done: Done | None = None, role: bool = False) -> dict[str, Any]:
    """One stream chunk: the assistant role (chat's first chunk), a piece of text, or the finish with usage."""
    finish = done.finish_reason if done is not None else None
    if envelope.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    out = {**envelope.head(chunk=True), "choices": [choice]}
    if done is not None:
        out.update(usage=usage(done), ptp=ptp_stats(done))
    return out


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying a JSON object (or the literal ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")
