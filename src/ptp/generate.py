"""Lossless generation: verified speculative decoding with shared u and Partial Quadratic Decoding.

Notation of the paper (Sec. 2.3, Alg. 1, App. E). The auxiliary variables ``u_k`` of every token
to generate are drawn up front; the k-th generated token is, by definition,
``t_k = Pick(u_k, P(. | t_<k))`` with P the teacher's final distribution (``ptp.sampling.warp``).

Every call of the one network (gate off = teacher, gate on = student) carries, in this row order:

1. pending tokens: accepted but not yet in the KV cache (normally the last accepted token);
2. the proposal ``d_1..d_n``: draft tokens for the next positions, not yet verified;
3. draft groups: for each acceptance hypothesis h ("d_1..d_h will be accepted") a window of
   ``g_h`` gated draft slots continuing after ``d_h``, carrying ``u`` of the positions they predict.

Phases of one call (``_step``):

* draft:   the proposer chooses the groups (``plan``); one forward computes all rows, with a tree
           attention mask so each group sees only the cache, the pending tokens and ``d_1..d_h``;
* verify:  teacher tokens ``tau_j = Pick(u_j, Q_j)`` from the gate-off rows, j = 1..n+1;
* accept:  ``a`` = length of the prefix where ``d_j == tau_j``; accept ``tau_1..tau_{a+1}`` (the
           matching drafts plus the teacher's correction, or a bonus token when all match);
* advance: crop the KV cache to the accepted rows; the group of hypothesis ``a`` (if drafted)
           becomes the next proposal.

Strategies: ``ar`` drafts nothing (one token per call, the baseline); ``verify`` alternates a
drafting call and a verifying call (Alg. 1 with a shared cache); ``pqd`` verifies and drafts in
every call, spreading a per-call row budget over hypotheses by the student's calibrated confidence
and the measured cost curve (``ptp.budget``). A draft head (``ptp.head``) drafts after the call
instead: the call returns the teacher's hidden states of the rows it keeps (``features``), and
the head's own small call turns them, the verified token and the next u into the next proposal.
Every drafter sits behind ``ptp.proposers.Proposer``; the verifier does not know which it is.

Exactness: accepted tokens are always ``tau``, computed from gate-off rows that are the teacher
bit for bit. In float32/float64 the three strategies give identical tokens (the teacher's logits
for a position differ between call shapes only by float rounding, ~1e-7 relative in float32, so a
token could differ only if u fell within that distance of a CDF boundary). In bfloat16 the same
holds with bf16 rounding (~1e-2 relative on logits): every token is the teacher's own pick in the
call that verified it, but it may differ from a bf16 ``ar`` run when u lies that close to a
boundary; use float32 when bit-identical output across strategies matters.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .budget import CostCurve
from .config import SamplingConfig
from .errors import UserError
from .hf_cache import cache_kwarg, output_cache
from .masks import additive_mask, tree_layout
from .features import capture_layer_input
from .proposers import DecodeState, HeadProposer, PromptLookupProposer, Proposer, StudentProposer
from .sampling import draw_uniform, pick, warp
from .student import Student, StudentBase

STRATEGIES = ("pqd", "verify", "ar", "pld")


def is_student(model: Any) -> bool:
    """A PTP student of either kind (gated LoRA or draft head), as opposed to a plain causal LM."""
    return isinstance(model, StudentBase)


def base_model(model: Any) -> Any:
    """The Hugging Face causal LM inside a student (the model itself otherwise)."""
    return model.model if is_student(model) else model


def verifier(model: Any) -> Any:
    """The network that verifies: a head student's teacher; the gated student or plain model itself."""
    return model.model if getattr(model, "kind", None) == "head" else model


@dataclass
class GenerationResult:
    """What ``generate`` returns (generated tokens only, never an unverified one)."""

    tokens: torch.Tensor  # (n,) int64, ends at the first EOS or at max_new_tokens
    u: torch.Tensor  # (max_new_tokens,) float64, u[k] belongs to the k-th generated token
    seed: int | None
    strategy: str
    calls: int  # model forward calls after the prompt
    accepted: list[int] = field(default_factory=list)  # new tokens per call
    rows: list[int] = field(default_factory=list)  # rows computed per call
    wall_time: float = 0.0  # seconds, decoding calls only (prompt prefill excluded)
    prefill_time: float = 0.0

    @property
    def tokens_per_call(self) -> float:
        return len(self.tokens) / max(self.calls, 1)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.wall_time if self.wall_time > 0 else float("inf")


def eos_token_ids(model: Any, tokenizer: Any = None) -> set[int]:
    """EOS ids of the model's generation config and config (chat models list their end-of-turn
    there), and of the tokenizer when given."""
    inner = base_model(model)
    ids: set[int] = set()
    sources = (getattr(inner, "generation_config", None), inner.config, tokenizer)
    for eos in (getattr(source, "eos_token_id", None) for source in sources):
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


def _forward(model: Any, ids: list[int], parents: list[int], draft: torch.Tensor, slot_u: torch.Tensor,
             cache: Any, past: int, feature_layer: int | None = None) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """One call over new rows arranged as a tree continuing a cache of ``past`` positions.

    Returns ``(logits (T, V), cache, features (T, H) or None)``: the hidden states entering
    decoder block ``feature_layer`` when a drafter asks for them. A plain chain needs no explicit
    mask (fast causal path).
    """
    if feature_layer is not None:
        with capture_layer_input(base_model(model), feature_layer) as captured:
            logits, cache, _ = _forward(model, ids, parents, draft, slot_u, cache, past)
        return logits, cache, captured[0][0]
    device = model.device
    chain = all(p == r - 1 for r, p in enumerate(parents))
    visible, positions = tree_layout(torch.tensor(parents), past)
    input_ids = torch.tensor([ids], device=device)
    position_ids = positions.unsqueeze(0).to(device)
    vis = None if chain else visible.unsqueeze(0).to(device)
    if isinstance(model, Student):  # the gated network itself (draft slots in the call)
        out = model(input_ids, draft=draft.unsqueeze(0).to(device), u=slot_u.unsqueeze(0).to(device),
                    position_ids=position_ids, visible=vis, past_key_values=cache, use_cache=True)
    else:
        mask = None if vis is None else additive_mask(vis, model.get_input_embeddings().weight.dtype)
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=True,
                    **{cache_kwarg(model): cache})
    return out.logits[0], output_cache(out), None


def _token_chain(model: Any, ids: list[int], cache: Any, past: int,
                 feature_layer: int | None = None) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """A plain call: ``ids`` as token rows (gate off) continuing a cache of ``past`` positions."""
    n = len(ids)
    return _forward(model, ids, list(range(-1, n - 1)), torch.zeros(n, dtype=torch.bool),
                    torch.full((n,), float("nan"), dtype=torch.float64), cache, past, feature_layer)


def _step(model: Any, state: DecodeState, proposer: Proposer, u: torch.Tensor, sampling: SamplingConfig,
          cache: Any) -> tuple[list[int], int, Any]:
    """One call: draft, verify, accept, advance. Returns (accepted tokens, rows, cache)."""
    # ---- draft: lay out pending tokens, the proposal and one slot window per hypothesis
    groups = proposer.plan(state)  # may shorten state.proposal
    pending, proposal = state.pending, state.proposal
    ids = pending + proposal
    parents = list(range(-1, len(ids) - 1))
    base = state.generated  # generated index of the first token after the pending ones
    slot_rows: dict[int, tuple[int, int]] = {}
    slot_u = [torch.full((len(ids),), float("nan"), dtype=torch.float64)]
    for h, g in sorted(groups.items()):
        anchor = len(pending) - 1 + h  # row of the last token this hypothesis assumes
        slot_rows[h] = (len(ids), g)
        parents += [anchor] + list(range(len(ids), len(ids) + g - 1))
        ids += [0] * g
        slot_u.append(model.slot_u(u[base + h : base + h + g]))
    draft = torch.zeros(len(ids), dtype=torch.bool)
    draft[len(pending) + len(proposal):] = True
    logits, cache, features = _forward(model, ids, parents, draft, torch.cat(slot_u), cache, state.cached,
                                       proposer.feature_layer)

    # ---- verify: the teacher's own picks with the same u at pending[-1] and every proposal row
    n = len(proposal)
    m = min(n + 1, u.shape[0] - base)  # no bonus token past the last u (it could not be kept)
    verify_rows = logits[len(pending) - 1 : len(pending) - 1 + m]  # (m, V)
    teacher = pick(u[base : base + m], warp(verify_rows, sampling), sampling.order).tolist()

    # ---- accept: matching prefix plus the teacher's token at the first mismatch (or a bonus)
    a = 0
    while a < n and proposal[a] == teacher[a]:
        a += 1
    new_tokens = teacher[: a + 1]

    # ---- advance: keep pending + accepted proposal rows in the cache, next proposal from group a
    drafts = {}
    for h, (start, g) in slot_rows.items():
        slot_logits = logits[start : start + g]
        tokens = model.draft_tokens(slot_logits, u[base + h : base + h + g], sampling.order)
        picked = slot_logits.float().gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        conf = (picked - slot_logits.float().logsumexp(-1)).exp().to(torch.float64)  # P(draft token)
        drafts[h] = (tokens, conf)
    kept = state.cached + len(pending) + a
    cache.crop(kept - (state.cached + len(ids)))
    state.cached = kept
    state.tokens += new_tokens
    proposer.observe(state, a, drafts, None if features is None else features[: len(pending) + a])
    return new_tokens, len(ids), cache


def make_proposer(model: Any, strategy: str, max_rows: int | None = None, cost: CostCurve | None = None,
                  num_draft: int | None = None) -> Proposer:
    if strategy == "ar":
        return Proposer()
    if strategy == "pld":
        return PromptLookupProposer()
    if getattr(model, "kind", None) == "head" and strategy in ("pqd", "verify"):
        if num_draft is not None and not 1 <= num_draft <= model.num_draft_tokens:
            raise UserError(f"draft_length={num_draft} is invalid: use 1..{model.num_draft_tokens} (the head's N)")
        return HeadProposer(model, num_draft or model.num_draft_tokens, cost=cost, max_rows=max_rows)
    if strategy in ("pqd", "verify"):
        if not isinstance(model, Student):
            raise UserError(f"strategy {strategy!r} needs a PTP student: load one with ptp.Student.from_pretrained, or use strategy='ar'")
        if num_draft is not None and not 2 <= num_draft <= model.num_draft_tokens:
            raise UserError(f"draft_length={num_draft} is invalid: use 2..{model.num_draft_tokens} (the student's N)")
        return StudentProposer(num_draft or model.num_draft_tokens, strategy, cost=cost, max_rows=max_rows)
    raise UserError(f"strategy={strategy!r} is invalid: use one of {', '.join(STRATEGIES)}")


def context_limit(model: Any) -> int | None:
    """The teacher's context in tokens (None when its config does not say)."""
    inner = base_model(model)
    return getattr(inner.config, "max_position_embeddings", None) or getattr(inner.config, "n_positions", None)


def measure_cost_curve(model: Any, context: int = 128) -> CostCurve:
    """Relative cost t(k)/t(1) of calls over k new rows after ``context`` cached tokens."""
    model = verifier(model)
    vocab = base_model(model).get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        _, cache, _ = _token_chain(model, ids, None, 0)

        def rows(k: int) -> None:
            nonlocal cache
            _, cache, _ = _token_chain(model, [1] * k, cache, context)
            cache.crop(-k)

        return CostCurve.measure(rows)


def _check_inputs(model: Any, input_ids: torch.Tensor, max_new_tokens: int, u: torch.Tensor | None) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise UserError(f"input_ids has batch size {ids.shape[0]}: generate takes one prompt at a time (batch size 1)")
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() == 0:
        raise UserError("input_ids is empty: pass a non-empty prompt")
    if int(max_new_tokens) <= 0:
        raise UserError(f"max_new_tokens={max_new_tokens!r} is invalid: use an integer >= 1")
    limit = context_limit(model)
    if limit is not None and ids.numel() + max_new_tokens > limit:
        raise UserError(
            f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of {limit}: shorten the prompt or lower max_new_tokens"
        )
    if u is not None and (u.dim() != 1 or u.numel() < max_new_tokens):
        raise UserError(f"u has shape {tuple(u.shape)}: pass a 1-D tensor with one value per generated token ({max_new_tokens})")
    return ids


@torch.no_grad()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    u: torch.Tensor | None = None,
    seed: int | None = None,
    strategy: str = "pqd",
    max_rows: int | None = None,
    draft_length: int | None = None,
    cost: CostCurve | None = None,
    proposer: Proposer | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens that are exactly the teacher's samples for ``u``.

    Args:
        model: a ``Student`` (any mode, trained or not) or a plain causal LM (``ar``/``pld`` only).
        input_ids: ``(T,)`` or ``(1, T)`` prompt token ids.
        sampling: the final distribution (temperature 0 = greedy).
        u: ``(max_new_tokens,)`` auxiliary variables; ``seed`` draws them; with neither a seed is
            drawn and returned in the result (greedy sampling in rank order uses u = 0).
        strategy: ``pqd`` (default), ``verify``, ``ar`` or ``pld`` (prompt lookup baseline).
        max_rows: cap on rows per call for ``pqd`` (None: chosen from the cost curve).
        draft_length: slots per draft window, at most the student's N (None: N).
        cost: cost curve t(k)/t(1) for ``pqd``; measured on the model when None.
        proposer: a custom proposer (overrides ``strategy``'s).
        on_tokens: called with each batch of newly verified tokens (for streaming).
    Returns:
        ``GenerationResult`` with ``tokens[k] == pick(u[k], warp(teacher(prompt + tokens[:k])))``.
    """
    ids = _check_inputs(model, input_ids, max_new_tokens, u)
    if u is None and sampling.greedy and sampling.order == "rank":
        # Any u gives the argmax under greedy sampling; in rank order u -> 0 is also the argmax at
        # every temperature, so a student trained on sampled text drafts the greedy continuation.
        u = torch.zeros(max_new_tokens, dtype=torch.float64)
    elif u is None:
        seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        u = draw_uniform(max_new_tokens, seed=seed)
    u = u.to(torch.float64).cpu()
    if proposer is None:
        if strategy == "pqd" and cost is None and max_rows is None:
            cost = cost_curve_for(model)
        proposer = make_proposer(model, strategy, max_rows=max_rows, cost=cost, num_draft=draft_length)
    eos = eos_token_ids(model)
    network = verifier(model)

    state = DecodeState(tokens=ids.tolist(), prompt_len=ids.numel(), max_new_tokens=max_new_tokens, u=u)
    start = time.perf_counter()
    cache, features = None, None
    if ids.numel() > 1:  # prefill all but the last prompt token; it is the first pending token
        _, cache, features = _token_chain(network, state.tokens[:-1], None, 0, proposer.feature_layer)
        state.cached = ids.numel() - 1
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache()
    proposer.observe(state, 0, {}, features)
    result = GenerationResult(tokens=torch.zeros(0, dtype=torch.long), u=u[:max_new_tokens], seed=seed,
                              strategy=strategy, calls=0, prefill_time=time.perf_counter() - start)
    start = time.perf_counter()
    out: list[int] = []
    while len(out) < max_new_tokens:
        call_start = time.perf_counter()
        new, rows, cache = _step(network, state, proposer, u, sampling, cache)
        proposer.record_call(rows, time.perf_counter() - call_start)
        new = new[: max_new_tokens - len(out)]
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        if stop is not None:
            new = new[: stop + 1]
        out += new
        result.calls += 1
        result.accepted.append(len(new))
        result.rows.append(rows)
        if on_tokens is not None:
            on_tokens(new)
        if stop is not None:
            break
    result.wall_time = time.perf_counter() - start
    result.tokens = torch.tensor(out, dtype=torch.long)
    return result


def cost_curve_for(model: Any) -> CostCurve:
    """The model's cost curve, measured once per model and dtype and remembered on the model."""
    curves = model.__dict__.setdefault("_ptp_cost_curves", {})
    key = str(model.dtype)
    if key not in curves:
        curves[key] = measure_cost_curve(model)
    return curves[key]
