"""Simulated rescans (rescan.py): the same head moved, resampled, with a new bias field and new noise."""
import nibabel as nib
import numpy as np
import pytest

from mriseg.rescan import rescan


def blob_scan():
    """A stripped 'brain' on a zero background: an ellipsoid with a brighter off-centre core, 1.5 mm voxels
    and an affine whose origin is far from the image's centre (as scanners write them)."""
    shape = (48, 40, 44)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).astype(np.float32)
    inside = (((ijk - [24, 20, 22]) / [16, 13, 14]) ** 2).sum(-1) <= 1
    core = (((ijk - [28, 17, 24]) / 5) ** 2).sum(-1) <= 1
    image = np.where(inside, 60.0, 0.0) + np.where(core, 60.0, 0.0)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-40, -20, 30]
    return nib.Nifti1Image(image.astype(np.float32), affine)


def world_centre(img, mask):
    ijk = np.stack(np.nonzero(mask)).astype(float)
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:]).mean(axis=1)


def test_a_rescan_moves_the_head_as_its_matrix_says_and_keeps_an_empty_outside_empty():
    scan = blob_scan()
    again, move = rescan(scan, seed=3)
    image, moved = np.asarray(scan.dataobj), np.asarray(again.dataobj)
    assert moved.shape == image.shape and np.allclose(again.affine, scan.affine)
    rotation = move[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9) and np.linalg.det(rotation) == pytest.approx(1)
    # The bright core lands where the world move takes it (to a fraction of a voxel).
    expected = (move @ np.append(world_centre(scan, image > 90), 1))[:3]
    assert np.linalg.norm(world_centre(again, moved > 90) - expected) < 0.5
    assert np.linalg.norm(expected - world_centre(scan, image > 90)) > 0.5, "the head did move"
    # Nothing outside the moved brain, noise and a bias field inside it.
    assert (moved == 0).mean() == pytest.approx((image == 0).mean(), abs=0.01)
    tissue = moved[(moved > 0) & (moved < 90)]
    assert 0.005 < tissue.std() / tissue.mean() < 0.2 and 0.85 < tissue.mean() / 60 < 1.15


def test_rescans_repeat_with_their_seed_and_differ_between_seeds():
    scan = blob_scan()
    first, again, other = (np.asarray(rescan(scan, s)[0].dataobj) for s in (1, 1, 2))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
