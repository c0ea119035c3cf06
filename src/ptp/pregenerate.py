"""Teacher completions for every prompt, sampled once and stored as shards that training consumes.

Layout of ``DIR/data`` (every file written atomically):

* ``shard-00000.safetensors``, ...: a contiguous range of examples each, holding
  ``tokens`` (int32, all examples' tokens concatenated), ``offsets`` (int64, ``n + 1``: example j
  is ``tokens[offsets[j]:offsets[j+1]]``), ``prompt_lens`` (int32, ``n``: tokens before the first
  teacher-sampled token), ``examples`` (int64, ``n``: example indices) and ``lo``/``hi`` (float64,
  aligned with ``tokens``): the interval ``[F_{t-1}, F_t)`` of u that makes the teacher pick each
  token it sampled (Eq. 9), computed from the very distribution it was sampled from. Every other
  position holds NaN there: prompts and chat-template tokens are dataset text, not teacher samples.
* ``index.json``: the configuration the shards were made with, the number of examples and the
  shards written so far. A shard counts only once the index lists it, so a killed run resumes
  with the next example and never duplicates or loses one.

An example is a prompt and its completion, or a whole conversation: a row whose messages are
several user turns and no assistant turn (``ptp.data.is_multi_turn``) is answered turn by turn
as in a chat, each answer of the teacher becoming the assistant message before the next user
turn. Its ``tokens`` are the chat-templated conversation (``ptp.data.turn_pieces``: template
piece 0, answer 0, piece 1, answer 1, ...; a piece that begins with the EOS token ending the
answer before it does not repeat it), with finite ``lo``/``hi`` at every answer token. A later
turn is answered only while the conversation so far plus that turn's piece fit in
``max_prompt_tokens``; the conversation stops at the first turn that does not fit.

Sampling is Eq. (2) with the experiment's SamplingConfig: token k of turn t of example i is
``pick(u_{t K + k}, warp(logits))`` (K = ``completion_tokens``) with ``u`` drawn from a seed
derived from (experiment seed, i), so the output does not depend on batch size, shard size or
resumption (up to floating-point differences between batch shapes, which can only flip a token
whose u lies within rounding of a boundary).

Sampling is continuously batched (``SlotBatch``): up to ``batch_size`` sequences decode together
in a KV cache of fixed-size column blocks, a finished one leaves the batch at once and new
prompts, shortest first, are prefilled in groups when enough rows are free. No call decodes past
a sequence's end or over padding rows; the KV columns left of a shorter sequence are masked.
Teachers without sdpa attention or whose cache is not a plain per-layer key/value cache (sliding
windows, state-space layers) fall back to rectangular batches (``sample_completions``).
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import SamplingConfig
from .data import check_context, load_rows, turn_pieces
from .errors import UserError
from .hf_cache import cache_kwarg, output_cache
from .experiment import Experiment
from .locks import experiment_lock
from .io import index_problem, inside, remove_stale_temps, write_bytes, write_json
from .generate import eos_token_ids
from .models import load_teacher, load_tokenizer
from .sampling import draw_uniform, pick, token_interval, warp

DATA_DIR = "data"
INDEX_FILE = "index.json"
SHARD_FORMAT = "ptp-completions-1"
INDEX_FIELDS = {"format": str, "config": dict, "num_examples": int, "done": int, "complete": bool, "shards": list}
SHARD_FIELDS = {"file": str}  # what is read of a shard entry
SHARD_TENSORS = {"tokens", "offsets", "prompt_lens", "examples", "lo", "hi"}
# Candidate counts tried per row before warp's full sort: a top-p set rarely needs more than 64.
CANDIDATES = (64, 1024)
PREFILL_TOKENS = 8192  # prompt tokens (padding included) per prefill call
SAMPLE_ELEMENTS = 3 << 20  # logits per chunk of rows in _sample_rows (24 MB in float64)
ONE_QUERY_ATTENTION = "ptp_one_query"
BLOCK = 64  # KV columns per block of SlotBatch's cache
# SlotBatch's cache layers while it runs the teacher, for _one_query_attention.
_SLOTS: ContextVar[list[Any] | None] = ContextVar("ptp_slots", default=None)


@dataclass
class PregenerateConfig:
    """How pregeneration runs; none of it changes the data produced.

    Attributes:
        batch_size: sequences decoded together (continuous batching with a KV cache, whose memory
            grows with batch_size times the longest sequence: 2.3 MB per 100 tokens of a
            sequence for SmolLM2-135M in bfloat16).
        shard_size: examples per shard file, the unit a killed run resumes from.
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        progress: show a progress bar with tokens per second.
    """

    batch_size: int = 128
    shard_size: int = 256
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}, shard_size={self.shard_size!r}: use integers >= 1")


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse (a process-wide setting, for pregeneration jobs).

    By default glibc returns every freed block above its mmap threshold (at most 32 MB) to the
    OS, and the next allocation of it page-faults it back in: pregeneration allocates such
    blocks at every call (a batch's logits in float64, prefill activations), which costs about a
    tenth of its time. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option in (-3, -1):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        libc.mallopt(option, 1 << 30)


def example_seed(seed: int, index: int) -> int:
    """Seed of example ``index``'s u, independent of every other example (a hash, no collisions
    between nearby (seed, index) pairs as a sum or product would give)."""
    digest = hashlib.sha256(f"ptp-u:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def fingerprint(experiment: Experiment) -> dict[str, Any]:
    """Everything the shards' content depends on; resuming under another fingerprint is refused."""
    data = asdict(experiment.data)
    keep = ("dataset", "split", "prompt_column", "messages_column", "prompt_format", "max_prompt_tokens",
            "completion_tokens", "limit", "shuffle", "seed")
    return {
        "teacher": experiment.model.teacher,
        "teacher_dtype": experiment.model.teacher_dtype,
        "data": {k: data[k] for k in keep},
        "sampling": experiment.sampling.to_dict(),
    }


# ---------------------------------------------------------------- sampling a batch of rows


def _top(logits: torch.Tensor, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of ``(n, V)`` weights and their ids, decreasing, ties by increasing id
    (warp's rank order; up to which ids tied at the k-th value are chosen).

    Chosen by ``logits``, which the weights grow with (a top-k in the model's dtype costs half
    one in float64), and ordered by the weights.
    """
    ids = logits.topk(k, dim=-1).indices.sort(dim=-1).values
    values, perm = weights.gather(-1, ids).sort(dim=-1, descending=True, stable=True)
    return values, ids.gather(-1, perm)


def warped_candidates(logits: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``warp(logits, cfg)`` restricted to the tokens it keeps.

    ``warp`` decides the top-p set on its float64 softmax over the whole vocabulary and sorts the
    vocabulary of every row whenever one row's set exceeds 64 tokens; here the same softmax
    decides the same set, but each row looks only as far as it needs (64, 1024, then all tokens).

    Args:
        logits: ``(B, V)`` next-token logits of any float dtype.
    Returns:
        ``(ids, probs)``, each ``(B, C)``: the kept tokens of each row in increasing id order,
        then padding (id 0, probability 0), and their float64 probabilities, warp's up to
        rounding. ``pick(u, probs, cfg.order)`` is then an index into ``ids`` and
        ``token_interval(probs, index, cfg.order)`` its interval, as on warp's ``(B, V)`` output.
    """
    batch, vocab = logits.shape
    if cfg.greedy:
        return logits.argmax(-1, keepdim=True), torch.ones(batch, 1, dtype=torch.float64, device=logits.device)
    top_k = 0 < cfg.top_k < vocab
    if not top_k and cfg.top_p >= 1.0:  # plain temperature keeps every token
        return torch.arange(vocab, device=logits.device).expand(batch, vocab), warp(logits, cfg)
    scores = logits.to(torch.float64) / cfg.temperature  # (B, V) as in warp
    if top_k:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[..., -1:]
        scores = torch.where(scores < kth, float("-inf"), scores)
    weights = scores.softmax(-1)  # (B, V): warp's top-p weights, bit for bit
    keep_ids: list[torch.Tensor | None] = [None] * batch
    pending = torch.arange(batch, device=logits.device)
    for count in [*(c for c in CANDIDATES if c < vocab), vocab]:
        rows = slice(None) if len(pending) == batch else pending
        values, ids = _top(logits[rows], weights[rows], count)  # (n, count)
        keep = values > 0  # tokens top-k dropped have weight 0
        if cfg.top_p < 1.0:
            keep &= values.cumsum(-1) - values < cfg.top_p  # mass before each token, as warp
            keep[:, 0] = True
        kept = keep.sum(-1, keepdim=True)
        # Exact once a row drops a candidate below its last kept one (no unseen token can be kept).
        done = (kept < count) & (values.gather(-1, kept - 1) > values[:, -1:]) if count < vocab else torch.ones_like(keep[:, :1])
        for row, row_ids, row_keep in zip(pending[done[:, 0]].tolist(), ids[done[:, 0]], keep[done[:, 0]]):
            keep_ids[row] = row_ids[row_keep].sort().values
        pending = pending[~done[:, 0]]
        if len(pending) == 0:
            break
    width = max(len(k) for k in keep_ids)
    ids = torch.zeros(batch, width, dtype=torch.long, device=logits.device)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=logits.device)
    for row, row_ids in enumerate(keep_ids):
        ids[row, : len(row_ids)] = row_ids
        valid[row, : len(row_ids)] = True
    # The final distribution is the softmax over the kept tokens, as warp's over masked scores.
    probs = torch.where(valid, scores.gather(-1, ids), float("-inf")).softmax(-1)
    return ids, probs


def _sample_rows(logits: torch.Tensor, u: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, ...]:
    """Eq. (2) and (9) for ``(B, V)`` logits and ``(B,)`` u: ``(tokens, lo, hi)``, each ``(B,)``.

    Rows go in chunks whose float64 temporaries stay under 32 MB, glibc's largest mmap threshold:
    a larger block is unmapped when freed and page-faulted in again at the next call, which costs
    as much as the arithmetic.
    """
    rows = max(1, SAMPLE_ELEMENTS // logits.shape[-1])
    parts = []
    for a in range(0, len(logits), rows):
        ids, probs = warped_candidates(logits[a : a + rows], cfg)
        index = pick(u[a : a + rows], probs, cfg.order)
        lo, hi = token_interval(probs, index, cfg.order)
        parts.append((ids.gather(-1, index[:, None])[:, 0], lo, hi))
    return tuple(torch.cat(p) for p in zip(*parts))


@torch.inference_mode()
def sample_completions(
    teacher: torch.nn.Module, prompts: list[list[int]], u: torch.Tensor, sampling: SamplingConfig, eos_ids: set[int]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Sample one completion per prompt in one rectangular batch (left padding, a KV cache).

    Finished rows decode on until the last one ends; ``SlotBatch`` avoids that where the
    teacher's cache allows.

    Args:
        prompts: B prompts' token ids (non-empty).
        u: ``(B, K)`` auxiliary variables: token k of row b is ``pick(u[b, k], warp(logits))``.
        eos_ids: tokens that end a completion (kept as its last token).
    Returns:
        Per prompt ``(tokens int64, lo float64, hi float64)`` of its completion (at most K tokens).
    """
    device = teacher.get_input_embeddings().weight.device
    batch, new = u.shape
    input_ids, mask, positions = _left_padded(prompts, device)
    u = u.to(device)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    tokens = torch.zeros(batch, new, dtype=torch.long, device=device)
    lo = torch.zeros(batch, new, dtype=torch.float64, device=device)
    hi = torch.zeros_like(lo)
    lengths = torch.full((batch,), new, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = teacher(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **_last_logits(teacher))
    for k in range(new):
        tokens[:, k], lo[:, k], hi[:, k] = _sample_rows(out.logits[:, -1], u[:, k], sampling)
        ended = ~done & torch.isin(tokens[:, k], eos)
        lengths[ended] = k + 1
        done |= ended
        if k == new - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = teacher(input_ids=tokens[:, k : k + 1], attention_mask=mask, position_ids=positions, use_cache=True,
                      **{cache_kwarg(teacher): output_cache(out)})
    return [(tokens[r, :n].cpu(), lo[r, :n].cpu(), hi[r, :n].cpu()) for r, n in enumerate(lengths.tolist())]


def _left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each ``(B, W)``, of left-padded prompts.

    Positions count real tokens only, so a padded row sees exactly the positions it would alone.
    """
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return input_ids.to(device), mask.to(device), positions.to(device)


def _last_logits(teacher: torch.nn.Module) -> dict[str, int]:
    """Keyword asking for the last position's logits only (the output layer is a large share of a call)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(teacher.forward).parameters else {}


# ---------------------------------------------------------------- continuous batching


def _one_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except in a SlotBatch decoding call: matmuls over its cache blocks.

    Decoding many sequences one token at a time, CPU's fused attention kernel costs several times
    two small matmuls, and a half-precision matmul over a strided view of one large buffer copies
    it first; SlotBatch's blocks are contiguous, so nothing is copied.

    Shapes there: query ``(B, H, 1, D)``, blocks ``(S, Hkv, BLOCK, D)``, boolean mask
    ``(B, 1, 1, L)`` (True: visible). Returns ``(B, 1, H, D)``.
    """
    layers = _SLOTS.get()
    if layers is None or query.shape[2] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    layer = layers[module.layer_idx]
    batch, heads, _, dim = query.shape
    width, key_blocks, value_blocks = layer.width, layer.blocks[0], layer.blocks[1]
    count = -(-width // BLOCK)  # blocks holding columns [0, width)
    # Query heads grouped by the key/value head they share (repeat_kv's layout).
    grouped = query.reshape(batch, key_blocks[0].shape[1], -1, dim)
    scores = torch.cat([torch.matmul(grouped, block[:batch].transpose(2, 3)) for block in key_blocks[:count]], -1)
    scores = scores[..., :width] * (dim**-0.5 if scaling is None else scaling)  # (B, Hkv, G, width)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.pad(weights, (0, count * BLOCK - width))  # columns past the frontier: weight 0
    out = torch.zeros(grouped.shape, dtype=torch.float32, device=query.device)
    for b, block in enumerate(value_blocks[:count]):
        out += torch.matmul(weights[..., b * BLOCK : (b + 1) * BLOCK], block[:batch])
    return out.to(query.dtype).reshape(batch, 1, heads, dim), None


@contextmanager
def _decoding_attention(teacher: torch.nn.Module) -> Iterator[None]:
    """Run an sdpa teacher with ``_one_query_attention`` (same masks) inside the block."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ONE_QUERY_ATTENTION, _one_query_attention)
    AttentionMaskInterface.register(ONE_QUERY_ATTENTION, sdpa_mask)
    teacher.config._attn_implementation = ONE_QUERY_ATTENTION
    try:
        yield
    finally:
        teacher.config._attn_implementation = "sdpa"


@dataclass
class Request:
    """One completion to sample: ``prompt`` token ids and ``(K,)`` u; ``owner`` is the caller's."""

    prompt: list[int]
    u: torch.Tensor
    owner: Any = None


Completion = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # tokens int64, lo, hi float64, each (n,)


def _slot_batch_fits(teacher: torch.nn.Module) -> bool:
    """Whether SlotBatch can run the teacher: sdpa attention (which it replaces) and a plain
    key/value cache per layer (found with a one-token call)."""
    from transformers.cache_utils import DynamicLayer

    if getattr(teacher.config, "_attn_implementation", None) != "sdpa":
        return False
    device = teacher.get_input_embeddings().weight.device
    with torch.inference_mode():
        cache = output_cache(teacher(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True))
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.keys is not None for layer in layers)


def _slot_layer_class() -> type:
    """``_SlotLayer``, defined on first use so importing ptp does not import transformers."""
    global _SlotLayer
    if "_SlotLayer" in globals():
        return _SlotLayer
    from transformers.cache_utils import DynamicLayer

    class _SlotLayer(DynamicLayer):
        """One layer's KV cache in SlotBatch: ``blocks`` (keys, values), lists of ``(S, Hkv, BLOCK, D)``
        tensors; column c is offset ``c % BLOCK`` of block ``c // BLOCK``.

        A call writes column ``width`` of the first ``rows`` rows. ``_one_query_attention`` reads
        the blocks; ``update`` returns no tensors, so that any other attention fails loudly.
        """

        def __init__(self, blocks: tuple[list[torch.Tensor], list[torch.Tensor]], width: int) -> None:
            super().__init__()
            self.blocks, self.width, self.rows = blocks, width, 0
            self.is_initialized = True

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """Nothing to do: the blocks exist from the start."""

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[None, None]:
            block, offset = divmod(self.width, BLOCK)
            for blocks, states in zip(self.blocks, (key_states, value_states)):
                blocks[block][: self.rows, :, offset] = states[:, :, 0]  # (m, Hkv, D)
            self.width += 1
            return None, None

        def get_seq_length(self) -> int:
            return self.width

    globals()["_SlotLayer"] = _SlotLayer
    return _SlotLayer


class SlotBatch:
    """Continuous batching: up to ``slots`` sequences decode together, one token each per call.

    Every live sequence occupies a prefix row of the KV cache, right-aligned at the shared
    frontier ``width`` (the column the next call writes), so one 2-D mask (columns
    ``>= width - length``) and per-row positions describe the batch. A finished sequence leaves
    at once (the last row moves into its place); new requests are prefilled in length-sorted
    groups once at least ``slots // 8`` rows are free. The cache is a list of blocks of BLOCK
    columns: a block no live sequence reaches any more is dropped (kept for reuse), and blocks
    are added at either end as sequences grow or longer prompts arrive, without moving the rest.
    """

    def __init__(self, teacher: torch.nn.Module, sampling: SamplingConfig, eos_ids: set[int], slots: int, new_tokens: int) -> None:
        """``new_tokens``: K, the most tokens sampled per request (the length of its u)."""
        self.teacher, self.sampling, self.slots, self.new_tokens = teacher, sampling, slots, new_tokens
        self.device = teacher.get_input_embeddings().weight.device
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=self.device)
        self.cache: Any = None  # a transformers Cache of _SlotLayer, made from the first prefill
        self.spare: list[list[torch.Tensor]] = []  # per layer: dropped blocks, keys and values alike
        self.rows = 0  # live sequences, rows [0, rows) of every buffer
        self.requests: list[Request] = []
        dev = {"device": self.device}
        self.lengths = torch.zeros(slots, dtype=torch.long, **dev)  # tokens in the cache per row
        self.steps = torch.zeros(slots, dtype=torch.long, **dev)  # tokens sampled per row
        self.last = torch.zeros(slots, dtype=torch.long, **dev)  # each row's latest token, the next input
        self.u = torch.zeros(slots, new_tokens, dtype=torch.float64, **dev)
        self.tokens = torch.zeros(slots, new_tokens, dtype=torch.long, **dev)
        self.lo = torch.zeros(slots, new_tokens, dtype=torch.float64, **dev)
        self.hi = torch.zeros_like(self.lo)

    @property
    def width(self) -> int:
        return self.cache.layers[0].width

    @torch.inference_mode()
    def run(self, take: Callable[[int], list[Request]]) -> Iterator[tuple[Request, Completion]]:
        """Sample every request ``take(n)`` hands out (at most n at a time, ``[]`` when none is
        ready), yielding each with its completion as it finishes. Requests may be added while this
        runs (e.g. a conversation's next turn); it ends when ``take`` has none and none is live."""
        while True:
            free = self.slots - self.rows
            if self.rows == 0 or free >= max(1, self.slots // 8):
                new = take(free)
                yield from self._admit(new)
                if self.rows == 0:
                    if not new:
                        return
                    continue
            yield from self._step()

    def _admit(self, requests: list[Request]) -> Iterator[tuple[Request, Completion]]:
        """Prefill requests in length-sorted groups, sample their first tokens, give them rows."""
        requests = sorted(requests, key=lambda r: len(r.prompt))
        while requests:
            # A group's prompts differ in length by at most a quarter (little padding) and fit PREFILL_TOKENS.
            count, shortest = 1, len(requests[0].prompt)
            while (count < len(requests) and 4 * len(requests[count].prompt) <= 5 * shortest
                   and (count + 1) * len(requests[count].prompt) <= PREFILL_TOKENS):
                count += 1
            group, requests = requests[:count], requests[count:]
            ids, mask, positions = _left_padded([r.prompt for r in group], self.device)
            out = self.teacher(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               **_last_logits(self.teacher))
            u = torch.stack([r.u for r in group]).to(self.device)
            tokens, lo, hi = _sample_rows(out.logits[:, -1], u[:, 0], self.sampling)
            ended = (torch.isin(tokens, self.eos) | (self.new_tokens == 1)).tolist()
            for request, end, token, a, b in zip(group, ended, tokens, lo, hi):
                if end:
                    yield request, (token[None].cpu(), a[None].cpu(), b[None].cpu())
            live = [row for row, end in enumerate(ended) if not end]
            if live:
                self._place([group[row] for row in live], output_cache(out), torch.tensor(live, device=self.device), ids.shape[1])
                rows = slice(self.rows - len(live), self.rows)
                self.u[rows], self.steps[rows], self.last[rows] = u[live], 1, tokens[live]
                self.tokens[rows, 0], self.lo[rows, 0], self.hi[rows, 0] = tokens[live], lo[live], hi[live]

    def _place(self, requests: list[Request], prefill: Any, rows: torch.Tensor, width: int) -> None:
        """Give new last rows to ``requests``, whose caches are prefill ``rows`` (left-padded to
        ``width``): the prefill's columns land on ``[frontier - width, frontier)``."""
        if self.cache is None:
            self.cache = _new_cache([(layer.keys, layer.values) for layer in prefill.layers], self.slots, width)
            self.spare = [[] for _ in prefill.layers]
        elif width > self.width:
            self._add_blocks(-(-(width - self.width) // BLOCK), front=True)
        first, n = self.rows, self.width
        for layer, source in zip(self.cache.layers, prefill.layers):
            for blocks, states in zip(layer.blocks, (source.keys, source.values)):
                states = states[rows] if len(rows) < states.shape[0] else states  # (R, Hkv, width, D)
                for b in range((n - width) // BLOCK, -(-n // BLOCK)):
                    start, stop = max(n - width, b * BLOCK), min(n, (b + 1) * BLOCK)
                    target = blocks[b][first : first + len(requests), :, start - b * BLOCK : stop - b * BLOCK]
                    # Padding columns are masked, but a zero weight times NaN would still be NaN.
                    torch.nan_to_num(states[:, :, start - n + width : stop - n + width], out=target)
        self.lengths[first : first + len(requests)] = torch.tensor([len(r.prompt) for r in requests], device=self.device)
        self.requests += requests
        self.rows += len(requests)

    def _add_blocks(self, count: int, front: bool) -> None:
        """Add ``count`` blocks to every layer, at the end or in front (moving the columns right)."""
        for layer, spare in zip(self.cache.layers, self.spare):
            for blocks in layer.blocks:
                new = [spare.pop() if spare else torch.zeros_like(blocks[0]) for _ in range(count)]
                blocks[:] = new + blocks if front else blocks + new
            if front:
                layer.width += count * BLOCK

    def _drop_blocks(self, count: int) -> None:
        """Drop the first ``count`` blocks of every layer (no live column is there)."""
        for layer, spare in zip(self.cache.layers, self.spare):
            for blocks in layer.blocks:
                spare += blocks[:count]  # stale but finite: safe to reuse as masked columns
                del blocks[:count]
            layer.width -= count * BLOCK

    def _step(self) -> Iterator[tuple[Request, Completion]]:
        """One call over the live rows; yields the requests that finished."""
        m = self.rows
        dead = self.width - int(self.lengths[:m].max())
        if dead >= BLOCK:
            self._drop_blocks(dead // BLOCK)
        if self.width == len(self.cache.layers[0].blocks[0]) * BLOCK:
            self._add_blocks(1, front=False)
        n = self.width
        for layer in self.cache.layers:
            layer.rows = m
        lengths = self.lengths[:m]
        mask = torch.arange(n + 1, device=self.device) >= (n - lengths)[:, None]  # (m, n + 1)
        token = _SLOTS.set(self.cache.layers)
        try:
            out = self.teacher(input_ids=self.last[:m, None], attention_mask=mask.long(), position_ids=lengths[:, None],
                               use_cache=True, **{cache_kwarg(self.teacher): self.cache})
        finally:
            _SLOTS.reset(token)
        lengths += 1
        rows = torch.arange(m, device=self.device)
        steps = self.steps[:m]
        tokens, lo, hi = _sample_rows(out.logits[:, -1], self.u[rows, steps], self.sampling)
        self.tokens[rows, steps], self.lo[rows, steps], self.hi[rows, steps] = tokens, lo, hi
        self.last[:m] = tokens
        steps += 1
        ended = (torch.isin(tokens, self.eos) | (steps == self.new_tokens)).nonzero()[:, 0].tolist()
        finished = []
        for row in reversed(ended):  # descending: the row moved into a finished one is live
            k = int(self.steps[row])
            # Copies: the row's buffers are reused by the next request.
            finished.append((self.requests[row], tuple(b[row, :k].to("cpu", copy=True) for b in (self.tokens, self.lo, self.hi))))
            self._remove(row)
        yield from reversed(finished)

    def _remove(self, row: int) -> None:
        """Drop row ``row``: the last live row takes its place."""
        last = self.rows - 1
        if row != last:
            for layer in self.cache.layers:
                for blocks in layer.blocks:
                    for block in blocks:
                        block[row] = block[last]
            for buffer in (self.lengths, self.steps, self.last, self.u, self.tokens, self.lo, self.hi):
                buffer[row] = buffer[last]
            self.requests[row] = self.requests[last]
        self.requests.pop()
        self.rows = last


def _new_cache(shapes: list[tuple[torch.Tensor, torch.Tensor]], slots: int, width: int) -> Any:
    """A transformers Cache of ``_SlotLayer`` with ``slots`` rows, blocks shaped after each layer's
    prefill keys and values, enough for columns ``[0, width]``."""
    from transformers.cache_utils import Cache

    count = width // BLOCK + 1
    layers = []
    for keys, values in shapes:
        blocks = tuple([torch.zeros(slots, t.shape[1], BLOCK, t.shape[3], dtype=t.dtype, device=t.device) for _ in range(count)]
                       for t in (keys, values))
        layers.append(_slot_layer_class()(blocks, width))
    return Cache(layers=layers)


def sample_requests(teacher: torch.nn.Module, take: Callable[[int], list[Request]], sampling: SamplingConfig,
                    eos_ids: set[int], batch_size: int, new_tokens: int) -> Iterator[tuple[Request, Completion]]:
    """``SlotBatch(...).run(take)``, or rectangular ``sample_completions`` batches for a teacher
    SlotBatch cannot run (``_slot_batch_fits``). Arguments as SlotBatch's."""
    if _slot_batch_fits(teacher):
        with _decoding_attention(teacher):
            yield from SlotBatch(teacher, sampling, eos_ids, batch_size, new_tokens).run(take)
        return
    while batch := take(batch_size):
        u = torch.stack([r.u for r in batch])
        yield from zip(batch, sample_completions(teacher, [r.prompt for r in batch], u, sampling, eos_ids))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} is not available here: use --device cpu")
    return device


def _read_index(data_dir: Path, expected: dict[str, Any], num_examples: int) -> dict[str, Any]:
    """The index of a previous run (checked against this configuration), or a fresh one."""
    path = data_dir / INDEX_FILE
    if not path.is_file():
        return {"format": SHARD_FORMAT, "config": expected, "num_examples": num_examples, "done": 0, "complete": False, "shards": []}
    index = _load_json(path)
    if index["config"] != expected or index["num_examples"] != num_examples:
        raise _made_otherwise(data_dir)
    return index


def _made_otherwise(data_dir: Path) -> UserError:
    return UserError(f"{data_dir} was generated with another configuration or dataset: delete {data_dir} to regenerate, "
                     "or restore the experiment.yaml and dataset it was made with")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}): delete its directory and rerun ptp pregenerate") from None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise UserError(f"{path} is not a ptp pregeneration index: delete its directory and rerun ptp pregenerate")
    problem = index_problem(index, INDEX_FIELDS, SHARD_FIELDS)
    if problem:
        raise UserError(f"{path} is damaged ({problem}): delete its directory and rerun ptp pregenerate")
    return index


# ---------------------------------------------------------------- examples and shards


@dataclass
class _Conversation:
    """An example in progress: its template pieces (``ptp.data.turn_pieces``), u and what is written so far.

    ``tokens``/``lo``/``hi`` are chunks that concatenate to the example: piece 0, answer 0, piece 1, ...
    """

    example: int
    pieces: list[list[int]]
    u: torch.Tensor  # (len(pieces) * K,) float64
    max_context: int
    eos_ids: set[int]
    tokens: list[torch.Tensor] = field(default_factory=list)
    lo: list[torch.Tensor] = field(default_factory=list)
    hi: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._append_text(self.pieces[0])

    def _append_text(self, ids: list[int]) -> None:
        nan = torch.full((len(ids),), float("nan"), dtype=torch.float64)
        self.tokens.append(torch.tensor(ids, dtype=torch.int64))
        self.lo.append(nan)
        self.hi.append(nan)

    @property
    def turn(self) -> int:
        return len(self.tokens) // 2  # answers so far

    def request(self) -> Request:
        """The request for the next answer: the conversation so far and this turn's u."""
        k = len(self.u) // len(self.pieces)
        return Request(torch.cat(self.tokens).tolist(), self.u[self.turn * k : (self.turn + 1) * k], self)

    def answer(self, completion: Completion) -> Request | None:
        """Add the teacher's answer; the request for the next turn, or None when the example is done."""
        tokens, lo, hi = completion
        self.tokens.append(tokens)
        self.lo.append(lo)
        self.hi.append(hi)
        if self.turn == len(self.pieces):
            return None
        piece = self.pieces[self.turn]
        if piece and piece[0] == int(tokens[-1]) in self.eos_ids:  # the template closes the turn with the EOS just sampled
            piece = piece[1:]
        if sum(map(len, self.tokens)) + len(piece) > self.max_context:
            return None  # the next turn does not fit: the conversation stops here
        self._append_text(piece)
        return self.request()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens, lo, hi)`` of the whole example, each ``(T,)``."""
        return torch.cat(self.tokens), torch.cat(self.lo), torch.cat(self.hi)


def _write_shard(path: Path, conversations: list[_Conversation]) -> int:
    """Write one shard of finished examples atomically; returns its number of teacher-sampled tokens."""
    parts = [c.tensors() for c in conversations]
    offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(t) for t, _, _ in parts], dtype=torch.int64).cumsum(0)
    lo = torch.cat([p[1] for p in parts])
    tensors = {
        "tokens": torch.cat([p[0] for p in parts]).to(torch.int32),
        "offsets": offsets,
        "prompt_lens": torch.tensor([len(c.pieces[0]) for c in conversations], dtype=torch.int32),
        "examples": torch.tensor([c.example for c in conversations], dtype=torch.int64),
        "lo": lo,
        "hi": torch.cat([p[2] for p in parts]),
    }
    # Serialized here and written by write_bytes: safetensors' own save_file writes through a
    # temporary file of its own (.tmpXXXXXX), which a kill would leave behind.
    write_bytes(path, save(tensors, metadata={"format": SHARD_FORMAT}))
    return int((~lo.isnan()).sum())


class _Feed:
    """Requests in the order SlotBatch should take them: next turns of conversations first, then
    the examples of the next shard from the shortest prompt up. Shards load as they are reached."""

    def __init__(self, make: Callable[[int], _Conversation], start: int, stop: int, shard_size: int) -> None:
        self.make, self.next_example, self.stop, self.shard_size = make, start, stop, shard_size
        self.turns: deque[Request] = deque()
        self.fresh: deque[Request] = deque()
        self.shards: deque[dict[int, _Conversation | None]] = deque()  # loaded, unwritten: example -> done

    def take(self, n: int) -> list[Request]:
        out: list[Request] = []
        while len(out) < n:
            if self.turns:
                out.append(self.turns.popleft())
            elif self.fresh:
                out.append(self.fresh.popleft())
            elif self.next_example < self.stop:
                self._load_shard()
            else:
                break
        return out

    def _load_shard(self) -> None:
        examples = range(self.next_example, min(self.stop, self.next_example + self.shard_size))
        self.next_example = examples.stop
        conversations = [self.make(i) for i in examples]
        self.shards.append(dict.fromkeys(examples))
        self.fresh.extend(sorted((c.request() for c in conversations), key=lambda r: len(r.prompt)))

    def finished(self, conversation: _Conversation) -> list[list[_Conversation]]:
        """Record a finished example; the shards that are now complete, in order."""
        for shard in self.shards:
            if conversation.example in shard:
                shard[conversation.example] = conversation
        complete = []
        while self.shards and all(c is not None for c in self.shards[0].values()):
            complete.append(list(self.shards.popleft().values()))
        return complete


def pregenerate(directory: str | Path, run: PregenerateConfig | None = None) -> dict[str, Any]:
    """``_pregenerate`` holding the experiment's lock (``ptp.locks``: one process per experiment)."""
    with experiment_lock(directory, "pregenerate"):
        return _pregenerate(directory, run)


def _pregenerate(directory: str | Path, run: PregenerateConfig | None = None) -> dict[str, Any]:
    """Sample the teacher's completions for every example of the experiment in ``directory``.

    Resumes where a previous run stopped. Returns the index (as written to ``data/index.json``)
    plus ``"new_tokens"`` and ``"seconds"`` of this run.
    """
    run = run or PregenerateConfig()
    directory = Path(directory)
    experiment = Experiment.load(directory)
    data, model = experiment.data, experiment.model
    if data.data_mode != "completions":
        raise UserError(f"{directory} uses data mode {data.data_mode!r}: ptp train reads its text directly, no pregeneration needed")
    data_dir = directory / DATA_DIR
    remove_stale_temps(data_dir)  # left by a run killed mid-write
    tokenizer = load_tokenizer(model.teacher, trust_remote_code=model.trust_remote_code)
    rows = load_rows(data)
    index = _read_index(data_dir, fingerprint(experiment), len(rows))
    stats = {"new_tokens": 0, "seconds": 0.0}
    from .head_data import pregenerated_features  # a head experiment also caches the teacher's features

    if index["complete"]:
        return {**index, **stats, **pregenerated_features(directory, experiment, _device(run.device), run.batch_size,
                                                          run.shard_size, run.progress)}

    device = _device(run.device)
    teacher = load_teacher(model.teacher, dtype=getattr(torch, model.teacher_dtype), trust_remote_code=model.trust_remote_code).to(device)
    check_context(data, teacher.config)  # experiment.yaml may have been edited since ptp distill
    eos_ids = eos_token_ids(teacher, tokenizer)

    def conversation(i: int) -> _Conversation:
        pieces = turn_pieces(rows[i], i, data, tokenizer)
        u = draw_uniform(data.completion_tokens * len(pieces), seed=example_seed(data.seed, i))
        return _Conversation(i, pieces, u, data.max_prompt_tokens, eos_ids)

    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    with tqdm(total=len(rows), initial=index["done"], unit="ex", desc="pregenerate", disable=not run.progress) as bar:
        while not index["complete"]:
            # One batch per shard, started afresh: a shard's bytes then depend on the shard alone
            # (rows that share a batch share its shapes, hence its rounding), so a run resumed
            # after a kill writes exactly what the uninterrupted run writes.
            feed = _Feed(conversation, index["done"], min(len(rows), index["done"] + run.shard_size), run.shard_size)
            _sample_shard(teacher, feed, experiment.sampling, eos_ids, run.batch_size, data.completion_tokens,
                          data_dir, index, len(rows), stats, bar, start_time)
    stats["seconds"] = time.perf_counter() - start_time
    return {**index, **stats, **pregenerated_features(directory, experiment, device, run.batch_size, run.shard_size, run.progress)}


def _sample_shard(teacher: torch.nn.Module, feed: "_Feed", sampling: SamplingConfig, eos_ids: set[int], batch_size: int,
                  new_tokens: int, data_dir: Path, index: dict[str, Any], num_rows: int, stats: dict[str, Any], bar: Any,
                  start_time: float) -> None:
    """Sample the conversations of ``feed`` (one shard), write the shard and list it in the index."""
    for request, completion in sample_requests(teacher, feed.take, sampling, eos_ids, batch_size, new_tokens):
        stats["new_tokens"] += len(completion[0])
        follow_up = request.owner.answer(completion)
        if follow_up is not None:
            feed.turns.append(follow_up)
            continue
        bar.update(1)
        bar.set_postfix_str(f"{stats['new_tokens'] / (time.perf_counter() - start_time):.0f} tok/s")
        for shard in feed.finished(request.owner):
            name = f"shard-{len(index['shards']):05d}.safetensors"
            count = _write_shard(data_dir / name, shard)
            start, stop = shard[0].example, shard[-1].example + 1
            index["shards"].append({"file": name, "start": start, "stop": stop, "completion_tokens": count})
            index["done"] = stop
            index["complete"] = stop == num_rows
            # The shard is on disk before the index names it: a kill in between only leaves an
            # unlisted file that the next run overwrites.
            write_json(data_dir / INDEX_FILE, index)


def load_shards(directory: str | Path, require_complete: bool = True) -> list[dict[str, Any]]:
    """The pregenerated examples of an experiment directory, in example order.

    Returns:
        One dict per example: ``tokens`` (int64 ``(T,)``, prompt then completion), ``prompt_len``
        (int), ``lo``/``hi`` (float64 ``(T,)``, the u interval of each completion token; NaN at
        the ``prompt_len`` prompt positions) and ``example`` (its index in the dataset order).
    Raises:
        UserError: no pregenerated data, unfinished pregeneration (with ``require_complete``),
            or a missing or damaged shard.
    """
    data_dir = Path(directory) / DATA_DIR
    path = data_dir / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{directory} has no pregenerated data: run ptp pregenerate {directory}")
    index = _load_json(path)
    if index["config"] != fingerprint(Experiment.load(directory)):  # e.g. another teacher: its vocabulary may differ
        raise _made_otherwise(data_dir)
    if require_complete and not index["complete"]:
        raise UserError(f"pregeneration in {directory} stopped at example {index['done']} of {index['num_examples']}: rerun ptp pregenerate {directory} to finish it")
    examples = []
    for shard in index["shards"]:
        file = inside(data_dir, shard.get("file") if isinstance(shard, dict) else None, str(path))
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"shard {data_dir / shard['file']} is missing or damaged ({e}): delete {data_dir} and rerun ptp pregenerate") from None
        if not SHARD_TENSORS <= set(tensors):
            raise UserError(f"shard {data_dir / shard['file']} is damaged (no {', '.join(sorted(SHARD_TENSORS - set(tensors)))}): "
                            f"delete {data_dir} and rerun ptp pregenerate")
        offsets = tensors["offsets"].tolist()
        for j, example in enumerate(tensors["examples"].tolist()):
            a, b = offsets[j], offsets[j + 1]
            examples.append({
                "tokens": tensors["tokens"][a:b].to(torch.int64),
                "prompt_len": int(tensors["prompt_lens"][j]),
                "lo": tensors["lo"][a:b],
                "hi": tensors["hi"][a:b],
                "example": example,
            })
    return examples
