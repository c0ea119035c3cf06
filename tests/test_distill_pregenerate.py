"""``ptp distill`` and ``ptp pregenerate`` end to end on a tiny random Llama and an offline tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import ptp.commands.distill as distill_command
import ptp.pregenerate as pregen
from ptp.cli import main
from ptp.config import SamplingConfig
from ptp.data import load_rows, prompt_ids, text_sequences
from ptp.errors import UserError
from ptp.experiment import EXPERIMENT_FILE, DataConfig, Experiment, ModelConfig
from ptp.models import load_teacher, load_tokenizer
from ptp.pregenerate import load_shards
from ptp.sampling import draw_uniform, pick, token_interval, warp
from tiny_models import WORDS, rows, tiny_teacher, tiny_tokenizer, write_assets

SAMPLING = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return write_assets(tmp_path_factory.mktemp("assets"), 14)


def distill(assets, directory, *flags) -> int:
    # The tiny teacher's context (512) is shorter than the default prompt + completion budget.
    return main(["distill", assets["model"], assets["data"], str(directory), "--max-prompt-tokens", "64", "--val-examples", "2", *flags])


@pytest.fixture
def completions_dir(assets, tmp_path) -> Path:
    directory = tmp_path / "exp"
    flags = ["--prompt-format", "Q: {question} ?", "--completion-tokens", "10", "--limit", "11", "--val-examples", "2", *SAMPLING]
    assert distill(assets, directory, *flags) == 0
    return directory


def run_pregenerate(directory, *flags) -> int:
    return main(["pregenerate", str(directory), "--no-progress", *flags])


# ---------------------------------------------------------------- distill


def test_distill_records_every_choice(completions_dir):
    text = (completions_dir / EXPERIMENT_FILE).read_text()
    raw = yaml.safe_load(text)
    assert list(raw) == ["data", "model", "loss", "sampling", "optim", "trainer"]
    assert raw["data"]["prompt_format"] == "Q: {question} ?" and raw["data"]["data_mode"] == "completions"
    assert raw["model"]["mode"] == "o-ptp" and raw["model"]["lora_alpha"] == 32.0  # 2 r, made explicit
    assert raw["sampling"] == {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "order": "rank"}
    experiment = Experiment.load(completions_dir)
    assert experiment.data.completion_tokens == 10 and experiment.data.limit == 11
    assert experiment.to_dict() == raw


def test_distill_refuses_existing_dir(assets, completions_dir, capsys):
    before = (completions_dir / EXPERIMENT_FILE).read_text()
    assert distill(assets, completions_dir, "--prompt-column", "question") == 2
    assert "already exists" in capsys.readouterr().err
    assert (completions_dir / EXPERIMENT_FILE).read_text() == before


def test_distill_default_dir_and_chat_messages(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["distill", assets["model"], assets["data"], "--messages-column", "messages", "--mode", "c-ptp", "--loss", "kl",
                 "--max-prompt-tokens", "64", "--val-examples", "2"]) == 0
    assert "next: ptp pregenerate runs/teacher-qa-c-ptp" in capsys.readouterr().out
    experiment = Experiment.load(tmp_path / "runs" / "teacher-qa-c-ptp")
    assert experiment.data.messages_column == "messages" and experiment.loss.loss == "kl"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-column", "nope"], "no column 'nope'"),
        (["--prompt-format", "Q: {question} {missing}"], "no column 'missing'"),
        (["--prompt-format", "Q: {}"], "positional field"),
        (["--prompt-column", "messages"], "not text"),
        ([], "--prompt-column"),  # no terminal and no prompt source: the flag is named
        (["--text-column", "text", "--data-mode", "inverse", "--mode", "o-ptp"], "--mode c-ptp"),
        (["--prompt-column", "question", "--mode", "o-ptp", "--loss", "kl"], "does not fit mode"),
        (["--prompt-column", "question", "--top-p", "0"], "top_p"),
        (["--prompt-column", "question", "--val-examples", "14"], "--val-examples"),
    ],
)
def test_distill_user_errors(assets, tmp_path, capsys, flags, message):
    assert distill(assets, tmp_path / "exp", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptp distill: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


def test_distill_missing_inputs(assets, tmp_path, capsys):
    assert main(["distill", assets["model"], str(tmp_path / "none.jsonl"), str(tmp_path / "a"), "--prompt-column", "q"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "nomodel"), assets["data"], str(tmp_path / "b"), "--prompt-column", "q"]) == 2
    assert "nomodel" in capsys.readouterr().err


def test_distill_asks_on_a_terminal(assets, tmp_path, monkeypatch):
    answers = iter(["", "messages", "c-ptp"])  # data mode (default), prompt column, PTP mode
    monkeypatch.setattr(distill_command, "_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert distill(assets, tmp_path / "exp") == 0
    experiment = Experiment.load(tmp_path / "exp")
    assert experiment.data.data_mode == "completions" and experiment.data.messages_column == "messages"
    assert experiment.model.mode == "c-ptp"


def test_experiment_load_errors(completions_dir, tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        Experiment.load(tmp_path / "missing")
    with pytest.raises(UserError, match="no experiment.yaml"):
        Experiment.load(tmp_path)
    raw = yaml.safe_load((completions_dir / EXPERIMENT_FILE).read_text())
    for edit, message in [
        (lambda r: r["data"].update(colour=1), "unknown keys \\['colour'\\]"),
        (lambda r: r.update(extra={}), "unknown sections \\['extra'\\]"),
        (lambda r: r["optim"].update(lr="fast"), "optim.lr = 'fast' is invalid"),
        (lambda r: r["model"].update(mode="x-ptp"), "mode='x-ptp' is invalid"),
        (lambda r: r.pop("model"), "lacks sections \\['model'\\]"),
    ]:
        broken = json.loads(json.dumps(raw))
        edit(broken)
        (completions_dir / EXPERIMENT_FILE).write_text(yaml.safe_dump(broken))
        with pytest.raises(UserError, match=message):
            Experiment.load(completions_dir)


# ---------------------------------------------------------------- data


def test_prompts_and_text_sequences(assets):
    tokenizer = load_tokenizer(assets["model"])
    cfg = DataConfig(dataset=assets["data"], messages_column="messages", max_prompt_tokens=4, shuffle=False)
    row = rows()[4]
    full = tokenizer(tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
    assert full[0] == tokenizer.bos_token_id and full[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert prompt_ids(row, 4, cfg, tokenizer) == full[:1] + full[-3:]  # BOS kept, the end kept
    text = DataConfig(dataset=assets["data"], data_mode="text", text_column="text", seq_len=7, shuffle=False)
    chunks = text_sequences(load_rows(text), text, tokenizer)
    stream = sum((tokenizer(r["text"])["input_ids"] + [tokenizer.eos_token_id] for r in rows()), [])
    assert sum(chunks, []) == stream and all(len(c) == 7 for c in chunks[:-1])


# ---------------------------------------------------------------- pregenerate


def test_pregenerate_stores_genuine_teacher_samples(completions_dir, assets):
    assert run_pregenerate(completions_dir, "--batch-size", "4", "--shard-size", "4") == 0
    experiment = Experiment.load(completions_dir)
    examples = load_shards(completions_dir)
    assert [e["example"] for e in examples] == list(range(11))
    tokenizer = load_tokenizer(assets["model"])
    teacher = load_teacher(assets["model"])
    data_rows = load_rows(experiment.data)
    for e in examples:
        tokens, p = e["tokens"], e["prompt_len"]
        assert tokens[:p].tolist() == prompt_ids(data_rows[e["example"]], e["example"], experiment.data, tokenizer)
        completion = tokens[p:]
        assert 1 <= len(completion) <= 10
        assert 1 not in completion[:-1].tolist()  # sampling stops at EOS (id 1), which is kept
        assert e["lo"][:p].isnan().all() and e["hi"][:p].isnan().all()
        with torch.no_grad():
            logits = teacher(tokens[None, :-1]).logits[0, p - 1 :]  # unpadded, no cache
        probs = warp(logits, experiment.sampling)
        lo, hi = e["lo"][p:], e["hi"][p:]
        assert (lo < hi).all()
        ref_lo, ref_hi = token_interval(probs, completion)
        torch.testing.assert_close(lo, ref_lo, atol=1e-6, rtol=0)
        torch.testing.assert_close(hi, ref_hi, atol=1e-6, rtol=0)
        for u in (lo + 1e-3 * (hi - lo), (lo + hi) / 2, hi - 1e-3 * (hi - lo)):
            assert torch.equal(pick(u, probs), completion)
    # A complete run is not repeated.
    assert run_pregenerate(completions_dir) == 0


def equal_data(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["example"] == y["example"] and x["prompt_len"] == y["prompt_len"] and torch.equal(x["tokens"], y["tokens"])
        and torch.allclose(x["lo"], y["lo"], atol=1e-6, equal_nan=True) and torch.allclose(x["hi"], y["hi"], atol=1e-6, equal_nan=True)
        for x, y in zip(a, b)
    )


def clone(directory: Path, name: str) -> Path:
    copy = directory.parent / name
    copy.mkdir()
    shutil.copy(directory / EXPERIMENT_FILE, copy / EXPERIMENT_FILE)
    return copy


def test_pregenerate_is_deterministic_and_resumable(completions_dir, monkeypatch):
    reference = clone(completions_dir, "reference")
    assert run_pregenerate(reference, "--batch-size", "5", "--shard-size", "11") == 0
    expected = load_shards(reference)

    # Interrupted (Ctrl-C) at the 12th decoding call: the shards of two examples finished by then are kept.
    real_step = pregen.SlotBatch._step
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(pregen.SlotBatch, "_step", interrupted)
    assert run_pregenerate(completions_dir, "--batch-size", "2", "--shard-size", "2") == 130
    index = json.loads((completions_dir / "data" / "index.json").read_text())
    done = index["done"]
    assert 0 < done < 11 and done % 2 == 0 and len(index["shards"]) == done // 2 and not index["complete"]
    with pytest.raises(UserError, match=f"stopped at example {done} of 11"):
        load_shards(completions_dir)

    # Killed between writing a shard and the index: the shard is unlisted and written again.
    monkeypatch.setattr(pregen.SlotBatch, "_step", real_step)
    real_write_json = pregen.write_json

    def killed(*args, **kwargs):
        monkeypatch.setattr(pregen, "write_json", real_write_json)
        raise KeyboardInterrupt

    monkeypatch.setattr(pregen, "write_json", killed)
    assert run_pregenerate(completions_dir, "--batch-size", "1", "--shard-size", "3") == 130
    assert json.loads((completions_dir / "data" / "index.json").read_text())["done"] == done

    # A changed sampling configuration cannot continue someone else's data.
    experiment = Experiment.load(completions_dir)
    changed = clone(completions_dir, "changed")
    shutil.copytree(completions_dir / "data", changed / "data")
    Experiment(**{**vars(experiment), "sampling": SamplingConfig(temperature=0.5)}).save(changed)
    with pytest.raises(UserError, match="another configuration"):
        pregen.pregenerate(changed, pregen.PregenerateConfig(progress=False))

    assert run_pregenerate(completions_dir, "--batch-size", "3", "--shard-size", "3") == 0
    assert equal_data(load_shards(completions_dir), expected)
    shards = done // 2 + -(-(11 - done) // 3)
    assert sorted(p.name for p in (completions_dir / "data").iterdir()) == [
        "index.json", *[f"shard-{i:05d}.safetensors" for i in range(shards)]]


def test_pregenerate_text_mode_needs_nothing(assets, tmp_path, capsys):
    directory = tmp_path / "text"
    assert distill(assets, directory, "--data-mode", "text", "--text-column", "text") == 0
    capsys.readouterr()
    assert run_pregenerate(directory) == 0
    assert "nothing to pregenerate" in capsys.readouterr().out
    assert not (directory / "data").exists()
    assert run_pregenerate(tmp_path / "nowhere") == 2


def test_model_config_validates_student_fields(assets):
    with pytest.raises(UserError, match="num_draft_tokens"):
        ModelConfig(teacher=assets["model"], num_draft_tokens=0)


def slot_sampling(teacher, prompts: list[list[int]], u: torch.Tensor, sampling: SamplingConfig, eos_ids: set[int],
                  batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """``pregen.sample_requests`` over prompts handed out shortest first; completions in prompt order."""
    pending = sorted((pregen.Request(p, u[i], i) for i, p in enumerate(prompts)), key=lambda r: len(r.prompt))

    def take(n: int) -> list:
        out = pending[:n]
        del pending[:n]
        return out

    out = {r.owner: c for r, c in pregen.sample_requests(teacher, take, sampling, eos_ids, batch_size, u.shape[1])}
    return [out[i] for i in range(len(prompts))]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_batched_sampling_matches_the_unpadded_teacher(arch):
    """Left padding, position ids and the KV cache leave every row's distributions as if it were alone:
    rectangular batches (sample_completions) and continuous batching (SlotBatch) alike."""
    teacher = tiny_teacher(arch)
    sampling = SamplingConfig(temperature=0.8, top_k=30)
    prompts = [[0, 5, 9, 13, 7, 21], [0, 3], [0, 8, 8, 8]]
    u = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert pregen._slot_batch_fits(teacher)
    rectangular = pregen.sample_completions(teacher, prompts, u, sampling, {1})
    continuous = slot_sampling(teacher, prompts, u, sampling, {1}, batch_size=2)
    assert teacher.config._attn_implementation == "sdpa"  # SlotBatch's attention is switched off again
    for prompt, row_u, ours, theirs in zip(prompts, u, rectangular, continuous):
        for completion, lo, hi in (ours, theirs):
            tokens = torch.tensor(prompt + completion.tolist())
            with torch.no_grad():
                probs = warp(teacher(tokens[None, :-1]).logits[0, len(prompt) - 1 :], sampling)
            assert torch.equal(pick(row_u[: len(completion)], probs), completion)
            ref_lo, ref_hi = token_interval(probs, completion)
            torch.testing.assert_close((lo, hi), (ref_lo, ref_hi), atol=1e-6, rtol=0)


def test_continuous_batching_output_does_not_depend_on_batch_size(monkeypatch):
    """Prompts of 1 to 40 tokens, rows ending early at EOS and at K: the same tokens, lo and hi at batch
    sizes 1, 3 and 16 and through the rectangular fallback (float32), with the cache's columns
    moved, dropped and grown along the way."""
    teacher = tiny_teacher("llama")
    sampling = SamplingConfig(temperature=0.9, top_p=0.95)
    g = torch.Generator().manual_seed(3)
    prompts = [[0] + torch.randint(2, 97, (n,), generator=g).tolist() for n in torch.randint(0, 40, (20,), generator=g).tolist()]
    u = torch.rand(len(prompts), 12, dtype=torch.float64, generator=g)
    # EOS: the token most often sampled at steps 3-8 without one, so that rows end at many steps.
    free = slot_sampling(teacher, prompts, u, sampling, set(), batch_size=16)
    eos = {int(torch.cat([c[0][3:9] for c in free]).mode().values)}
    moves = []
    for name in ("_add_blocks", "_drop_blocks"):
        real = getattr(pregen.SlotBatch, name)
        monkeypatch.setattr(pregen.SlotBatch, name, lambda self, *a, real=real, name=name, **k: moves.append((name, k.get("front")))
                            or real(self, *a, **k))
    monkeypatch.setattr(pregen, "BLOCK", 4)  # small blocks: many added and dropped
    runs = [slot_sampling(teacher, prompts, u, sampling, eos, batch_size=b) for b in (1, 3, 16)]
    lengths = [len(c[0]) for c in runs[0]]
    assert min(lengths) < 12 and max(lengths) == 12
    assert set(moves) == {("_add_blocks", True), ("_add_blocks", False), ("_drop_blocks", None)}  # prompts longer than the frontier, growth, dead blocks
    monkeypatch.setattr(pregen, "_slot_batch_fits", lambda teacher: False)
    runs.append(slot_sampling(teacher, prompts, u, sampling, eos, batch_size=3))
    for run in runs[1:]:
        for (tokens, lo, hi), (ref_tokens, ref_lo, ref_hi) in zip(run, runs[0]):
            assert torch.equal(tokens, ref_tokens)
            torch.testing.assert_close((lo, hi), (ref_lo, ref_hi), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0.7, top_p=0.95), SamplingConfig(temperature=0.9, top_k=40, top_p=0.95),
    SamplingConfig(temperature=0.7, top_k=5), SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7, top_p=0.95, order="id"), SamplingConfig(temperature=3.0, top_p=0.99),
])
def test_warped_candidates_is_warp_on_the_kept_tokens(sampling):
    """Same kept set, probabilities and sampled tokens and intervals as warp over the vocabulary,
    also for rows whose top-p set needs more than 64 or 1024 candidates."""
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.05, 0.5, 2.0, 8.0]).repeat_interleave(2)[:, None]  # flat to sharp rows
    logits = (torch.randn(8, 5000, generator=g) * scale).to(torch.bfloat16)
    ids, probs = pregen.warped_candidates(logits, sampling)
    full = warp(logits, sampling)
    dense = torch.zeros_like(full).scatter_add(-1, ids, probs)
    torch.testing.assert_close(dense, full, atol=1e-12, rtol=0)
    assert ((full > 0).sum(-1) == (probs > 0).sum(-1)).all()
    u = torch.rand(8, 64, dtype=torch.float64, generator=g)
    for k in range(u.shape[1]):
        tokens, lo, hi = pregen._sample_rows(logits, u[:, k], sampling)
        ref = pick(u[:, k], full, sampling.order)
        assert torch.equal(tokens, ref)
        torch.testing.assert_close(token_interval(full, ref, sampling.order), (lo, hi), atol=1e-12, rtol=0)


# A template that ends assistant turns with EOS, as chat models do: the teacher's own EOS closes its turn.
EOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %} </s>{% endif %} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_multi_turn_rows_are_answered_turn_by_turn(tmp_path):
    """Several user turns and no assistant turn: the teacher answers each in turn, its answers in the
    conversation; lo/hi finite exactly at its tokens, each turn's u from the example's seed; a
    conversation stops before a turn that does not fit max_prompt_tokens; other rows as before."""
    tiny_teacher("llama").save_pretrained(tmp_path / "teacher")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = EOS_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "teacher")
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    long_turn = " ".join(WORDS[:10] * 3)
    rows = [
        [user("the cat sat"), user("where is it ?")],
        [user("who ran"), user("why"), user("what did the dog ?")],
        [user("the dog sat on the mat")],  # one turn: as before
        [user("the cat"), {"role": "assistant", "content": "sat"}, user("where ?")],  # has answers: one prompt, as before
        [user("a cat"), user(long_turn)],  # the second turn does not fit: one answer
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    directory = tmp_path / "exp"
    assert main(["distill", str(tmp_path / "teacher"), str(tmp_path / "chat.jsonl"), str(directory), "--messages-column", "messages",
                 "--max-prompt-tokens", "32", "--completion-tokens", "6", "--val-examples", "1", "--no-shuffle", *SAMPLING]) == 0
    assert run_pregenerate(directory, "--batch-size", "2") == 0
    experiment = Experiment.load(directory)
    data, k = experiment.data, experiment.data.completion_tokens
    teacher = load_teacher(str(tmp_path / "teacher"))
    answers, closed_by_eos = [], 0
    for e in load_shards(directory):
        pieces = pregen.turn_pieces({"messages": rows[e["example"]]}, e["example"], data, tokenizer)
        u = draw_uniform(k * len(pieces), seed=pregen.example_seed(data.seed, e["example"]))
        tokens, sampled = e["tokens"], ~e["lo"].isnan()
        assert torch.equal(sampled, ~e["hi"].isnan()) and e["prompt_len"] == len(pieces[0])
        with torch.no_grad():
            probs = warp(teacher(tokens[None, :-1]).logits[0], experiment.sampling)  # probs[j]: token j + 1
        position, turns = 0, 0
        for t, piece in enumerate(pieces):
            if t > 0 and int(tokens[position - 1]) == 1 and piece[0] == 1:
                piece, closed_by_eos = piece[1:], closed_by_eos + 1  # the answer's EOS closes the turn
            if position + len(piece) > data.max_prompt_tokens:
                break
            assert tokens[position : position + len(piece)].tolist() == piece and not sampled[position : position + len(piece)].any()
            position += len(piece)
            end = position
            while end < len(tokens) and sampled[end]:
                end += 1
            answer = tokens[position:end]
            assert 1 <= len(answer) <= k and 1 not in answer[:-1].tolist()
            assert torch.equal(pick(u[t * k : t * k + len(answer)], probs[position - 1 : end - 1]), answer)
            ref_lo, ref_hi = token_interval(probs[position - 1 : end - 1], answer)
            torch.testing.assert_close((e["lo"][position:end], e["hi"][position:end]), (ref_lo, ref_hi), atol=1e-6, rtol=0)
            position, turns = end, turns + 1
        assert position == len(tokens)
        answers.append(turns)
    assert answers == [2, 3, 1, 1, 1] and closed_by_eos >= 1
