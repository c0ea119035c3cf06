"""Build ``projects/default_student/prompts.jsonl``: about 3000 instruction prompts for distilling SmolLM2-135M-Instruct.

    python projects/default_student/build_prompts.py [--per-source 750] [--seed 0] [--out FILE]

One JSON object per line: ``messages`` (a single user message) and ``source`` (``SOURCE/TASK``).
The prompts come from real text that is NOT evaluation material, in equal parts:

- ``stdlib``: functions of the CPython standard library (explain, write a docstring, complete, test, improve);
- ``austen``: passages of Jane Austen's six novels (continue, summarize, rewrite in modern English, ...);
- ``chatterbot``: lines and conversation openings of the English chatterbot-corpus dialogs;
- ``fortunes``: sayings and quotes from Debian's fortunes (explain, discuss, write a story).

Evaluation material (python3.11-doc, HumanEval, GSM8K, TruthfulQA, HellaSwag, Django ``.po``
files) is never read, and any prompt sharing a 10-word sequence with ``src/ptp/assets/dev_questions.jsonl``
is dropped. Needs ``rdata`` (``pip install rdata``) for the Austen novels. Deterministic for a seed
and the same sources (the stdlib is that of the Python running the script).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sysconfig
import textwrap
import warnings
import zlib
from pathlib import Path

import yaml

from ptp.io import write_text

ROOT = Path(__file__).resolve().parents[2]
DEV_QUESTIONS = ROOT / "src/ptp/assets/dev_questions.jsonl"
AUSTEN = Path("/usr/lib/R/site-library/janeaustenr/data")
FORTUNES = Path("/usr/share/games/fortunes")
# Plain sayings and quotes; left out are ASCII art, foreign-language and nonsense files (art,
# ascii-art, translate-me, zippy), chat logs (knghtbrd, linuxcookie) and files likely to teach
# stereotypes (ethnic, men-women, drugs).
FORTUNE_FILES = (
    "computers cookie definitions education food fortunes goedel humorists kids law linux literature love "
    "magic medicine miscellaneous news paradoxum people pets platitudes politics riddles science "
    "songs-poems sports startrek tao wisdom work"
).split()
# Tests are not library code; encodings/ is dozens of generated, near-identical codec modules.
SKIP_STDLIB_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings"}
WORDS = (10, 250)
NGRAM = 10

STDLIB_TASKS = {
    "explain": "Explain what this Python function does:",
    "docstring": "Write a docstring for this Python function:",
    "complete": "Complete this code:",
    "tests": "Write unit tests for this Python function:",
    "improve": "Review this Python function and suggest improvements:",
}
AUSTEN_TASKS = {
    "continue": "Continue this passage:",
    "summarize": "Summarize this passage:",
    "modernize": "Rewrite this passage in modern English:",
    "explain": "Explain in simple words what happens in this passage and how the characters feel:",
}
FORTUNE_TASKS = {
    "explain": "Explain this saying:",
    "opinion": "Do you agree with this? Explain your view in a short paragraph:",
    "story": "Write a short story inspired by this quote:",
}


def words(text: str) -> int:
    return len(text.split())


def code_block(lines: list[str]) -> str:
    return "```python\n" + "\n".join(lines).rstrip() + "\n```"


def stdlib_prompts(rng: random.Random) -> dict[str, list[str]]:
    """Prompts about functions (4-40 lines) of the standard library, at most two functions per module per task."""
    root = Path(sysconfig.get_paths()["stdlib"])
    tasks: dict[str, list[str]] = {task: [] for task in STDLIB_TASKS}
    for path in sorted(root.rglob("*.py")):
        if SKIP_STDLIB_DIRS & set(path.relative_to(root).parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a few files are deliberately invalid (e.g. lib2to3 data)
            continue
        lines = source.splitlines()
        functions = [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and 4 <= n.end_lineno - n.lineno + 1 <= 40
        ]
        for node in rng.sample(functions, min(2, len(functions))):
            body = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).splitlines()
            doc = node.body[0]
            has_doc = isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            task = rng.choice(list(STDLIB_TASKS))
            if task == "docstring":
                if has_doc:  # cut the existing docstring out, so the model writes one rather than copies it
                    body = body[: doc.lineno - node.lineno] + body[doc.end_lineno - node.lineno + 1 :]
                if len(body) < 3:
                    continue
            elif task == "complete":
                body = body[: max(2, len(body) // 2)]
            tasks[task].append(f"{STDLIB_TASKS[task]}\n\n{code_block(body)}")
    return tasks


def austen_novels() -> dict[str, list[str]]:
    """Lines of each novel, read from janeaustenr's R data files without R."""
    import rdata  # only this source needs it

    novels = {}
    with warnings.catch_warnings():  # rdata warns that these files lack an .rds extension and header
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(AUSTEN / "Rdata.rdx"))
        blob = (AUSTEN / "Rdata.rdb").read_bytes()
        for name, (offset, length) in index["variables"].items():
            # Each entry: a 4-byte big-endian length, then a zlib stream of the serialized character vector.
            data = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])
            novels[str(name)] = [str(line) for line in rdata.conversion.convert(rdata.parser.parse_data(data))]
    return novels


def austen_prompts(rng: random.Random) -> dict[str, list[str]]:
    """Prompts on passages of 60-200 words: one long paragraph, or a run of short ones (dialogue)."""
    tasks: dict[str, list[str]] = {task: [] for task in AUSTEN_TASKS}
    for name, lines in sorted(austen_novels().items()):
        paragraphs = " ".join(line.strip() or "\n" for line in lines).split("\n")
        run: list[str] = []
        for paragraph in (" ".join(p.split()) for p in paragraphs):
            if not paragraph:
                continue
            if re.match(r"(CHAPTER|Chapter|VOLUME|Volume)\b", paragraph) or not re.search(r"[a-z]", paragraph):
                run = []  # a passage never spans a chapter break
                continue
            run.append(paragraph)
            if words(" ".join(run)) >= 60:
                if words(" ".join(run)) <= 200:
                    task = rng.choice(list(AUSTEN_TASKS))
                    tasks[task].append(f"{AUSTEN_TASKS[task]}\n\n" + "\n\n".join(run).replace("_", ""))
                run = []
    return tasks


def chatterbot_prompts(corpus: Path, rng: random.Random) -> dict[str, list[str]]:
    """Dialog lines as user messages: long lines as they are, short questions with a reply request, openings to continue."""
    tasks: dict[str, list[str]] = {"message": [], "reply": [], "continue": []}
    seen: set[str] = set()
    for path in sorted(corpus.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            # Code answers (coding.yml) are not user-like, and some lost their literals in the corpus.
            turns = [str(t).strip() for t in conversation]
            turns = turns[: next((i for i, t in enumerate(turns) if "```" in t), len(turns))]
            for line in turns:
                if line in seen:
                    continue
                seen.add(line)
                if words(line) >= WORDS[0]:
                    tasks["message"].append(line)
                elif line.endswith("?"):
                    tasks["reply"].append(f"Reply to this message as a friendly, helpful assistant: {line}")
            if len(turns) >= 2:
                opening = turns[: rng.randint(2, min(len(turns), 6))]
                speakers = "AB" * len(opening)
                dialog = "\n".join(f"{speakers[i]}: {t}" for i, t in enumerate(opening))
                tasks["continue"].append(f"Continue this conversation with the next reply:\n\n{dialog}")
    return tasks


def fortune_prompts(rng: random.Random) -> dict[str, list[str]]:
    """Prompts on fortunes of 5-120 words from the chosen files."""
    tasks: dict[str, list[str]] = {task: [] for task in FORTUNE_TASKS}
    for name in FORTUNE_FILES:
        text = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            fortune = textwrap.dedent(fortune.expandtabs(8)).strip()
            if 5 <= words(fortune) <= 120 and "   " not in fortune.split("--")[0]:  # wide gaps are tables or drawings
                task = rng.choice(list(FORTUNE_TASKS))
                tasks[task].append(f"{FORTUNE_TASKS[task]}\n\n{fortune}")
    return tasks


def ngrams(text: str) -> set[tuple[str, ...]]:
    tokens = re.findall(r"\w+", text.lower())
    return {tuple(tokens[i : i + NGRAM]) for i in range(len(tokens) - NGRAM + 1)}


def pick(tasks: dict[str, list[str]], count: int, banned: set, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` distinct (task, prompt) pairs drawn round-robin over the tasks, so that each task gets an even share."""
    pools = {
        task: [p for p in dict.fromkeys(prompts) if WORDS[0] <= words(p) <= WORDS[1] and not ngrams(p) & banned]
        for task, prompts in tasks.items()
    }
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < count and any(pools.values()):
        for task, pool in pools.items():
            if pool and len(chosen) < count:
                chosen.append((task, pool.pop()))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--chatterbot",
        type=Path,
        default=Path("/tmp/pkgs/x/chatterbot_corpus/data/english"),
        help="folder with the English YAML files of chatterbot-corpus 1.3.3",
    )
    parser.add_argument("--per-source", type=int, default=750)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "prompts.jsonl")
    args = parser.parse_args()

    # One generator per source, so that changing one source leaves the prompts of the others as they were.
    def rng(name: str) -> random.Random:
        return random.Random(f"{args.seed}:{name}")

    banned = set().union(*(ngrams(" ".join(json.loads(line)["turns"])) for line in DEV_QUESTIONS.open(encoding="utf-8")))
    sources = {
        "stdlib": stdlib_prompts(rng("stdlib")),
        "austen": austen_prompts(rng("austen")),
        "chatterbot": chatterbot_prompts(args.chatterbot, rng("chatterbot")),
        "fortunes": fortune_prompts(rng("fortunes")),
    }
    for source, tasks in sources.items():
        print(f"{source}: candidates per task " + ", ".join(f"{task} {len(set(p))}" for task, p in tasks.items()))
    rows = [
        {"messages": [{"role": "user", "content": prompt}], "source": f"{source}/{task}"}
        for source, tasks in sources.items()
        for task, prompt in pick(tasks, args.per_source, banned, rng(f"pick:{source}"))
    ]
    rng("order").shuffle(rows)  # mixed sources, so that any prefix of the file is a balanced sample
    write_text(args.out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    print(f"wrote {len(rows)} prompts to {args.out}")
    for source, n in sorted(counts.items()):
        print(f"  {source:24s} {n}")


if __name__ == "__main__":
    main()
