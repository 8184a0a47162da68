"""`mriseg longitudinal`: each subject's sessions segmented in one space and measured in one brain mask, and
the change between sessions (change.csv, change.png).

Segmenting each session on its own adds each session's error twice to a change. Here, as within-subject
template streams do (FreeSurfer's and FastSurfer's longitudinal ones): every later session is registered
rigidly to the first (registration.py); all sessions are resampled once into the space halfway between them
(none is favoured); the brain is extracted once, from their mean; each session is segmented there by every
view and measured inside that one brain mask, so that its intracranial volume is the same for every session.
"""
import csv
import datetime
from pathlib import Path

import numpy as np

from . import first_line
from .inputs import InputError

TISSUES = ("white_matter", "gray_matter", "csf", "icv")
FRACTIONS = ("white_matter", "gray_matter", "csf")  # of the intracranial volume
SESSION_COLUMNS = ["subject", "session", "file", "date", "years", "white_matter_ml", "gray_matter_ml", "csf_ml",
                   "icv_ml", "white_matter_fraction", "gray_matter_fraction", "csf_fraction", "skull_strip"]
CHANGE_COLUMNS = (["subject", "session_from", "session_to", "years"]
                  + [f"{t}_{k}" for t in TISSUES for k in ("ml_from", "ml_to", "change_ml", "change_pct",
                                                             "pct_per_year")]
                  + [f"{t}_fraction_change_pct" for t in FRACTIONS])


def bids_sessions(root):
    """{subject: [(session, T1w image)]} of a BIDS dataset's subjects, sessions in label order (the first
    T1w of a session with several runs)."""
    from .inputs import bids_entities, bids_t1w

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (give a BIDS dataset: sub-*/ses-*/anat/*_T1w.nii[.gz])")
    subjects = {}
    for path in bids_t1w(root):
        subject, session = bids_entities(path)
        sessions = subjects.setdefault(subject, {})
        sessions.setdefault(session, path)
    return {s: sorted(sessions.items()) for s, sessions in sorted(subjects.items())}


def parse_date(text, where):
    """A BIDS acq_time (2020-01-31T10:00:00) or a date (2020-01-31)."""
    try:
        return datetime.datetime.fromisoformat(text.strip()).date()
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss)") from None


def session_dates(root, dates_csv=None):
    """{(subject, session): date} from the BIDS sessions files (sub-<id>/sub-<id>_sessions.tsv: session_id,
    acq_time) and, over them, a CSV of the user's (subject, session, date)."""
    dates = {}
    for tsv in sorted(Path(root).glob("sub-*/sub-*_sessions.tsv")):
        subject = tsv.parent.name.removeprefix("sub-")
        with open(tsv, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("acq_time") and row["acq_time"] != "n/a" and row.get("session_id"):
                    dates[(subject, row["session_id"].removeprefix("ses-"))] = parse_date(row["acq_time"], tsv)
    if dates_csv:
        with open(dates_csv, newline="") as f:
            reader = csv.DictReader(f)
            if not {"subject", "session", "date"} <= set(reader.fieldnames or []):
                raise InputError(f"{dates_csv}: expected the columns subject, session, date")
            for row in reader:
                key = (row["subject"].removeprefix("sub-"), row["session"].removeprefix("ses-"))
                dates[key] = parse_date(row["date"], dates_csv)
    return dates


def common_space(images):
    """(the transform of each session into the common space, 4 x 4 each): session k's image is sampled at
    transform_k @ y for each point y of the common space, laid on the first session's grid."""
    from .registration import halfway, rigid_register

    to_first = [np.eye(4)] + [rigid_register(images[0], image) for image in images[1:]]
    middle = np.linalg.inv(halfway(to_first))
    return [t @ middle for t in to_first]


def one_brain(extractor, resampled, name, skull_strip):
    """(the brain mask every session is measured in, the extent the views see of each, the skull_strip
    decision): the brain extracted from the sessions' mean, seen as masked; where they were extracted already
    (auto), the voxels every session holds, measured within the extracted brain (as segment.segment_image
    measures them); where they are not to be (no), those voxels for both."""
    import nibabel as nib
    from scipy import ndimage

    from .extraction import find_brain

    brain, decided = None, "no"
    if extractor is not None:
        mean = np.mean([np.asarray(im.dataobj) for im in resampled], axis=0)
        brain, decided = find_brain(extractor, nib.Nifti1Image(mean, resampled[0].affine), name, skull_strip)
        if decided == "extracted":
            return brain, brain, decided
    common = ndimage.binary_fill_holes(np.logical_and.reduce([np.asarray(im.dataobj) > 0 for im in resampled]))
    return (common if brain is None else common & brain), common, decided


def segment_sessions(predictor, extractor, images, name, skull_strip="auto"):
    """One subject's sessions (3-D nibabel images) in one space: ([labels on the common grid], the brain mask,
    the skull_strip decision, [the resampled images])."""
    import nibabel as nib

    from .registration import resample_into

    resampled = [resample_into(image, t, images[0]) for image, t in zip(images, common_space(images))]
    brain, extent, decided = one_brain(extractor, resampled, name, skull_strip)
    labels = []
    for image in resampled:
        seen = nib.Nifti1Image(np.where(extent, np.asarray(image.dataobj), 0), image.affine)
        each = predictor.predict_image(seen)[0]
        each[~brain] = 2  # measured in the one brain mask
        labels.append(each)
    return labels, brain, decided, resampled


def change_rows(subject, sessions):
    """change.csv's rows of one subject: every pair of its sessions (earlier, later), from session rows."""
    rows = []
    for i, a in enumerate(sessions):
        for b in sessions[i + 1:]:
            years = b["years"] - a["years"] if a["years"] != "" and b["years"] != "" else ""
            row = {"subject": subject, "session_from": a["session"], "session_to": b["session"], "years": years}
            for t in TISSUES:
                before, after = a[f"{t}_ml"], b[f"{t}_ml"]
                pct = 100 * (after - before) / before if before else float("nan")
                row.update({f"{t}_ml_from": before, f"{t}_ml_to": after, f"{t}_change_ml": after - before,
                            f"{t}_change_pct": pct, f"{t}_pct_per_year": pct / years if years else ""})
            for t in FRACTIONS:
                before, after = a[f"{t}_fraction"], b[f"{t}_fraction"]
                row[f"{t}_fraction_change_pct"] = 100 * (after - before) / before if before else float("nan")
            rows.append(row)
    return rows


def plot_change(sessions, path):
    """change.png: gray matter, white matter and CSF against time, one line per subject (years since the
    first session where dates are known, else the session's order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    dated = all(r["years"] != "" for r in sessions)
    by_subject = {}
    for r in sessions:
        by_subject.setdefault(r["subject"], []).append(r)
    for ax, (tissue, title) in zip(axes, (("gray_matter", "Gray matter"), ("white_matter", "White matter"),
                                          ("csf", "CSF"))):
        for subject, rows in by_subject.items():
            x = [r["years"] if dated else k for k, r in enumerate(rows)]
            ax.plot(x, [r[f"{tissue}_ml"] for r in rows], marker="o", label=f"sub-{subject}")
        ax.set_title(f"{title} (ml, in one brain mask per subject)")
        ax.set_xlabel("years since the first session" if dated else "session")
        ax.grid(alpha=0.3)
    if len(by_subject) <= 12:
        axes[0].legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_rows(rows, columns, path):
    import pandas as pd

    from .io import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")


def longitudinal(checkpoint, bids, out_dir, device="auto", batch_size=32, skull_strip="auto", dates_csv=None,
                 csf_border="network", log=print):
    """Every subject of a BIDS dataset with two or more sessions: volumes per session in its common space
    (volumes.csv), the change between each pair of sessions (change.csv), change.png, and each session's
    mask and the subject's brain mask on its common grid (sub-<id>/). Returns the number of subjects done.
    A subject that fails is said in one line and skipped; bad options, model or dataset stop before anything
    is written."""
    from tqdm import tqdm

    from .extraction import SKULL_STRIP, BrainExtractor, voxel_ml_of
    from .errors import MrisegError
    from .prediction import Predictor
    from .segment import as_image_of, save_volume, tissue_volumes
    from .volumes import load_volume

    if skull_strip not in SKULL_STRIP:
        raise InputError(f"--skull-strip {skull_strip}: use one of {', '.join(SKULL_STRIP)}")
    subjects = bids_sessions(bids)
    followed = {s: sessions for s, sessions in subjects.items() if len(sessions) >= 2}
    if not followed:
        raise InputError(f"{bids}: no subject with two or more sessions (sub-<id>/ses-<label>/anat/*_T1w.nii[.gz])")
    for subject in sorted(set(subjects) - set(followed)):
        log(f"longitudinal: note: sub-{subject} has one session: nothing to follow (use mriseg predict)")
    dates = session_dates(bids, dates_csv)
    predictor = Predictor(checkpoint, device, batch_size, csf_border)
    extractor = BrainExtractor(predictor.device) if skull_strip != "no" else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions, changes = [], []
    for subject, visits in tqdm(followed.items(), desc="longitudinal", unit="subject"):
        try:
            images = [load_volume(path)[1] for _, path in visits]
            labels, brain, decided, resampled = segment_sessions(predictor, extractor, images, f"sub-{subject}",
                                                                 skull_strip)
        except (MrisegError, RuntimeError, ValueError, OSError) as e:  # said, and the other subjects go on
            log(f"longitudinal: error: sub-{subject}: {first_line(e)}")
            continue
        first = dates.get((subject, visits[0][0]))
        rows, masks = [], []
        for (session, path), each, image in zip(visits, labels, resampled):
            when = dates.get((subject, session))
            volumes = tissue_volumes(each, brain, image, predictor.classes > 3)
            rows.append({"subject": subject, "session": session, "file": str(path), "date": when or "",
                         "years": (when - first).days / 365.25 if when and first else "",
                         **{k: volumes.get(k, float("nan")) for k in SESSION_COLUMNS[5:-1]}, "skull_strip": decided})
            masks.append((f"sub-{subject}_ses-{session}_mask.nii.gz", each))
        masks.append((f"sub-{subject}_brainmask.nii.gz", brain))
        (out_dir / f"sub-{subject}").mkdir(exist_ok=True)
        for name, array in masks:  # on the subject's common grid
            save_volume(as_image_of(resampled[0], array), out_dir / f"sub-{subject}" / name, ".nii.gz")
        sessions += rows
        changes += change_rows(subject, rows)
        log(f"longitudinal: sub-{subject}: {len(rows)} sessions in one space ({decided}; voxel "
            f"{voxel_ml_of(resampled[0]) * 1000:.2f} mm^3)")
    if not sessions:
        return 0
    write_rows(sessions, SESSION_COLUMNS, out_dir / "volumes.csv")
    write_rows(changes, CHANGE_COLUMNS, out_dir / "change.csv")
    plot_change(sessions, out_dir / "change.png")
    done = len({r["subject"] for r in sessions})
    log(f"longitudinal: {len(sessions)} sessions of {done} subjects -> {out_dir} (volumes.csv, change.csv, change.png)")
    return done
