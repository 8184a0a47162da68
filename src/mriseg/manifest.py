"""Pairs on disk and the split manifest: which slices an unzipped archive holds, and which side of the split
each is on. Imports no torch: the split stage runs without the network's stack."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import CLASS_NAMES
from .archive import mask_name, slice_index
from .errors import DataError, ParamsError
from .io import atomic_path
from .volumes import NORMALIZATION, VIEWS

# Archives made by `mriseg make-archive` name images sub-<subject>_slice-<n>_<ix>.npy.
SUBJECT_NAME = re.compile(r"^sub-(?P<subject>.+)_slice-(?P<slice>\d+)_[^_]+$")
# view: the plane the slice is cut in; z: its index along that plane's axis in a cohort's (X, Y, Z) volume
# file, -1 for a one-slice .npy file.
MANIFEST_COLUMNS = ["image", "mask", "ix", "subject", "slice", "view", "z", "split"]


def natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def list_pairs(root):
    """(image, mask, ix, subject, slice, view, z) for every training slice of an unzipped archive, in a fixed
    order: the pairs of a slice archive (in its one plane), or the kept slices of each subject of a cohort
    in each of the three views (cohort.py)."""
    root = Path(root)
    meta_path = root / "mriseg.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("layout") == "volumes":
        rows = []
        for subject in sorted(meta["subjects"], key=natural_key):
            base = (root / "volumes" / subject).as_posix()
            for view, kept in meta["subjects"][subject]["kept"].items():
                rows += [{"image": f"{base}.image.npy", "mask": f"{base}.labels.npy", "ix": f"{subject}:{view}:{z}",
                          "subject": subject, "slice": z, "view": view, "z": z} for z in kept]
        return rows
    view = meta.get("axis", "axial")
    rows = []
    for image in (root / "MRIs").glob("*.npy"):
        m = SUBJECT_NAME.match(image.stem)
        rows.append({"image": image.as_posix(), "mask": (root / "Segmentations" / mask_name(image.name)).as_posix(),
                     "ix": slice_index(image.name),
                     "subject": m["subject"] if m else "", "slice": int(m["slice"]) if m else -1, "view": view,
                     "z": -1})
    if not rows:
        raise DataError(f"{root}/MRIs: no images (run the unzip stage first)")
    return sorted(rows, key=pair_order)


def pair_order(row):
    # By index then name, never by listing order: the same manifest on every file system.
    return natural_key(row["ix"]), row["image"]


def _count(size, total, what):
    if isinstance(size, float) and not size.is_integer() and size > 1:
        raise ParamsError(f"params.yaml: {what}={size}: a fraction must be below 1, a count an integer")
    n = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    if isinstance(size, float) and size < 1 and size > 0:
        n = max(n, 1)
    if n < 0 or n >= total:
        raise ParamsError(f"params.yaml: {what}={size} leaves no training data ({total} in all)")
    return n


def make_split(rows, by="auto", test_size=0.2, val_size=0, seed=42, folds=0, fold=0):
    """Assign each pair to train/val/test, by subject when subjects are known (none on two sides).

    folds=0: a random test side of test_size units. folds=K: K-fold cross-validation, the units shuffled
    once with `seed` and dealt into K folds; fold `fold` is the test side (test_size is not used). Either
    way val_size units of the training side choose the best epoch.
    """
    rows = sorted(rows, key=pair_order)
    subjects = {r["subject"] for r in rows}
    volumes = any(r["z"] >= 0 for r in rows)  # a cohort: each subject's slices are cut from one volume
    if by == "auto":
        by = "subject" if volumes or ("" not in subjects and len(subjects) > 1) else "slice"
    if by == "subject" and "" in subjects:
        raise ParamsError("params.yaml: split.by=subject, but image names carry no subject (sub-<id>_slice-<n>_<ix>)")
    if volumes and by == "slice":
        # Its three views cut the same voxels: a slice on the test side would share them with training slices.
        raise ParamsError("params.yaml: split.by=slice: a cohort of volumes is split by subject (its axial, coronal "
                          "and sagittal slices cross each other), use split.by: subject or auto")
    if volumes and len(subjects) < 2:
        raise ParamsError(f"params.yaml: split: the archive holds one subject ({subjects.pop()}); a cohort of volumes "
                          "is split by subject, so it needs two or more")
    units = sorted(subjects, key=natural_key) if by == "subject" else [r["image"] for r in rows]
    order = np.random.default_rng(seed).permutation(len(units))
    if folds:
        if not 2 <= folds <= len(units):
            raise ParamsError(f"params.yaml: split.folds={folds} needs from 2 to {len(units)} folds "
                             f"({len(units)} {by}s in all)")
        if not 0 <= fold < folds:
            raise ParamsError(f"params.yaml: split.fold={fold} must be from 0 to {folds - 1} (split.folds={folds})")
        # Dealt round-robin: fold sizes differ by one at most; the test side first, the rest keeps its order.
        test = list(order[fold::folds])
        order = test + [i for i in order if i not in test]
        n_test = len(test)
    else:
        n_test = _count(test_size, len(units), "split.test_size")
    n_val = _count(val_size, len(units) - n_test, "split.val_size")
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
    if "z" not in df.columns:  # manifests of slice archives written before cohorts existed
        df["z"] = -1
    if "view" not in df.columns:  # ... and before views
        df["view"] = "axial"
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: not a split manifest (missing columns {sorted(missing)})")
    return df


def archive_metadata(root):
    """What an unzipped archive says of its slices (the checkpoint records it); archives without mriseg.json
    (the tutorial's) get the default rule. layout: slices, or volumes for a cohort (cohort.py)."""
    path = Path(root) / "mriseg.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return {"axis": meta.get("axis", "axial"), "normalization": meta.get("normalization", NORMALIZATION),
            "pixel_size_mm": meta.get("pixel_size_mm"), "layout": meta.get("layout", "slices"),
            "grid": meta.get("grid", "inplane"),
            # a cohort's classes (data.csf); slices and archives made before the CSF class: the first three
            "classes": meta.get("classes", list(CLASS_NAMES[:3])), "csf": meta.get("csf", "none"),
            "skull_strip": meta.get("skull_strip", "no")}  # data.skull_strip: how its brains were extracted


def archive_views(root):
    """The planes an unzipped archive can be cut in: all three for a cohort, its own for a slice archive."""
    meta = archive_metadata(root)
    return VIEWS if meta["layout"] == "volumes" else (meta["axis"],)


def usable_context(manifest, context, log=print):
    """train.context where every slice's neighbours can be found; 0 (one slice at a time) for archives
    whose names carry no subject and slice, such as the tutorial's, and the train stage says so."""
    if context and (manifest["slice"] < 0).any():
        log(f"train.context={context}: image names carry no subject and slice (sub-<id>_slice-<n>_<ix>.npy), "
            "so neighbours are unknown: training on single slices (context 0)")
        return 0
    return context


def data_id(manifest_path, root):
    """What the training data is, for the resume fingerprint: the manifest and the sha256 of every file the
    unzip stage wrote (its files.json), never the tensors themselves."""
    h = hashlib.sha256(Path(manifest_path).read_bytes())
    files = Path(root) / "files.json"
    h.update(files.read_bytes() if files.exists() else b"")
    return h.hexdigest()
