"""The draft head (``kind="head"``): lossless decoding whatever its weights, the teacher's
computation at initialisation, persistence, cached-feature training and its resumption."""

from __future__ import annotations

import pytest
import torch

from ptp import SamplingConfig, Student, UserError
from ptp.budget import CostCurve
from ptp.features import FeatureShardWriter, capture_layer_input, completion_features, load_feature_shards, text_features
from ptp.generate import generate
from ptp.head import HeadStudent, frequent_tokens
from ptp.head_training import HeadTrainConfig, evaluate, make_batch, train_head, valid_starts
from test_generate import CONFIGS, reference_tokens
from tiny_models import ARCHITECTURES, VOCAB, tiny_teacher

PROMPT = torch.tensor([0, 5, 9, 12, 7, 3, 22, 8])


def make_head(arch: str = "llama", mode: str = "o-ptp", init: str = "teacher", dtype=torch.float32, scale: float = 0.0,
              vocab_ids: torch.Tensor | None = None, num_draft: int = 4, autoregressive: bool = False) -> HeadStudent:
    head = Student.from_teacher(tiny_teacher(arch, dtype=dtype), kind="head", mode=mode, num_draft_tokens=num_draft,
                                num_layers=1, init=init, vocab_ids=vocab_ids, autoregressive=autoregressive)
    if scale:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in head.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale)
    return head


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("mode", "autoregressive"), [("o-ptp", False), ("c-ptp", False), ("mtp", False), ("mtp", True), ("o-ptp", True)])
def test_head_decoding_equals_teacher_samples(arch, mode, autoregressive):
    head = make_head(arch, mode, scale=0.3, autoregressive=autoregressive)
    for i, sampling in enumerate(CONFIGS):
        u = torch.rand(24, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        expected = reference_tokens(head.model, PROMPT, u, sampling)
        for strategy in ("pqd", "verify"):
            out = generate(head, PROMPT, 24, sampling=sampling, u=u, strategy=strategy)
            assert out.tokens.tolist() == expected, (arch, mode, sampling, strategy)


@pytest.mark.parametrize("weights", ["nan", "inf", "huge"])
def test_broken_head_stays_lossless(weights):
    head = make_head(scale=0.1)
    value = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}[weights]
    with torch.no_grad():
        head.lift_slot.mean.fill_(value)
        head.lift_token.mean.fill_(value)
    sampling = SamplingConfig(temperature=0.8, top_p=0.9)
    u = torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = generate(head, PROMPT, 20, sampling=sampling, u=u)
    assert out.tokens.tolist() == reference_tokens(head.model, PROMPT, u, sampling)


def test_head_with_accepted_drafts_stays_exact(monkeypatch):
    """Force the head's drafts to the teacher's own continuation (an oracle): long accepted runs,
    corrections at chosen places, and still the teacher's tokens."""
    head = make_head()
    sampling = SamplingConfig(temperature=0.9)
    u = torch.rand(30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    truth = reference_tokens(head.model, PROMPT, u, sampling)
    real = HeadStudent.draft
    calls = {"n": 0}

    def oracle(self, context, previous, bonus, u_next, cache, past):
        tokens, conf, cache = real(self, context, previous, bonus, u_next, cache, past)
        start = past + context.shape[0] + 1 - PROMPT.numel()  # generated index of the first drafted token
        calls["n"] += 1
        right = torch.tensor(truth[start : start + tokens.numel()] + [0] * tokens.numel())[: tokens.numel()]
        if calls["n"] % 3 == 0 and right.numel() > 2:
            right[2] = (right[2] + 1) % VOCAB  # a wrong draft now and then
        return right, torch.full_like(conf, 0.9), cache

    monkeypatch.setattr(HeadStudent, "draft", oracle)
    out = generate(head, PROMPT, 30, sampling=sampling, u=u, cost=CostCurve())  # the prior curve: no timing decides
    assert out.tokens.tolist() == truth
    assert out.tokens_per_call > 2.0


def test_autoregressive_head_decodes_what_training_scores():
    """An autoregressive head's decoding (one call per token, fed its own drafts) computes the rows
    training computes on the same tokens: its drafts are the argmaxes of ``windows``' logits."""
    head = make_head(autoregressive=True, scale=0.5, num_draft=4, dtype=torch.float64)
    with torch.no_grad(), capture_layer_input(head.model, head.feature_layer) as captured:
        head.model(input_ids=PROMPT.unsqueeze(0))
    features, i = captured[0][0], PROMPT.numel() - 1  # the bonus token is the prompt's last
    u = torch.rand(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    drafts, _, _ = head.draft(features[:i], features[i - 1], int(PROMPT[i]), u, None, 0)
    tokens = torch.cat([PROMPT, drafts, torch.zeros(2, dtype=torch.long)]).unsqueeze(0)
    padded = torch.cat([features, torch.zeros(6, features.shape[1], dtype=features.dtype)]).unsqueeze(0)
    logits = head.windows(padded, tokens, torch.tensor([[i]]), u.view(1, 1, 4))
    assert torch.equal(head.vocab_ids[logits[0, 0].argmax(-1)], drafts)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_head_other_dtypes(dtype):
    head = make_head(dtype=dtype, scale=0.2)
    sampling = SamplingConfig(temperature=0.7, top_k=10)
    u = torch.rand(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = generate(head, PROMPT, 16, sampling=sampling, u=u)
    if dtype == torch.float64:
        assert out.tokens.tolist() == reference_tokens(head.model, PROMPT, u, sampling)
    ar = generate(head.model, PROMPT, 16, sampling=sampling, u=u, strategy="ar")
    assert len(out.tokens) >= 1 and len(ar.tokens) >= 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_teacher_init_reproduces_the_teacher_on_context_rows(arch):
    head = make_head(arch)
    teacher = head.model
    ids = PROMPT.unsqueeze(0)
    with torch.no_grad(), capture_layer_input(teacher, head.feature_layer) as captured:
        expected = teacher(input_ids=ids).logits[0]
    out = head.body(inputs_embeds=captured[0]).last_hidden_state
    torch.testing.assert_close(head.logits(out)[0], expected, rtol=1e-4, atol=1e-4)


def test_fresh_init_differs_and_save_load_round_trip(tmp_path):
    fresh = make_head(init="fresh", vocab_ids=torch.arange(0, VOCAB, 2))
    copied = make_head(init="teacher")
    p_fresh = dict(fresh.body.named_parameters())
    p_copy = dict(copied.body.named_parameters())
    assert any(not torch.equal(p_fresh[k], p_copy[k]) for k in p_copy if "layers" in k)
    fresh.save_pretrained(tmp_path / "h")
    loaded = Student.from_pretrained(tmp_path / "h", teacher=tiny_teacher("llama"))
    assert isinstance(loaded, HeadStudent) and loaded.config == fresh.config
    assert torch.equal(loaded.vocab_ids, fresh.vocab_ids)
    for (k, a), (_, b) in zip(fresh.trainable_state_dict().items(), loaded.trainable_state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="does not match"):
        Student.from_pretrained(tmp_path / "h", teacher=tiny_teacher("llama", vocab=VOCAB + 3))


def test_head_config_errors():
    with pytest.raises(UserError, match="num_layers"):
        Student.from_teacher(tiny_teacher(), kind="head", num_layers=2)  # the tiny teacher has 2 layers
    with pytest.raises(UserError, match="init"):
        Student.from_teacher(tiny_teacher(), kind="head", num_layers=1, init="copy")
    with pytest.raises(UserError, match="kind"):
        Student.from_teacher(tiny_teacher(), kind="medusa")


def _features(tmp_path, head: HeadStudent, n: int = 12):
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(2, VOCAB, (int(torch.randint(20, 40, (1,), generator=gen)),), generator=gen).tolist() for _ in range(n)]
    sampling = SamplingConfig(temperature=1.0)
    feats = text_features(head.model, seqs, head.feature_layer, sampling)
    writer = FeatureShardWriter(tmp_path / "f", {"layer": head.feature_layer})
    writer.write([(torch.tensor(s), f, lo, hi) for s, (f, lo, hi) in zip(seqs[: n // 2], feats[: n // 2])])
    writer.write([(torch.tensor(s), f, lo, hi) for s, (f, lo, hi) in zip(seqs[n // 2 :], feats[n // 2 :])])
    return seqs, load_feature_shards(tmp_path / "f")


def test_features_match_the_teacher_and_round_trip(tmp_path):
    head = make_head()
    seqs, examples = _features(tmp_path, head)
    assert [e["tokens"].tolist() for e in examples] == seqs
    only = completion_features(head.model, [seqs[0]], head.feature_layer)[0]
    torch.testing.assert_close(only.float(), examples[0]["features"].float())
    assert torch.isnan(examples[0]["lo"][0]) and bool((examples[0]["hi"][1:] > examples[0]["lo"][1:]).all())
    with pytest.raises(UserError, match="another configuration"):
        FeatureShardWriter(tmp_path / "f", {"layer": 99})


def test_valid_starts_need_n_targets():
    lo = torch.tensor([float("nan"), 0.1, 0.2, float("nan"), 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    hi = lo + 0.1
    assert valid_starts(lo, hi, 3).tolist() == [3, 4]  # bonus i with i+1..i+3 valid and i <= T - N - 1


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    head = make_head(vocab_ids=frequent_tokens([torch.arange(VOCAB)], 64, VOCAB))
    _, examples = _features(tmp_path, head)
    val, train = examples[:2], examples[2:]
    cfg = HeadTrainConfig(steps=40, batch_size=2, windows=4, lr=3e-3, warmup_steps=5, val_every=20, save_every=10)
    before = evaluate(head, val)
    record = train_head(head, train, val, cfg, tmp_path / "run", log=lambda _: None)
    assert record["step"] == 40 and len(record["history"]) == 2
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(train, [0, 1], 4, head.num_draft_tokens, gen)
    assert batch["u"].shape == (2, 4, 4)
    # Resume: a run killed after its step-20 checkpoint and rerun gives the weights of one run of 40.
    def killed_at_25(line: str) -> None:
        if line.startswith("step 25"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_head(make_head(vocab_ids=head.vocab_ids), train, val, cfg, tmp_path / "run2", log=killed_at_25)
    again = make_head(vocab_ids=head.vocab_ids)
    train_head(again, train, val, cfg, tmp_path / "run2", log=lambda _: None)
    for (k, a), (_, b) in zip(head.trainable_state_dict().items(), again.trainable_state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert before["windows"] > 0


def test_a_useless_head_backs_off_to_plain_decoding(monkeypatch):
    """Drafts that never pay make the head sit out 1, 2, 4, ... calls: few head calls, same tokens."""
    head = make_head(scale=0.3)
    calls = {"n": 0}
    real = HeadStudent.draft

    def counted(self, *args):
        calls["n"] += 1
        tokens, conf, cache = real(self, *args)
        return (tokens + 1) % VOCAB, conf, cache  # always wrong... unless by chance right

    monkeypatch.setattr(HeadStudent, "draft", counted)
    head.model.config.eos_token_id = head.model.generation_config.eos_token_id = None  # decode all 80 tokens
    sampling = SamplingConfig(temperature=0.0)
    u = torch.zeros(80, dtype=torch.float64)
    out = generate(head, PROMPT, 80, sampling=sampling, u=u, cost=CostCurve())
    assert out.tokens.tolist() == reference_tokens(head.model, PROMPT, u, sampling, eos=-1)
    # about 8 probes before the calibrated rate falls below what pays, then 1, 2, 4, ... calls sat out
    assert len(out.tokens) == 80 and calls["n"] <= 30, calls["n"]  # 80 without the back-off
