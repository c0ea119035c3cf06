"""``ptp serve [STUDENT_DIR]``: an OpenAI-compatible HTTP server for verified decoding (the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Any

from ..cli import DISTRIBUTION, dataclass_from_args
from ..config import DTYPES, DecodeConfig
from ..default_teacher import DEFAULT_TEACHER
from ..demo import SHIPPED
from ..errors import UserError
from ..serve.schema import MAX_BODY_BYTES
from .generate import load, student_dir

HELP = "serve a PTP student over an OpenAI-compatible HTTP API: chat and completions, streaming, metrics"
INSTALL = f"pip install -e '.[serve]' in a checkout, else pip install '{DISTRIBUTION}[serve]'"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student", metavar="STUDENT_DIR", nargs="?", default=str(SHIPPED),
                        help=f"a student directory (or an experiment directory holding student/); default: the shipped "
                             f"student of the default teacher {DEFAULT_TEACHER}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", default=os.environ.get("PTP_API_KEY"),
                        help="require the header 'Authorization: Bearer KEY' on /v1 and /metrics (default: $PTP_API_KEY; unset: open)")
    parser.add_argument("--model-name", help="the model id clients send (default: the student directory's name, or its "
                                             "experiment's for EXPERIMENT/student)")
    decoding = parser.add_argument_group("decoding (as ptp generate's flags)")
    decoding.add_argument("--strategy", help="pqd (default), verify, ar or pld")
    decoding.add_argument("--dtype", help=f"{', '.join(DTYPES)} (default float32: lossless bit for bit)")
    decoding.add_argument("--max-rows", type=int, help="cap on rows per call for pqd (default: from the cost curve)")
    decoding.add_argument("--draft-length", type=int, help="draft slots per window, at most the student's N (default N)")
    decoding.add_argument("--max-tokens", type=int, help="answer length when a request sends no max_tokens (default 256, "
                                                         "as ptp generate; capped by the context)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=64, help="answers queued or running before requests get a 503 (default 64)")
    limits.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help=f"largest request body accepted (default {MAX_BODY_BYTES})")
    parser.add_argument("--log-level", default="info", help=f"uvicorn's log level: {', '.join(LOG_LEVELS)} (default info)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the teacher's own modeling code (off by default; "
                                                                         "requests can never turn it on)")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    flags = argparse.Namespace(strategy=args.strategy, dtype=args.dtype, max_rows=args.max_rows,
                               draft_length=args.draft_length, max_new_tokens=args.max_tokens)
    return dataclass_from_args(DecodeConfig, flags)


def model_name(args: argparse.Namespace) -> str:
    if args.model_name:
        return args.model_name
    directory = student_dir(args.student).resolve()
    return directory.parent.name if directory.name == "student" and directory.parent.name else directory.name


def build_engine(args: argparse.Namespace) -> Any:
    """Load the student as ``ptp generate`` does and warm it up; the returned Engine serves it."""
    from ..serve.engine import Engine

    if args.max_queue < 1:
        raise UserError(f"--max-queue {args.max_queue} is invalid: use an integer >= 1")
    if args.max_body_bytes < 1024:
        raise UserError(f"--max-body-bytes {args.max_body_bytes} is invalid: use at least 1024")
    decode = decode_config(args)
    name = model_name(args)
    student, tokenizer = load(student_dir(args.student), decode, args.trust_remote_code)
    engine = Engine(student, tokenizer, decode, name, max_queue=args.max_queue)
    engine.warm_up()
    return engine


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line UserError (uvicorn would exit the process instead)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is invalid: use 0..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") from None


def server(app: Any, log_level: str = "info") -> Any:
    """A uvicorn server for ``app`` (run it with ``.run(sockets=[listen(...)])``)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401  (the extra: checked before the slow model load)

        from ..serve.app import create_app
    except ModuleNotFoundError as e:
        raise UserError(f"ptp serve needs the serve extra ({e.name} is missing): {INSTALL}") from None
    decode_config(args)  # bad flags fail now, before the slow model load
    if args.log_level not in LOG_LEVELS:
        raise UserError(f"--log-level {args.log_level!r} is invalid: use one of {', '.join(LOG_LEVELS)}")
    sock = listen(args.host, args.port)
    engine = build_engine(args)
    app = create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
    host, port = sock.getsockname()[:2]
    shown = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"ptp serve: {engine.model_id} ({engine.decode.strategy}, {engine.decode.dtype}) at http://{shown}:{port}/v1",
          file=sys.stderr, flush=True)
    if not is_loopback(args.host) and not args.api_key:
        print(f"ptp serve: warning: listening on {host} without --api-key: anyone who reaches it can use it", file=sys.stderr)
    running = server(app, args.log_level)
    running.run(sockets=[sock])
    if running.should_exit:
        # Stopped by Ctrl-C or SIGTERM. uvicorn re-raises the signal after its shutdown, but under
        # asyncio's own SIGINT handling that arrives only if the loop is still running: say it here.
        raise KeyboardInterrupt
    return 0
