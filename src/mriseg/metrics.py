"""Segmentation metrics: the tutorial's batch IoU, and dataset-level IoU/Dice from a confusion matrix.

Everything stays on the device as tensors so a training step never waits for the host.
"""
import torch

from . import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
TISSUES = (0, 1)  # white and gray matter; background is not scored


def tutorial_iou(logits, target):
    """The tutorial's IoU of one batch: sigmoid > 0.5 against one-hot masks, per image and class
    (smoothing 1e-6), mean over the batch, then over white and gray matter."""
    pred = logits[:, list(TISSUES)] > 0  # sigmoid(x) > 0.5  <=>  x > 0
    true = torch.stack([target == c for c in TISSUES], dim=1)
    inter = (pred & true).sum(dim=(2, 3)).float()
    union = (pred | true).sum(dim=(2, 3)).float()
    return ((inter + 1e-6) / (union + 1e-6)).mean()


def confusion_matrix(logits, target):
    """counts[true, predicted] over all pixels, predicted = argmax of the logits."""
    pred = logits.argmax(dim=1)
    idx = target.long().flatten() * NUM_CLASSES + pred.flatten()
    return torch.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def scores(confusion):
    """Per-class IoU and Dice of the tissues from a confusion matrix (dataset level)."""
    cm = confusion.double()
    tp = cm.diagonal()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    out = {}
    for c in TISSUES:
        denom = tp[c] + fp[c] + fn[c]
        out[f"iou_{CLASS_NAMES[c]}"] = float(tp[c] / denom) if denom > 0 else 1.0
        out[f"dice_{CLASS_NAMES[c]}"] = float(2 * tp[c] / (denom + tp[c])) if denom > 0 else 1.0
    return out
