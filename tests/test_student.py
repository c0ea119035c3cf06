"""Properties of the PTP student on tiny random twins of every supported architecture.

The student must be the teacher, bit for bit, wherever the gate is off; its LoRA must act on
draft slots only; and it must survive a save / load round trip with only its own weights on disk.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import ARCHITECTURES, VOCAB, tiny_teacher

from ptp import SamplingConfig, Student, UserError
from ptp.lora import Gate, GatedLoRA, _tail
from ptp.masks import additive_mask, training_layout
from ptp.sampling import draw_uniform
from ptp.student import CONFIG_NAME, MODES, WEIGHTS_NAME

N = 3  # draft slots per window
SEQ_LEN = 10
STARTS = [[2, 6], [1, 5]]  # (B, W) window starts, each in [1, SEQ_LEN - N]
ARCH_MODES = list(itertools.product(ARCHITECTURES, MODES))
arch_mode = pytest.mark.parametrize("arch,mode", ARCH_MODES, ids=[f"{a}-{m}" for a, m in ARCH_MODES])


# ---------------------------------------------------------------------------- helpers


def make_student(arch: str, mode: str, seed: int = 0) -> Student:
    return Student.from_teacher(tiny_teacher(arch, seed=seed), mode=mode, num_draft_tokens=N, lora_rank=4)


def randomize_lora(student: Student, seed: int = 1) -> None:
    """Non-zero B, so the adapter really changes gated rows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in student.lora_modules():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.5)


def training_batch(student: Student, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training layout: B sequences of SEQ_LEN tokens + W windows of N slots, u per the mode."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.tensor(STARTS)
    b, w = starts.shape
    visible, position_ids, draft = training_layout(SEQ_LEN, starts, N)
    ids = torch.randint(0, VOCAB, (b, SEQ_LEN + w * N), generator=g)  # slot ids must be ignored
    token_u = draw_uniform(b * SEQ_LEN, generator=g).reshape(b, SEQ_LEN)
    # Window w predicts tokens starts[w] .. starts[w] + N - 1; its slots carry slot_u of their u.
    window_u = torch.stack([token_u[i, s : s + N] for i, row in enumerate(STARTS) for s in row]).reshape(b, w, N)
    u = torch.full((b, SEQ_LEN + w * N), float("nan"), dtype=torch.float64)
    u[:, SEQ_LEN:] = student.slot_u(window_u).reshape(b, w * N)
    return dict(input_ids=ids, draft=draft, u=u, position_ids=position_ids, visible=visible)


def reference_embeds(student: Student, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inputs as the student builds them: token embedding on token rows, aux(u) on draft rows."""
    tokens = student.model.get_input_embeddings()(batch["input_ids"])
    slots = student.aux(batch["u"]).to(tokens.dtype)
    return torch.where(batch["draft"].unsqueeze(-1), slots, tokens)


def run_model(student: Student, batch: dict[str, torch.Tensor], gate: torch.Tensor | None) -> torch.Tensor:
    """The underlying (adapted) model on the same inputs, with the gate set explicitly."""
    embeds = reference_embeds(student, batch)
    with student.gate.set(gate):
        return student.model(
            inputs_embeds=embeds,
            attention_mask=additive_mask(batch["visible"], embeds.dtype),
            position_ids=batch["position_ids"],
        ).logits


def student_logits(student: Student, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return student(**batch).logits


def lora_params(student: Student) -> list[torch.nn.Parameter]:
    return [p for m in student.lora_modules() for p in (m.lora_A, m.lora_B)]


# ---------------------------------------------------------------------------- teacher equivalence


@arch_mode
@torch.no_grad()
def test_gate_off_rows_equal_teacher_bitwise(arch, mode):
    student = make_student(arch, mode)
    randomize_lora(student)
    batch = training_batch(student)
    out = student_logits(student, batch)
    ref = run_model(student, batch, gate=None)
    tokens = ~batch["draft"]
    assert torch.equal(out[tokens], ref[tokens])


@arch_mode
@torch.no_grad()
def test_plain_call_equals_fresh_teacher_bitwise(arch, mode):
    student = make_student(arch, mode)
    randomize_lora(student)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    assert torch.equal(student(ids).logits, tiny_teacher(arch, seed=0)(ids).logits)


@arch_mode
@torch.no_grad()
def test_fresh_student_equals_teacher_on_draft_rows(arch, mode):
    student = make_student(arch, mode)
    assert all(bool((p == 0).all()) for m in student.lora_modules() for p in (m.lora_B,))
    batch = training_batch(student)
    # LoRA B starts at zero: the gated delta vanishes and every row is the teacher's.
    assert torch.equal(student_logits(student, batch), run_model(student, batch, gate=None))


@arch_mode
@torch.no_grad()
def test_lora_acts_on_draft_rows(arch, mode):
    student = make_student(arch, mode)
    randomize_lora(student)
    batch = training_batch(student)
    out = student_logits(student, batch)
    ref = run_model(student, batch, gate=None)
    draft = batch["draft"]
    # Every draft row changes, and the student's own forward equals gating the model by hand.
    assert bool(((out[draft] - ref[draft]).abs().amax(-1) > 1e-4).all())
    assert torch.equal(out, run_model(student, batch, gate=draft))


@arch_mode
@torch.no_grad()
def test_interleaved_draft_rows_give_the_same_rows(arch, mode):
    """Slots need not follow the tokens: rows in any order (mask and positions permuted alike) give
    the same logits, and token rows stay the teacher bit for bit (the adapters' general path)."""
    student = make_student(arch, mode)
    randomize_lora(student)
    batch = training_batch(student)
    perm = torch.randperm(batch["draft"].shape[1], generator=torch.Generator().manual_seed(2))
    shuffled = {k: v[:, perm] for k, v in batch.items()}
    shuffled["visible"] = shuffled["visible"][:, :, perm]
    assert _tail(shuffled["draft"]) is None and _tail(batch["draft"]) == batch["draft"][0].sum()
    out = student_logits(student, shuffled)
    tokens = ~shuffled["draft"]
    assert torch.equal(out[tokens], run_model(student, shuffled, gate=None)[tokens])
    torch.testing.assert_close(out, student_logits(student, batch)[:, perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", [False, True])
def test_gated_lora_decoding_path_adds_the_delta_on_slot_rows_only(dtype, grad):
    """One sequence without autograd (decoding) takes 2-D matmuls, in float32 for a bf16 model on
    CPU; with autograd (training) the batched path. Either way token rows are the base layer's
    exact output and slot rows carry base + scale * B A x."""
    torch.manual_seed(0)
    gate = Gate()
    layer = GatedLoRA(torch.nn.Linear(24, 40).to(dtype), rank=4, alpha=8.0, gate=gate)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(1, 7, 24).to(dtype)
    draft = torch.tensor([[False] * 4 + [True] * 3])
    with gate.set(draft), torch.set_grad_enabled(grad):
        y = layer(x)
    base = layer.base(x)
    assert torch.equal(y[0, :4], base[0, :4])
    delta = (x[0, 4:].double() @ layer.lora_A.double().t() @ layer.lora_B.double().t()) * layer.scale
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y[0, 4:].double(), base[0, 4:].double() + delta, **tolerance)


@arch_mode
def test_only_draft_rows_send_gradients_to_trainable_params(arch, mode):
    student = make_student(arch, mode)
    randomize_lora(student)
    batch = training_batch(student)
    draft = batch["draft"]

    student_logits(student, batch)[~draft].logsumexp(-1).sum().backward()
    for name, p in student.named_parameters():
        if p.requires_grad:
            assert p.grad is None or bool((p.grad == 0).all()), f"token-row loss reached {name}"

    # Control: a loss on draft rows does reach every LoRA factor.
    student.zero_grad(set_to_none=True)
    student_logits(student, batch)[draft].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in lora_params(student))


# ---------------------------------------------------------------------------- parameters and modes


@arch_mode
def test_trainable_parameters_are_exactly_lora_and_aux(arch, mode):
    student = make_student(arch, mode)
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    lora = {f"model.{name}.lora_{ab}" for name in student.adapted for ab in "AB"}
    aux = {f"aux.{name}" for name, _ in student.aux.named_parameters()}
    assert trainable == lora | aux
    assert len(student.lora_modules()) == len(student.adapted) > 0
    # Every teacher weight, including the wrapped base layers, stays frozen.
    teacher_names = {name for name, _ in tiny_teacher(arch).named_parameters()}
    frozen = {name for name, p in student.model.named_parameters() if not p.requires_grad}
    assert len(frozen) == len(teacher_names)
    assert all(isinstance(student.model.get_submodule(n), GatedLoRA) for n in student.adapted)


@pytest.mark.parametrize("mode", MODES)
def test_slot_u_per_mode(mode):
    student = make_student("llama", mode)
    u = draw_uniform(12, seed=5).reshape(3, 4)
    got = student.slot_u(u)
    assert got.shape == u.shape and got.dtype == torch.float64
    if mode == "o-ptp":  # slot j carries u_{i+j}
        assert torch.equal(got, u)
    elif mode == "c-ptp":  # slot j carries u_{i+j-1}; slot 0 carries none
        assert bool(got[:, 0].isnan().all())
        assert torch.equal(got[:, 1:], u[:, :-1])
    else:  # mtp: no slot carries u
        assert bool(got.isnan().all())


# ---------------------------------------------------------------------------- persistence


@arch_mode
@torch.no_grad()
def test_save_load_round_trip_reproduces_draft_logits(arch, mode, tmp_path):
    student = make_student(arch, mode)
    randomize_lora(student)
    with torch.no_grad():
        student.aux.null.add_(1.0)  # trained aux weights must round-trip too
    batch = training_batch(student)
    before = student_logits(student, batch)
    student.save_pretrained(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    assert set(saved) == set(student.trainable_state_dict())  # no teacher weights on disk
    assert all(".lora_" in k or k.startswith("aux.") for k in saved)

    loaded = Student.from_pretrained(tmp_path, teacher=tiny_teacher(arch, seed=0))
    assert loaded.config == student.config
    assert torch.equal(student_logits(loaded, batch), before)


def test_student_records_the_sampling_it_was_trained_for(tmp_path):
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, order="id")
    student = Student.from_teacher(tiny_teacher("llama", seed=0), num_draft_tokens=4, lora_rank=2, sampling=sampling)
    student.save_pretrained(tmp_path)
    assert Student.from_pretrained(tmp_path, teacher=tiny_teacher("llama", seed=0)).sampling == sampling
    assert make_student("llama", "o-ptp").sampling == SamplingConfig()  # none recorded: the defaults
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["sampling"]["order"] = "alphabetical"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(UserError, match="order='alphabetical' is invalid"):
        Student.from_pretrained(tmp_path, teacher=tiny_teacher("llama", seed=0))


def test_weights_saved_in_bfloat16_reload_as_their_rounded_values(tmp_path):
    student = make_student("llama", "o-ptp")
    randomize_lora(student)
    student.save_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {t.dtype for t in load_file(str(tmp_path / WEIGHTS_NAME)).values()} == {torch.bfloat16}
    loaded = Student.from_pretrained(tmp_path, teacher=tiny_teacher("llama", seed=0))
    for (name, a), b in zip(student.trainable_state_dict().items(), loaded.trainable_state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(b, a.to(torch.bfloat16).float()), name


def saved_student(tmp_path, arch: str = "llama", mode: str = "c-ptp"):
    student = make_student(arch, mode)
    randomize_lora(student)
    student.save_pretrained(tmp_path)
    return tmp_path


def load_error(directory, teacher=None) -> str:
    with pytest.raises(UserError) as info:
        Student.from_pretrained(directory, teacher=teacher or tiny_teacher("llama"))
    message = str(info.value)
    assert type(info.value) is UserError and "\n" not in message
    return message


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_with_other_architecture_or_vocabulary_is_refused(arch, tmp_path):
    saved_student(tmp_path, arch)
    other_arch = ARCHITECTURES[(ARCHITECTURES.index(arch) + 1) % len(ARCHITECTURES)]
    assert "does not match" in load_error(tmp_path, tiny_teacher(other_arch))
    assert "does not match" in load_error(tmp_path, tiny_teacher(arch, vocab=VOCAB + 4))


def test_truncated_weights_are_refused(tmp_path):
    saved_student(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert WEIGHTS_NAME in load_error(tmp_path)


def test_garbage_weights_are_refused(tmp_path):
    saved_student(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x00" * 7)
    assert WEIGHTS_NAME in load_error(tmp_path)


def test_missing_weights_are_refused(tmp_path):
    saved_student(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    assert "missing" in load_error(tmp_path)


def test_missing_config_is_refused(tmp_path):
    saved_student(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    assert CONFIG_NAME in load_error(tmp_path)


def edit_config(directory, edit) -> None:
    path = directory / CONFIG_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_config_with_unknown_key_is_refused(tmp_path):
    saved_student(tmp_path)
    edit_config(tmp_path, lambda d: d.update(surprise=1))
    assert "surprise" in load_error(tmp_path)


@pytest.mark.parametrize("key", ["mode", "num_draft_tokens", "teacher"])
def test_config_with_missing_key_is_refused(key, tmp_path):
    saved_student(tmp_path)
    edit_config(tmp_path, lambda d: d.pop(key))
    assert key in load_error(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_config_that_is_not_a_json_object_is_refused(text, tmp_path):
    saved_student(tmp_path)
    (tmp_path / CONFIG_NAME).write_bytes(text.encode("latin-1"))
    assert CONFIG_NAME in load_error(tmp_path)


def test_config_with_bad_mode_is_refused(tmp_path):
    saved_student(tmp_path)
    edit_config(tmp_path, lambda d: d.update(mode="fast"))
    assert "mode" in load_error(tmp_path)


def test_failed_load_leaves_teacher_usable(tmp_path):
    """A refused load must not wrap the caller's teacher, so a retry with it still works."""
    saved_student(tmp_path)
    weights = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).unlink()
    teacher = tiny_teacher("llama")
    load_error(tmp_path, teacher)
    assert not any(isinstance(m, GatedLoRA) for m in teacher.modules())
    (tmp_path / WEIGHTS_NAME).write_bytes(weights)
    Student.from_pretrained(tmp_path, teacher=teacher)


def test_config_with_a_mistyped_value_is_refused(tmp_path):
    student_path = saved_student(tmp_path)
    config = json.loads((student_path / CONFIG_NAME).read_text())
    config["num_draft_tokens"] = "four"
    (student_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(UserError, match="num_draft_tokens = 'four' is invalid: expected a int"):
        Student.from_pretrained(student_path, teacher=tiny_teacher("llama", seed=0))
