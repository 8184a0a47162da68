"""3-D volumes to 2-D slices and back, and the intensity normalisation shared by archives and prediction."""
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, first_line
from .errors import MrisegError

# The rule recorded in every archive and checkpoint: each volume on its own, robust percentiles of
# its non-zero voxels mapped to [0, 1], then clipped. Robust to scanner scale and to bright outliers.
NORMALIZATION = {"method": "percentile", "low": 0.5, "high": 99.5}
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # voxel axes of a RAS+ (canonical) volume
VIEWS = ("axial", "coronal", "sagittal")
# Planes whose slices hold the left-right axis (as their columns, see to_slices): only there is a
# mirrored slice another plausible brain. A sagittal slice's columns run front to back.
LEFT_RIGHT_VIEWS = ("axial", "coronal")


def normalize_volume(vol, rule=NORMALIZATION):
    if rule.get("method") != "percentile":
        raise ValueError(f"unknown normalisation method {rule.get('method')!r}")
    vol = np.asarray(vol, dtype=np.float32)
    fg = vol[vol > 0]
    if fg.size == 0:
        return np.zeros_like(vol)
    lo, hi = np.percentile(fg, [rule["low"], rule["high"]])
    return np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def to_slices(vol, axis="axial"):
    """(X, Y, Z) canonical volume -> (n, rows, cols) slices in display orientation (anterior/superior up)."""
    return np.rot90(np.moveaxis(vol, AXES[axis], -1), k=1, axes=(0, 1)).transpose(2, 0, 1)


def view_slice(vol, axis, z):
    """to_slices(vol, axis)[z] of a canonical (X, Y, Z) volume, reading only that slice (memory maps)."""
    return np.rot90(np.take(vol, z, axis=AXES[axis]))


def view_shape(shape, axis):
    """(slices, rows, cols) of to_slices(volume of `shape`, axis)."""
    rest = [n for i, n in enumerate(shape) if i != AXES[axis]]
    return shape[AXES[axis]], rest[1], rest[0]


def from_slices(slices, axis="axial"):
    """Inverse of to_slices."""
    vol = np.rot90(np.asarray(slices).transpose(1, 2, 0), k=-1, axes=(0, 1))
    return np.moveaxis(vol, -1, AXES[axis])


MULTIPLE = 16  # the networks pool by up to 16 and re-pad on the left/top (the tutorial's rule)


def pad_margins(h, w, multiple=MULTIPLE):
    """(top, left, padded height, padded width): a slice centred in the next multiple of `multiple`.

    The one rule for training, evaluation and prediction: other sizes shift the networks' feature maps
    against the slice (WM Dice 0.857 instead of 0.912 on IBSR_16's 215 x 215 coronal slices)."""
    return (-h % multiple) // 2, (-w % multiple) // 2, h + (-h % multiple), w + (-w % multiple)


def pad_slices(slices, frame=None, fill=0):
    """(..., H, W) -> (..., H', W'): centred in the next multiple of 16 (pad_margins), then placed at the
    top left of `frame` (a larger multiple of 16) when slices of several sizes must share one batch."""
    slices = np.asarray(slices)
    h, w = slices.shape[-2:]
    top, left, ph, pw = pad_margins(h, w)
    ph, pw = frame or (ph, pw)
    out = np.full(slices.shape[:-2] + (ph, pw), fill, slices.dtype)
    out[..., top:top + h, left:left + w] = slices
    return out


def with_context(slices, context, neighbours=None):
    """(n, H, W) slices -> (n, 2*context+1, H, W): each slice with its neighbours as channels (2.5D).

    neighbours[i] maps offset d to the index of slice i's neighbour (absent when it has none; then only
    the first len(neighbours) slices get an output); by default slices are one ordered volume. A missing
    neighbour, past the ends of the volume, repeats the slice itself: the same rule in training and in
    prediction.
    """
    slices = np.asarray(slices)
    n = len(slices) if neighbours is None else len(neighbours)
    offsets = range(-context, context + 1)
    out = np.empty((n, len(offsets)) + slices.shape[1:], slices.dtype)
    for i in range(n):
        for c, d in enumerate(offsets):
            j = (i + d if 0 <= i + d < n else None) if neighbours is None else neighbours[i].get(d)
            out[i, c] = slices[i if j is None else j]
    return out


CROP_MARGIN = 4  # voxels of background kept around the head


def crop_to_foreground(volume, affine, margin=CROP_MARGIN):
    """(the box of a normalised working volume that holds every non-zero voxel, plus margin; that box's
    affine; the box's slices). Networks then see no empty field of view (IBSR's 1 mm grid: about half
    the voxels); the affine keeps every voxel where it was in the world."""
    nonzero = np.nonzero(np.asarray(volume) > 0)
    if not nonzero[0].size:
        return volume, affine, tuple(slice(0, n) for n in volume.shape)
    box = tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                for i, n in zip(nonzero, volume.shape))
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = shifted[:3, :3] @ [b.start for b in box] + shifted[:3, 3]
    return volume[box], shifted, box


class VolumeError(MrisegError):
    """An unreadable or unusable volume; one line naming the file."""


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz")


def is_volume(path):
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path):
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES + (".npy",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[len(name) - len(suffix):]
    return Path(path).stem, Path(path).suffix


def load_volume(path):
    """A 3-D nibabel image; trailing axes of length 1 are squeezed, more than one frame is refused."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise VolumeError(f"{path}: not a readable NIfTI/MGZ volume ({first_line(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3-D volume, got shape {shape} (one frame at a time, please)")
    if not np.isfinite(data).all():
        raise VolumeError(f"{path}: volume has NaN or infinite values")
    return img, nib.Nifti1Image(np.asarray(data), img.affine)


def inplane_zooms(canon, axis, pixel_size):
    """Voxel sizes that give `pixel_size` mm square pixels in the slicing plane (axis None: in every plane,
    the isotropic grid that all views of a cohort share); None when already so."""
    if pixel_size is None:
        return None
    zooms = list(canon.header.get_zooms()[:3])
    target = [float(pixel_size)] * 3
    if axis is not None:
        target[AXES[axis]] = float(zooms[AXES[axis]])
    return None if np.allclose(zooms, target, rtol=1e-3) else target


def resample_inplane(img3, axis="axial", pixel_size=None, order=1, cval=0):
    """Canonical (RAS+) orientation, in-plane voxels resampled to `pixel_size` mm (None: kept; axis None:
    all three axes, an isotropic grid).

    Slices then have square pixels of the size the model was trained on, without stretching anatomy.
    """
    import nibabel as nib
    from nibabel.processing import resample_to_output

    canon = nib.as_closest_canonical(img3)
    target = inplane_zooms(canon, axis, pixel_size)
    return canon if target is None else resample_to_output(canon, voxel_sizes=target, order=order, cval=cval)


def acquisition_axis(img, anisotropy=1.2):
    """The plane a volume was acquired in: slices across its thickest voxels keep the native in-plane
    resolution (IBSR: 1.5 mm coronal slices of 0.94 mm pixels -> coronal). Isotropic voxels -> axial."""
    import nibabel as nib

    world_axis = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)  # voxel axis -> R/A/S axis
    zooms = dict(zip(world_axis, nib.affines.voxel_sizes(img.affine)))
    if max(zooms.values()) < anisotropy * min(zooms.values()):
        return "axial"
    return {v: k for k, v in AXES.items()}[max(zooms, key=zooms.get)]


def most_likely(class_maps, affine, resample, background=2):
    """Resample each class's map (indicator or probability) linearly with `resample`, then take the most
    likely class: nnU-Net's rule for label maps. Nearest neighbour would drop or repeat whole rows of a
    tracing between grids (1 % of IBSR's white matter from 0.94 to 1 mm) where the image is interpolated.
    Outside the field of view is background. Returns (labels, their affine)."""
    import nibabel as nib

    out = [resample(nib.Nifti1Image(np.asarray(m, np.float32), affine), float(k == background))
           for k, m in enumerate(class_maps)]
    return np.argmax(np.stack([np.asanyarray(o.dataobj) for o in out]), axis=0).astype(np.uint8), out[0].affine


def resample_labels(labels_img, axis="axial", pixel_size=None, n_classes=len(CLASS_NAMES), background=2):
    """A label volume on the grid resample_inplane gives its image (see most_likely)."""
    import nibabel as nib
    from nibabel.processing import resample_to_output

    canon = nib.as_closest_canonical(labels_img)
    labels = np.rint(np.asanyarray(canon.dataobj)).astype(np.uint8)
    target = inplane_zooms(canon, axis, pixel_size)
    if target is None:
        return nib.Nifti1Image(labels, canon.affine)
    out, affine = most_likely([labels == k for k in range(n_classes)], canon.affine,
                              lambda img, cval: resample_to_output(img, voxel_sizes=target, order=1, cval=cval),
                              background)
    return nib.Nifti1Image(out, affine)


def back_to_grid(probabilities, work_affine, reference_img3, background=2):
    """Class probabilities (classes, X, Y, Z) on the working grid -> labels on the input's own voxel grid."""
    from nibabel.processing import resample_from_to

    return most_likely(probabilities, work_affine,
                       lambda img, cval: resample_from_to(img, reference_img3, order=1, cval=cval), background)[0]


def filled_closing(mask, radius_mm, zooms):
    """A 3-D mask closed by a ball of radius_mm (voxel sizes zooms, mm), then its holes filled: the outline
    of a brain with its sulci and ventricles inside. Distance transforms in mm on the mask's box (fast on
    256^3 heads)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    out = np.zeros_like(mask)
    where = np.nonzero(mask)
    if not where[0].size:
        return out
    reach = [int(np.ceil(radius_mm / float(z))) + 1 for z in zooms]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in where)
    part = np.pad(mask[box], [(r, r) for r in reach])  # closing reaches past the faces of the box
    grown = ndimage.distance_transform_edt(~part, sampling=zooms) <= radius_mm
    closed = ndimage.distance_transform_edt(grown, sampling=zooms) > radius_mm
    closed = ndimage.binary_fill_holes(closed | part)[tuple(slice(r, -r) for r in reach)]
    out[box] = closed
    return out


FAR = 255  # distance of the frame's padding: farther than any shell of synthesis


def brain_distance(labels, background=CLASS_NAMES.index("background")):
    """uint8 distance in pixels (capped at 254) outside the brain of a label volume (or slice): the
    labelled voxels closed by 2 and their holes filled (ventricles, sulci), 0 inside. Measured in 3-D on a
    volume, so that a slice through the top of the brain sees one brain, not an island per gyrus."""
    from scipy import ndimage

    pad = 3
    tissue = np.pad(np.asarray(labels) != background, pad)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=2))
    brain = brain[tuple(slice(pad, -pad) for _ in range(brain.ndim))]
    if not brain.any():
        return np.full(brain.shape, FAR - 1, np.uint8)
    return np.minimum(np.rint(ndimage.distance_transform_edt(~brain)), FAR - 1).astype(np.uint8)
