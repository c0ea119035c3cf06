"""Spec-Bench style benchmark: every method answers the same multi-turn questions with the same u.

A question is a chat: turn 1 is asked, the ``ar`` answer is appended as the assistant message, then
turn 2, and so on. Methods:

* ours, decoding the same prompt with the same auxiliary variables u, so their tokens must equal
  ``ar``'s (the lossless check): ``ar`` (plain decoding, the baseline), ``verify`` (Algorithm 1),
  ``pqd`` (Partial Quadratic Decoding), ``pld`` (prompt lookup through our verifier) and ``mtp``
  (PQD with a student trained as the independent-prediction baseline, when one is given);
* transformers' own ``model.generate`` with the same sampling settings but its own randomness
  (timed, never checked for equality): ``hf`` (plain), ``hf-pld`` (its prompt lookup decoding) and
  ``assisted`` (its assisted generation with an assistant model, when one is given). Their
  accepted tokens per target call are read from the target model's calls (``TargetCalls``).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import SamplingConfig
from .errors import UserError
from .generate import context_limit, cost_curve_for, generate
from .io import atomic_path, check_utf8, write_json, write_text
from .sampling import draw_uniform

METHODS = ("ar", "hf", "verify", "pqd", "pld", "hf-pld", "mtp", "assisted")
HF_METHODS = ("hf", "hf-pld", "assisted")  # transformers' model.generate, with its own randomness
NEEDS = {"mtp": "--mtp", "assisted": "--assistant"}  # methods that need a second model
PLD_TOKENS = 10  # draft length of transformers' prompt lookup, as our pld's
OVERALL = "overall"


@dataclass
class Models:
    """What the methods decode with: the PTP student (its gate-off rows are the teacher), and
    optionally an MTP-baseline student of the same teacher and an assistant model for ``assisted``."""

    student: Any
    mtp: Any = None
    assistant: Any = None
    drafters: dict[str, Any] = field(default_factory=dict)  # method name -> another student of the teacher (pqd)


@dataclass
class Turn:
    """One method's answer to one turn of one question."""

    tokens: list[int]
    accepted: list[int]  # new tokens per target call
    wall_time: float


@dataclass
class Tally:
    """Totals of one method over a set of turns (one category, one run)."""

    tokens: int = 0
    calls: int = 0
    wall_time: float = 0.0

    def add(self, turn: Turn) -> None:
        self.tokens += len(turn.tokens)
        self.calls += len(turn.accepted)
        self.wall_time += turn.wall_time

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_time if self.wall_time > 0 else 0.0


@dataclass
class BenchResult:
    """Everything a benchmark run produces: answers of the first run, tallies of every run."""

    methods: list[str]
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # tallies[run][method][category]
    tallies: list[dict[str, dict[str, Tally]]] = field(default_factory=list)
    mismatches: dict[str, set] = field(default_factory=lambda: defaultdict(set))  # method -> {(qid, turn)}
    skipped: set = field(default_factory=set)  # {(qid, turn)} not asked: past the teacher's context


# ---------------------------------------------------------------- questions

def load_questions(path: str | Path, categories: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """Spec-Bench questions (``question_id``, ``category``, ``turns``), filtered then limited."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"questions file {str(path)!r} does not exist: pass a Spec-Bench question.jsonl")
    check_utf8(path, "questions file")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(q, dict) or "question_id" not in q or not isinstance(q.get("turns"), list) or not q["turns"] \
                or not all(isinstance(t, str) for t in q["turns"]):
            raise UserError(f"{path}: line {number} needs question_id and a non-empty list of string turns")
        q.setdefault("category", "default")
        questions.append(q)
    if categories:
        known = sorted({q["category"] for q in questions})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UserError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}: "
                            f"{path.name} has {', '.join(known)}")
        questions = [q for q in questions if q["category"] in categories]
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit} is invalid: use an integer >= 1")
        questions = questions[:limit]
    if not questions:
        raise UserError(f"{path} holds no questions")
    return questions


def check_methods(methods: list[str] | None, given: set[str] = frozenset(), drafters: tuple[str, ...] = ()) -> list[str]:
    """Validated methods in order, with ``ar`` first (it is the baseline and writes the history).

    Args:
        methods: the methods asked for; None: every method whose model is given.
        given: the options of ``NEEDS`` that were passed (``--mtp``, ``--assistant``).
        drafters: names of the ``--drafters`` students (each is a method of its own).
    """
    clash = [d for d in drafters if d in METHODS]
    if clash:
        raise UserError(f"--drafters name {clash[0]!r} is a built-in method: choose another name")
    if methods is None:
        methods = [m for m in METHODS if NEEDS.get(m, "") in given | {""}] + list(drafters)
    unknown = [m for m in methods if m not in METHODS and m not in drafters]
    if unknown:
        raise UserError(f"unknown method {', '.join(unknown)}: use {', '.join(METHODS)}")
    for method in methods:
        if method in NEEDS and NEEDS[method] not in given:
            raise UserError(f"method {method} needs a second model: pass {NEEDS[method]} (see ptp bench --help)")
    return ["ar"] + [m for m in dict.fromkeys(methods) if m != "ar"]


def turn_u(seed: int, question_id: Any, turn: int, n: int) -> torch.Tensor:
    """u of one turn, a function of (seed, question id, turn index) only (crc32: stable across runs)."""
    return draw_uniform(n, seed=zlib.crc32(f"{seed}:{question_id}:{turn}".encode()))


# ---------------------------------------------------------------- decoding one turn

class TargetCalls:
    """Accepted tokens per call of the target model inside transformers' ``generate``.

    A pre-forward hook records the cache length at each call. After the prefill, every call starts
    with the last verified token as its first input (the cache holds the verified ones before it),
    and the cache is cropped to the verified tokens after each verification, so the verified length
    at call i is ``past_i + 1`` and call i accepted ``past_{i+1} - past_i`` tokens.
    """

    def __init__(self, model: Any) -> None:
        self.model, self.past = model, []

    def __enter__(self) -> "TargetCalls":
        self.handle = self.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()

    def _record(self, module: Any, args: tuple, kwargs: dict) -> None:
        positions = kwargs.get("position_ids")
        self.past.append(int(positions.reshape(-1)[0]) if positions is not None else 0)

    def accepted(self, prompt_len: int, new_tokens: int) -> list[int]:
        """Tokens accepted by each call, given the prompt length and the tokens generated."""
        verified = [prompt_len] + [p + 1 for p in self.past[1:]] + [prompt_len + new_tokens]
        return [b - a for a, b in zip(verified, verified[1:]) if b > a]


def hf_generate(model: Any, ids: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig, seed: int,
                **options: Any) -> Turn:
    """transformers' ``model.generate`` with the same sampling settings (``options``: prompt lookup
    or an assistant model), its accepted tokens per target call read by ``TargetCalls``."""
    torch.manual_seed(seed)  # HF draws from torch's global generator
    kwargs: dict[str, Any] = {"do_sample": False}
    if not sampling.greedy:
        kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k or None,
                  "top_p": sampling.top_p}
    eos = getattr(model.generation_config, "eos_token_id", None) or model.config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else eos
    inputs = ids.unsqueeze(0).to(model.device)
    start = time.perf_counter()
    with torch.no_grad(), TargetCalls(model) as calls:
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                             min_new_tokens=0, pad_token_id=pad, **kwargs, **options)
    wall = time.perf_counter() - start
    tokens = out[0, ids.numel():].tolist()
    return Turn(tokens=tokens, accepted=calls.accepted(ids.numel(), len(tokens)), wall_time=wall)


def decode_turn(models: Models, method: str, ids: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig,
                u: torch.Tensor, seed: int) -> Turn:
    """One method's answer to one prompt (``seed`` only feeds the ``hf`` methods; ours use ``u``)."""
    if method in models.drafters:
        result = generate(models.drafters[method], ids, max_new_tokens, sampling=sampling, u=u, strategy="pqd")
        return Turn(tokens=result.tokens.tolist(), accepted=list(result.accepted), wall_time=result.wall_time)
    if method in HF_METHODS:
        options = {"hf": {}, "hf-pld": {"prompt_lookup_num_tokens": PLD_TOKENS},
                   "assisted": {"assistant_model": models.assistant}}[method]
        return hf_generate(models.student.model, ids, max_new_tokens, sampling, seed, **options)
    model, strategy = (models.mtp, "pqd") if method == "mtp" else (models.student, method)
    result = generate(model, ids, max_new_tokens, sampling=sampling, u=u, strategy=strategy)
    return Turn(tokens=result.tokens.tolist(), accepted=list(result.accepted), wall_time=result.wall_time)


# ---------------------------------------------------------------- the benchmark loop

def run_bench(models: Models, tokenizer: Any, questions: list[dict], methods: list[str], sampling: SamplingConfig,
              max_new_tokens: int, runs: int, seed: int, encode: Callable[[Any, list[dict]], torch.Tensor],
              model_id: str, progress: Any = None) -> BenchResult:
    """Answer every question with every method, ``runs`` times; answers are kept from the first run."""
    result = BenchResult(methods=methods)
    for method, model in (("pqd", models.student), ("mtp", models.mtp), *models.drafters.items()):
        if method in methods:
            cost_curve_for(model)  # measured once, before any timing
    warm_up(models, tokenizer, questions[0], methods, sampling, encode)
    for run in range(runs):
        tallies: dict[str, dict[str, Tally]] = {m: defaultdict(Tally) for m in methods}
        for q in questions:
            answers = ask(models, tokenizer, q, methods, sampling, max_new_tokens, seed, encode, tallies, result, progress)
            if run == 0:
                for method in methods:
                    result.answers[method].append(answer_record(q, answers[method], tokenizer, model_id, method))
        result.tallies.append(tallies)
    if OVERALL not in result.tallies[0]["ar"]:
        raise UserError(f"no question's first turn + --max-new-tokens {max_new_tokens} fits the teacher's context of "
                        f"{context_limit(models.student)} tokens: lower --max-new-tokens or pass shorter questions")
    return result


def warm_up(models: Models, tokenizer: Any, question: dict, methods: list[str], sampling: SamplingConfig,
            encode: Callable) -> None:
    """A short untimed pass per method, so one-off start-up costs do not land on the first question."""
    ids = encode(tokenizer, [{"role": "user", "content": question["turns"][0]}])
    for method in methods:
        decode_turn(models, method, ids, 2, sampling, turn_u(0, "warm-up", 0, 2), 0)


def ask(models: Models, tokenizer: Any, q: dict, methods: list[str], sampling: SamplingConfig, max_new_tokens: int,
        seed: int, encode: Callable, tallies: dict, result: BenchResult, progress: Any) -> dict[str, list[Turn]]:
    """All turns of one question for every method; ``ar``'s answer becomes the chat history."""
    messages: list[dict[str, str]] = []
    answers: dict[str, list[Turn]] = {m: [] for m in methods}
    limit = context_limit(models.student)
    for index, text in enumerate(q["turns"]):
        messages.append({"role": "user", "content": text})
        ids = encode(tokenizer, messages)
        if limit is not None and ids.numel() + max_new_tokens > limit:
            # Skipped with the turns after it (they follow its answer); the answers so far are kept.
            result.skipped.update((q["question_id"], later) for later in range(index, len(q["turns"])))
            if progress is not None:
                progress.update(len(q["turns"]) - index)
            break
        u = turn_u(seed, q["question_id"], index, max_new_tokens)
        hf_seed = zlib.crc32(f"hf:{seed}:{q['question_id']}:{index}".encode())
        for method in methods:
            turn = decode_turn(models, method, ids, max_new_tokens, sampling, u, hf_seed)
            answers[method].append(turn)
            for category in (q["category"], OVERALL):
                tallies[method][category].add(turn)
            if method not in HF_METHODS and turn.tokens != answers["ar"][-1].tokens:
                result.mismatches[method].add((q["question_id"], index))
        messages.append({"role": "assistant", "content": tokenizer.decode(answers["ar"][-1].tokens, skip_special_tokens=True)})
        if progress is not None:
            progress.update(1)
    return answers


def answer_record(q: dict, turns: list[Turn], tokenizer: Any, model_id: str, method: str) -> dict[str, Any]:
    """One line of a Spec-Bench answer file."""
    return {
        "question_id": q["question_id"],
        "category": q["category"],
        "model_id": f"{model_id}-{method}",
        "choices": [{
            "index": 0,
            "turns": [tokenizer.decode(t.tokens, skip_special_tokens=True) for t in turns],
            "new_tokens": [len(t.tokens) for t in turns],
            "wall_time": [t.wall_time for t in turns],
            "accept_lengths": [a for t in turns for a in t.accepted],
        }],
        "tstamp": time.time(),
    }


# ---------------------------------------------------------------- metrics

def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and (population) standard deviation over runs."""
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}


TASK_AVERAGE = "task_average"


def task_average(result: BenchResult, method: str, categories: list[str]) -> dict[str, Any]:
    """A method's MAT, tokens/s and speedups averaged over ``categories``, each counting the same.

    ``overall`` pools every token, so long-answer categories dominate it; Spec-Bench also reports this
    unweighted mean over tasks. Speedups are averaged per run, then mean/std over runs.
    """
    first = result.tallies[0][method]

    def per_run(value: Any) -> dict[str, float]:
        return mean_std([sum(value(run, c) for c in categories) / len(categories) for run in result.tallies])

    entry = {"mat": sum(first[c].tokens / max(first[c].calls, 1) for c in categories) / len(categories),
             "tokens_per_second": per_run(lambda run, c: run[method][c].tokens_per_second)}
    for base in ("ar", "hf"):
        if base in result.methods:
            entry[f"speedup_over_{base}"] = per_run(
                lambda run, c, base=base: run[method][c].tokens_per_second / max(run[base][c].tokens_per_second, 1e-12))
    return entry


def summarize(result: BenchResult, config: dict[str, Any]) -> dict[str, Any]:
    """Per method and category: MAT, tokens/s and speedups over ar and hf (mean/std over runs), then ``overall``
    (all turns pooled) and ``task_average`` (the mean over categories)."""
    first = result.tallies[0]
    tasks = [c for c in first["ar"] if c != OVERALL]
    categories = tasks + [OVERALL]
    metrics: dict[str, dict[str, Any]] = {}
    for method in result.methods:
        metrics[method] = {}
        for category in categories:
            tally = first[method][category]
            tps = [run[method][category].tokens_per_second for run in result.tallies]
            entry = {"mat": tally.tokens / max(tally.calls, 1), "tokens": tally.tokens, "calls": tally.calls,
                     "tokens_per_second": mean_std(tps)}
            for base in ("ar", "hf"):
                if base in result.methods:
                    ratios = [run[method][category].tokens_per_second / max(run[base][category].tokens_per_second, 1e-12)
                              for run in result.tallies]
                    entry[f"speedup_over_{base}"] = mean_std(ratios)
            metrics[method][category] = entry
        metrics[method][TASK_AVERAGE] = task_average(result, method, tasks)
    return {
        "config": config,
        "categories": categories + [TASK_AVERAGE],
        "metrics": metrics,
        "lossless": {m: len(result.mismatches.get(m, ())) for m in result.methods if m not in HF_METHODS and m != "ar"},
        "lossless_note": "answers (question, turn) whose tokens differ from ar's with the same u; "
                         f"{', '.join(HF_METHODS)} are excluded (they sample with transformers' own randomness)",
        "skipped_turns": [[qid, turn + 1] for qid, turn in sorted(result.skipped, key=lambda k: (str(k[0]), k[1]))],
        "skipped_note": "[question_id, turn (from 1)] not asked: the chat up to that turn plus max_new_tokens exceeds "
                        "the teacher's context (later turns of a question follow from its answer)",
    }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, one row per category and method."""
    methods = list(summary["metrics"])
    has_hf = "hf" in methods
    head = ["category", "method", "MAT", "tokens/s", "speedup vs ar"] + (["speedup vs hf"] if has_hf else []) + ["differs from ar"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda ms, unit="": f"{ms['mean']:.2f}{unit} ± {ms['std']:.2f}"  # noqa: E731
    for category in summary["categories"]:
        for method in methods:
            e = summary["metrics"][method][category]
            row = [category, method, f"{e['mat']:.2f}", fmt(e["tokens_per_second"]), fmt(e["speedup_over_ar"], "x")]
            if has_hf:
                row.append(fmt(e["speedup_over_hf"], "x"))
            row.append(str(summary["lossless"][method]) if method in summary["lossless"] else "-")
            lines.append("| " + " | ".join(row) + " |")
    runs = summary["config"].get("runs", 1)
    lines += ["", f"MAT: mean accepted tokens per target call (plain decoding = 1.00). tokens/s and speedups: "
                  f"mean ± std over {runs} run(s). {OVERALL}: all turns pooled; {TASK_AVERAGE}: the mean over "
                  f"categories, each counting the same. 'differs from ar': {summary['lossless_note']}."]
    if summary["skipped_turns"]:
        lines += ["", f"Skipped {len(summary['skipped_turns'])} turn(s) {summary['skipped_turns']}: {summary['skipped_note']}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- output

def write_outputs(out: Path, result: BenchResult, summary: dict[str, Any]) -> list[str]:
    """Answer files, summary.json, summary.md and plots; returns notes to print (e.g. plots skipped)."""
    for method, records in result.answers.items():
        write_text(out / f"{method}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", markdown(summary))
    return plot(out, result, summary)


def plot(out: Path, result: BenchResult, summary: dict[str, Any]) -> list[str]:
    """speedup.png (speedup over ar per category and method) and accept_lengths.png (histograms)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed: plots skipped (pip install matplotlib)"]
    methods, categories = result.methods, summary["categories"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(categories)), 4))
    for i, method in enumerate(methods):
        speedups = [summary["metrics"][method][c]["speedup_over_ar"] for c in categories]
        ax.bar([x + i * width for x in range(len(categories))], [s["mean"] for s in speedups], width,
               yerr=[s["std"] for s in speedups], label=method)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylabel("speedup over ar")
    ax.legend()
    save(fig, out / "speedup.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = {m: [a for r in result.answers[m] for a in r["choices"][0]["accept_lengths"]] for m in methods}
    top = max((max(v) for v in lengths.values() if v), default=1)
    for i, method in enumerate(methods):
        counts = [lengths[method].count(k) for k in range(1, top + 1)]
        ax.bar([k + i * width - 0.4 for k in range(1, top + 1)], counts, width, label=method, align="edge")
    ax.set_xticks(range(1, top + 1))
    ax.set_xlabel("tokens accepted per call")
    ax.set_ylabel("calls")
    ax.legend()
    save(fig, out / "accept_lengths.png")
    return []


def save(fig: Any, path: Path) -> None:
    """Save a figure atomically and free it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
