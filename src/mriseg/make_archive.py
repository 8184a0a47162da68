"""`mriseg make-archive`: labelled volumes (NIfTI/MGZ) -> a zip in the tutorial's layout.

Sources: a folder of pairs `<subject>.nii.gz` + `<subject>_seg.nii.gz` (also .nii/.mgz), FreeSurfer
subject folders (`<subject>/mri/norm.mgz` + `aseg.mgz`), or FSL FAST outputs (`<subject>.nii.gz` +
`<subject>_pve_0/1/2.nii.gz`). Every volume is put in RAS+ orientation, resampled in-plane to square
pixels (`--pixel-size`; linear for images, and for labels each tissue's indicator linearly, then the
most likely tissue, as nnU-Net resamples label maps: anatomy is never stretched),
normalised on its own (robust percentiles to [0, 1]), and cut into slices along `--axis` (auto: the
acquisition plane, i.e. across the thickest voxels, so slices keep their native resolution; axial
when voxels are isotropic); slices with
at least `--min-tissue` labelled tissue pixels are kept and centre-padded (never stretched) to one
size. Images are named `sub-<subject>_slice-<n>_<ix>.npy`, so the pairing rule holds and the split
stage keeps each subject on one side.
"""
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .archive import write_archive
from .io import atomic_path
from .volumes import (NORMALIZATION, VolumeError, acquisition_axis, is_volume, load_volume, normalize_volume,
                      resample_inplane, resample_labels, to_slices, volume_stem)

# FreeSurfer aseg labels (FreeSurferColorLUT). Brainstem goes to white matter, as in IBSR's tracings.
ASEG_WHITE = (2, 41, 7, 46, 16, 77, 78, 79, 85, 251, 252, 253, 254, 255)
ASEG_GRAY = (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60)
# Everything else aseg holds (ventricles, CSF, vessels, choroid plexus, hypointensities) is background.
ASEG_BACKGROUND = (0, 4, 5, 14, 15, 24, 30, 31, 43, 44, 62, 63, 72, 80, 81, 82)
PRESETS = {
    "ibsr": {3: 0, 2: 1},  # IBSR: 0 background, 1 CSF, 2 gray matter, 3 white matter
    "freesurfer-aseg": {**{v: 0 for v in ASEG_WHITE}, **{v: 1 for v in ASEG_GRAY}},
    "fsl-fast": "argmax of pve_0 (CSF), pve_1 (gray matter), pve_2 (white matter)",
}


KNOWN_VALUES = {"ibsr": (0, 1, 2, 3), "freesurfer-aseg": ASEG_WHITE + ASEG_GRAY + ASEG_BACKGROUND}


class SourceError(ValueError):
    pass


def check_label_values(volumes, labels, paths):
    """One line naming the file when a label volume holds values its preset does not know (a wrong
    --labels/data.labels would otherwise silently turn tissue into background) or values that are no labels."""
    if labels == "fsl-fast":
        for path, vol in zip(paths, volumes):
            if vol.min() < -1e-3 or vol.max() > 1 + 1e-3:
                raise SourceError(f"{path}: partial-volume values must lie in [0, 1] (fsl-fast), "
                                  f"got {float(vol.min()):g} to {float(vol.max()):g}")
        return
    vol = volumes[0]
    if vol.dtype.kind == "f" and not np.array_equal(vol, np.rint(vol)):
        raise SourceError(f"{paths[0]}: label values must be whole numbers")
    if not isinstance(labels, str):
        return  # an explicit map sends every value it does not name to background, as documented
    bad = np.setdiff1d(np.unique(vol), KNOWN_VALUES[labels])
    if bad.size:
        raise SourceError(f"{paths[0]}: label values {bad.astype(np.int64).tolist()[:8]} are not in the {labels} "
                          "preset (choose another, or an explicit map such as '3:0,2:1')")


def parse_labels(spec):
    """A preset name, or an explicit 'SRC:DST,...' mapping (DST 0 = white matter, 1 = gray matter)."""
    if spec in PRESETS:
        return spec
    try:
        mapping = {int(a): int(b) for a, b in (item.split(":") for item in spec.split(","))}
    except ValueError:
        raise SourceError(f"--labels {spec!r}: use {', '.join(PRESETS)} or a mapping like '3:0,2:1'") from None
    if not set(mapping.values()) <= {0, 1, 2}:
        raise SourceError(f"--labels {spec!r}: targets must be 0 (white matter), 1 (gray matter) or 2 (background)")
    return mapping


def is_label_file(path):
    """A label volume by the pairing rules: <subject>_seg.*, <subject>_pve_<k>.*, FreeSurfer aseg.mgz."""
    stem = volume_stem(path)[0]
    return re.search(r"_(seg|pve_\d)$", stem) is not None or (stem == "aseg" and Path(path).parent.name == "mri")


def label_paths_of(image_path, labels):
    """The label volume(s) that go with an image ([] when absent): FreeSurfer mri/norm.mgz -> mri/aseg.mgz,
    FSL FAST <subject>.nii.gz -> <subject>_pve_0/1/2.nii.gz, otherwise <subject>_seg.nii.gz."""
    path = Path(image_path)
    if not is_volume(path):
        return []
    stem, suffix = volume_stem(path)
    if path.name == "norm.mgz" and path.parent.name == "mri":
        refs = [path.with_name("aseg.mgz")]
    elif labels == "fsl-fast":
        refs = [path.with_name(f"{stem}_pve_{k}{suffix}") for k in range(3)]
    else:
        refs = [path.with_name(f"{stem}_seg{suffix}")]
    return refs if all(r.is_file() for r in refs) else []


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


def label_paths_hint(image_path, labels):
    stem, suffix = volume_stem(image_path)
    return f"{stem}_pve_0/1/2{suffix}" if labels == "fsl-fast" else f"{stem}_seg{suffix}"


def map_labels(volumes, labels):
    if labels == "fsl-fast":
        pve = np.stack(volumes)  # CSF, GM, WM
        tissue = np.array([2, 1, 0], np.uint8)[pve.argmax(axis=0)]
        return np.where(pve.sum(axis=0) > 0, tissue, 2).astype(np.uint8)
    table = PRESETS[labels] if isinstance(labels, str) else labels
    vol = np.rint(volumes[0]).astype(np.int64)
    out = np.full(vol.shape, 2, np.uint8)
    for src, dst in table.items():
        out[vol == src] = dst
    return out


def load_labels(label_paths, labels, image_path, img3):
    """The label volume(s) of an image mapped to the three classes, on the image's own grid."""
    label_imgs = [load_volume(p)[1] for p in label_paths]
    for p, lab in zip(label_paths, label_imgs):
        if lab.shape != img3.shape or not np.allclose(lab.affine, img3.affine, atol=1e-3):
            raise SourceError(f"{p}: geometry {lab.shape} does not match its image {image_path} {img3.shape} "
                              "(shape and affine must be equal)")
    volumes = [np.asanyarray(x.dataobj) for x in label_imgs]
    check_label_values(volumes, labels, label_paths)
    return map_labels(volumes, labels)


def working_volumes(image_path, label_paths, labels, axis, pixel_size):
    """An image and its labels on the working grid: (normalised image (X, Y, Z) float32, labels uint8,
    the grid's affine, the labels mapped to the three classes on the image's own grid, the image's own 3-D
    image). RAS+, resampled to pixel_size mm in the plane of `axis` (None: on all three axes), labels per
    class."""
    import nibabel as nib

    img, img3 = load_volume(image_path)
    native = load_labels(label_paths, labels, image_path, img3)
    image = resample_inplane(img3, axis, pixel_size, order=1)
    mask = resample_labels(nib.Nifti1Image(native, img3.affine), axis, pixel_size)
    return (normalize_volume(np.asanyarray(image.dataobj)), np.rint(np.asanyarray(mask.dataobj)).astype(np.uint8),
            image.affine, native, img3)


def preprocess_subject(image_path, label_paths, labels, axis, pixel_size):
    """working_volumes' image and labels cut along axis into (n, H, W) slices."""
    image, mask, affine, native, img3 = working_volumes(image_path, label_paths, labels, axis, pixel_size)
    return to_slices(image, axis), to_slices(mask, axis), affine, native, img3


def tissue_slices(masks, min_tissue):
    """Indices of the slices with at least min_tissue labelled tissue pixels (the ones trained on)."""
    return [z for z in range(len(masks)) if (masks[z] < 2).sum() >= min_tissue]


def subject_slices(image_path, label_paths, labels, axis, pixel_size, min_tissue):
    images, masks = preprocess_subject(image_path, label_paths, labels, axis, pixel_size)[:2]
    return [(z, images[z], masks[z]) for z in tissue_slices(masks, min_tissue)]


def center_pad(a, shape, fill):
    out = np.full(shape, fill, a.dtype)
    dy, dx = (shape[0] - a.shape[0]) // 2, (shape[1] - a.shape[1]) // 2
    out[dy:dy + a.shape[0], dx:dx + a.shape[1]] = a
    return out


def volume_header(path):
    """A volume's header and affine without reading its voxels (load_volume's one-line error when unreadable)."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception:
        return load_volume(path)[1]


def choose_axis(subjects):
    """`--axis auto`: the acquisition plane most subjects share (axial for isotropic voxels)."""
    from collections import Counter

    votes = Counter(acquisition_axis(volume_header(image_path)) for _, image_path, _ in subjects)
    return max(sorted(votes), key=lambda a: (votes[a], a == "axial"))


def make_archive(src, out, labels="ibsr", axis="auto", pixel_size=1.0, min_tissue=100):
    """Build the archive; returns (number of subjects, number of slices). pixel_size 0/None keeps voxels.

    axis "auto" slices along the thickest voxels (the acquisition plane), axial when they are isotropic;
    the archive's mriseg.json records the axis used.
    """
    labels, pixel_size = parse_labels(labels), pixel_size or None
    subjects = find_subjects(src, labels)
    if axis == "auto":
        axis = choose_axis(subjects)
    per_subject = []
    for subject, image_path, label_paths in tqdm(subjects, desc="make-archive", unit="subject"):
        per_subject.append((subject, subject_slices(image_path, label_paths, labels, axis, pixel_size, min_tissue)))
    sizes = [s[1].shape for _, slices in per_subject for s in slices]
    if not sizes:
        raise SourceError(f"{src}: no slice has {min_tissue} tissue pixels (check --labels)")
    shape = tuple(int(np.ceil(max(s[i] for s in sizes) / 16) * 16) for i in (0, 1))
    pairs, ix = [], 0
    for subject, slices in per_subject:
        for z, image, mask in slices:
            pairs.append((f"sub-{subject}_slice-{z:03d}_{ix}.npy", center_pad(image, shape, 0.0),
                          center_pad(mask, shape, 2)))
            ix += 1
    metadata = {"source": "mriseg make-archive", "axis": axis, "normalization": NORMALIZATION,
                "pixel_size_mm": [pixel_size, pixel_size] if pixel_size else None,
                "labels": labels if isinstance(labels, str) else {str(k): v for k, v in labels.items()},
                "subjects": [s for s, _ in per_subject], "slice_size": list(shape)}
    with atomic_path(out) as tmp:
        write_archive(tmp, pairs, metadata)
    return len(per_subject), len(pairs)


__all__ = ["make_archive", "SourceError", "VolumeError", "PRESETS"]
