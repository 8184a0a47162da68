"""Simulated cortical atrophy of a known volume, to measure what a segmentation recovers of a real loss.

When the cortex thins, the sulci widen and fill with CSF. thin_cortex does that to a scan: the outer layers
of its labelled cortex (gray matter touching CSF or background, not white matter), everywhere or in a region,
get intensities drawn from the scan's own pure CSF (the labelled CSF one voxel in from its edge). The labels
of those voxels become CSF; the loss is known to the voxel.
"""
import numpy as np

from .errors import MrisegError

WHITE, GRAY, BACKGROUND, CSF = 0, 1, 2, 3


class AtrophyError(MrisegError):
    """A scan whose labels cannot be thinned (no cortex, no CSF to draw intensities from)."""


def outer_cortex(labels, layers=1):
    """Gray-matter voxels within `layers` voxels (face-connected steps) of CSF or background, as the cortex's
    outer surface is: peeled one layer at a time, so that layer 2 is the gray matter under layer 1."""
    from scipy import ndimage

    gray = labels == GRAY
    outside = (labels == CSF) | (labels == BACKGROUND)
    peeled = np.zeros_like(gray)
    for _ in range(layers):
        layer = gray & ~peeled & ndimage.binary_dilation(outside | peeled)
        peeled |= layer
    return peeled


def pure_csf(image, labels):
    """Intensities of the scan's pure CSF: its CSF label one voxel in from its edge (the whole label if that
    leaves fewer than 100 voxels)."""
    from .labels import pure

    values = image[pure(labels == CSF)]
    if values.size < 10:
        raise AtrophyError("the labels hold no CSF to draw atrophy's intensities from")
    return values


def thin_cortex(image, labels, region=None, layers=1, seed=0):
    """(the atrophied image, its labels, the voxels lost): the outer `layers` of the cortex (outer_cortex),
    within `region` (a boolean mask; None: everywhere), replaced by intensities drawn at random from the
    scan's pure CSF and labelled CSF. image and labels share one grid (labels in mriseg's classes)."""
    image, labels = np.asarray(image), np.asarray(labels)
    lost = outer_cortex(labels, layers)
    if region is not None:
        lost &= np.asarray(region, bool)
    if not lost.any():
        raise AtrophyError("no cortex to thin in this region")
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32, copy=True)
    out[lost] = rng.choice(pure_csf(image, labels).astype(np.float32), int(lost.sum()))
    return out, np.where(lost, CSF, labels).astype(np.uint8), lost


def upper_left_quarter(labels, affine):
    """A region: the voxels of the brain left of its centre and above it in the world (RAS+), about a quarter of
    the cerebrum (a lobe-sized loss)."""
    ijk = np.nonzero(labels != BACKGROUND)
    world = (np.asarray(affine)[:3, :3] @ np.stack(ijk) + np.asarray(affine)[:3, 3:]).T
    centre = world.mean(axis=0)
    region = np.zeros(labels.shape, bool)
    keep = (world[:, 0] < centre[0]) & (world[:, 2] > centre[2])
    region[tuple(i[keep] for i in ijk)] = True
    return region
