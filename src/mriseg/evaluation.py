"""Score a trained model on labelled data: the evaluate stage's test split, or every subject of another
archive (`mriseg evaluate`), such as subjects the project never saw.

Two kinds of score: slice metrics (the tutorial's IoU as a mean over batches, dataset-level IoU and Dice
per tissue, the loss), and per-subject scores (Dice, IoU and volume error per tissue) - the numbers the
field reports, per case and then averaged. For a cohort of volumes a subject is scored in 3-D on its own
voxel grid, predicted exactly as `mriseg predict` predicts it; for a slice archive, over its slices.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .metrics import confusion_of, scores, subject_scores
from .training import Feed, evaluate

SUBJECT_COLUMNS = ["subject", "slices", "dice_white_matter", "dice_gray_matter", "iou_white_matter",
                   "iou_gray_matter", "volume_error_white_matter", "volume_error_gray_matter",
                   "white_matter_ml", "manual_white_matter_ml", "gray_matter_ml", "manual_gray_matter_ml"]


def score(model, ckpt, dataset, batch_size, device, with_confusion=False):
    """The tutorial's IoU (mean over batches of batch_size), dataset-level IoU/Dice per tissue, and the loss."""
    if batch_size < 1 or not len(dataset):
        raise ValueError(f"nothing to score ({len(dataset)} slices, batch size {batch_size})")
    amp = ckpt.get("train", {}).get("amp", True)
    r = evaluate(model, Feed(dataset, batch_size, device), device, amp, ckpt.get("loss", "bce"), ckpt["activation"])
    metrics = {"iou": r["iou"], **scores(r["confusion"]), "loss": r["loss"]}
    return (metrics, r["confusion"]) if with_confusion else metrics


def cohort_subject_scores(predictor, root, subjects):
    """Each subject of an unzipped cohort (cohort.py) predicted as `mriseg predict` predicts a volume (all
    its slices, probabilities back on its own voxel grid) and scored against its manual labels there."""
    import nibabel as nib

    root = Path(root)
    meta = json.loads((root / "mriseg.json").read_text())
    rows = []
    for subject in subjects:
        rec = meta["subjects"][subject]
        slices = np.load(root / "volumes" / f"{subject}.image.npy", mmap_mode="r")
        reference = nib.Nifti1Image(np.zeros(rec["native_shape"], np.uint8), np.array(rec["native_affine"]))
        pred = predictor.on_input_grid(predictor.probabilities(slices), np.array(rec["work_affine"]), reference)
        truth = np.load(root / "volumes" / f"{subject}.native.npy")
        rows.append({"subject": subject, "slices": rec["slices"],
                     **subject_scores(confusion_of(pred, truth), rec["native_voxel_ml"])})
    return rows


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


def score_split(model, ckpt, root, dataset, batch_size, device):
    """(slice metrics, per-subject rows) of a split of an unzipped archive at root."""
    from .data import archive_metadata
    from .prediction import Predictor

    overall = score(model, ckpt, dataset, batch_size, device)
    if archive_metadata(root)["layout"] == "volumes":
        subjects = sorted(set(dataset.rows["subject"]))
        rows = cohort_subject_scores(Predictor.from_model(model, ckpt, device, batch_size), root, subjects)
    else:
        rows = slice_subject_scores(model, ckpt, dataset, batch_size, device)
    return overall, rows


def write_subjects(rows, path):
    from .io import atomic_path

    extra = [k for k in (rows[0] if rows else {}) if k not in SUBJECT_COLUMNS]
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=SUBJECT_COLUMNS + extra).to_csv(tmp, index=False, float_format="%.6g")


def mismatches(meta, ckpt):
    """How an archive's slices differ from those the model was trained on (axis, pixel size, normalisation),
    for what the archive's MRIs/mriseg.json records (the tutorial's archives record nothing). A model trained on
    such an archive records no pixel size either: nothing to compare with."""
    return [f"{key} {meta[key]} (model: {ckpt.get(key)})" for key in ("axis", "pixel_size_mm", "normalization")
            if key in meta and ckpt.get(key) is not None and meta[key] != ckpt[key]]


def unpack_archive(archive, root, ckpt, labels=None):
    """Validate and unpack a slice archive or a cohort of volumes into root, the latter sliced as the model
    was trained (its plane and pixel size) with labels mapped by `labels` (default ibsr)."""
    from .archive import extract_archive
    from .cohort import holds_volumes, prepare_cohort

    if holds_volumes(archive):
        pixel = ckpt.get("pixel_size_mm")
        prepare_cohort(archive, root, labels=labels or "ibsr", axis=ckpt["axis"],
                       pixel_size=pixel[0] if pixel else None)
    else:
        extract_archive(archive, root)


def evaluate_archive(checkpoint, archive, device="auto", batch_size=32, labels=None, log=print):
    """{'overall': metrics, 'subjects': {subject: metrics}} of a checkpoint on every subject of an archive.

    Overall metrics are the evaluate stage's (reports/metrics.json) with the number of slices; subjects come
    from a cohort's volumes or make-archive's file names (none for archives without them).
    """
    from .data import MANIFEST_COLUMNS, SliceDataset, list_pairs
    from .models import load_checkpoint
    from .training import pick_device

    device = pick_device(device, where="--device")
    model, ckpt = load_checkpoint(checkpoint, device)
    context = int(ckpt.get("context", 0))
    with tempfile.TemporaryDirectory(prefix="mriseg-evaluate-") as tmp:
        root = Path(tmp) / "MRIs"
        unpack_archive(archive, root, ckpt, labels)
        manifest = pd.DataFrame(list_pairs(root)).assign(split="test")[MANIFEST_COLUMNS]
        if context and (manifest["slice"] < 0).any():
            log(f"evaluate: note: {archive}: image names carry no subject and slice (sub-<id>_slice-<n>_<ix>.npy), "
                f"so each slice stands in for its {context} neighbour(s) each side")
        recorded = root / "mriseg.json"
        for what in mismatches(json.loads(recorded.read_text()) if recorded.exists() else {}, ckpt):
            log(f"evaluate: note: {archive}: slices differ from the model's training slices: {what} "
                f"(rebuild it with `mriseg make-archive --like {checkpoint}`)")
        dataset = SliceDataset(manifest, "test", context)
        overall, rows = score_split(model, ckpt, root, dataset, batch_size, device)
    return {"archive": str(archive), "model": str(checkpoint), "overall": {**overall, "slices": len(dataset)},
            "subjects": {r["subject"]: {k: v for k, v in r.items() if k != "subject"} for r in rows}}


def format_table(result):
    columns = ["slices", "iou", "dice_white_matter", "dice_gray_matter", "iou_white_matter", "iou_gray_matter",
               "volume_error_white_matter", "volume_error_gray_matter"]
    table = pd.DataFrame({**result["subjects"], "all": result["overall"]}).T.reindex(columns=columns)
    table["slices"] = table["slices"].astype(int)
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="")
