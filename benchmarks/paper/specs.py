"""Which students each table of the paper suite needs (a spec shared by tables is trained once)."""

from __future__ import annotations

from dataclasses import replace

from scale import Scale
from training import RunSpec

OPTP = RunSpec()  # the default O-PTP: binary cross-entropy, teacher proposal, ar+lin, b = 1
CPTP = RunSpec(mode="c-ptp", loss="kl")  # the default C-PTP: KL to the teacher (Tables 5, 6)
MTP = RunSpec(mode="mtp", loss="ce")  # independent prediction: Eq. (11) with uninformative u (App. H)
TABLE4_LOSSES = (("c-ptp", "kl"), ("c-ptp", "rev-kl"), ("o-ptp", "bce"), ("o-ptp", "ce"))
PROPOSALS = ("teacher", "student", "dataset")
EMBEDDINGS = ("fl+lin", "fl+nn", "th+lin", "th+nn", "ar+lin", "ar+nn")
BETAS = (2.0, 1.0, 0.5)


def defaults(scale: Scale) -> tuple[RunSpec, RunSpec, RunSpec]:
    """The default O-PTP, C-PTP and MTP at the scale's N."""
    return tuple(replace(s, num_draft=scale.num_draft) for s in (OPTP, CPTP, MTP))  # type: ignore[return-value]


def table_specs(scale: Scale) -> dict[str, list[RunSpec]]:
    """The students of each table."""
    optp, cptp, mtp = defaults(scale)
    return {
        "table2": [replace(optp, loss="ce"), mtp],  # the paper's Table 2 students train on Eq. (10)
        "table4": [replace(optp, mode=m, loss=loss, proposal=p) for p in PROPOSALS for m, loss in TABLE4_LOSSES] + [mtp],
        "table5": [replace(base, aux_embedding=e) for base in (optp, cptp) for e in EMBEDDINGS] + [mtp],
        "table6": [replace(base, beta=b) for base in (optp, cptp) for b in BETAS] + [mtp],
        "table8": [replace(base, num_draft=n) for base in (optp, replace(optp, loss="ce"), mtp) for n in scale.table8_n],
        "order": [optp, replace(optp, order="rank"), replace(mtp, order="rank")],
    }


def curve_specs(scale: Scale) -> list[RunSpec]:
    """The students of the longer runs: the default O-PTP (bce), O-PTP with ce, C-PTP and MTP."""
    optp, cptp, mtp = defaults(scale)
    return [optp, replace(optp, loss="ce"), cptp, mtp]
