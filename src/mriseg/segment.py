"""`mriseg predict`: every input segmented into a mask on its own grid, an overlay PNG and a row of
volumes.csv (tissue volumes; with --labels, Dice against the manual labels beside it)."""
import os
from pathlib import Path

import numpy as np

from . import first_line
from .devices import barrier, join_processes, launched, leave_processes
from .errors import MrisegError
from .extraction import strip_skull, voxel_ml_of
from .inputs import InputError, bids_entities, display_name, expand_inputs, load_slice, output_stem
from .parts import input_list_id, merge_parts, part_name
from .prediction import Predictor


# icv_ml: the intracranial space (extraction.intracranial); the fractions are of it. brain_ml: the brain mask's
# volume (extraction.py says what it holds). CSF columns stay empty for a model without the CSF class. skull_strip:
# extracted (here), already extracted (found so by --skull-strip auto) or no. qc: "ok" or the reasons (qc.py).
VOLUME_COLUMNS = ["file", "subject", "session", "white_matter_voxels", "gray_matter_voxels", "csf_voxels",
                  "white_matter_ml", "gray_matter_ml", "csf_ml", "icv_ml", "gray_white_ratio", "white_matter_fraction",
                  "gray_matter_fraction", "csf_fraction", "brain_ml", "skull_strip", "white_matter_mm2",
                  "gray_matter_mm2", "qc"]


# With --labels: the manual segmentation beside each volume, on the input's own grid (CSF where it holds any).
REFERENCE_COLUMNS = ["manual_white_matter_ml", "manual_gray_matter_ml", "manual_csf_ml", "dice_white_matter",
                     "dice_gray_matter", "dice_csf", "volume_error_white_matter", "volume_error_gray_matter",
                     "volume_error_csf", "dice_gray_matter_as_traced", "volume_error_gray_matter_as_traced"]


def tissue_counts(labels):
    """(white matter, gray matter) voxels."""
    return int((labels == 0).sum()), int((labels == 1).sum())


def tissue_volumes(labels, brain, img, with_csf):
    """volumes.csv's volume columns of a segmented volume on its own grid (img: the input's nibabel image)."""
    from .extraction import intracranial

    voxel_ml = voxel_ml_of(img)
    wm, gm = tissue_counts(labels)
    icv_ml = float(intracranial(labels, brain, img.header.get_zooms()[:3]).sum()) * voxel_ml
    row = {"white_matter_voxels": wm, "gray_matter_voxels": gm, "white_matter_ml": wm * voxel_ml,
           "gray_matter_ml": gm * voxel_ml, "icv_ml": icv_ml,
           "white_matter_fraction": wm * voxel_ml / icv_ml, "gray_matter_fraction": gm * voxel_ml / icv_ml}
    if with_csf:
        csf = int((labels == 3).sum())
        row.update({"csf_voxels": csf, "csf_ml": csf * voxel_ml, "csf_fraction": csf * voxel_ml / icv_ml})
    if brain is not None:
        row["brain_ml"] = float(brain.sum()) * voxel_ml
    return row


def compare_with_reference(pred, image_path, img3, labels, voxel_ml, csf):
    """Manual volumes (ml), Dice and volume error of the prediction against the label volume(s) beside the
    image, their CSF drawn by the model's data.csf rule `csf`: the evaluate stage's per-subject scores (with
    those against the labels as traced where the rule re-made their CSF)."""
    from .labels import label_paths_of, read_labels, with_csf_rule
    from .metrics import as_traced_scores, confusion_of, subject_scores

    refs = label_paths_of(image_path, labels)
    if not refs:
        return None
    traced = read_labels(refs, labels, image_path, img3)  # read once: the rule's CSF and, beside it, as traced
    truth = with_csf_rule(traced, image_path, img3, csf).reshape(pred.shape)
    row = subject_scores(confusion_of(pred, truth), voxel_ml)
    if csf == "intensity":
        row.update(as_traced_scores(pred, traced.reshape(pred.shape)))
    return {k: row[k] for k in REFERENCE_COLUMNS if k in row}


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


def segment_image(predictor, extractor, img3, path, skull_strip):
    """(labels on a 3-D image's own grid, its brain mask or None, the skull_strip column, displayed slices and
    labels): strip_skull, then the views."""
    seen, brain, stripped = strip_skull(extractor, img3, path, skull_strip)
    labels, shown, shown_labels = predictor.predict_image(seen)
    if brain is not None:
        labels[~brain] = 2  # tissue outside the brain is background (also where it was extracted before)
    return labels, brain, stripped, shown, shown_labels


def segment_volume(predictor, path, out_dir, labels, written, log, extractor=None, skull_strip="no", thumbs=None):
    """A volume's mask (on its own grid), brain mask (with an extractor) and overlay; its row of volumes.csv.
    thumbs(stem, image, labels, brain, affine): keeps what qc.png shows of it."""
    from .qc import qc_text, volume_flags
    from .reporting import plot_overlay
    from .volumes import load_volume, volume_stem

    stem, ext = output_stem(path), volume_stem(path)[1]
    img, img3 = load_volume(path)
    labels3, brain, stripped, shown, shown_labels = segment_image(predictor, extractor, img3, path, skull_strip)
    voxel_ml = voxel_ml_of(img)
    row = {**tissue_volumes(labels3, brain, img, predictor.classes > 3), "skull_strip": stripped}
    row["qc"] = qc_text(volume_flags(labels3, brain, row.get("brain_ml")))
    if labels is not None:
        csf = predictor.ckpt.get("csf", "none")  # scored in the convention the model learnt
        reference = compare_with_reference(labels3, path, img3, labels, voxel_ml, csf)
        if reference is None:
            log(f"predict: note: {path}: no manual labels beside it to score against")
        row.update(reference or {})
    for name, array in (("mask", labels3), ("brainmask", brain)):
        if array is not None:
            written.append(out_dir / f"{stem}_{name}{ext}")
            save_volume(as_image_of(img, array.reshape(img.shape)), written[-1], ext)
    pick = brain_slices(shown_labels)
    written.append(out_dir / f"{stem}_overlay.png")
    plot_overlay(shown[pick], shown_labels[pick], written[-1], title=display_name(path))
    if thumbs is not None:
        thumbs(stem, np.asanyarray(img3.dataobj), labels3, brain, img3.affine)
    return row


def as_image_of(img, array):
    """uint8 labels as an image of the input's own kind, affine and header."""
    out = img.__class__(array.astype(np.uint8), img.affine, header=img.header)
    out.set_data_dtype(np.uint8)
    return out


def segment_slice(predictor, path, out_dir, pixel_size, slice_thickness, written, source):
    """A lone .npy slice's mask and overlay (a one-view model only: a slice has no plane); its row."""
    from .io import atomic_path
    from .qc import qc_text, volume_flags
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
    row = {"white_matter_voxels": wm, "gray_matter_voxels": gm, "qc": qc_text(volume_flags(pred))}
    if predictor.classes > 3:
        row["csf_voxels"] = int((pred == 3).sum())
    if pixel_size:
        area = pixel_size[0] * pixel_size[-1]
        row.update({"white_matter_mm2": wm * area, "gray_matter_mm2": gm * area,
                    "white_matter_ml": wm * area * slice_thickness / 1000,
                    "gray_matter_ml": gm * area * slice_thickness / 1000})
    return row


def predict_files(checkpoint, out_dir, inputs, device="auto", batch_size=32, pixel_size=None, slice_thickness=1.0,
                  labels=None, part=None, skull_strip="auto", csf_border="network", log=print):
    """Segment every input; returns the number that failed. Raises a MrisegError up front (bad model,
    option, extractor or input list: nothing written); a bad input is said in one line and skipped, leaving
    no file (one in which the extractor finds no brain keeps a row, its qc saying so).

    skull_strip: auto (extract the brain of volumes not extracted already) | yes | no (extraction.py).
    csf_border: how the gray matter / CSF border is drawn (labels.CSF_BORDERS: network, intensity).
    labels (a make-archive preset or mapping): score each volume against the manual labels beside it.
    part (k, n), 1 <= k <= n: segment only every n-th input from the k-th (a job array's share) and write
    its rows to volumes.part-k-of-n.csv, for parts.merge_parts. Under torchrun the part is the process's
    (RANK + 1, WORLD_SIZE), and rank 0 merges the parts into volumes.csv once every process is done.
    """
    import tempfile

    import pandas as pd
    from tqdm import tqdm

    from .extraction import SKULL_STRIP, BrainExtractor
    from .labels import SourceError, parse_labels
    from .qc import add_cohort_flags, save_pages, save_thumbs
    from .volumes import is_volume

    if skull_strip not in SKULL_STRIP:
        raise InputError(f"--skull-strip {skull_strip}: use one of {', '.join(SKULL_STRIP)}")
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
    predictor = Predictor(checkpoint, device, batch_size, csf_border)
    files = expand_inputs(inputs, skip_labels=labels is not None)
    check_inputs(files)
    k, n = part or (1, 1)
    mine = list(enumerate(files))[k - 1::n]
    wants_extractor = skull_strip != "no" and any(is_volume(p) for _, p in mine)
    extractor = BrainExtractor(predictor.device) if wants_extractor else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.context and any(p.suffix == ".npy" for p in files):
        log(f"predict: note: {checkpoint} was trained with {predictor.context} neighbouring slice(s) each side; "
            "a lone .npy slice stands in for its own neighbours (segment whole volumes for the full benefit)")
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".qc-") as thumbs_dir:
        shown = []  # (stem, file of its thumbnails): qc.png's rows, kept on disk, not in memory

        def keep_thumbs(stem, image, labels3, brain, affine):
            shown.append((stem, save_thumbs(Path(thumbs_dir) / f"{len(shown)}.npz", image, labels3, brain, affine)))

        for index, path in tqdm(mine, desc="predict" if n == 1 else f"predict {k}/{n}", unit="file"):
            row = segment_one(predictor, index, path, out_dir, labels, pixel_size, slice_thickness, extractor,
                              skull_strip, keep_thumbs, checkpoint, log)
            failed += row.pop("failed", False)
            if row:
                rows.append(row)
        columns = VOLUME_COLUMNS + (REFERENCE_COLUMNS if labels is not None else [])
        table = pd.DataFrame(rows, columns=["input", *columns])
        if n == 1:
            table = add_cohort_flags(table)  # each volume's white/gray ratio judged against the run's others too
            write_table(table.drop(columns="input"), out_dir / "volumes.csv")
            log(f"segmented {len(rows)} of {len(files)} inputs -> {out_dir} (volumes.csv)")
            if shown:
                flags = dict(zip(table["file"].map(lambda f: output_stem(Path(f))), table["qc"]))
                pages = save_pages([(stem, flags.get(stem, "")) for stem, _ in shown], [f for _, f in shown], out_dir)
                flagged = sum(flags.get(stem, "") != "ok" for stem, _ in shown)
                log(f"quality control: {', '.join(p.name for p in pages)} in {out_dir} ({flagged} of {len(shown)} "
                    "volumes flagged)")
            return failed
    table.insert(1, "inputs", len(files))
    table.insert(2, "input_list", input_list_id(files))
    write_table(table, out_dir / part_name(k, n))  # numbered in the whole input list; merge_parts judges the ratios
    log(f"part {k}/{n}: segmented {len(rows)} of its {len(mine)} inputs -> {out_dir / part_name(k, n)}")
    if world > 1:
        barrier()
        if rank == 0:
            merge_parts(out_dir, n, len(files), log)
        leave_processes()
    return failed


def segment_one(predictor, index, path, out_dir, labels, pixel_size, slice_thickness, extractor, skull_strip,
                keep_thumbs, checkpoint, log):
    """One input's outputs and its row ({} for a bad input, "failed": True when it failed)."""
    from .extraction import NoBrainError
    from .volumes import is_volume

    written = []
    subject, session = bids_entities(path)
    head = {"input": index, "file": str(path), "subject": subject, "session": session}
    try:
        if is_volume(path):
            row = segment_volume(predictor, path, out_dir, labels, written, log, extractor, skull_strip, keep_thumbs)
        elif path.suffix == ".npy":
            row = segment_slice(predictor, path, out_dir, pixel_size, slice_thickness, written, checkpoint)
        else:
            raise InputError(f"{path}: unsupported input (use .npy slices or .nii/.nii.gz/.mgz volumes)")
    except (MrisegError, RuntimeError, ValueError, OSError) as e:  # e.g. a slice too small for the network
        log(f"predict: error: {e}" if isinstance(e, MrisegError) else f"predict: error: {path}: {first_line(e)}")
        for p in written:  # no mask without its row in volumes.csv
            p.unlink(missing_ok=True)
        # A scan that holds no brain keeps its row, marked, so a cohort's table shows what went wrong.
        return {**head, "qc": f"failed: {first_line(e)}", "failed": True} if isinstance(e, NoBrainError) else \
            {"failed": True}
    wm, gm = row["white_matter_voxels"], row["gray_matter_voxels"]
    return {**head, "gray_white_ratio": gm / wm if wm else float("nan"), **row}


def write_table(table, path):
    """volumes.csv (or a part of it), written whole or not at all."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
