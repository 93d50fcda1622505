"""Plots of PolySRL training runs (matplotlib, written to PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_training(history: list[dict], path) -> Path:
    """Loss, contrastive/KL parts, c and b, and mean sigma per epoch."""
    from jaxmat.plotting import pyplot

    plt = pyplot()

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["loss"] for r in history], "o-", label="total")
    axes[0].plot(epochs, [r["contrastive"] for r in history], "s--", label="contrastive")
    axes[0].set_yscale("log")
    axes[0].set_title("loss per batch (mean over epoch)")
    axes[0].legend()
    axes[1].plot(epochs, [r["c"] for r in history], "o-", label="c (negative scale)")
    axes[1].plot(epochs, [r["b"] for r in history], "s-", label="b (shift)")
    axes[1].set_title("learnable logit scale and shift")
    axes[1].legend()
    if "mean_sigma" in history[0]:
        axes[2].plot(epochs, [r["mean_sigma"] for r in history], "o-")
        axes[2].set_yscale("log")
    axes[2].set_title("mean sigma")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
