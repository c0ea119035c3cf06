"""Tiny random twins of real architectures, built in the tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    PreTrainedTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 97
ARCHITECTURES = ("llama", "gpt2", "qwen2", "gpt_neox")


def tiny_teacher(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, vocab: int = VOCAB):
    """A 2-layer random causal LM of the given architecture, in eval mode."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=512, **common))
    else:
        raise ValueError(arch)
    # Sharper logits than the default init, so distributions are far from uniform.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.to(dtype).eval()


# ---------------------------------------------------------------- offline tokenizer and data
WORDS = "the a cat dog sat ran on under mat tree what where who did why is it Q A : ? .".split()
SPECIALS = ["<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS (ids below the tiny model's vocabulary) with a chat template."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=SPECIALS[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def rows(n: int = 14) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        words = [WORDS[j] for j in torch.randint(0, 10, (1 + i % 5,), generator=g).tolist()]
        question = " ".join(words)
        out.append({"question": question, "answer": "the cat", "text": question + " . the dog ran",
                    "messages": [{"role": "user", "content": question}]})
    return out


def write_assets(root: Path, num_rows: int) -> dict[str, str]:
    """A saved tiny Llama teacher with the tokenizer, and a jsonl dataset of ``num_rows`` rows."""
    tiny_teacher("llama").save_pretrained(root / "teacher")
    tiny_tokenizer().save_pretrained(root / "teacher")
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(num_rows)))
    return {"model": str(root / "teacher"), "data": str(root / "qa.jsonl")}


def write_student(root: Path, num_rows: int = 4, mode: str = "o-ptp", kind: str = "lora") -> Path:
    """An untrained tiny student (gated LoRA, or a one-layer draft head) saved in ``root/student``,
    its teacher and tokenizer beside it."""
    from ptp import Student
    from ptp.models import load_teacher

    assets = write_assets(root, num_rows)
    options = {"lora_rank": 4} if kind == "lora" else {"kind": "head", "num_layers": 1}
    student = Student.from_teacher(load_teacher(assets["model"]), mode=mode, num_draft_tokens=4,
                                   teacher_name=assets["model"], **options)
    student.save_pretrained(root / "student")
    return root / "student"
