"""``dynamics.png``: one panel per metric, one line per arm (mean over seeds, band = +- one std)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from papo_tools.experiments.arms import SELECTABLE_ARMS
from papo_tools.experiments.summary import ACCURACY_KEY

PANELS: tuple[tuple[str, str], ...] = (
    (ACCURACY_KEY, "accuracy (share of rollouts right, 10-step moving mean)"),
    ("critic/score/mean", "reward (mean shaped score)"),
    ("papo/kl_prcp", "KL_prcp (original vs masked image)"),
    ("papo/entropy_ori", "H_ori (entropy est., original image)"),
    ("papo/entropy_aug", "H_aug (entropy est., masked image)"),
    ("response_length/mean", "response length (tokens)"),
    ("vppo/kept_frac", "VPPO kept-token fraction"),
    ("vppo/score_kept_mean", "VPPO mean s_t of kept tokens"),
    ("vppo/score_dropped_mean", "VPPO mean s_t of dropped tokens"),
)
SMOOTHED = {ACCURACY_KEY: 10}  # metric -> moving-mean window (steps): 40 rollouts a step are noisy
LOG_SCALE = ("papo/kl_prcp", "vppo/score_kept_mean", "vppo/score_dropped_mean")  # span orders of magnitude


def moving_mean(values, window: int):
    """Trailing mean over up to ``window`` steps (``(steps,)`` array in, same shape out)."""
    import numpy as np

    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    steps = np.arange(1, len(values) + 1)
    starts = np.maximum(steps - window, 0)
    return (sums[steps] - sums[starts]) / (steps - starts)


def arm_colours(arms: list[str]) -> dict[str, str]:
    """A matplotlib colour per arm: an experiment arm keeps its own in every figure, others follow in order."""
    fixed = {arm.name: f"C{index}" for index, arm in enumerate(SELECTABLE_ARMS)}
    others = [arm for arm in arms if arm not in fixed]
    return {arm: fixed.get(arm) or f"C{len(fixed) + others.index(arm)}" for arm in arms}


def plot_dynamics(summary: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw the summary's curves into ``path`` (PNG). Panels whose metric no arm has are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    panels = [(m, label) for m, label in PANELS if any(m in arm for arm in summary["arms"].values())]
    colours = arm_colours(list(summary["arms"]))
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (metric, label) in zip(axes.flat, panels, strict=False):
        for arm, arm_curves in summary["arms"].items():
            if metric not in arm_curves:
                continue
            mean = moving_mean(np.asarray(arm_curves[metric]), SMOOTHED.get(metric, 1))
            std = moving_mean(np.asarray(summary["spread"][arm][metric]), SMOOTHED.get(metric, 1))
            steps = np.arange(1, len(mean) + 1)
            ax.plot(steps, mean, label=arm, linewidth=1.6, color=colours[arm])
            if std.any():
                ax.fill_between(steps, mean - std, mean + std, color=colours[arm], alpha=0.15, linewidth=0)
        if metric in LOG_SCALE:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=colours[arm], linewidth=1.6) for arm in summary["arms"]]
    labels = list(summary["arms"])
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95 if title else 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
