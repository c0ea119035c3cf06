"""The longer runs' figure: #correct and first-slot accuracy against training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptp.io import atomic_path


def label(spec: dict[str, Any]) -> str:
    """``O-PTP (bce)``, ``C-PTP (kl)``, ``MTP``."""
    mode = {"o-ptp": "O-PTP", "c-ptp": "C-PTP", "mtp": "MTP"}[spec["mode"]]
    return mode if spec["mode"] == "mtp" else f"{mode} ({spec['loss']})"


def plot_curves(curves: dict[str, Any], path: Path) -> None:
    """Two panels: #correct (N tokens per call) and the share of right first tokens, per step;
    the second with the share a u-ignoring argmax predictor gets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for run in curves["runs"].values():
        steps = [p["step"] for p in run["points"]]
        left.errorbar(steps, [p["correct"] for p in run["points"]], yerr=[2 * p["sem"] for p in run["points"]],
                      marker="o", capsize=3, label=label(run["spec"]))
        right.plot(steps, [p["first_slot"] for p in run["points"]], marker="o", label=label(run["spec"]))
    right.axhline(curves["argmax_share"], color="grey", linestyle="--", label="argmax, ignoring u")
    n = next(iter(curves["runs"].values()))["spec"]["num_draft"]
    left.set(xscale="log", xlabel="training steps", ylabel=f"#correct of N = {n}", title="#correct (± 2 s.e.)")
    right.set(xscale="log", xlabel="training steps", ylabel="share", title="first token right")
    for ax in (left, right):
        ax.set_xticks(steps, [str(k) for k in steps])
        ax.minorticks_off()
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
