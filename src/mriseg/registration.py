"""Rigid registration of two scans of one head (the sessions of a follow-up), and the space halfway between
them, so that sessions are segmented on one grid and measured in one brain mask.

Same head, same contrast: the moving scan is sampled at the fixed scan's voxels through a rotation and a
shift, and the mean squared difference of the two (each scaled by its 99th percentile) is minimised by Adam,
coarse to fine (6, 3, 1.5 mm). Transforms are 4 x 4 matrices of world (scanner RAS) coordinates: T maps a
point of the fixed scan to the same anatomical point in the moving one.
"""
import numpy as np
import torch
import torch.nn.functional as F

LEVELS_MM = (6.0, 3.0, 1.5)  # the voxel sizes the two scans are compared at, coarse to fine
STEPS = (150, 80, 40)  # Adam steps per level
LEARNING_RATES = (0.02, 0.01, 0.004)  # per level, in radians and centimetres
MAX_POINTS = 400_000  # foreground voxels compared per level (a fixed random subset where there are more)


def pooled(image, affine, level_mm):
    """(the image averaged over blocks of about level_mm, the blocks' affine)."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    factor = [max(1, int(round(level_mm / z))) for z in zooms]
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    data = F.avg_pool3d(data, factor, stride=factor)[0, 0] if max(factor) > 1 else data[0, 0]
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factor)
    scale[:3, 3] = (np.asarray(factor) - 1) / 2  # a block's centre in the original voxels
    return data, np.asarray(affine) @ scale


def scaled(image):
    """The image over its 99th percentile of non-zero voxels, so that two scans' intensities compare."""
    image = np.asarray(image, dtype=np.float32)
    nonzero = image[image > 0]
    return image / (float(np.percentile(nonzero, 99)) if nonzero.size else 1.0)


def rotation(v):
    """The rotation matrix (3 x 3) of a rotation vector (its direction the axis, its length the angle)."""
    angle = torch.sqrt((v * v).sum() + 1e-20)
    k = v / angle
    zero = torch.zeros((), dtype=v.dtype)
    cross = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                         torch.stack([-k[1], k[0], zero])])
    return torch.eye(3, dtype=v.dtype) + torch.sin(angle) * cross + (1 - torch.cos(angle)) * cross @ cross


def rigid_register(fixed, moving, seed=0):
    """The world transform T (4 x 4) that takes each point of the fixed 3-D nibabel image to the same point of
    the moving one (the moving image sampled at T x lies on the fixed one at x)."""
    gen = torch.Generator().manual_seed(seed)
    fixed_data, moving_data = scaled(fixed.dataobj), scaled(moving.dataobj)

    def centroid(data, affine):
        ijk = np.stack(np.nonzero(data > 0.05)).astype(float)
        return (np.asarray(affine)[:3, :3] @ ijk).mean(axis=1) + np.asarray(affine)[:3, 3]

    centre = centroid(fixed_data, fixed.affine)
    params = torch.zeros(6, dtype=torch.float64)  # rotation vector (radians), shift (cm) about the fixed centre
    params.data[3:] = torch.from_numpy((centroid(moving_data, moving.affine) - centre) / 10)
    params.requires_grad_(True)
    for level, steps, lr in zip(LEVELS_MM, STEPS, LEARNING_RATES):
        f_data, f_affine = pooled(fixed_data, fixed.affine, level)
        m_data, m_affine = pooled(moving_data, moving.affine, level)
        ijk = torch.nonzero(f_data > 0.05)
        if len(ijk) > MAX_POINTS:
            ijk = ijk[torch.randperm(len(ijk), generator=gen)[:MAX_POINTS]]
        values = f_data[tuple(ijk.T)]
        world = ijk.double() @ torch.from_numpy(f_affine[:3, :3]).T + torch.from_numpy(f_affine[:3, 3])
        to_voxel = torch.from_numpy(np.linalg.inv(m_affine))
        size = torch.tensor(m_data.shape, dtype=torch.float64)
        opt = torch.optim.Adam([params], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            r, shift = rotation(params[:3]), params[3:] * 10
            points = (world - torch.from_numpy(centre)) @ r.T + torch.from_numpy(centre) + shift
            voxel = points @ to_voxel[:3, :3].T + to_voxel[:3, 3]
            grid = (2 * voxel / (size - 1) - 1).flip(-1).float()  # grid_sample wants (x, y, z) = (k, j, i)
            sampled = F.grid_sample(m_data[None, None], grid[None, :, None, None], align_corners=True)
            loss = ((sampled.flatten() - values) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        r = rotation(params[:3]).numpy()
        shift = params[3:].numpy() * 10
    transform = np.eye(4)
    transform[:3, :3] = r
    transform[:3, 3] = centre + shift - r @ centre
    return transform


def halfway(transforms):
    """The mean of rigid transforms (matrix exponential of their mean logarithm): with the identity of the
    first session and T of the second, T's square root, the space halfway between them, so that every
    session is resampled once and none is favoured (a baseline kept as it is would be sharper than the rest)."""
    from scipy.linalg import expm, logm

    return expm(np.mean([np.real(logm(t)) for t in transforms], axis=0))


def resample_into(img3, transform, reference, order=3):
    """A 3-D image sampled on reference's grid at transform @ x for each reference voxel's world x."""
    import nibabel as nib
    from scipy import ndimage

    to_source = np.linalg.inv(img3.affine) @ transform @ reference.affine
    source = np.asarray(img3.dataobj, dtype=np.float32)
    data = ndimage.affine_transform(source, to_source[:3, :3], to_source[:3, 3], output_shape=reference.shape[:3],
                                    order=order, mode="constant")
    if order > 1 and source.min() >= 0:  # a cubic spline's overshoot at the brain's edge is not signal
        data = np.clip(data, 0, None)
    return nib.Nifti1Image(data, reference.affine)
