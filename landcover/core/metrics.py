"""Classification metrics from a confusion matrix.

Hand-written rather than torchmetrics: the whole module is one ``bincount`` and per-class ratios that run on any
device inside accelerate's gather, and torchmetrics would be a further dependency of every install for them.
"""

from __future__ import annotations

from typing import Sequence

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[true, predicted]`` counts (int64, on the inputs' device)."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def report(cm: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1/support from a confusion matrix."""
    cm = cm.detach().cpu().double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    n = int(cm.sum().item())
    per_class = {
        name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
               "f1": round(float(f1[i]), 6), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / max(n, 1)),
        "macro_f1": float(f1.mean()),
        "n": n,
        "per_class": per_class,
        "confusion_matrix": cm.long().tolist(),
    }
