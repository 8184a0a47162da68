"""`mriseg predict`: every input segmented into a mask on its own grid, an overlay PNG and a row of
volumes.csv (tissue volumes; with --labels, Dice against the manual labels beside it)."""
import os
from pathlib import Path

import numpy as np

from . import first_line
from .devices import barrier, join_processes, launched, leave_processes
from .errors import MrisegError
from .inputs import InputError, bids_entities, display_name, expand_inputs, load_slice, output_stem
from .parts import input_list_id, merge_parts, part_name
from .prediction import Predictor


VOLUME_COLUMNS = ["file", "subject", "session", "white_matter_voxels", "gray_matter_voxels", "white_matter_ml",
                  "gray_matter_ml", "gray_white_ratio", "white_matter_mm2", "gray_matter_mm2"]


# With --labels: the manual segmentation beside each volume, on the input's own grid.
REFERENCE_COLUMNS = ["manual_white_matter_ml", "manual_gray_matter_ml", "dice_white_matter", "dice_gray_matter",
                     "volume_error_white_matter", "volume_error_gray_matter"]


def tissue_counts(labels):
    return int((labels == 0).sum()), int((labels == 1).sum())


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


def save_volume(img, path, ext):
    """nibabel picks the format from the suffix, so the temporary file keeps it; renamed when complete."""
    import nibabel as nib

    tmp = path.with_name(f".{path.name}.tmp{ext}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)



def check_inputs(files):
    """Outputs are named after the input's stem: two inputs must not share one."""
    if not files:
        raise InputError("no inputs given (slices .npy, folders of them, or .nii/.nii.gz/.mgz volumes)")
    stems = {}
    for path in files:
        other = stems.setdefault(output_stem(path), path)
        if other != path:
            raise InputError(f"{path} and {other} would write the same {output_stem(path)}_mask file; "
                             "rename one or run them separately")


def segment_volume(predictor, path, out_dir, labels, written, log):
    """A volume's mask (on its own grid) and overlay; its row of volumes.csv."""
    from .reporting import plot_overlay
    from .volumes import volume_stem

    stem, ext = output_stem(path), volume_stem(path)[1]
    pred, img, img3, shown, shown_labels = predictor.predict_volume(path)
    mask = img.__class__(pred, img.affine, header=img.header)
    mask.set_data_dtype(np.uint8)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    wm, gm = tissue_counts(pred)
    row = {"white_matter_voxels": wm, "gray_matter_voxels": gm, "white_matter_ml": wm * voxel_ml,
           "gray_matter_ml": gm * voxel_ml}
    if labels is not None:
        reference = compare_with_reference(pred, path, img3, labels, voxel_ml)
        if reference is None:
            log(f"predict: note: {path}: no manual labels beside it to score against")
        row.update(reference or {})
    written.append(out_dir / f"{stem}_mask{ext}")
    save_volume(mask, written[-1], ext)
    pick = brain_slices(shown_labels)
    written.append(out_dir / f"{stem}_overlay.png")
    plot_overlay(shown[pick], shown_labels[pick], written[-1], title=display_name(path))
    return row


def segment_slice(predictor, path, out_dir, pixel_size, slice_thickness, written, source):
    """A lone .npy slice's mask and overlay (a one-view model only: a slice has no plane); its row."""
    from .io import atomic_path
    from .reporting import plot_overlay
    from .volumes import normalize_volume

    if len(predictor.views) > 1:
        raise InputError(f"{path}: a lone slice has no plane, and {source} holds the views "
                         f"{', '.join(v.name for v in predictor.views)}: segment the volume, or give "
                         "--model one view's checkpoint (models/views/<view>.pt)")
    image = load_slice(path)
    if image.min() < 0 or image.max() > 1:  # raw intensities: scaled by the rule of the training slices
        image = normalize_volume(image, predictor.ckpt["normalization"])
    pred = predictor.labels(image[None])[0]
    stem = output_stem(path)
    written.append(out_dir / f"{stem}_mask.npy")
    with atomic_path(written[-1]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, pred, allow_pickle=False)
    written.append(out_dir / f"{stem}_overlay.png")
    plot_overlay(image, pred, written[-1], title=display_name(path))
    wm, gm = tissue_counts(pred)
    row = {"white_matter_voxels": wm, "gray_matter_voxels": gm}
    if pixel_size:
        area = pixel_size[0] * pixel_size[-1]
        row.update({"white_matter_mm2": wm * area, "gray_matter_mm2": gm * area,
                    "white_matter_ml": wm * area * slice_thickness / 1000,
                    "gray_matter_ml": gm * area * slice_thickness / 1000})
    return row


def predict_files(checkpoint, out_dir, inputs, device="auto", batch_size=32, pixel_size=None, slice_thickness=1.0,
                  labels=None, part=None, log=print):
    """Segment every input; returns the number that failed. Raises a MrisegError up front (bad model,
    option or input list: nothing written); a bad input is said in one line and skipped, leaving no file.

    labels (a make-archive preset or mapping): score each volume against the manual labels beside it.
    part (k, n), 1 <= k <= n: segment only every n-th input from the k-th (a job array's share) and write
    its rows to volumes.part-k-of-n.csv, for parts.merge_parts. Under torchrun the part is the process's
    (RANK + 1, WORLD_SIZE), and rank 0 merges the parts into volumes.csv once every process is done.
    """
    import pandas as pd
    from tqdm import tqdm

    from .io import atomic_path
    from .labels import SourceError, parse_labels
    from .volumes import is_volume

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
    check_inputs(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.context and any(p.suffix == ".npy" for p in files):
        log(f"predict: note: {checkpoint} was trained with {predictor.context} neighbouring slice(s) each side; "
            "a lone .npy slice stands in for its own neighbours (segment whole volumes for the full benefit)")
    k, n = part or (1, 1)
    mine = list(enumerate(files))[k - 1::n]
    rows, failed = [], 0
    for index, path in tqdm(mine, desc="predict" if n == 1 else f"predict {k}/{n}", unit="file"):
        written = []
        try:
            if is_volume(path):
                row = segment_volume(predictor, path, out_dir, labels, written, log)
            elif path.suffix == ".npy":
                row = segment_slice(predictor, path, out_dir, pixel_size, slice_thickness, written, checkpoint)
            else:
                raise InputError(f"{path}: unsupported input (use .npy slices or .nii/.nii.gz/.mgz volumes)")
        except (MrisegError, RuntimeError, ValueError, OSError) as e:  # e.g. a slice too small for the network
            failed += 1
            log(f"predict: error: {e}" if isinstance(e, MrisegError) else f"predict: error: {path}: {first_line(e)}")
            for p in written:  # no mask without its row in volumes.csv
                p.unlink(missing_ok=True)
            continue
        wm, gm = row["white_matter_voxels"], row["gray_matter_voxels"]
        subject, session = bids_entities(path)
        rows.append({"input": index, "file": str(path), "subject": subject, "session": session,
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
        table.insert(2, "input_list", input_list_id(files))
        table.to_csv(tmp, index=False)
    log(f"part {k}/{n}: segmented {len(rows)} of its {len(mine)} inputs -> {out_dir / part_name(k, n)}")
    if world > 1:
        barrier()
        if rank == 0:
            merge_parts(out_dir, n, len(files), log)
        leave_processes()
    return failed
