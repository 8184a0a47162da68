"""Manual tissue labels: the presets (IBSR, FreeSurfer's aseg, FSL FAST) and explicit maps that turn a label
volume into the three classes (0 white matter, 1 gray matter, 2 background), and which files beside an image
hold its labels."""
import re
from pathlib import Path

import numpy as np

from .errors import MrisegError
from .volumes import is_volume, load_volume, volume_stem

# FreeSurfer aseg labels (FreeSurferColorLUT). Brainstem goes to white matter, as in IBSR's tracings.
ASEG_WHITE = (2, 41, 7, 46, 16, 77, 78, 79, 85, 251, 252, 253, 254, 255)
ASEG_GRAY = (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60)
# aparc+aseg, aparc.DKTatlas+aseg, aparc.a2009s+aseg: the cortex (aseg 3, 42) split into parcels, all gray matter.
ASEG_CORTEX_PARCELS = (*range(1000, 1036), *range(2000, 2036), *range(11100, 11176), *range(12100, 12176))
# Everything else aseg holds (ventricles, CSF, vessels, choroid plexus, hypointensities) is background.
ASEG_BACKGROUND = (0, 4, 5, 14, 15, 24, 30, 31, 43, 44, 62, 63, 72, 80, 81, 82)
PRESETS = {
    "ibsr": {3: 0, 2: 1},  # IBSR: 0 background, 1 CSF, 2 gray matter, 3 white matter
    "freesurfer-aseg": {**{v: 0 for v in ASEG_WHITE}, **{v: 1 for v in ASEG_GRAY + ASEG_CORTEX_PARCELS}},
    "fsl-fast": "argmax of pve_0 (CSF), pve_1 (gray matter), pve_2 (white matter)",
}

KNOWN_VALUES = {"ibsr": (0, 1, 2, 3),
                "freesurfer-aseg": ASEG_WHITE + ASEG_GRAY + ASEG_CORTEX_PARCELS + ASEG_BACKGROUND}


class SourceError(MrisegError):
    """Labelled scans that cannot be read or paired, or a label preset or map that does not fit them."""


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


def label_paths_hint(image_path, labels):
    stem, suffix = volume_stem(image_path)
    return f"{stem}_pve_0/1/2{suffix}" if labels == "fsl-fast" else f"{stem}_seg{suffix}"
