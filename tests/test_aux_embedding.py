"""Properties of the embeddings of the auxiliary variable u (Sec. 3.1, Eq. 14, App. C.1)."""

from __future__ import annotations

import itertools
import re
import struct

import pytest
import torch

from ptp.aux_embedding import FEATURES, HEADS, AuxEmbedding, aux_features, parse_aux_embedding
from ptp.sampling import draw_uniform

HIDDEN = 24
SPECS = [f"{f}+{h}" for f, h in itertools.product(FEATURES, HEADS)]


def interesting_u() -> list[float]:
    """Random u plus the edges where the features flip: 0, 1/2, dyadic and tiny values, 1^-."""
    edges = [0.0, 0.5, 0.25, 0.75, 0.125, 1 / 3, 2**-30, 1e-30, 1e-45, 0.1, float.fromhex("0x1.fffffffffffffp-1")]
    return edges + draw_uniform(200, seed=0).tolist()


U = interesting_u()


def features(u: list[float], kind: str, n: int = 32) -> torch.Tensor:
    return aux_features(torch.tensor(u, dtype=torch.float64), kind, n)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("init_bias", [False, True])
def test_every_feature_and_head_maps_to_hidden(spec, init_bias):
    bias = torch.randn(HIDDEN) if init_bias else None
    emb = AuxEmbedding(HIDDEN, spec, n=16, init_bias=bias)
    u = draw_uniform(15, seed=1).reshape(3, 5)
    u[0, 0] = float("nan")
    out = emb(u)
    assert out.shape == (3, 5, HIDDEN) and out.dtype == torch.float32
    assert bool(out.isfinite().all())
    # u really enters the embedding: two u with different features give different vectors.
    assert not torch.equal(emb(torch.tensor([0.1], dtype=torch.float64)), emb(torch.tensor([0.9], dtype=torch.float64)))


@pytest.mark.parametrize("spec", SPECS)
def test_nan_u_gives_the_learned_null_vector(spec):
    emb = AuxEmbedding(HIDDEN, spec, n=8)
    with torch.no_grad():
        emb.null.copy_(torch.randn(HIDDEN))
    u = torch.tensor([[float("nan"), 0.3], [0.7, float("nan")]], dtype=torch.float64)
    out = emb(u)
    assert torch.equal(out[0, 0], emb.null) and torch.equal(out[1, 1], emb.null)
    assert not torch.equal(out[0, 1], emb.null)
    # The null vector gets gradients only from slots without u.
    out[0, 0].sum().backward()
    assert bool((emb.null.grad == 1).all())


def test_init_bias_sets_null_and_bias():
    bias = torch.randn(HIDDEN)
    for spec in SPECS:
        emb = AuxEmbedding(HIDDEN, spec, init_bias=bias)
        last = emb.head if emb.head_kind == "lin" else emb.head[-1]
        assert torch.equal(emb.null.detach(), bias) and torch.equal(last.bias.detach(), bias)


def test_bits_feature_is_ieee754_float32_of_u():
    got = features(U, "bits")
    assert got.shape == (len(U), 32)
    for row, u in zip(got, U):
        word = int.from_bytes(struct.pack(">f", u), "big")  # float32, rounded to nearest
        expected = [(word >> (31 - i)) & 1 for i in range(32)]  # sign bit first
        assert row.int().tolist() == expected, u


@pytest.mark.parametrize("n", [1, 7, 32, 60])
def test_ar_feature_matches_arithmetic_coding_formula(n):
    got = features(U, "ar", n)
    assert got.shape == (len(U), n)
    for row, u in zip(got, U):
        # e_i = 1{(u 2^(i-1)) mod 1 <= 0.5}, i = 1..n (exact in float64: scaling by 2^k is exact).
        expected = [float((u * 2 ** (i - 1)) % 1.0 <= 0.5) for i in range(1, n + 1)]
        assert row.tolist() == expected, u


@pytest.mark.parametrize("n", [1, 4, 10, 32])
def test_th_feature_matches_threshold_formula(n):
    u_values = U + [i / n for i in range(n + 1)]  # exactly on the thresholds
    got = features(u_values, "th", n)
    assert got.shape == (len(u_values), n)
    for row, u in zip(got, u_values):
        assert row.tolist() == [float(u <= i / n) for i in range(1, n + 1)], u


def test_fl_feature_is_u_itself():
    got = features(U, "fl")
    assert got.shape == (len(U), 1)
    assert torch.equal(got[:, 0], torch.tensor(U, dtype=torch.float64).float())


@pytest.mark.parametrize("spec", ["ar", "ar+", "+lin", "xx+lin", "ar+mlp", "ar+lin+nn", "", "bits-lin"])
def test_bad_spec_raises_value_error_naming_it(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        parse_aux_embedding(spec)
    with pytest.raises(ValueError, match="aux embedding"):
        AuxEmbedding(HIDDEN, spec)


def test_spec_parsing_is_case_and_space_tolerant():
    assert parse_aux_embedding(" AR + NN ") == ("ar", "nn")
