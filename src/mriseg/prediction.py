"""Apply a trained model: slices in, label maps out."""
import os
from pathlib import Path

import numpy as np
import torch

from . import first_line
from .errors import MrisegError

from .devices import autocast, barrier, join_processes, launched, leave_processes, pick_device


def channels_last(x):
    # The layout the networks train in (train.channels_last), where oneDNN's bf16 CPU convolutions are fast.
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_labels(model, x, device, amp=True, batch_size=32):
    """images [N,C,H,W] float32 -> labels [N,H,W] uint8 (argmax over the three classes)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(channels_last(x[i:i + batch_size].to(device)))
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[2:]), np.uint8)


@torch.no_grad()
def predict_probabilities(model, x, device, activation, amp=True, batch_size=32):
    """images [N,C,H,W] float32 -> class probabilities [N,3,H,W] float32 (their argmax is predict_labels')."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(channels_last(x[i:i + batch_size].to(device))).float()
        out.append((logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 3) + tuple(x.shape[2:]), np.float32)


class InputError(MrisegError):
    """A bad input file; one line naming it."""


VOLUME_COLUMNS = ["file", "subject", "session", "white_matter_voxels", "gray_matter_voxels", "white_matter_ml",
                  "gray_matter_ml", "gray_white_ratio", "white_matter_mm2", "gray_matter_mm2"]
# With --labels: the manual segmentation beside each volume, on the input's own grid.
REFERENCE_COLUMNS = ["manual_white_matter_ml", "manual_gray_matter_ml", "dice_white_matter", "dice_gray_matter",
                     "volume_error_white_matter", "volume_error_gray_matter"]


def bids_t1w(root):
    """A BIDS dataset's T1-weighted images, sub-*/[ses-*/]anat/*_T1w.nii[.gz], sorted; [] if it has none."""
    root = Path(root)
    found = [p for pattern in ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*") for p in root.glob(pattern)]
    return sorted(p for p in found if p.name.endswith(("_T1w.nii", "_T1w.nii.gz")))


def bids_entities(path):
    """(subject, session) from a BIDS file name (sub-<label>[_ses-<label>]_...); '' where absent."""
    name = Path(path).name.split(".")[0]  # BIDS labels are alphanumeric: the first dot starts the extension
    found = dict(part.split("-", 1) for part in name.split("_") if part.startswith(("sub-", "ses-")))
    return found.get("sub", ""), found.get("ses", "")


def expand_inputs(inputs, skip_labels=False):
    """Files as given; folders become their .npy/.nii/.nii.gz/.mgz files, sorted (without the label
    volumes of make-archive's pairing rules when skip_labels), the mri/norm.mgz of FreeSurfer subject
    folders (the folder itself, or its sub-folders) as make-archive finds them, and a BIDS dataset's
    sub-*/[ses-*/]anat/*_T1w.nii[.gz]."""
    from .labels import is_label_file
    from .scans import freesurfer_images
    from .volumes import is_volume

    files = []
    for item in map(Path, inputs):
        if item.is_dir() and (t1w := bids_t1w(item)):
            files += t1w
        elif item.is_dir() and item.name == "mri" and (item / "norm.mgz").is_file():
            files.append(item / "norm.mgz")  # a FreeSurfer subject's mri/: its image, not aseg, wm, ...
        elif item.is_dir():
            found = freesurfer_images(item) + sorted(
                p for p in item.iterdir() if p.is_file() and (p.suffix == ".npy" or is_volume(p))
                and not (skip_labels and is_label_file(p)))
            if not found:
                raise InputError(f"{item}: folder holds no .npy, .nii, .nii.gz or .mgz files "
                                 "nor FreeSurfer subjects (<subject>/mri/norm.mgz)")
            files += found
        else:
            files.append(item)
    return files


def load_slice(path):
    from .archive import ArchiveError, check_image, load_npy

    try:
        data = Path(path).read_bytes()
        return check_image(load_npy(data, str(path)), str(path))
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except ArchiveError as e:
        raise InputError(str(e)) from None


def tissue_counts(labels):
    return int((labels == 0).sum()), int((labels == 1).sum())


def is_freesurfer(path):
    path = Path(path)
    return path.parent.name == "mri" and path.suffix == ".mgz"


def output_stem(path):
    """Outputs are named after the input; FreeSurfer's <subject>/mri/norm.mgz after its subject too."""
    from .volumes import volume_stem

    path = Path(path)
    stem = volume_stem(path)[0]
    return f"{path.parent.parent.name}_{stem}" if is_freesurfer(path) else stem


def display_name(path):
    path = Path(path)
    return f"{path.parent.parent.name}/mri/{path.name}" if is_freesurfer(path) else path.name


def compare_with_reference(pred, image_path, img3, labels, voxel_ml):
    """Manual volumes (ml), Dice and volume error of the prediction against the label volume(s) beside the
    image: the evaluate stage's per-subject scores."""
    from .labels import label_paths_of, load_labels
    from .metrics import confusion_of, subject_scores

    refs = label_paths_of(image_path, labels)
    if not refs:
        return None
    truth = load_labels(refs, labels, image_path, img3).reshape(pred.shape)
    row = subject_scores(confusion_of(pred, truth), voxel_ml)
    return {k: row[k] for k in REFERENCE_COLUMNS}


def brain_slices(labels, n=5):
    """Up to n evenly spaced slice indices among those with at least a quarter of the most tissue."""
    tissue = (labels < 2).reshape(len(labels), -1).sum(axis=1)
    has = np.nonzero(tissue >= 0.25 * tissue.max())[0] if tissue.max() else np.arange(0)
    has = has if len(has) else np.arange(len(labels))
    return has[np.linspace(0, len(has) - 1, min(n, len(has))).round().astype(int)]


class View:
    """One trained network and the rules it was trained with: its plane, neighbouring slices, tta."""

    def __init__(self, name, model, ckpt, weight):
        self.name, self.model, self.ckpt, self.weight = name, model, ckpt, weight
        self.axis = ckpt.get("axis", name)
        self.amp = ckpt.get("train", {}).get("amp", True)
        self.context = int(ckpt.get("context", 0))


class Predictor:
    """Trained views (one network per plane) and the rules they share (normalisation, grid, pixel size).

    A volume is resampled once onto the working grid; each view cuts it into slices in its plane and
    predicts class probabilities, put back into the volume; their weighted mean (FastSurfer's view
    aggregation) gives the labels, brought back to the input's own grid. Averaging on the working grid
    and then resampling linearly equals resampling each view and then averaging.
    """

    def __init__(self, checkpoint, device="auto", batch_size=32):
        from .models import load_views

        self.device, self.batch_size = pick_device(device, where="--device"), batch_size
        self.views = [View(*v) for v in load_views(checkpoint, self.device)]
        self.ckpt = self.views[0].ckpt  # rules every view shares (checked by the bundle stage)
        pixel = self.ckpt.get("pixel_size_mm")
        self.pixel_size = float(pixel[0]) if pixel else None
        # Cohort-trained views share an isotropic grid; a slice archive's network its plane's in-plane grid.
        self.grid_axis = None if self.ckpt.get("grid") == "isotropic" else self.ckpt["axis"]
        self.model, self.context = self.views[0].model, self.views[0].context

    def labels(self, slices):
        """(n, H, W) slices, in order through one volume -> (n, H, W) labels (the first view's network)."""
        return self.probabilities(slices).argmax(axis=1).astype(np.uint8)

    def probabilities(self, slices, view=None):
        """(n, H, W) slices, in order through one volume -> (n, 3, H, W) class probabilities of a view's
        network (default the first).

        A model trained with train.context > 0 gets each slice's neighbours as channels; a lone slice, or
        one at the end of the volume, stands in for its missing neighbours (as in training). Slices are
        centred in the next multiple of 16, as training pads them (volumes.pad_slices).
        """
        from .volumes import pad_margins, pad_slices, with_context

        view = view or self.views[0]
        slices = np.asarray(slices, dtype=np.float32)
        h, w = slices.shape[1:]
        if h < 16 or w < 16:  # padding would make up the whole image
            raise ValueError(f"slices of {h} x {w} pixels are too small to segment (at least 16 x 16)")
        top, left = pad_margins(h, w)[:2]
        padded = pad_slices(slices)
        x = with_context(padded, view.context) if view.context else padded[:, None]
        probs = predict_probabilities(view.model, torch.from_numpy(np.ascontiguousarray(x)), self.device,
                                      view.ckpt["activation"], view.amp, self.batch_size)
        return probs[:, :, top:top + h, left:left + w]

    def working_volume(self, img3):
        """A 3-D image as the views were trained on it: (the working grid's affine, normalised (X, Y, Z)
        volume), cropped to the head as cohorts are (an archive's slices: not cropped)."""
        from .volumes import crop_to_foreground, normalize_volume, resample_inplane

        work = resample_inplane(img3, self.grid_axis, self.pixel_size)
        volume = normalize_volume(np.asanyarray(work.dataobj), self.ckpt["normalization"])
        if self.grid_axis is not None:
            return work.affine, volume
        volume, affine, _ = crop_to_foreground(volume, work.affine)
        return affine, volume

    def view_probabilities(self, volume):
        """Yield (view, class probabilities (3, X, Y, Z)) of each view on a normalised working volume."""
        from .volumes import from_slices, to_slices

        for view in self.views:
            probs = self.probabilities(to_slices(volume, view.axis), view)
            yield view, np.stack([from_slices(probs[:, k], view.axis) for k in range(probs.shape[1])])

    def volume_probabilities(self, volume, each=None):
        """The views' class probabilities (3, X, Y, Z), averaged with their weights; each(view, probs) sees
        every view's own first (the evaluate stage scores each view alone)."""
        total, weights = None, 0.0
        for view, probs in self.view_probabilities(volume):
            if each is not None:
                each(view, probs)
            total = probs * view.weight if total is None else total + probs * view.weight
            weights += view.weight
        return total / weights

    def on_input_grid(self, probs, work_affine, reference_img3):
        """Class probabilities (3, X, Y, Z) on the working grid -> labels on the input's own voxel grid."""
        from .volumes import back_to_grid

        if probs.shape[1:] == reference_img3.shape and np.allclose(work_affine, reference_img3.affine):
            return probs.argmax(axis=0).astype(np.uint8)  # predicted on its own grid
        # probabilities, not labels, go back to the input's grid (see volumes.most_likely)
        return back_to_grid(list(probs), work_affine, reference_img3)

    def predict_volume(self, path):
        """(labels on the input's own grid and shape, input image, its 3-D image, displayed slices, displayed
        labels: the first view's plane)."""
        from .volumes import load_volume, to_slices

        img, img3 = load_volume(path)
        work_affine, volume = self.working_volume(img3)
        probs = self.volume_probabilities(volume)
        on_grid = self.on_input_grid(probs, work_affine, img3)
        axis = self.views[0].axis
        return (on_grid.reshape(img.shape), img, img3, to_slices(volume, axis),
                to_slices(probs.argmax(axis=0).astype(np.uint8), axis))


def save_volume(img, path, ext):
    """nibabel picks the format from the suffix, so the temporary file keeps it; renamed when complete."""
    import nibabel as nib

    tmp = path.with_name(f".{path.name}.tmp{ext}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def predict_files(checkpoint, out_dir, inputs, device="auto", batch_size=32, pixel_size=None, slice_thickness=1.0,
                  labels=None, part=None, log=print):
    """Segment every input; returns the number that failed. Raises InputError/CheckpointError up front.

    labels (a make-archive preset or mapping): score each volume against the manual labels beside it.
    part (k, n), 1 <= k <= n: segment only every n-th input from the k-th (a job array's share) and write
    its rows to volumes.part-k-of-n.csv, for merge_parts. Under torchrun the part is the process's
    (RANK + 1, WORLD_SIZE), and rank 0 merges the parts into volumes.csv once every process is done.
    """
    import pandas as pd
    from tqdm import tqdm

    from .io import atomic_path
    from .labels import SourceError, parse_labels
    from .reporting import plot_overlay
    from .volumes import is_volume, normalize_volume, volume_stem

    try:
        labels = parse_labels(labels) if labels else None
    except SourceError as e:
        raise InputError(str(e)) from None
    rank, world, _ = launched()
    if world > 1:
        if part is not None:
            raise InputError("--part is for separate jobs; under torchrun each process takes its part")
        part = (rank + 1, world)
        # Processes wait for the slowest at the end (rank 0 merges): allow a long cohort a day.
        device = str(join_processes(device, where="--device", timeout_s=24 * 3600))
    predictor = Predictor(checkpoint, device, batch_size)
    files = expand_inputs(inputs, skip_labels=labels is not None)
    if not files:
        raise InputError("no inputs given (slices .npy, folders of them, or .nii/.nii.gz/.mgz volumes)")
    stems = {}
    for path in files:  # outputs are named after the input's stem: two inputs must not share one
        other = stems.setdefault(output_stem(path), path)
        if other != path:
            raise InputError(f"{path} and {other} would write the same {output_stem(path)}_mask file; "
                             "rename one or run them separately")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.context and any(p.suffix == ".npy" for p in files):
        log(f"predict: note: {checkpoint} was trained with {predictor.context} neighbouring slice(s) each side; "
            "a lone .npy slice stands in for its own neighbours (segment whole volumes for the full benefit)")
    k, n = part or (1, 1)
    mine = list(enumerate(files))[k - 1::n]
    rows, failed = [], 0
    for index, path in tqdm(mine, desc="predict" if n == 1 else f"predict {k}/{n}", unit="file"):
        stem, ext = output_stem(path), volume_stem(path)[1]
        try:
            if is_volume(path):
                pred, img, img3, shown, shown_labels = predictor.predict_volume(path)
                mask = img.__class__(pred, img.affine, header=img.header)
                mask.set_data_dtype(np.uint8)
                save_volume(mask, out_dir / f"{stem}_mask{ext}", ext)
                voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
                wm, gm = tissue_counts(pred)
                row = {"white_matter_ml": wm * voxel_ml, "gray_matter_ml": gm * voxel_ml}
                if labels is not None:
                    reference = compare_with_reference(pred, path, img3, labels, voxel_ml)
                    if reference is None:
                        log(f"predict: note: {path}: no manual labels beside it to score against")
                    row.update(reference or {})
                pick = brain_slices(shown_labels)
                plot_overlay(shown[pick], shown_labels[pick], out_dir / f"{stem}_overlay.png", title=display_name(path))
            elif path.suffix == ".npy":
                if len(predictor.views) > 1:
                    raise InputError(f"{path}: a lone slice has no plane, and {checkpoint} holds the views "
                                     f"{', '.join(v.name for v in predictor.views)}: segment the volume, or give "
                                     "--model one view's checkpoint (models/views/<view>.pt)")
                image = load_slice(path)
                if image.min() < 0 or image.max() > 1:  # raw intensities: scaled by the rule of the training slices
                    image = normalize_volume(image, predictor.ckpt["normalization"])
                pred = predictor.labels(image[None])[0]
                with atomic_path(out_dir / f"{stem}_mask.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, pred, allow_pickle=False)
                wm, gm = tissue_counts(pred)
                row = {}
                if pixel_size:
                    area = pixel_size[0] * pixel_size[-1]
                    row = {"white_matter_mm2": wm * area, "gray_matter_mm2": gm * area,
                           "white_matter_ml": wm * area * slice_thickness / 1000,
                           "gray_matter_ml": gm * area * slice_thickness / 1000}
                plot_overlay(image, pred, out_dir / f"{stem}_overlay.png", title=display_name(path))
            else:
                raise InputError(f"{path}: unsupported input (use .npy slices or .nii/.nii.gz/.mgz volumes)")
        except MrisegError as e:  # this input is bad: say so, go on with the others
            failed += 1
            log(f"predict: error: {e}")
            continue
        except (RuntimeError, ValueError, OSError) as e:  # e.g. a slice too small for the network
            failed += 1
            log(f"predict: error: {path}: {first_line(e)}")
            continue
        subject, session = bids_entities(path)
        rows.append({"input": index, "file": str(path), "subject": subject, "session": session,
                     "white_matter_voxels": wm, "gray_matter_voxels": gm,
                     "gray_white_ratio": gm / wm if wm else float("nan"), **row})
    columns = VOLUME_COLUMNS + (REFERENCE_COLUMNS if labels is not None else [])
    table = pd.DataFrame(rows, columns=["input", *columns])
    if n == 1:
        with atomic_path(out_dir / "volumes.csv") as tmp:
            table.drop(columns="input").to_csv(tmp, index=False)
        log(f"segmented {len(rows)} of {len(files)} inputs -> {out_dir} (volumes.csv)")
        return failed
    with atomic_path(out_dir / part_name(k, n)) as tmp:  # numbered in the whole input list, for merge_parts
        table.insert(1, "inputs", len(files))
        table.to_csv(tmp, index=False)
    log(f"part {k}/{n}: segmented {len(rows)} of its {len(mine)} inputs -> {out_dir / part_name(k, n)}")
    if world > 1:
        barrier()
        if rank == 0:
            merge_parts(out_dir, n, len(files), log)
        leave_processes()
    return failed


def part_name(k, n):
    return f"volumes.part-{k}-of-{n}.csv"


def merge_parts(out_dir, n=None, total=None, log=print):
    """volumes.part-K-of-N.csv (every K of one N; found in out_dir when n is None) -> volumes.csv, rows
    in input order, text as the parts wrote it; the part files go once merged."""
    import re

    import pandas as pd

    from .io import atomic_path

    out_dir = Path(out_dir)
    if n is None:
        counts = {int(m.group(1)) for p in out_dir.glob("volumes.part-*-of-*.csv")
                  if (m := re.fullmatch(r"volumes\.part-\d+-of-(\d+)\.csv", p.name))}
        if len(counts) != 1:
            raise InputError(f"{out_dir}: expected the part files of one run (volumes.part-K-of-N.csv), found "
                             f"{'parts of ' + ', '.join(map(str, sorted(counts))) if counts else 'none'}")
        n = counts.pop()
    paths = [out_dir / part_name(k, n) for k in range(1, n + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{out_dir}: {', '.join(missing)} missing: run those parts first (--part K/{n})")
    parts = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    for k, (path, part) in enumerate(zip(paths, parts)):
        if any(int(i) % n != k for i in part["input"]):
            raise InputError(f"{path}: holds inputs of another share than part {k + 1} of {n}")
    table = pd.concat(parts).sort_values("input", key=lambda column: column.astype(int))
    counts = set(table["inputs"].astype(int)) | ({total} if total is not None else set())
    if len(counts) > 1 or table["input"].duplicated().any():
        # Parts of different input lists (another INPUT set or order) would interleave the wrong rows.
        raise InputError(f"{out_dir}: the part files come from different lists of inputs (of "
                         f"{' and '.join(map(str, sorted(counts)))} inputs): run every --part with the same INPUTs")
    with atomic_path(out_dir / "volumes.csv") as tmp:
        table.drop(columns=["input", "inputs"]).to_csv(tmp, index=False)
    for p in paths:
        p.unlink()
    of = f" of {total}" if total is not None else ""
    log(f"segmented {len(table)}{of} inputs in {n} parts -> {out_dir} (volumes.csv)")
    return len(table)
