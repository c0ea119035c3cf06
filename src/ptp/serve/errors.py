"""OpenAI-style API errors: one exception type, rendered as ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request the server refuses, with the HTTP status and the fields of OpenAI's error body.

    ``type`` follows OpenAI's names: ``invalid_request_error`` for every client mistake (4xx),
    ``authentication_error`` for 401, ``server_error`` for the server's own trouble.
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400 for a malformed or out-of-range request field."""
    return APIError(400, message, param=param, code=code)
