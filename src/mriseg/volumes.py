"""3-D volumes to 2-D slices and back, and the intensity normalisation shared by archives and prediction."""
import numpy as np

# The rule recorded in every archive and checkpoint: each volume on its own, robust percentiles of
# its non-zero voxels mapped to [0, 1], then clipped. Robust to scanner scale and to bright outliers.
NORMALIZATION = {"method": "percentile", "low": 0.5, "high": 99.5}
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # voxel axes of a RAS+ (canonical) volume


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


def from_slices(slices, axis="axial"):
    """Inverse of to_slices."""
    vol = np.rot90(np.asarray(slices).transpose(1, 2, 0), k=-1, axes=(0, 1))
    return np.moveaxis(vol, -1, AXES[axis])


def slice_pixel_size(zooms, axis="axial"):
    """(row, col) pixel size in mm of slices from to_slices, given canonical voxel zooms."""
    inplane = [z for i, z in enumerate(zooms[:3]) if i != AXES[axis]]
    return float(inplane[1]), float(inplane[0])
