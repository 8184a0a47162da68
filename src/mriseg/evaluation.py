"""Score a trained model on labelled slices: the evaluate stage's test split, or every pair of another
archive (`mriseg evaluate`), such as one made by `mriseg make-archive` from subjects the project never saw."""
import tempfile
from pathlib import Path

import pandas as pd
import torch

from .metrics import scores
from .training import evaluate


def score(model, ckpt, x, y, batch_size, device):
    """The tutorial's IoU (mean over batches of batch_size), dataset-level IoU/Dice per tissue, and the loss."""
    if batch_size < 1 or not len(x):
        raise ValueError(f"nothing to score ({len(x)} slices, batch size {batch_size})")
    amp = ckpt.get("train", {}).get("amp", True)
    r = evaluate(model, x, y, batch_size, device, amp, ckpt.get("loss", "bce"), ckpt["activation"])
    return {"iou": r["iou"], **scores(r["confusion"]), "loss": r["loss"]}


def mismatches(meta, ckpt):
    """How an archive's slices differ from those the model was trained on (axis, pixel size, normalisation),
    for what the archive's MRIs/mriseg.json records (the tutorial's archives record nothing). A model trained on
    such an archive records no pixel size either: nothing to compare with."""
    return [f"{key} {meta[key]} (model: {ckpt.get(key)})" for key in ("axis", "pixel_size_mm", "normalization")
            if key in meta and ckpt.get(key) is not None and meta[key] != ckpt[key]]


def load_archive(archive, context, log=print):
    """Every pair of a zip in the tutorial's layout as (images [N,C,H,W], masks [N,H,W], rows, metadata).

    The zip is validated and extracted like the unzip stage does, into a temporary folder. Slices whose
    names carry no subject and slice (the tutorial's archives) stand in for their own neighbours.
    """
    import json

    from .archive import extract_archive
    from .data import MANIFEST_COLUMNS, list_pairs, load_split

    with tempfile.TemporaryDirectory(prefix="mriseg-evaluate-") as tmp:
        root = Path(tmp) / "MRIs"
        extract_archive(archive, root)
        manifest = pd.DataFrame(list_pairs(root)).assign(split="test")[MANIFEST_COLUMNS]
        named = bool((manifest["slice"] >= 0).all())
        if context and not named:
            log(f"evaluate: note: {archive}: image names carry no subject and slice (sub-<id>_slice-<n>_<ix>.npy), "
                f"so each slice stands in for its {context} neighbour(s) each side")
        x, y, rows = load_split(manifest, "test", context if named else 0)
        if context and not named:
            x = x.repeat(1, 2 * context + 1, 1, 1)
        meta = root / "mriseg.json"
        return x, y, rows, json.loads(meta.read_text()) if meta.exists() else {}


def evaluate_archive(checkpoint, archive, device="auto", batch_size=32, log=print):
    """{'overall': metrics, 'subjects': {subject: metrics}} of a checkpoint on every pair of an archive.

    Metrics are those of the evaluate stage (reports/metrics.json), with the number of slices; subjects
    come from make-archive's file names (none for archives without them).
    """
    from .models import load_checkpoint
    from .training import pick_device

    device = pick_device(device, where="--device")
    model, ckpt = load_checkpoint(checkpoint, device)
    x, y, rows, meta = load_archive(archive, int(ckpt.get("context", 0)), log)
    for what in mismatches(meta, ckpt):
        log(f"evaluate: note: {archive}: slices differ from the model's training slices: {what} "
            f"(rebuild it with `mriseg make-archive --like {checkpoint}`)")
    result = {"archive": str(archive), "model": str(checkpoint),
              "overall": {**score(model, ckpt, x, y, batch_size, device), "slices": len(x)}, "subjects": {}}
    subjects = rows["subject"].to_numpy()
    for subject in sorted(set(subjects) - {""}):
        idx = torch.from_numpy((subjects == subject).nonzero()[0])
        result["subjects"][subject] = {**score(model, ckpt, x[idx], y[idx], batch_size, device), "slices": len(idx)}
    return result


def format_table(result):
    columns = ["slices", "iou", "dice_white_matter", "dice_gray_matter", "iou_white_matter", "iou_gray_matter"]
    table = pd.DataFrame({**result["subjects"], "all": result["overall"]}).T[columns]
    table["slices"] = table["slices"].astype(int)
    return table.to_string(float_format=lambda v: f"{v:.4f}")
