"""Embeddings of the auxiliary variable u (Sec. 3.1, Eq. 14 and App. C.1).

A feature map turns u in [0, 1) into a vector, and a head (``lin``: affine, ``nn``: a small MLP)
maps it to the teacher's embedding space. Features:

* ``fl``   the scalar u itself.
* ``th``   n thresholds, ``e_i = 1{u <= i / n}``.
* ``ar``   n arithmetic-coding bits, ``e_i = 1{(u 2^(i-1)) mod 1 <= 0.5}`` (the paper's best, default).
* ``bits`` the 32 IEEE-754 bits of float32 u (Eq. 14).

Draft slots that carry no u (the first C-PTP slot, every MTP slot) are marked with NaN and get a
learned ``null`` vector instead.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = ("fl", "th", "ar", "bits")
HEADS = ("lin", "nn")


def parse_aux_embedding(spec: str) -> tuple[str, str]:
    """``"ar+lin"`` -> ``("ar", "lin")``; raises ValueError naming the accepted values."""
    parts = spec.lower().replace(" ", "").split("+")
    if len(parts) != 2 or parts[0] not in FEATURES or parts[1] not in HEADS:
        raise ValueError(
            f"aux embedding {spec!r} is invalid: use FEATURE+HEAD with FEATURE in {FEATURES} and HEAD in {HEADS}"
        )
    return parts[0], parts[1]


def aux_features(u: torch.Tensor, kind: str, n: int) -> torch.Tensor:
    """``(...)`` u -> ``(..., d)`` float32 features (``d = 1`` for fl, 32 for bits, n otherwise)."""
    u64 = u.to(torch.float64).nan_to_num(0.0)
    if kind == "fl":
        return u64.unsqueeze(-1).float()
    if kind == "th":
        steps = torch.arange(1, n + 1, dtype=torch.float64, device=u.device) / n
        return (u64.unsqueeze(-1) <= steps).float()
    if kind == "ar":
        scales = 2.0 ** torch.arange(n, dtype=torch.float64, device=u.device)
        return (torch.remainder(u64.unsqueeze(-1) * scales, 1.0) <= 0.5).float()
    if kind == "bits":
        as_int = u64.float().view(torch.int32).unsqueeze(-1)
        shifts = torch.arange(31, -1, -1, dtype=torch.int32, device=u.device)
        return ((as_int >> shifts) & 1).float()
    raise ValueError(f"unknown aux feature {kind!r}: use one of {FEATURES}")


class AuxEmbedding(nn.Module):
    """Maps u (NaN = no u) to ``(..., hidden)`` input embeddings of draft slots."""

    def __init__(self, hidden_size: int, spec: str = "ar+lin", n: int = 32, init_bias: torch.Tensor | None = None):
        super().__init__()
        self.feature, self.head_kind = parse_aux_embedding(spec)
        self.n = n
        in_dim = {"fl": 1, "bits": 32}.get(self.feature, n)
        if self.head_kind == "lin":
            self.head = nn.Linear(in_dim, hidden_size)
        else:
            self.head = nn.Sequential(nn.Linear(in_dim, 4 * in_dim), nn.GELU(), nn.Linear(4 * in_dim, hidden_size))
        self.null = nn.Parameter(torch.zeros(hidden_size))
        if init_bias is not None:
            # Start draft slots near an average token embedding, so the frozen teacher sees
            # in-distribution inputs from the first step; u enters as a small perturbation.
            last = self.head if self.head_kind == "lin" else self.head[-1]
            with torch.no_grad():
                scale = init_bias.float().std().item() or 1.0
                last.weight.normal_(0.0, scale / in_dim**0.5)
                last.bias.copy_(init_bias.float())
                self.null.copy_(init_bias.float())

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: (...) -> (..., hidden)
        emb = self.head(aux_features(u, self.feature, self.n).to(self.null.dtype))
        return torch.where(torch.isnan(u).unsqueeze(-1), self.null.expand_as(emb), emb)
