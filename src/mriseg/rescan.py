"""The same head scanned again, simulated, to measure how much a segmentation's volumes move between two
scans of one unchanged brain (a follow-up study's floor: a change smaller than that cannot be told apart).

A rescan of a scan: the head moved by a small random rigid transform (the head never lies in the scanner the
same way twice) and resampled onto the scan's grid, a new smooth multiplicative bias field (the coil's
sensitivity), and new noise. Where the scan holds nothing (a stripped brain's outside, the zeros some tools
write) stays empty after the move: a stripped input stays stripped, as the same stripping of the new scan
would give.
"""
import numpy as np

MAX_ROTATION_DEG = 4.0  # per axis, about the image's centre
MAX_SHIFT_MM = 3.0  # per axis
BIAS_LOG_AMPLITUDE = 0.1  # the bias field's largest factor about e^0.1 = 1.105 (10 %) on the volume's edge
NOISE_SHARE = 0.02  # noise sd as a share of the 99th percentile of the non-zero intensities


def rigid_matrix(rng, affine, shape):
    """A random rigid transform of world space (4 x 4) about the image's centre: rotations up to
    MAX_ROTATION_DEG and shifts up to MAX_SHIFT_MM on each axis."""
    ax, ay, az = np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    centre = (np.asarray(affine) @ np.append((np.asarray(shape[:3]) - 1) / 2, 1))[:3]
    move = np.eye(4)
    move[:3, :3] = rx @ ry @ rz
    move[:3, 3] = centre - move[:3, :3] @ centre + rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 3)
    return move


def bias_field(rng, shape):
    """A smooth multiplicative field: exp of a random second-order polynomial of the voxel coordinates
    (scaled to [-1, 1]), its largest |log| BIAS_LOG_AMPLITUDE."""
    grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape[:3]), indexing="ij")
    x, y, z = grids
    terms = [x, y, z, x * y, x * z, y * z, x * x, y * y, z * z]
    log = sum(np.float32(c) * t for c, t in zip(rng.normal(size=len(terms)), terms))
    return np.exp(BIAS_LOG_AMPLITUDE * log / max(float(np.abs(log).max()), 1e-6))


def rescan(img3, seed):
    """A simulated rescan of a 3-D nibabel image (same grid, affine and header): moved, resampled (cubic),
    bias field and Rician noise of its own, from `seed`. Returns (the new image, its world move 4 x 4)."""
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = np.asarray(img3.dataobj, dtype=np.float32)
    affine = np.asarray(img3.affine)
    move = rigid_matrix(rng, affine, image.shape)
    # output voxel -> world -> moved back -> source voxel
    to_source = np.linalg.inv(affine) @ np.linalg.inv(move) @ affine
    moved = ndimage.affine_transform(image, to_source[:3, :3], to_source[:3, 3], order=3, mode="constant")
    # Where the scan holds nothing (a stripped brain's outside, the zeros some tools write) stays empty.
    support = ndimage.affine_transform((image != 0).astype(np.float32), to_source[:3, :3], to_source[:3, 3],
                                       order=1, mode="constant") > 0.5
    moved = np.clip(moved, 0, None) * bias_field(rng, image.shape)
    sd = NOISE_SHARE * float(np.percentile(image[image != 0], 99)) if (image != 0).any() else 0.0
    noisy = np.hypot(moved + rng.normal(0, sd, moved.shape), rng.normal(0, sd, moved.shape))  # Rician magnitude
    noisy = np.where(support, noisy, 0)
    out = nib.Nifti1Image(noisy.astype(np.float32), affine, img3.header)
    out.set_data_dtype(np.float32)
    return out, move
