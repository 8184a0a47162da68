"""Three views, one volume: planes, anatomically right flips, the bundle of views, and 3-D aggregation."""
import nibabel as nib
import numpy as np
import pytest
import torch

from mriseg.models import CheckpointError, bundle_views, load_views, read_checkpoint
from mriseg.prediction import Predictor
from mriseg.augmentation import augment
from mriseg.volumes import AXES, LEFT_RIGHT_VIEWS, VIEWS, from_slices, to_slices, view_shape, view_slice
from conftest import NORM, mriseg, synthetic_volume
import test_training


def lateral_volume(shape=(20, 24, 18)):
    """An asymmetric volume: its value is the voxel's R coordinate (RAS+: left to right)."""
    return np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()


@pytest.mark.parametrize("view", VIEWS)
def test_only_axial_and_coronal_slices_have_left_right_columns(view):
    slices = to_slices(lateral_volume(), view)
    columns_run_left_right = np.ptp(slices[0], axis=1).max() > 0  # values change along a row
    assert columns_run_left_right == (view in LEFT_RIGHT_VIEWS)
    assert slices.shape == view_shape(lateral_volume().shape, view)
    assert all(np.array_equal(view_slice(lateral_volume(), view, z), slices[z]) for z in (0, len(slices) - 1))
    assert np.array_equal(from_slices(slices, view), lateral_volume())


def bright_left_third(n=64):
    x = torch.zeros(n, 1, 32, 48)
    x[..., :16] = 1.0
    return x, torch.full((n, 32, 48), 2, dtype=torch.uint8)


def centre_of_mass_columns(x):
    cols = torch.arange(x.shape[-1], dtype=torch.float32)
    return (x.sum(dim=(1, 2)) * cols).sum(dim=1) / x.sum(dim=(1, 2, 3))


def test_augment_mirrors_only_when_flips_are_allowed():
    x, y = bright_left_third()
    flipped = centre_of_mass_columns(augment(x, y, torch.Generator().manual_seed(0), flip=True)[0])
    kept = centre_of_mass_columns(augment(x, y, torch.Generator().manual_seed(0), flip=False)[0])
    assert (flipped > 24).sum() > 10, "some slices mirrored (the bright third on the right)"
    assert (kept < 24).all(), "sagittal slices are never mirrored front to back"


def train_view(tmp_path, view, **over):
    return test_training.train({**test_training.CFG, "epochs": 2, "flip_tta": True, "augment": True, "loss": "dice_ce", **over}, "unet",
                               test_training.dataset(test_training.TRAIN), {"test": test_training.dataset(test_training.TEST)},
                               tmp_path / f"{view}.pt", tmp_path / f"{view}.resume.pt", mirror=view in LEFT_RIGHT_VIEWS,
                               extra={"axis": view, "normalization": NORM, "pixel_size_mm": [1.0, 1.0],
                                      "grid": "isotropic"})


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    for view in VIEWS:
        train_view(tmp, view, seed=AXES[view])
    return tmp


def test_sagittal_network_predicts_without_the_mirror_average(views):
    assert read_checkpoint(views / "axial.pt")["flip_tta"] is True
    assert read_checkpoint(views / "sagittal.pt")["flip_tta"] is False  # train.flip_tta is true for both


def test_bundle_holds_every_view_and_loads_with_weights_only(views, tmp_path):
    bundle_views({v: views / f"{v}.pt" for v in VIEWS}, {"axial": 2, "coronal": 1}, tmp_path / "model.pt")
    loaded = load_views(tmp_path / "model.pt")  # torch.load(weights_only=True) inside
    assert [(v, w) for v, _, _, w in loaded] == [("axial", 2.0), ("coronal", 1.0), ("sagittal", 1.0)]
    torch.load(tmp_path / "model.pt", weights_only=True)


def test_bundle_refuses_views_of_different_grids(views, tmp_path):
    ckpt = read_checkpoint(views / "coronal.pt")
    torch.save({**ckpt, "pixel_size_mm": [0.8, 0.8]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="pixel_size_mm .* differs from the other views"):
        bundle_views({"axial": views / "axial.pt", "coronal": tmp_path / "other.pt"}, {}, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_aggregate_is_the_weighted_mean_of_the_views_in_3d(views, tmp_path):
    bundle_views({v: views / f"{v}.pt" for v in VIEWS}, {"axial": 1, "coronal": 1, "sagittal": 2}, tmp_path / "m.pt")
    predictor = Predictor(tmp_path / "m.pt", "cpu")
    image = synthetic_volume(np.random.default_rng(3), shape=(36, 40, 32))[0]
    _, volume = predictor.working_volume(nib.Nifti1Image(image, np.eye(4)))
    alone = {}
    aggregate = predictor.volume_probabilities(volume, each=lambda view, probs: alone.setdefault(view.name, probs))
    assert aggregate.shape == (3, *volume.shape) and np.allclose(aggregate.sum(axis=0), 1, atol=1e-3)
    expected = (alone["axial"] + alone["coronal"] + 2 * alone["sagittal"]) / 4
    assert np.allclose(aggregate, expected, atol=1e-6)
    assert not np.allclose(alone["axial"], alone["sagittal"], atol=1e-3)  # three different networks


def test_predict_takes_a_bundle_and_a_single_view(views, tmp_path):
    bundle_views({v: views / f"{v}.pt" for v in VIEWS}, {}, tmp_path / "m.pt")
    image, _, affine = synthetic_volume(np.random.default_rng(4), shape=(36, 40, 32))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    for model in (tmp_path / "m.pt", views / "coronal.pt"):
        r = mriseg("predict", "--model", model, "--out", tmp_path / model.stem, "--device", "cpu", tmp_path / "scan.nii.gz")
        assert r.returncode == 0, r.stderr
        assert nib.load(tmp_path / model.stem / "scan_mask.nii.gz").shape == image.shape


def test_a_lone_slice_goes_to_a_one_view_model_normalised_never_to_a_bundle(views, tmp_path):
    bundle_views({v: views / f"{v}.pt" for v in VIEWS}, {}, tmp_path / "m.pt")
    np.save(tmp_path / "slice.npy", test_training.TEST[0][0, 0].numpy())
    np.save(tmp_path / "raw.npy", test_training.TEST[0][0, 0].numpy() * 180 + 20)  # a scanner's intensities
    r = mriseg("predict", "--model", tmp_path / "m.pt", "--out", tmp_path / "bundle", tmp_path / "slice.npy")
    assert r.returncode == 1 and "slice.npy: a lone slice has no plane" in r.stderr, r.stderr
    r = mriseg("predict", "--model", views / "axial.pt", "--out", tmp_path / "one", tmp_path / "slice.npy",
               tmp_path / "raw.npy")
    assert r.returncode == 0, r.stderr
    scaled, raw = np.load(tmp_path / "one" / "slice_mask.npy"), np.load(tmp_path / "one" / "raw_mask.npy")
    assert (scaled == raw).mean() > 0.95  # raw intensities scaled as the training slices were
