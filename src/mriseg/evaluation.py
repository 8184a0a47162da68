"""Score a trained model on labelled data: each epoch's split during training, and the evaluate stage's test
split (held_out.py scores another archive with the same functions).

Two kinds of score: slice metrics (the tutorial's IoU as a mean over batches, dataset-level IoU and Dice
per tissue, the loss), and per-subject scores (Dice, IoU and volume error per tissue) - the numbers the
field reports, per case and then averaged. For a cohort of volumes a subject is scored in 3-D on its own
voxel grid, predicted exactly as `mriseg predict` predicts it; for a slice archive, over its slices.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import Feed
from .devices import autocast, inference_amp, rank_and_world, sum_over_ranks
from .metrics import (NUM_CLASSES, as_traced_scores, class_logits, compute_loss, confusion_matrix, confusion_of,
                      scores, subject_scores, tutorial_iou)

SUBJECT_COLUMNS = ["subject", "slices", "dice_white_matter", "dice_gray_matter", "iou_white_matter",
                   "iou_gray_matter", "volume_error_white_matter", "volume_error_gray_matter",
                   "white_matter_ml", "manual_white_matter_ml", "gray_matter_ml", "manual_gray_matter_ml"]


@torch.no_grad()
def evaluate(model, feed, device, amp="auto", loss="bce", activation="sigmoid"):
    """Loss, tutorial IoU (mean over batches) and confusion matrix of a model on a split's Feed. Under
    several processes each scores every world-th item and the sums are added up over the processes."""
    model.eval()
    rank, world = rank_and_world()
    total_loss = torch.zeros((), device=device)
    total_iou = torch.zeros((), device=device)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=device)
    batches = items = 0
    for xb, yb in feed(torch.arange(rank, feed.n, world)):
        with autocast(device, amp):
            logits = model(xb).float()
        total_loss += compute_loss(loss, logits, yb) * len(xb)
        total_iou += tutorial_iou(class_logits(logits, activation), yb)
        cm += confusion_matrix(logits, yb)
        batches, items = batches + 1, items + len(xb)
    # One copy to the device for the counts (no host synchronisation per batch), then sums over processes.
    sums = torch.stack([total_loss, total_iou, *torch.tensor([batches, items], dtype=torch.float32).to(device)])
    sum_over_ranks(sums, cm)
    loss_sum, iou_sum, batches, items = sums.tolist()
    return {"loss": loss_sum / max(items, 1), "iou": iou_sum / max(batches, 1), "confusion": cm.cpu()}


def score(model, ckpt, dataset, batch_size, device, with_confusion=False):
    """The tutorial's IoU (mean over batches of batch_size), dataset-level IoU/Dice per tissue, and the loss."""
    if batch_size < 1 or not len(dataset):
        raise ValueError(f"nothing to score ({len(dataset)} slices, batch size {batch_size})")
    amp = inference_amp(ckpt.get("train", {}).get("amp", True))
    r = evaluate(model, Feed(dataset, batch_size, device), device, amp, ckpt.get("loss", "bce"), ckpt["activation"])
    metrics = {"iou": r["iou"], **scores(r["confusion"]), "loss": r["loss"]}
    return (metrics, r["confusion"]) if with_confusion else metrics


def cohort_subject_scores(predictor, root, subjects):
    """Each subject of an unzipped cohort (cohort.py) predicted as `mriseg predict` predicts a volume (every
    view, probabilities averaged, back on its own voxel grid) and scored against its manual labels there
    (and against the labels as traced: metrics.as_traced_scores, where the unzip stage re-made their CSF).
    Returns (rows of the aggregate, {view: rows of that view alone} when there are several views)."""
    import nibabel as nib

    from .volumes import view_shape

    root = Path(root)
    meta = json.loads((root / "mriseg.json").read_text())
    rows, view_rows = [], {v.name: [] for v in predictor.views} if len(predictor.views) > 1 else {}
    for subject in subjects:
        rec = meta["subjects"][subject]
        volume = np.load(root / "volumes" / f"{subject}.image.npy")
        reference = nib.Nifti1Image(np.zeros(rec["native_shape"], np.uint8), np.array(rec["native_affine"]))
        truth = np.load(root / "volumes" / f"{subject}.native.npy")
        work_affine = np.array(rec["work_affine"])
        brain = root / "volumes" / f"{subject}.brainmask.npy"  # data.skull_strip extracted this head
        brain = np.load(brain).astype(bool) if brain.exists() else None
        traced = root / "volumes" / f"{subject}.traced.npy"  # the labels before data.csf re-made their CSF
        traced = np.load(traced) if traced.exists() else None

        def scored(probs, view):  # slices: what that view cuts (the first view's for the aggregate)
            pred = predictor.on_input_grid(probs, work_affine, reference)
            if brain is not None:
                pred[~brain] = 2  # as mriseg predict: tissue outside the extracted brain is background
            row = {"subject": subject, "slices": view_shape(volume.shape, view.axis)[0],
                   **subject_scores(confusion_of(pred, truth), rec["native_voxel_ml"])}
            if traced is not None:
                row.update(as_traced_scores(pred, traced))
            return row

        each = (lambda view, probs: view_rows[view.name].append(scored(probs, view))) if view_rows else None
        rows.append(scored(predictor.volume_probabilities(volume, each), predictor.views[0]))
    return rows, view_rows


def slice_subject_scores(model, ckpt, dataset, batch_size, device):
    """Each subject of a slice archive (make-archive's names) scored over its slices; none without names."""
    subjects = dataset.rows["subject"].to_numpy()
    rows = []
    for subject in sorted(set(subjects) - {""}):
        idx = np.nonzero(subjects == subject)[0].tolist()
        metrics, cm = score(model, ckpt, torch.utils.data.Subset(dataset, idx), batch_size, device, True)
        rows.append({"subject": subject, "slices": len(idx), "iou": metrics["iou"], "loss": metrics["loss"],
                     **subject_scores(cm)})
    return rows


def score_split(predictor, root, dataset, batch_size):
    """(slice metrics, per-subject rows, {view: per-subject rows}) of a split of an unzipped archive at root.

    A cohort's subjects are scored in 3-D, aggregated over the views and each view alone (slice metrics:
    none, the views cut different slices); a slice archive's over its slices by its one network."""
    from .manifest import archive_metadata

    if archive_metadata(root)["layout"] == "volumes":
        rows, view_rows = cohort_subject_scores(predictor, root, sorted(set(dataset.rows["subject"])))
        return {}, rows, view_rows
    device, ckpt = predictor.device, predictor.ckpt
    overall = score(predictor.model, ckpt, dataset, batch_size, device)
    return overall, slice_subject_scores(predictor.model, ckpt, dataset, batch_size, device), {}


def write_subjects(rows, path, view_rows=None):
    """One row per subject, scored = aggregate; with view_rows ({view: rows}) then one row per subject and
    view alone, so that each view's per-subject spread can be read next to the aggregate's."""
    from .io import atomic_path

    table = [{"scored": "aggregate", **r} for r in rows]
    table += [{"scored": view, **r} for view, each in (view_rows or {}).items() for r in each]
    columns = ["scored"] + SUBJECT_COLUMNS
    columns += [k for k in (table[0] if table else {}) if k not in columns]
    with atomic_path(path) as tmp:
        pd.DataFrame(table, columns=columns).to_csv(tmp, index=False, float_format="%.6g")
