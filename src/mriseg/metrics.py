"""Segmentation metrics: the tutorial's batch IoU, and dataset-level IoU/Dice from a confusion matrix.

Everything stays on the device as tensors so a training step never waits for the host.
"""
import numpy as np
import torch
import torch.nn.functional as F

from . import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)  # confusion matrices are this size whatever a model predicts
TISSUES = (0, 1)  # white and gray matter; background is not scored
CSF = 3  # scored where the labels or the prediction hold any (a three-class model on three-class data: not)


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
    for c in scored_classes(cm):
        denom = tp[c] + fp[c] + fn[c]
        out[f"iou_{CLASS_NAMES[c]}"] = float(tp[c] / denom) if denom > 0 else 1.0
        out[f"dice_{CLASS_NAMES[c]}"] = float(2 * tp[c] / (denom + tp[c])) if denom > 0 else 1.0
    return out


def scored_classes(confusion):
    """White and gray matter, and CSF where the labels or the prediction hold any."""
    return TISSUES + ((CSF,) if confusion[CSF].sum() + confusion[:, CSF].sum() > 0 else ())


def confusion_of(pred, truth):
    """counts[true, predicted] of two label arrays (numpy), as confusion_matrix gives for logits."""
    idx = np.asarray(truth, np.int64).ravel() * NUM_CLASSES + np.asarray(pred, np.int64).ravel()
    return torch.from_numpy(np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES))


def subject_scores(confusion, voxel_ml=None):
    """One subject's row: Dice and IoU per tissue, and each tissue's volume error (predicted - manual) /
    manual; with voxel_ml, both volumes in ml too."""
    cm = confusion.double()
    row = scores(confusion)
    for c in scored_classes(cm):
        name, predicted, manual = CLASS_NAMES[c], float(cm[:, c].sum()), float(cm[c].sum())
        row[f"volume_error_{name}"] = (predicted - manual) / manual if manual else float("nan")
        if voxel_ml is not None:
            row[f"{name}_ml"], row[f"manual_{name}_ml"] = predicted * voxel_ml, manual * voxel_ml
    return row


def summarize(rows, keys=None):
    """{key: {"mean", "sd"}} across subjects (sd with n - 1; 0 for a single subject)."""
    keys = keys or [k for k in rows[0] if k.startswith(("dice_", "iou_", "volume_error_"))]
    keys = [k for k in keys if all(k in r for r in rows)]  # CSF where every subject was scored for it
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], np.float64)
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def compute_loss(name, logits, target):
    """logits [N,C,H,W] float32 (C = the model's classes, 3 or 4), target [N,H,W] integer labels."""
    if name == "bce":  # the tutorial: independent sigmoids on one-hot masks
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, onehot)
    ce = F.cross_entropy(logits, target.long())
    if name == "ce":
        return ce
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + 1)
    return ce + 1 - dice.mean()


def class_logits(logits, activation):
    """Per-class log-odds, so the tutorial's sigmoid > 0.5 rule means p(class) > 0.5 for softmax models too."""
    if activation == "sigmoid":
        return logits
    logp = logits.log_softmax(dim=1)
    return logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-6))


# Scored against the labels as traced too, where data.csf re-made their CSF (IBSR's gray matter holds the
# sulcal CSF): a model of the field's convention scores lower there, and that gap is the convention's.
AS_TRACED = ("dice_gray_matter", "volume_error_gray_matter")


def as_traced_scores(pred, traced):
    """{`<key>_as_traced`: score} of a prediction against the labels as their tracers drew them (AS_TRACED)."""
    scored = subject_scores(confusion_of(pred, traced))
    return {f"{key}_as_traced": scored[key] for key in AS_TRACED}
