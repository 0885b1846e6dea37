"""The demo's figure: samples on the two-mode task per decoder, and error against latency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from driftkit.demo.tasks import Task  # noqa: E402


def plot_suite(rows: list[dict], models: dict, bimodal: Task, path: Path, n_samples: int = 32) -> None:
    trained = [(label, m) for (task, label), m in models.items() if task == bimodal.name]
    cols = max(len(trained), 1)
    fig = plt.figure(figsize=(2.2 * cols, 6.4))
    grid = fig.add_gridspec(2, cols, height_ratios=[1, 1.4])
    batch = bimodal.sample(1, torch.Generator().manual_seed(3))
    steps = torch.arange(1, bimodal.target_shape[0] + 1)
    for i, (label, model) in enumerate(trained):
        ax = fig.add_subplot(grid[0, i])
        samples = model.sample(batch.cond, n_samples, generator=torch.Generator().manual_seed(0))[0, :, :, 0]
        for mode in batch.modes[0, :, :, 0]:
            ax.plot(steps, mode, color="black", lw=2.5, alpha=0.35)
        ax.plot(steps, samples.T, color="tab:blue", lw=0.8, alpha=0.5)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(-2.2, 2.2)
        ax.tick_params(labelsize=6)
    ax = fig.add_subplot(grid[1, :])
    labels = list(dict.fromkeys(r["decoder"] for r in rows))
    colour = {label: plt.cm.tab20(i % 20) for i, label in enumerate(labels)}
    for task, marker in (("bimodal", "o"), ("precision", "s")):
        for r in (r for r in rows if r["task"] == task):
            ax.scatter(r["ms_per_chunk"], r["err"], marker=marker, s=30, color=colour[r["decoder"]])
            ax.annotate(f"{r['decoder']}", (r["ms_per_chunk"], r["err"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("ms per chunk (batch 1, CPU)")
    ax.set_ylabel("error, 1 sample (RMS to nearest mode)")
    ax.set_title("error vs latency: circles = bimodal chunk, squares = precision interval", fontsize=9)
    fig.suptitle("top: 32 samples for one condition on the two-mode task (grey = true modes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
