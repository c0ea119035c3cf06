"""The ``ptp`` command line: one subcommand per module in ``ptp.commands``.

Each command module defines ``HELP`` (one line, a string literal), ``configure(parser)`` and
``run(args) -> int``. Only the chosen command's module is imported: ``ptp --help`` reads the other
commands' ``HELP`` from their source, so the plain install (no extras) lists every command, and a
command that needs an extra (``EXTRA_OF``) says in one line what to install before importing it.
Flags for configuration dataclasses come from the dataclasses themselves (``dataclass_arguments``),
so a config field, its YAML key and its flag share one name and one docstring.
User mistakes (``UserError``) print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import importlib
import importlib.util
import inspect
import os
import re
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

COMMANDS = {
    "distill": "distill",
    "pregenerate": "pregenerate",
    "train": "train",
    "generate": "generate",
    "bench": "bench",
    "serve": "serve",
}

#: The optional-dependency extra (pyproject.toml) a command needs beyond the plain install.
EXTRA_OF = {"distill": "train", "pregenerate": "train", "train": "train"}
#: The modules each extra provides, as pyproject.toml installs them (import names).
EXTRA_MODULES = {"train": ("lightning", "datasets")}
DISTRIBUTION = "parallel-token-prediction"


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute descriptions from the ``Attributes:`` section of a dataclass docstring."""
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[-1].splitlines() if "Attributes:" in doc else []:
        m = re.match(r"\s{4}(\w+):\s*(.*)", line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2)
        elif current and line.startswith(" " * 8):
            docs[current] += " " + line.strip()
    return docs


def dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", group: str | None = None) -> None:
    """Add ``--prefix-field`` flags for every field of dataclass ``cls`` (default: unset = None)."""
    target = parser.add_argument_group(group or cls.__name__)
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, types.UnionType) and args else hint
        kwargs: dict[str, Any] = {"dest": prefix.replace("-", "_") + f.name, "default": None, "help": docs.get(f.name, "")}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = (typing.get_args(base) or (str,))[0]
        elif base in (int, float, str):
            kwargs["type"] = base
        else:
            kwargs["type"] = str
        target.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = "", base: Any = None) -> Any:
    """Build ``cls`` from the flags set on the command line (``base``'s values, or the defaults, for the rest)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix.replace("-", "_") + f.name, None)
        if value is not None:
            values[f.name] = value
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ValueError as e:
        raise UserError(str(e)) from None


def read_line(prompt: str) -> str | None:
    """One line typed after ``prompt``; None once stdin is at its end or closed (``0<&-``).

    Raises:
        UserError: the line is not UTF-8.
    """
    if not stdin_open():
        return None
    try:
        return check_text(input(prompt), "the input")
    except EOFError:
        return None
    except UnicodeDecodeError:  # a stdin read strictly; others hand the bytes on as surrogates
        raise _not_utf8("the input") from None


def stdin_open() -> bool:
    """False when the process started with stdin closed (Python sets it to None) or it was closed since."""
    return sys.stdin is not None and not sys.stdin.closed


def check_text(text: str, what: str) -> str:
    """``text`` unless it holds bytes that are not UTF-8 (Python keeps those as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _not_utf8(what) from None
    return text


def _not_utf8(what: str) -> UserError:
    return UserError(f"{what} is not valid UTF-8 text: type or pass it in UTF-8")


def command_help(module_name: str) -> str | None:
    """The ``HELP`` literal of command module ``module_name``, read without importing it; None if it is absent."""
    spec = importlib.util.find_spec(f"ptp.commands.{module_name}")
    if spec is None or not spec.origin:
        return None
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    return ""


def load_command(name: str) -> types.ModuleType:
    """Import command ``name``'s module, after checking that the extra it needs is installed.

    Raises:
        UserError: a module of the command's extra (or any other third-party module it imports) is missing.
    """
    extra = EXTRA_OF.get(name)
    missing = [m for m in EXTRA_MODULES.get(extra, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this command needs the {extra!r} extra ({' and '.join(missing)} not installed): "
                        f"pip install -e '.[{extra}]' in a checkout, else pip install '{DISTRIBUTION}[{extra}]'")
    try:
        return importlib.import_module(f"ptp.commands.{COMMANDS[name]}")
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "ptp":
            raise
        raise UserError(f"this command needs the Python package {e.name!r}, which is not installed: install it") from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ptp`` parser; only ``command``'s module is imported, so only its flags are known.

    Raises:
        UserError: ``command`` needs something that is not installed (see :func:`load_command`).
    """
    parser = argparse.ArgumentParser(prog="ptp", description="Parallel Token Prediction for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        help_line = command_help(module_name)
        if help_line is None:  # a command whose module this install lacks
            continue
        if name != command:
            sub.add_parser(name, help=help_line, description=help_line)
            continue
        module = load_command(name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first positional (``ptp`` itself has no option that takes a value).
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _main(argv, command)
    except OSError as e:  # stdout into a closed pipe (ptp generate ... | head -c1) or a full device
        if e.errno not in (errno.EPIPE, errno.ENOSPC):
            raise
        print(f"ptp {command}: error: {_unwritable(e)}", file=sys.stderr)
        _drop_stdout()
        return 2


def _unwritable(error: OSError) -> str:
    if error.errno == errno.EPIPE:
        return "stdout was closed before the output ended (broken pipe): read all of it, or redirect it to a file"
    where = repr(error.filename) if error.filename else "the output"
    return f"cannot write {where} ({error.strerror}): free space there, or redirect stdout elsewhere"


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail (and print) again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError):  # replaced by a stream without a file (io.UnsupportedOperation)
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """ptp's own warnings as one line on the command line; others as Python prints them."""
    from .student import TeacherMismatchWarning

    if issubclass(category, TeacherMismatchWarning):
        return f"ptp: warning: {message}\n"
    return _python_warning(message, category, filename, lineno, line)


_python_warning = warnings.formatwarning


def _main(argv: list[str], command: str | None) -> int:
    warnings.formatwarning = _one_line_warning
    try:
        parser = build_parser(command if command in COMMANDS else None)
    except UserError as e:
        print(f"ptp {command}: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"ptp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptp {args.command}: interrupted", file=sys.stderr)
        return 130


def alias(command: str):
    """Entry point factory for the paper's underscore names (``ptp_distill`` = ``ptp distill``)."""

    def entry() -> int:
        return main([command, *sys.argv[1:]])

    return entry


ptp_distill = alias("distill")
ptp_pregenerate = alias("pregenerate")
ptp_train = alias("train")
ptp_generate = alias("generate")
ptp_bench = alias("bench")

if __name__ == "__main__":
    sys.exit(main())
