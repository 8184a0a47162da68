"""A zip of labelled 3-D volumes (a cohort) -> one preprocessed, memory-mappable pair of arrays per subject.

The zip may hold any folders: each image (`.nii`, `.nii.gz`, `.mgz`) with its labels beside it by
make-archive's pairing rules (`<subject>_seg.*`, FSL FAST `<subject>_pve_0/1/2.*`, FreeSurfer
`<subject>/mri/norm.mgz` + `aseg.mgz`), so the IBSR zip as published (a folder per subject) works as
it is. Every subject is validated before anything is swapped in; each problem is one line naming the
entry: unreadable or truncated volumes, not 3-D, an image without labels or labels without an image,
label geometry unlike the image's, label values outside the preset, NaN/inf voxels, a volume over
data.max_volume_mb, duplicate subject ids, and (as for slice archives) zip-slip paths, symlinks and
declared sizes over data.max_extracted_mb.

Each subject is preprocessed once onto its working grid: RAS+, resampled to data.pixel_size mm on all
three axes (an isotropic grid, so that axial, coronal and sagittal slices all have square pixels of the
size the networks train on; labels resampled per class), normalised on its own, cropped to the head
(volumes.crop_to_foreground, as prediction crops). Its labels' CSF follows data.csf (labels.CSF_RULES: by
default re-made from the image, so that gray matter holds no sulcal CSF). Written uncompressed:

    volumes/<subject>.image.npy   float32 (X, Y, Z) working volume; every view reads its slices (mmap)
    volumes/<subject>.labels.npy  uint8, same shape
    volumes/<subject>.native.npy  uint8 labels on the image's own voxel grid, for 3-D scoring
    volumes/<subject>.traced.npy  uint8, the same with the labels' own CSF (data.csf labels), where data.csf
                                  re-made it (intensity): scored beside, so that the change of convention shows
    volumes/<subject>.brainmask.npy  uint8, the extracted brain on the image's own grid, where data.skull_strip
                                  extracted it (mriseg.json says per subject what was decided); scoring
                                  sets tissue outside it to background, as mriseg predict does
    mriseg.json                   how they were made, per subject its grids and, per view, trained-on slices
    files.json                    sha256 of every file written (the resume fingerprint reads it)
"""
import json
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from . import CLASS_NAMES
from .archive import IMAGE_DIR, ArchiveError, _check_entry, _ignored, _read, save_hashed, write_hashes
from .errors import MrisegError
from .extraction import find_brain, voxel_ml_of
from .io import replace_dir
from .labels import CSF_RULES, SourceError, parse_labels, read_labels
from .scans import find_subjects, tissue_slices, volume_header, working_volumes
from .volumes import NORMALIZATION, VIEWS, VolumeError, crop_to_foreground, is_volume, load_volume, to_slices

LAYOUT = "volumes"


def holds_volumes(archive):
    """True for a zip of NIfTI/MGZ volumes, False for the tutorial's slice layout (or what is not a zip:
    the slice extractor then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not _ignored(n)]
    except (zipfile.BadZipFile, OSError):
        return False
    slices = any(str(PurePosixPath(n).parent) == IMAGE_DIR and n.endswith(".npy") for n in names)
    return not slices and any(is_volume(n) for n in names)


def prepare_cohort(archive, dest, labels="ibsr", pixel_size=1.0, min_tissue=100,
                   max_volume_mb=1024, max_extracted_mb=4096, skull_strip="no", csf="intensity"):
    """Validate and preprocess every subject of a volume zip into dest; returns (subjects, slices kept).

    skull_strip (data.skull_strip): auto | yes | no, as `mriseg predict --skull-strip` decides it: each
    head's brain extracted once, everything outside it zero and its labels background, as prediction sees
    it; the mask kept beside the arrays. csf (data.csf): how the CSF class is drawn (labels.CSF_RULES).

    dest changes only when every subject has passed (built in a temporary folder, then swapped in).
    """
    archive, dest = Path(archive), Path(dest)
    labels, pixel_size = parse_labels(labels), pixel_size or None
    if csf not in CSF_RULES:
        raise SourceError(f"data.csf {csf!r}: use one of {', '.join(CSF_RULES)}")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{archive}: not a readable zip archive ({e})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".raw", dir=dest.parent))
    out = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with zf:
            infos = zf.infolist()
            for info in infos:
                _check_entry(info, archive)
            total = sum(i.file_size for i in infos)
            if total > max_extracted_mb * 2**20:
                raise ArchiveError(f"{archive}: declares {total / 2**20:.0f} MB uncompressed, over the "
                                   f"{max_extracted_mb} MB cap (data.max_extracted_mb)")
            for info in infos:
                if not _ignored(info.filename) and is_volume(info.filename):
                    target = raw / info.filename.replace("\\", "/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(_read(zf, info, archive))
        try:
            n_subjects, n_slices = _preprocess(raw, out, labels, pixel_size, min_tissue, max_volume_mb, skull_strip,
                                               csf)
        except (SourceError, VolumeError, MrisegError) as e:  # name the zip's entry, not the temporary copy
            message = str(e)
            for temporary in (f"{raw}/: ", f"{raw}: ", f"{raw}/"):
                message = message.replace(temporary, "")
            raise ArchiveError(f"{archive}: {message}") from None
        replace_dir(out, dest)
        return n_subjects, n_slices
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def _preprocess(raw, out, labels, pixel_size, min_tissue, max_volume_mb, skull_strip, csf):
    subjects = find_subjects(raw, labels, strict=True)
    for _, image_path, label_paths in subjects:
        for path in (image_path, *label_paths):
            header = volume_header(path)  # the voxels are not read for this
            size = int(np.prod(header.shape)) * header.get_data_dtype().itemsize
            if size > max_volume_mb * 2**20:
                raise SourceError(f"{path}: {size / 2**20:.4g} MB of voxels, over the {max_volume_mb} MB cap "
                                  "(data.max_volume_mb)")
    (out / LAYOUT).mkdir()
    hashes, records, kept_total = {}, {}, 0
    extractor = brain_extractor() if skull_strip != "no" else None
    for subject, image_path, label_paths in tqdm(subjects, desc="preprocess", unit="subject"):
        img3 = load_volume(image_path)[1]
        brain, stripped = find_brain(extractor, img3, image_path, skull_strip)
        brain = brain if stripped == "extracted" else None
        traced = read_labels(label_paths, labels, image_path, img3)  # read once: as traced, and for the rule
        image, mask, work_affine, native, _ = working_volumes(image_path, label_paths, labels, None, pixel_size,
                                                              brain, img3, csf, traced)
        image, work_affine, box = crop_to_foreground(image, work_affine)  # as prediction crops
        mask = mask[box]
        kept = {view: tissue_slices(to_slices(mask, view), min_tissue) for view in VIEWS}
        arrays = [("image", image.astype(np.float32)), ("labels", mask), ("native", native)]
        arrays += [("brainmask", brain.astype(np.uint8))] if brain is not None else []
        if csf == "intensity":  # the labels as their tracers drew them (IBSR: gray matter with the sulcal CSF)
            arrays += [("traced", traced)]
        for kind, array in arrays:
            save_hashed(out, f"{LAYOUT}/{subject}.{kind}.npy", array, hashes)
        records[subject] = {"source": image_path.relative_to(raw).as_posix(), "shape": list(image.shape),
                            "skull_strip": stripped,
                            "kept": kept, "work_affine": np.asarray(work_affine).tolist(),
                            "native_affine": np.asarray(img3.affine).tolist(), "native_shape": list(img3.shape),
                            "native_voxel_ml": voxel_ml_of(img3)}
        kept_total += len(kept["axial"])
    if not kept_total:
        raise SourceError(f"{raw}/: no slice has {min_tissue} tissue pixels (check data.labels)")
    metadata = {"source": "mriseg cohort", "layout": LAYOUT, "normalization": NORMALIZATION,
                "grid": "isotropic" if pixel_size else "voxels",  # data.pixel_size 0 keeps each subject's voxels
                "pixel_size_mm": [pixel_size, pixel_size] if pixel_size else None,
                "labels": labels if isinstance(labels, str) else {str(k): v for k, v in labels.items()},
                "min_tissue": min_tissue, "csf": csf, "skull_strip": skull_strip,
                "classes": list(CLASS_NAMES if csf != "none" else CLASS_NAMES[:3]), "subjects": records}
    (out / "mriseg.json").write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    write_hashes(out, hashes)
    return len(subjects), kept_total


def brain_extractor():
    """The brain extractor (extraction.py), on the CPU wherever the stage runs, so that data/MRIs is the same
    on every machine (a few seconds per subject)."""
    import torch

    from .extraction import BrainExtractor

    return BrainExtractor(torch.device("cpu"))
