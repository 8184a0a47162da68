"""Manual tissue labels: the presets (IBSR, FreeSurfer's aseg, FSL FAST) and explicit maps that turn a label
volume into mriseg's classes (0 white matter, 1 gray matter, 2 background, 3 CSF), the CSF rules of data.csf,
and which files beside an image hold its labels."""
import re
from pathlib import Path

import numpy as np

from .errors import MrisegError
from .volumes import filled_closing, is_volume, load_volume, volume_stem

# FreeSurfer aseg labels (FreeSurferColorLUT). Brainstem goes to white matter, as in IBSR's tracings.
ASEG_WHITE = (2, 41, 7, 46, 16, 77, 78, 79, 85, 251, 252, 253, 254, 255)
ASEG_GRAY = (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60)
# aparc+aseg, aparc.DKTatlas+aseg, aparc.a2009s+aseg: the cortex (aseg 3, 42) split into parcels, all gray matter.
ASEG_CORTEX_PARCELS = (*range(1000, 1036), *range(2000, 2036), *range(11100, 11176), *range(12100, 12176))
# Ventricles, the inferior lateral ventricles and the CSF label: CSF. The sulcal CSF that aseg leaves unlabelled
# is CSF too where it lies within the labelled brain (fill_sulci).
ASEG_CSF = (4, 5, 14, 15, 24, 43, 44, 72)
# Everything else aseg holds (vessels, choroid plexus, hypointensities) is background.
ASEG_BACKGROUND = (0, 30, 31, 62, 63, 80, 81, 82)
WHITE, GRAY, BACKGROUND, CSF = 0, 1, 2, 3
PRESETS = {
    "ibsr": {3: WHITE, 2: GRAY, 1: CSF},  # IBSR: 0 background, 1 CSF, 2 gray matter, 3 white matter
    "freesurfer-aseg": {**{v: WHITE for v in ASEG_WHITE}, **{v: GRAY for v in ASEG_GRAY + ASEG_CORTEX_PARCELS},
                        **{v: CSF for v in ASEG_CSF}},
    "fsl-fast": "argmax of pve_0 (CSF), pve_1 (gray matter), pve_2 (white matter)",
}
# data.csf: how the CSF class is drawn. intensity: the labels' CSF, and their gray matter darker than halfway
# between pure CSF and pure gray matter (remake_csf); labels: as the label source draws it (IBSR: ventricles,
# its sulcal CSF counted as gray matter); none: no CSF class (CSF is background: mriseg's earlier three classes).
CSF_RULES = ("intensity", "labels", "none")
# How mriseg predict draws the gray matter / CSF border (prediction.Predictor): network (the default: the views'
# output as it is), intensity (gray_to_csf on the views' output: the scan's own voxels; models with CSF only).
CSF_BORDERS = ("network", "intensity")
# fill_sulci: unlabelled voxels within this many mm of labelled brain on both sides (a closing) are sulcal CSF.
SULCUS_MM = 3

KNOWN_VALUES = {"ibsr": (0, 1, 2, 3),
                "freesurfer-aseg": ASEG_WHITE + ASEG_GRAY + ASEG_CORTEX_PARCELS + ASEG_CSF + ASEG_BACKGROUND}


class SourceError(MrisegError):
    """Labelled scans that cannot be read or paired, or a label preset or map that does not fit them."""


def parse_labels(spec):
    """A preset name, or an explicit 'SRC:DST,...' mapping (DST 0 white matter, 1 gray matter, 2 background, 3 CSF)."""
    if spec in PRESETS:
        return spec
    try:
        mapping = {int(a): int(b) for a, b in (item.split(":") for item in spec.split(","))}
    except ValueError:
        raise SourceError(f"--labels {spec!r}: use {', '.join(PRESETS)} or a mapping like '3:0,2:1'") from None
    if not set(mapping.values()) <= {WHITE, GRAY, BACKGROUND, CSF}:
        raise SourceError(f"--labels {spec!r}: targets must be 0 (white matter), 1 (gray matter), 2 (background) "
                          "or 3 (CSF)")
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


def map_labels(volumes, labels, zooms=(1.0, 1.0, 1.0)):
    """Label volume(s) -> mriseg's classes (uint8). zooms: the voxel sizes in mm (fill_sulci's reach)."""
    if labels == "fsl-fast":
        pve = np.stack(volumes)  # CSF, GM, WM
        tissue = np.array([CSF, GRAY, WHITE], np.uint8)[pve.argmax(axis=0)]
        return np.where(pve.sum(axis=0) > 0, tissue, BACKGROUND).astype(np.uint8)
    table = PRESETS[labels] if isinstance(labels, str) else labels
    vol = np.rint(volumes[0]).astype(np.int64)
    low, high = (int(vol.min()), int(vol.max())) if vol.size else (0, 0)
    if 0 <= low and high < 2**20:  # one look-up table: aseg's parcellations hold ~200 values
        lut = np.full(high + 1, BACKGROUND, np.uint8)
        for src, dst in table.items():
            if 0 <= src <= high:
                lut[src] = dst
        out = lut[vol]
    else:
        out = np.full(vol.shape, BACKGROUND, np.uint8)
        for src, dst in table.items():
            out[vol == src] = dst
    return fill_sulci(out, vol == 0, zooms) if labels == "freesurfer-aseg" else out


def fill_sulci(classes, unlabelled, zooms):
    """FreeSurfer's aseg leaves the CSF in the sulci and around the brain unlabelled (0): its unlabelled voxels
    that a closing of the labelled brain by a ball of SULCUS_MM reaches become CSF (the sulci, not the CSF
    between the brain and the skull, which no aseg holds)."""
    brain = filled_closing(~unlabelled, SULCUS_MM, zooms)
    return np.where(unlabelled & brain, CSF, classes).astype(np.uint8)


def apply_csf_rule(classes, image, rule, zooms=(1.0, 1.0, 1.0)):
    """data.csf on mapped labels (CSF_RULES): image is the scan on the labels' grid (intensity only), zooms
    its voxel sizes in mm."""
    if rule not in CSF_RULES:
        raise SourceError(f"data.csf {rule!r}: use one of {', '.join(CSF_RULES)}")
    if rule == "none":
        return np.where(classes == CSF, BACKGROUND, classes).astype(np.uint8)
    return remake_csf(classes, image, zooms) if rule == "intensity" else classes


def pure(mask, iterations=1, least=100):
    """A label's voxels `iterations` voxels in from its edge, away from partial volume (the whole label where
    that leaves fewer than `least`)."""
    from scipy import ndimage

    core = ndimage.binary_erosion(mask, iterations=iterations)
    return core if core.sum() >= least else mask


def csf_thresholds(classes, image, csf_depth=1):
    """(pure CSF intensity, pure gray matter intensity) of one scan: the median of the labelled CSF csf_depth
    voxels in from its edge (ventricles), and of the gray matter two voxels in from anything not tissue. None
    where the labels hold too little CSF or gray matter to measure them."""
    from scipy import ndimage

    core = pure(classes == CSF, csf_depth)
    inner_gray = ndimage.binary_erosion(classes < BACKGROUND, iterations=2) & (classes == GRAY)
    inner_gray = inner_gray if inner_gray.sum() >= 100 else classes == GRAY
    if core.sum() < 10 or inner_gray.sum() < 10:
        return None
    return float(np.median(image[core])), float(np.median(image[inner_gray]))


def csf_border(levels):
    """The intensity between CSF and gray matter of csf_thresholds' (pure CSF, pure gray matter): halfway, a
    linear partial-volume fraction of CSF of 1/2, the border FSL FAST's and SPM's mixtures draw."""
    csf, gray = levels
    return (csf + gray) / 2


def gray_to_csf(classes, image):
    """The voxels of a segmentation's gray matter darker than csf_border of the scan's own pure CSF and gray
    matter as the segmentation draws them (csf_thresholds, pure CSF three voxels in from its edge: the
    ventricles, which a thinning cortex does not reach, whereas the sulcal CSF it widens would move the level
    and with it the border everywhere), voxel by voxel; all False where it holds too little CSF to measure,
    or CSF not darker than gray matter (not a T1). prediction.Predictor draws its gray matter / CSF border
    with it."""
    levels = csf_thresholds(classes, image, csf_depth=3)
    if levels is None or levels[0] >= levels[1]:
        return np.zeros(classes.shape, bool)
    return (classes == GRAY) & (image < csf_border(levels))


def remake_csf(classes, image, zooms=(1.0, 1.0, 1.0)):
    """CSF given back where the labels called it something else: a voxel of the labels' gray matter, or an
    unlabelled voxel of the image inside the labelled brain's outline (a SULCUS_MM closing: the sulcal and
    outer CSF that IBSR's tracers left at 0 inside the skull-strip), whose intensity (the mean of its non-zero
    3x3x3 neighbourhood, against noise) lies below halfway between pure CSF and pure gray matter
    (csf_thresholds), i.e. a linear partial-volume fraction of CSF above 1/2, the border FSL FAST's and SPM's
    mixtures draw. White matter and the labels' own CSF never change. SourceError where the scan's CSF is not
    darker than its gray matter (not a T1)."""
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    levels = csf_thresholds(classes, image)
    if levels is None:
        raise SourceError("data.csf intensity: the labels hold too little CSF (ventricles) to measure pure CSF "
                          "from; use data.csf: labels")
    csf, gray = levels
    if csf >= gray:
        raise SourceError(f"data.csf intensity: CSF ({csf:g}) is not darker than gray matter ({gray:g}): "
                          "a T1-weighted scan is needed; use data.csf: labels")
    # The zeros around a stripped brain are not counted, so they do not darken its edge.
    scanned = (image > 0).astype(np.float32)
    smoothed = ndimage.uniform_filter(image * scanned, 3) / np.maximum(ndimage.uniform_filter(scanned, 3), 1e-6)
    darker = smoothed < csf_border(levels)
    unlabelled = (classes == BACKGROUND) & (image > 0) & filled_closing(classes != BACKGROUND, SULCUS_MM, zooms)
    return np.where(darker & ((classes == GRAY) | unlabelled), CSF, classes).astype(np.uint8)


def read_labels(label_paths, labels, image_path, img3):
    """The label volume(s) of an image mapped to mriseg's classes on the image's own grid, as their tracers
    drew them (data.csf labels)."""
    label_imgs = [load_volume(p)[1] for p in label_paths]
    for p, lab in zip(label_paths, label_imgs):
        if lab.shape != img3.shape or not np.allclose(lab.affine, img3.affine, atol=1e-3):
            raise SourceError(f"{p}: geometry {lab.shape} does not match its image {image_path} {img3.shape} "
                              "(shape and affine must be equal)")
    volumes = [np.asanyarray(x.dataobj) for x in label_imgs]
    check_label_values(volumes, labels, label_paths)
    return map_labels(volumes, labels, img3.header.get_zooms()[:3])


def with_csf_rule(classes, image_path, img3, csf):
    """read_labels' classes with CSF by data.csf's rule `csf` (CSF_RULES)."""
    try:
        return apply_csf_rule(classes, np.asanyarray(img3.dataobj) if csf == "intensity" else None, csf,
                              img3.header.get_zooms()[:3])
    except SourceError as e:
        raise SourceError(f"{image_path}: {e}") from None


def load_labels(label_paths, labels, image_path, img3, csf="labels"):
    """The label volume(s) of an image mapped to mriseg's classes on the image's own grid, CSF by data.csf's
    rule `csf` (CSF_RULES)."""
    return with_csf_rule(read_labels(label_paths, labels, image_path, img3), image_path, img3, csf)


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
