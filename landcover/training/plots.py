"""Figures written into the model folder (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and Spaces
    import matplotlib.pyplot as plt
    return plt


def confusion_matrix_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                         title: str = "Test confusion matrix") -> None:
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 1.0 + 0.7 * n), dpi=110)
    ax.imshow(cm, cmap="Blues")
    peak = max(max(row) for row in cm) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i][j] > peak / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def training_curves_png(history: Sequence[dict], path: str | Path) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (augmented)")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
