"""`mriseg evaluate`: a trained model scored on every subject of another archive, such as subjects the project
never saw, with the evaluate stage's scores (evaluation.py)."""
import json
import tempfile
from pathlib import Path

import pandas as pd

from .evaluation import score_split


def mismatches(meta, ckpt):
    """How an archive's slices differ from those the model was trained on (axis, pixel size, normalisation),
    for what the archive's MRIs/mriseg.json records (the tutorial's archives record nothing). A model trained on
    such an archive records no pixel size either: nothing to compare with."""
    return [f"{key} {meta[key]} (model: {ckpt.get(key)})" for key in ("axis", "pixel_size_mm", "normalization")
            if key in meta and ckpt.get(key) is not None and meta[key] != ckpt[key]]


def unpack_archive(archive, root, ckpt, labels=None, skull_strip="auto"):
    """Validate and unpack a slice archive or a cohort of volumes into root, the latter on the model's
    pixel size with labels mapped by `labels` (default ibsr), each head's brain extracted as `mriseg predict
    --skull-strip` decides it (a slice archive is scored as it is)."""
    from .archive import extract_archive
    from .cohort import holds_volumes, prepare_cohort

    if holds_volumes(archive):
        pixel = ckpt.get("pixel_size_mm")
        # CSF drawn as the model's training labels drew it (checkpoints before the CSF class: none)
        prepare_cohort(archive, root, labels=labels or "ibsr", pixel_size=pixel[0] if pixel else None,
                       csf=ckpt.get("csf", "none"), skull_strip=skull_strip)
    else:
        extract_archive(archive, root)


def extraction_notes(archive, subjects):
    """evaluate's lines saying which subjects' brains were extracted ({subject: its mriseg.json record})."""
    decided = {}
    for subject, rec in sorted(subjects.items()):
        decided.setdefault(rec.get("skull_strip", "no"), []).append(subject)
    said = {"extracted": "brain extracted before scoring (a head)", "already extracted": "scored as it is "
            "(found extracted already)", "no": "scored as it is (--skull-strip no)"}
    return [f"evaluate: {archive}: {len(names)} subject(s) {said[how]}: {', '.join(names)}"
            for how, names in decided.items()]


def evaluate_archive(checkpoint, archive, device="auto", batch_size=32, labels=None, skull_strip="auto",
                     csf_border="network", log=print):
    """{'overall': metrics, 'subjects': {subject: metrics}} of a checkpoint on every subject of an archive.

    Overall metrics are the evaluate stage's (reports/metrics.json) with the number of slices: a slice
    archive's slice metrics, a cohort's per-subject 3-D scores averaged. Subjects come from a cohort's
    volumes or make-archive's file names (none for archives without them). skull_strip: auto | yes | no,
    for a cohort of volumes, as `mriseg predict --skull-strip`; each subject's decision is in its scores.
    """
    from .data import SliceDataset
    from .manifest import MANIFEST_COLUMNS, archive_metadata, list_pairs
    from .prediction import Predictor

    predictor = Predictor(checkpoint, device, batch_size, csf_border)
    ckpt, context = predictor.ckpt, predictor.context
    with tempfile.TemporaryDirectory(prefix="mriseg-evaluate-") as tmp:
        root = Path(tmp) / "MRIs"
        unpack_archive(archive, root, ckpt, labels, skull_strip)
        recorded = root / "mriseg.json"
        meta = json.loads(recorded.read_text()) if recorded.exists() else {}
        records = meta["subjects"] if meta.get("layout") == "volumes" else {}  # how each head was extracted
        for line in extraction_notes(archive, records):
            log(line)
        manifest = pd.DataFrame(list_pairs(root)).assign(split="test")[MANIFEST_COLUMNS]
        if context and (manifest["slice"] < 0).any():
            log(f"evaluate: note: {archive}: image names carry no subject and slice (sub-<id>_slice-<n>_<ix>.npy), "
                f"so each slice stands in for its {context} neighbour(s) each side")
        for what in mismatches(meta, ckpt):
            log(f"evaluate: note: {archive}: slices differ from the model's training slices: {what} "
                f"(rebuild it with `mriseg make-archive --like {checkpoint}`)")
        # A cohort's slices in the first view's plane; a slice archive's as they are (a mismatch is noted above).
        cohort = archive_metadata(root)["layout"] == "volumes"
        dataset = SliceDataset(manifest, "test", context, view=predictor.views[0].axis if cohort else None)
        overall, rows, _ = score_split(predictor, root, dataset, batch_size)
        if not overall:
            overall = pd.DataFrame(rows).drop(columns=["subject", "slices"]).mean().to_dict()
    return {"archive": str(archive), "model": str(checkpoint), "overall": {**overall, "slices": len(dataset)},
            "subjects": {r["subject"]: {**{k: v for k, v in r.items() if k != "subject"},
                                        **({"skull_strip": records[r["subject"]]["skull_strip"]}
                                           if r["subject"] in records else {})} for r in rows}}


def format_table(result):
    columns = ["slices", "iou", "dice_white_matter", "dice_gray_matter", "iou_white_matter", "iou_gray_matter",
               "volume_error_white_matter", "volume_error_gray_matter"]
    columns += [k for k in ("dice_csf", "volume_error_csf", "dice_gray_matter_as_traced",
                            "volume_error_gray_matter_as_traced") if k in result["overall"]]
    table = pd.DataFrame({**result["subjects"], "all": result["overall"]}).T.reindex(columns=columns)
    table["slices"] = table["slices"].astype(int)
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="")
