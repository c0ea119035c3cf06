"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``: parsed and checked into one
``GenerationRequest``, or an ``APIError`` (400, naming the field) for anything malformed or unsupported."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, invalid

MAX_BODY_BYTES = 1 << 20  # 1 MiB: more than the longest prompt a context of some thousand tokens holds
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Fields OpenAI clients may send with their neutral value: accepted when neutral (or null), a 400 otherwise.
NEUTRAL: dict[str, Any] = {"n": 1, "logprobs": False, "echo": False, "best_of": 1, "presence_penalty": 0,
                           "frequency_penalty": 0}
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "user"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "n", "logprobs", "presence_penalty", "frequency_penalty"}
COMPLETION_FIELDS = COMMON | {"prompt", "n", "logprobs", "echo", "best_of", "presence_penalty", "frequency_penalty"}


@dataclass(frozen=True)
class GenerationRequest:
    """What one request asks for, checked; the sampling fields hold only what the request set."""

    chat: bool
    messages: list[dict[str, str]] = field(default_factory=list)  # chat: role/content pairs
    prompt: str = ""  # completions: the raw prompt text
    max_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature / top_p / top_k overrides
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN and Infinity, which Python's json would accept, are refused)."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8", code="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise invalid(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


def parse_request(body: dict[str, Any], chat: bool, model_id: str) -> GenerationRequest:
    """Check every field of ``body``; unknown and unsupported ones are refused by name."""
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        if name not in allowed:
            raise invalid(f"unsupported field {_show(name)}: ptp serve accepts {', '.join(sorted(allowed))}",
                          param=name[:80], code="unsupported_field")
        if name in NEUTRAL and not _neutral(value, NEUTRAL[name]):
            raise invalid(f"{name}={_show(value)} is not supported: ptp serve returns one choice of plain text "
                          f"(leave {name} out)", param=name, code="unsupported_value")
    model = body.get("model")
    if not isinstance(model, str):
        raise invalid(f"'model' is required: a string, the served model {model_id!r}", param="model",
                      code="missing_required_parameter" if model is None else "invalid_type")
    if model != model_id:
        raise APIError(404, f"model {_show(model)} is not served here: use {model_id!r}", param="model",
                       code="model_not_found")
    _stream_options(body)
    return GenerationRequest(
        chat=chat,
        messages=_messages(body.get("messages")) if chat else [],
        prompt="" if chat else _prompt(body.get("prompt")),
        max_tokens=_max_tokens(body),
        sampling=_sampling(body),
        seed=_integer(body, "seed", 0, MAX_SEED),
        stop=_stop(body.get("stop")),
        stream=_boolean(body, "stream"),
    )


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote the client, not its whole body."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _neutral(value: Any, neutral: Any) -> bool:
    """``value`` is null or equals ``neutral`` as the same kind (True is not the integer 1 here)."""
    if value is None:
        return True
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    return isinstance(value, (int, float)) and value == neutral


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{param} must be a string", param=param, code="invalid_type")
    try:
        value.encode("utf-8")  # a JSON escape like \ud800 gives a lone surrogate: not text
    except UnicodeEncodeError:
        raise invalid(f"{param} is not valid UTF-8 text", param=param) from None
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' is required: a non-empty list of {role, content}", param="messages",
                      code="missing_required_parameter" if value is None else "invalid_type")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with role and content", param=where, code="invalid_type")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            key = extra[0][:80]
            raise invalid(f"{where}.{key} is not supported: messages carry role and content only",
                          param=f"{where}.{key}", code="unsupported_field")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"{where}.role={_show(role)} is not supported: use one of {', '.join(ROLES)}",
                          param=f"{where}.role")
        out.append({"role": ROLES[role], "content": _content(message.get("content"), f"{where}.content")})
    return out


def _content(value: Any, param: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts joined."""
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(f"{param}[{i}] is not supported: only text parts ({{'type': 'text', 'text': ...}})",
                              param=f"{param}[{i}]", code="unsupported_value")
            parts.append(_text(part.get("text"), f"{param}[{i}].text"))
        return "".join(parts)
    return _text(value, param)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a batch of one prompt
    elif isinstance(value, list):
        raise invalid("'prompt' must be one string: batches of prompts and token arrays are not supported",
                      param="prompt", code="unsupported_value")
    if value is None:
        raise invalid("'prompt' is required: a string", param="prompt", code="missing_required_parameter")
    return _text(value, "prompt")


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer", param=name, code="invalid_type")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise invalid(f"{name}={value} is out of range: use an integer {bound}", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"{name} must be a number", param=name, code="invalid_type")
    if value > high or value < low or (low_open and value == low):
        raise invalid(f"{name}={value} is out of range: use a value in {'(' if low_open else '['}{low}, {high}]",
                      param=name)
    return float(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false", param=name, code="invalid_type")
    return value


def _max_tokens(body: dict[str, Any]) -> int | None:
    given = {name: _integer(body, name, 1) for name in ("max_tokens", "max_completion_tokens")}
    values = {v for v in given.values() if v is not None}
    if len(values) > 1:
        raise invalid("max_tokens and max_completion_tokens differ: send one of them", param="max_completion_tokens")
    return values.pop() if values else None


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ranges: temperature in [0, 2] (0 = greedy), top_p in (0, 1]; top_k >= 0 (0 = off)."""
    values = {"temperature": _number(body, "temperature", 0.0, 2.0), "top_p": _number(body, "top_p", 0.0, 1.0, low_open=True),
              "top_k": _integer(body, "top_k", 0)}
    return {name: value for name, value in values.items() if value is not None}


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise invalid(f"stop must be a string or a list of at most {MAX_STOP} strings", param="stop", code="invalid_type")
    out = tuple(_text(s, "stop") for s in stops)
    if any(not s for s in out):
        raise invalid("stop strings must not be empty", param="stop")
    return out


def _stream_options(body: dict[str, Any]) -> None:
    """Check ``stream_options`` (usage is always sent on the last chunk, so include_usage changes nothing)."""
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", param="stream_options", code="invalid_type")
    for key, value in options.items():
        if key != "include_usage" or not isinstance(value, bool):
            raise invalid(f"stream_options.{key} is not supported: only include_usage (true/false)",
                          param=f"stream_options.{key}", code="unsupported_field")
    if not body.get("stream"):
        raise invalid("stream_options is only allowed with stream: true", param="stream_options")
