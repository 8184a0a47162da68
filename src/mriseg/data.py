"""Pairs on disk, the split manifest, and the slices of a split streamed from disk as a torch Dataset."""
import hashlib
import json
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .archive import mask_name, slice_index
from .io import atomic_path
from .volumes import NORMALIZATION, VIEWS, pad_margins, pad_slices, view_shape, view_slice

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


def make_split(rows, by="auto", test_size=0.2, val_size=0, seed=42, folds=0, fold=0):
    """Assign each pair to train/val/test, by subject when subjects are known (none on two sides).

    folds=0: a random test side of test_size units. folds=K: K-fold cross-validation, the units shuffled
    once with `seed` and dealt into K folds; fold `fold` is the test side (test_size is not used). Either
    way val_size units of the training side choose the best epoch.
    """
    rows = sorted(rows, key=pair_order)
    subjects = {r["subject"] for r in rows}
    if by == "auto":
        by = "subject" if "" not in subjects and len(subjects) > 1 else "slice"
    if by == "subject" and "" in subjects:
        raise SystemExit("params.yaml: split.by=subject, but image names carry no subject (sub-<id>_slice-<n>_<ix>)")
    units = sorted(subjects, key=natural_key) if by == "subject" else [r["image"] for r in rows]
    order = np.random.default_rng(seed).permutation(len(units))
    if folds:
        if not 2 <= folds <= len(units):
            raise SystemExit(f"params.yaml: split.folds={folds} needs from 2 to {len(units)} folds "
                             f"({len(units)} {by}s in all)")
        if not 0 <= fold < folds:
            raise SystemExit(f"params.yaml: split.fold={fold} must be from 0 to {folds - 1} (split.folds={folds})")
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
        raise SystemExit(f"{path}: not a split manifest (missing columns {sorted(missing)})")
    return df


def archive_metadata(root):
    """What an unzipped archive says of its slices (the checkpoint records it); archives without mriseg.json
    (the tutorial's) get the default rule. layout: slices, or volumes for a cohort (cohort.py)."""
    path = Path(root) / "mriseg.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return {"axis": meta.get("axis", "axial"), "normalization": meta.get("normalization", NORMALIZATION),
            "pixel_size_mm": meta.get("pixel_size_mm"), "layout": meta.get("layout", "slices"),
            "grid": meta.get("grid", "inplane")}


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


class SliceDataset(torch.utils.data.Dataset):
    """The slices of one split (in one view, when given), read from disk when asked for: (image [C,H,W]
    float32, mask [H,W] uint8).

    C = 2 * context + 1: each slice with its neighbours as channels (2.5D). A cohort's slice is cut from its
    memory-mapped (X, Y, Z) volume in its view's plane, with the real neighbouring slices of that plane; a
    slice archive's slice the files of the same subject at slice +- d (from the whole manifest: in a slice
    split an image may borrow its neighbour's pixels, never its labels). A missing neighbour (past the volume, or unknown) repeats the slice itself,
    as in prediction. Each slice is centred in the next multiple of 16 (volumes.pad_slices, the rule
    prediction uses) and placed at the top left of the split's frame (the largest such size), masks
    padded with background, so every item of a split has one shape. Nothing is held but the file names
    and at most MAX_OPEN memory-mapped volumes.
    """

    MAX_OPEN = 256  # memory maps kept open per process (a process may hold ~65,000)

    def __init__(self, manifest, split, context=0, view=None):
        keep = manifest["split"] == split
        if view is not None:
            keep &= manifest["view"] == view
        self.rows = manifest[keep].reset_index(drop=True)
        self.context = context
        self.views = list(self.rows["view"])
        self.images, self.masks = list(self.rows["image"]), list(self.rows["mask"])
        self.z = [int(z) for z in self.rows["z"]]
        self.neighbours = None
        if context and (self.rows["z"] < 0).any():
            files = manifest[(manifest["z"] < 0) & (manifest["slice"] >= 0)]
            index = {(r.subject, r.slice): r.image for r in files.itertuples()}
            self.neighbours = [[index.get((r.subject, r.slice + d), r.image) for d in self.offsets()]
                               if r.z < 0 else None for r in self.rows.itertuples()]
        self._open = OrderedDict()
        self.frame = self._frame()

    def offsets(self):
        return range(-self.context, self.context + 1)

    def _array(self, path):
        """A cohort volume stays mapped (least recently used closed first); a one-slice file is read."""
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim == 3:
            self._open[path] = array
            if len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)
        return array

    def _frame(self):
        shapes = {}
        for path, view in zip(self.images, self.views):
            if (path, view) not in shapes:
                shape = self._array(path).shape
                shapes[path, view] = pad_margins(*(view_shape(shape, view)[1:] if len(shape) == 3 else shape))[2:]
        return (max(s[0] for s in shapes.values()), max(s[1] for s in shapes.values())) if shapes else (16, 16)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        z = self.z[i]
        if z >= 0:
            volume, view = self._array(self.images[i]), self.views[i]
            n = view_shape(volume.shape, view)[0]
            x = np.stack([view_slice(volume, view, z + d if 0 <= z + d < n else z) for d in self.offsets()])
            y = view_slice(self._array(self.masks[i]), view, z)
        else:
            paths = self.neighbours[i] if self.neighbours else [self.images[i]] * len(self.offsets())
            x = np.stack([self._array(p) for p in paths])
            y = self._array(self.masks[i])
        return (torch.from_numpy(pad_slices(np.asarray(x, np.float32), self.frame, 0)),
                torch.from_numpy(pad_slices(np.asarray(y, np.uint8), self.frame, 2)))


class Batches(torch.utils.data.Sampler):
    """Index batches of one pass in `order` (set before each pass): a DataLoader's batch_sampler."""

    def __init__(self, n, batch_size):
        self.order, self.batch_size = list(range(n)), batch_size

    def __iter__(self):
        return (self.order[i:i + self.batch_size] for i in range(0, len(self.order), self.batch_size))

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)


class Feed:
    """The batches of one split on the device, in the order asked for.

    A split whose tensors fit `cache_bytes` is read once (in chunks, through the DataLoader) into device
    tensors and batched there, as a whole split in memory used to be; a larger one streams each pass from
    disk through a DataLoader (workers, pinned memory, prefetch). Both give the same batches.
    """

    def __init__(self, dataset, batch_size, device, workers=0, cache_bytes=0, channels_last=False):
        self.n, self.device, self.channels_last = len(dataset), device, channels_last
        self.batches = Batches(self.n, batch_size)
        self.loader = torch.utils.data.DataLoader(
            # Workers live for one pass: the train split's are gone before the test split's start scoring.
            dataset, batch_sampler=self.batches, num_workers=workers, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
            generator=torch.Generator())  # workers' seeds: never a draw from the training's global RNG
        x0, y0 = dataset[0] if self.n else (torch.zeros(1, 1, 1), torch.zeros(1, 1, dtype=torch.uint8))
        self.nbytes = self.n * (x0.numel() * x0.element_size() + y0.numel() * y0.element_size())
        self.cached = None
        if 0 < self.nbytes <= cache_bytes:
            x = torch.empty((self.n, *x0.shape), dtype=x0.dtype, device=device)
            y = torch.empty((self.n, *y0.shape), dtype=y0.dtype, device=device)
            i = 0
            for xb, yb in self.loader:
                x[i:i + len(xb)].copy_(xb, non_blocking=True)
                y[i:i + len(yb)].copy_(yb, non_blocking=True)
                i += len(xb)
            self.cached = (self.to_layout(x), y)

    def to_layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, order=None):
        """Yield (images, masks) batches on the device of the items in `order` (default: all, as they are):
        a permutation of the split, or a process's share of it."""
        order = torch.arange(self.n) if order is None else order
        bs = self.batches.batch_size
        if self.cached is not None:
            x, y = self.cached
            order = order.to(self.device)
            for i in range(0, len(order), bs):
                yield x[order[i:i + bs]], y[order[i:i + bs]]
            return
        self.batches.order = order.tolist()
        for xb, yb in self.loader:
            yield self.to_layout(xb.to(self.device, non_blocking=True)), yb.to(self.device, non_blocking=True)

    def __len__(self):
        return math.ceil(self.n / self.batches.batch_size)
