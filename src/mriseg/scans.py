"""Labelled scans on disk: finding each subject's image and labels in a folder, and reading them onto the
working grid that training and prediction share (RAS+, square pixels, normalised)."""
from pathlib import Path

import numpy as np

from .labels import SourceError, is_label_file, label_paths_hint, label_paths_of, read_labels, with_csf_rule
from .volumes import (is_volume, load_volume, normalize_volume, resample_inplane, resample_labels, to_slices,
                      volume_stem)


def freesurfer_images(folder):
    """The mri/norm.mgz of FreeSurfer subject folders: folder itself, or its sub-folders."""
    folder = Path(folder)
    return [d / "mri" / "norm.mgz" for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
            if (d / "mri" / "norm.mgz").is_file()]


def find_subjects(src, labels, strict=False):
    """[(subject, image path, [label paths])] found under src: its files and FreeSurfer subject folders or,
    with strict (a cohort archive), every folder below it, where an image without labels and labels
    without an image are errors."""
    src = Path(src)
    if not src.exists():
        raise SourceError(f"{src}: no such folder")
    # FreeSurfer subjects (strict: at any depth); the other files of their mri/ folders are not inputs.
    norms = sorted(src.rglob("mri/norm.mgz")) if strict else freesurfer_images(src)
    out = [(norm.parent.parent.name, norm, [norm.with_name("aseg.mgz")]) for norm in norms]
    if strict:
        files = sorted(p for p in src.rglob("*") if p.is_file() and is_volume(p) and p.parent not in
                       {norm.parent for norm in norms})
    else:
        files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []
    claimed = set()
    for path in files:
        refs = label_paths_of(path, labels)
        if is_label_file(path):
            continue
        if refs:
            out.append((volume_stem(path)[0], path, refs))
            claimed.update(refs)
        elif strict:
            raise SourceError(f"{path}: image without labels (expected {label_paths_hint(path, labels)} beside it)")
    if strict:
        for path in files:
            if is_label_file(path) and path not in claimed:
                raise SourceError(f"{path}: labels without an image beside them")
    seen = {}
    for subject, image, _ in out:  # file names carry the subject: two sources cannot share one
        if seen.setdefault(subject, image) != image:
            raise SourceError(f"{seen[subject]} and {image} are both subject {subject!r}; rename one")
    if not out:
        raise SourceError(f"{src}: no labelled volumes found (<subject>.nii.gz + <subject>_seg.nii.gz, "
                          "FreeSurfer mri/norm.mgz + mri/aseg.mgz, or FSL FAST _pve_0/1/2)")
    return out


def volume_header(path):
    """A volume's header and affine without reading its voxels (load_volume's one-line error when unreadable)."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception:
        return load_volume(path)[1]


def working_volumes(image_path, label_paths, labels, axis, pixel_size, brain=None, img3=None, csf="labels",
                    traced=None):
    """An image and its labels on the working grid: (normalised image (X, Y, Z) float32, labels uint8,
    the grid's affine, the labels mapped to the three classes on the image's own grid, the image's own 3-D
    image). RAS+, resampled to pixel_size mm in the plane of `axis` (None: on all three axes), labels per
    class. brain: a brain mask on the image's own grid: the working image is zero outside it and the
    working labels background there, as prediction strips a head; the native labels stay the reference.
    img3: the image already read (load_volume(image_path)[1]), so that it is read once. csf: data.csf's rule
    (labels.CSF_RULES). traced: the labels already read (labels.read_labels), so that they are read once."""
    import nibabel as nib

    img3 = load_volume(image_path)[1] if img3 is None else img3
    traced = read_labels(label_paths, labels, image_path, img3) if traced is None else traced
    native = with_csf_rule(traced, image_path, img3, csf)
    working = resample_inplane(img3, axis, pixel_size, order=1)
    mask = resample_labels(nib.Nifti1Image(native, img3.affine), axis, pixel_size)
    image, mask = np.asanyarray(working.dataobj), np.rint(np.asanyarray(mask.dataobj)).astype(np.uint8)
    if brain is not None:
        inside = np.asanyarray(resample_inplane(nib.Nifti1Image(brain.astype(np.float32), img3.affine), axis,
                                                pixel_size, order=1).dataobj) > 0.5
        image, mask = np.where(inside, image, 0), np.where(inside, mask, 2).astype(np.uint8)
    return normalize_volume(image), mask, working.affine, native, img3


def preprocess_subject(image_path, label_paths, labels, axis, pixel_size, csf="labels"):
    """working_volumes' image and labels cut along axis into (n, H, W) slices."""
    image, mask, affine, native, img3 = working_volumes(image_path, label_paths, labels, axis, pixel_size,
                                                        csf=csf)
    return to_slices(image, axis), to_slices(mask, axis), affine, native, img3


def tissue_slices(masks, min_tissue):
    """Indices of the slices with at least min_tissue labelled tissue pixels (the ones trained on)."""
    return [z for z in range(len(masks)) if (masks[z] < 2).sum() >= min_tissue]
