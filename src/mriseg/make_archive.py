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
import numpy as np
from tqdm import tqdm

from .archive import write_archive
from .io import atomic_path
from .labels import SourceError, parse_labels
from .scans import find_subjects, preprocess_subject, tissue_slices, volume_header
from .volumes import NORMALIZATION, acquisition_axis, pad_slices


def subject_slices(image_path, label_paths, labels, axis, pixel_size, min_tissue):
    # The tutorial's slice layout holds three classes: CSF is background there.
    images, masks = preprocess_subject(image_path, label_paths, labels, axis, pixel_size, csf="none")[:2]
    return [(z, images[z], masks[z]) for z in tissue_slices(masks, min_tissue)]


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
            # Placed as training and prediction place a slice: centred in its own multiple of 16, then at
            # the top left of the archive's one size, so that the network sees it where predict puts it.
            pairs.append((f"sub-{subject}_slice-{z:03d}_{ix}.npy", pad_slices(image, shape, 0.0),
                          pad_slices(mask, shape, 2)))
            ix += 1
    metadata = {"source": "mriseg make-archive", "axis": axis, "normalization": NORMALIZATION,
                "pixel_size_mm": [pixel_size, pixel_size] if pixel_size else None,
                "labels": labels if isinstance(labels, str) else {str(k): v for k, v in labels.items()},
                "subjects": [s for s, _ in per_subject], "slice_size": list(shape)}
    with atomic_path(out) as tmp:
        write_archive(tmp, pairs, metadata)
    return len(per_subject), len(pairs)
