"""``ptp generate [STUDENT_DIR] [PROMPT]``: one-shot answer, or a chat REPL when no prompt is given.

Without STUDENT_DIR it decodes with the shipped student of the default teacher (as ``ptp bench``
does). With one argument, the argument is the student directory if it exists or looks like a path
(one word holding ``/`` or starting with ``.`` or ``~``), else the prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..cli import check_text, dataclass_arguments, dataclass_from_args, read_line
from ..config import DecodeConfig, SamplingConfig
from ..errors import UserError
from ..generate import GenerationResult, generate
from ..student import CONFIG_NAME, Student

HELP = "generate with a PTP student: verified text only, tokens per call and speedup over plain decoding"


def configure(parser: argparse.ArgumentParser) -> None:
    from ..demo import SHIPPED  # not at the top: ptp.demo imports this module

    parser.add_argument("student", metavar="STUDENT_DIR", nargs="?",
                        help="a student directory (or an experiment directory holding student/); default: the shipped "
                             f"student ({SHIPPED}). A lone argument is STUDENT_DIR if it exists or is one word with / or "
                             "a leading . or ~, else PROMPT")
    parser.add_argument("prompt", metavar="PROMPT", nargs="?", help="answer this prompt and exit; omit for a chat REPL")
    dataclass_arguments(parser, SamplingConfig, group="sampling (default: what the student was trained for)")
    dataclass_arguments(parser, DecodeConfig, group="decoding")
    parser.add_argument("--raw", action="store_true", help="feed the prompt as plain text, without the chat template")
    parser.add_argument("--no-baseline", action="store_true", help="skip re-running plain decoding to measure the speedup")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer instead of streamed text")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the teacher's own modeling code (off by default)")


def student_dir(path: str) -> Path:
    """Accept a student directory or an experiment directory with the student inside."""
    root = Path(path)
    for candidate in (root, root / "student"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    if not root.exists():
        raise UserError(f"student directory {path!r} does not exist: pass a directory written by ptp train")
    raise UserError(f"{path!r} holds no trained student ({CONFIG_NAME}): run ptp train on it first, or pass the student directory")


def student_and_prompt(first: str | None, second: str | None) -> tuple[Path, str | None]:
    """The student directory and prompt given by ``ptp generate``'s one or two positionals.

    Two: STUDENT_DIR PROMPT. One: STUDENT_DIR when it exists or looks like a path (one word with
    ``/`` or a leading ``.`` or ``~``), else a PROMPT for the shipped student. None: the shipped
    student's chat REPL.

    Raises:
        UserError: the directory holds no student, or a path-like lone argument does not exist.
    """
    from ..demo import SHIPPED  # not at the top: ptp.demo imports this module

    if second is not None:
        return student_dir(first), second
    if first is None:
        return student_dir(str(SHIPPED)), None
    path_like = not any(c.isspace() for c in first) and ("/" in first or first.startswith((".", "~")))
    if first.strip() and Path(first).exists():  # Path("") is the working directory
        return student_dir(first), None
    if path_like:
        raise UserError(f"student directory {first!r} does not exist: pass a directory written by ptp train "
                        "(a lone word with / or a leading . or ~ is read as a directory, not a prompt)")
    return student_dir(str(SHIPPED)), first


def load(directory: Path, decode: DecodeConfig, trust_remote_code: bool) -> tuple[Student, Any]:
    """The student in ``directory`` in ``decode.dtype``, in eval mode, and its teacher's tokenizer."""
    from ..models import load_tokenizer

    dtype = getattr(torch, decode.dtype)
    student = Student.from_pretrained(directory, dtype=dtype, trust_remote_code=trust_remote_code)
    student.eval()
    tokenizer = load_tokenizer(student.config.teacher, trust_remote_code=trust_remote_code)
    return student, tokenizer


def check_order(student: Student, sampling: SamplingConfig, what: str = "the student") -> None:
    """Refuse to decode ``student`` in another token order (Eq. 2) than the one it was trained with.

    Its drafts map u to tokens in that order, so under the other they are wrong (output stays exact,
    but almost nothing is accepted). A student that recorded no sampling is not checked.

    Raises:
        UserError: the orders differ.
    """
    if student.config.sampling is not None and student.sampling.order != sampling.order:
        raise UserError(f"{what} was trained with token order {student.sampling.order!r}, not {sampling.order!r}: "
                        f"omit --order (the student's own is the default) or pass a student trained in order {sampling.order!r}")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode(tokenizer: Any, messages: list[dict[str, str]], raw: bool) -> torch.Tensor:
    if raw or not has_chat_template(tokenizer):
        if not raw and len(messages) > 1:
            raise UserError("the teacher's tokenizer has no chat template: pass a prompt with --raw, or use a chat model")
        return torch.tensor(tokenizer(messages[-1]["content"])["input_ids"], dtype=torch.long)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return torch.tensor(ids, dtype=torch.long).reshape(-1)


class Streamer:
    """Prints the verified text as it grows (decoding the whole answer so multi-byte merges stay right)."""

    def __init__(self, tokenizer: Any, enabled: bool) -> None:
        self.tokenizer, self.enabled = tokenizer, enabled
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, new: list[int]) -> None:
        self.ids += new
        if not self.enabled:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(self.shown) :])
            sys.stdout.flush()
            self.shown = text


def answer(student: Student, tokenizer: Any, ids: torch.Tensor, sampling: SamplingConfig, decode: DecodeConfig,
           args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    stream = Streamer(tokenizer, enabled=not args.json)
    result = generate(student, ids, decode.max_new_tokens, sampling=sampling, seed=decode.seed, strategy=decode.strategy,
                      max_rows=decode.max_rows, draft_length=decode.draft_length, on_tokens=stream)
    text = tokenizer.decode(result.tokens.tolist(), skip_special_tokens=True)
    if not args.json:
        if text.startswith(stream.shown):  # whatever streaming held back (an unfinished character)
            sys.stdout.write(text[len(stream.shown) :])
        sys.stdout.write("\n")
    stats = summarize(result)
    if not args.no_baseline and decode.strategy != "ar" and len(result.tokens):
        base = generate(student, ids, len(result.tokens), sampling=sampling, u=result.u[: len(result.tokens)], strategy="ar")
        stats["ar_tokens_per_second"] = round(base.tokens_per_second, 2)
        stats["speedup"] = round(base.wall_time / result.wall_time, 3) if result.wall_time > 0 else None
        stats["identical_to_ar"] = base.tokens.tolist() == result.tokens.tolist()
    if args.json:
        print(json.dumps({"text": text, **stats}))
    else:
        line = (f"[{stats['tokens']} tokens, {stats['calls']} calls, {stats['tokens_per_call']:.2f} tokens/call, "
                f"{stats['tokens_per_second']:.1f} tokens/s")
        if "speedup" in stats:
            line += f", {stats['speedup']:.2f}x vs ar ({stats['ar_tokens_per_second']:.1f} tokens/s)"
        print(line + f", strategy {decode.strategy}, seed {stats['seed']}]", file=sys.stderr)
    return text, stats


def summarize(result: GenerationResult) -> dict[str, Any]:
    return {
        "tokens": len(result.tokens),
        "calls": result.calls,
        "tokens_per_call": round(result.tokens_per_call, 3),
        "tokens_per_second": round(result.tokens_per_second, 2),
        "wall_time": round(result.wall_time, 4),
        "accepted_per_call": result.accepted,
        "seed": result.seed,
        "strategy": result.strategy,
    }


def repl(student: Student, tokenizer: Any, sampling: SamplingConfig, decode: DecodeConfig, args: argparse.Namespace) -> int:
    history: list[dict[str, str]] = []
    print("ptp chat: type a message; /reset clears the history, quit (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        try:
            line = read_line("> ")
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        if line is None:  # Ctrl-D, or stdin closed
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("quit", "exit", "/quit", "/exit"):
            return 0
        if line == "/reset":
            history.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        try:
            text, _ = answer(student, tokenizer, encode(tokenizer, history, args.raw), sampling, decode, args)
        except KeyboardInterrupt:
            history.pop()
            print("\n(interrupted)", file=sys.stderr)
            continue
        except UserError as e:
            history.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": text})


def run(args: argparse.Namespace) -> int:
    dataclass_from_args(SamplingConfig, args)  # bad values fail now, before the slow model load
    decode = dataclass_from_args(DecodeConfig, args)
    directory, args.prompt = student_and_prompt(args.student, args.prompt)
    if args.prompt is not None and not check_text(args.prompt, "PROMPT").strip():
        raise UserError("PROMPT is empty: pass some text, or omit it for the chat REPL")
    student, tokenizer = load(directory, decode, args.trust_remote_code)
    sampling = dataclass_from_args(SamplingConfig, args, base=student.sampling)  # flags over the student's own
    check_order(student, sampling)
    if args.prompt is None:
        if not args.raw and not has_chat_template(tokenizer):
            raise UserError(f"the teacher's tokenizer ({student.config.teacher!r}) has no chat template, so the chat REPL "
                            "cannot hold a conversation: pass a PROMPT, or --raw to send each line as plain text")
        return repl(student, tokenizer, sampling, decode, args)
    answer(student, tokenizer, encode(tokenizer, [{"role": "user", "content": args.prompt}], args.raw), sampling, decode, args)
    return 0
