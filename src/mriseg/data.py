"""Pairs on disk, the split manifest, and whole splits loaded into memory as tensors."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .archive import mask_name, slice_index
from .io import atomic_path
from .volumes import NORMALIZATION, with_context

# Archives made by `mriseg make-archive` name images sub-<subject>_slice-<n>_<ix>.npy.
SUBJECT_NAME = re.compile(r"^sub-(?P<subject>.+)_slice-(?P<slice>\d+)_[^_]+$")
MANIFEST_COLUMNS = ["image", "mask", "ix", "subject", "slice", "split"]


def natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def list_pairs(root):
    """(image, mask, ix, subject, slice) for every pair in an extracted archive, in a fixed order."""
    root = Path(root)
    rows = []
    for image in (root / "MRIs").glob("*.npy"):
        m = SUBJECT_NAME.match(image.stem)
        rows.append({"image": image.as_posix(), "mask": (root / "Segmentations" / mask_name(image.name)).as_posix(),
                     "ix": slice_index(image.name),
                     "subject": m["subject"] if m else "", "slice": int(m["slice"]) if m else -1})
    if not rows:
        raise SystemExit(f"{root}/MRIs: no images (run the unzip stage first)")
    return sorted(rows, key=pair_order)


def pair_order(row):
    # By index then name, never by listing order: the same manifest on every file system.
    return natural_key(row["ix"]), row["image"]


def _count(size, total, what):
    if isinstance(size, float) and not size.is_integer() and size > 1:
        raise SystemExit(f"params.yaml: {what}={size}: a fraction must be below 1, a count an integer")
    n = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    if isinstance(size, float) and size < 1 and size > 0:
        n = max(n, 1)
    if n < 0 or n >= total:
        raise SystemExit(f"params.yaml: {what}={size} leaves no training data ({total} in all)")
    return n


def make_split(rows, by="auto", test_size=0.2, val_size=0, seed=42):
    """Assign each pair to train/val/test, by subject when subjects are known (none on two sides)."""
    rows = sorted(rows, key=pair_order)
    subjects = {r["subject"] for r in rows}
    if by == "auto":
        by = "subject" if "" not in subjects and len(subjects) > 1 else "slice"
    if by == "subject" and "" in subjects:
        raise SystemExit("params.yaml: split.by=subject, but image names carry no subject (sub-<id>_slice-<n>_<ix>)")
    units = sorted(subjects, key=natural_key) if by == "subject" else [r["image"] for r in rows]
    n_test = _count(test_size, len(units), "split.test_size")
    n_val = _count(val_size, len(units) - n_test, "split.val_size")
    order = np.random.default_rng(seed).permutation(len(units))
    part = {}
    for rank, i in enumerate(order):
        part[units[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    df = pd.DataFrame(rows)
    df["split"] = [part[r["subject"] if by == "subject" else r["image"]] for r in rows]
    return df[MANIFEST_COLUMNS]


def write_manifest(df, path):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_manifest(path):
    df = pd.read_csv(path, dtype={"ix": str, "subject": str}, keep_default_na=False)
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise SystemExit(f"{path}: not a split manifest (missing columns {sorted(missing)})")
    return df


def archive_metadata(root):
    """What the archive says of its slices; archives without mriseg.json get the default rule."""
    path = Path(root) / "mriseg.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return {"axis": meta.get("axis", "axial"), "normalization": meta.get("normalization", NORMALIZATION),
            "pixel_size_mm": meta.get("pixel_size_mm")}


def neighbour_rows(manifest, rows, context):
    """(neighbours, paths): the image paths to load (the split's own first, then outside neighbours), and
    for each row {offset: index into paths} of the same subject's slices at slice +- offset.

    Neighbours are looked up in the whole manifest (a subject sits on one side of a subject split; in a
    slice split an image may borrow its neighbour's pixels, never its labels).
    """
    if (rows["slice"] < 0).any():
        raise SystemExit(f"data/manifest.csv: train.context={context} needs each slice's neighbours, but image names carry "
                         "no subject and slice (sub-<id>_slice-<n>_<ix>.npy, as make-archive writes); "
                         "use train.context=0")
    index = {(r.subject, r.slice): r.image for r in manifest.itertuples()}
    paths = list(rows["image"])
    position = {p: i for i, p in enumerate(paths)}
    neighbours = []
    for r in rows.itertuples():
        found = {}
        for d in range(-context, context + 1):
            path = index.get((r.subject, r.slice + d))
            if path is None:
                continue  # not in the archive (too little tissue, or past the volume): the slice stands in
            if path not in position:  # a neighbour from outside this split: its image only
                position[path] = len(paths)
                paths.append(path)
            found[d] = position[path]
        neighbours.append(found)
    return neighbours, paths


def usable_context(manifest, context, log=print):
    """train.context where every slice's neighbours can be found; 0 (one slice at a time) for archives
    whose names carry no subject and slice, such as the tutorial's, and the train stage says so."""
    if context and (manifest["slice"] < 0).any():
        log(f"train.context={context}: image names carry no subject and slice (sub-<id>_slice-<n>_<ix>.npy), "
            "so neighbours are unknown: training on single slices (context 0)")
        return 0
    return context


def load_split(manifest, split, context=0):
    """All pairs of one split as (images float32 [N,C,H,W], masks uint8 [N,H,W], rows).

    C = 2 * context + 1: with context > 0 each slice comes with its neighbours as channels (2.5D).
    Slices of different sizes are zero-padded (background in the mask) at the bottom/right to the
    largest size, so a whole split is one tensor and batches are plain slices of it.
    """
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if not len(rows):
        return torch.zeros(0, 2 * context + 1, 1, 1), torch.zeros(0, 1, 1, dtype=torch.uint8), rows
    neighbours, paths = neighbour_rows(manifest, rows, context) if context else (None, list(rows["image"]))
    images = [np.load(p, allow_pickle=False) for p in paths]
    masks = [np.load(p, allow_pickle=False) for p in rows["mask"]]
    h = max(a.shape[0] for a in images)
    w = max(a.shape[1] for a in images)
    x = np.zeros((len(images), h, w), np.float32)
    y = np.full((len(masks), h, w), 2, np.uint8)
    for i, a in enumerate(images):
        x[i, : a.shape[0], : a.shape[1]] = a
    for i, m in enumerate(masks):
        y[i, : m.shape[0], : m.shape[1]] = m
    x = with_context(x, context, neighbours) if context else x[:, None]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), rows
