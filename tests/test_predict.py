"""`mriseg predict` on slices and NIfTI volumes: masks on the input's grid, volumes.csv, clear errors."""
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import NORM, SHARED_IBSR, mriseg, mriseg_console, synthetic_pair

def synthetic_volume(path, zooms=(1.0, 1.0, 2.0), frames=1, flip_x=True):
    """An ellipsoid 'brain' (white matter core, gray matter shell) at 1 mm in-plane, LAS when flip_x."""
    shape = (40, 48, 10)
    zz, yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    r = ((zz - 20) / 15) ** 2 + ((yy - 24) / 18) ** 2 + ((xx - 4.5) / 30) ** 2
    labels = np.full(shape, 2, np.uint8)
    labels[r < 1] = 1
    labels[r < 0.45] = 0
    image = np.choose(labels, [180.0, 110.0, 4.0]) + np.random.default_rng(0).normal(0, 5, shape)
    image = np.clip(image, 0, None).astype(np.int16)
    affine = np.diag([-zooms[0] if flip_x else zooms[0], zooms[1], zooms[2], 1.0])
    data = np.repeat(image[..., None], frames, axis=3)
    nib.save(nib.Nifti1Image(data, affine), path)
    return labels, affine


def test_volume_mask_keeps_the_input_grid_and_volumes_add_up(checkpoint, tmp_path):
    truth, affine = synthetic_volume(tmp_path / "sub01.nii.gz")
    r = mriseg_console("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "sub01.nii.gz")
    assert r.returncode == 0, r.stderr
    mask_img = nib.load(tmp_path / "out" / "sub01_mask.nii.gz")
    assert mask_img.shape == (40, 48, 10, 1) and np.allclose(mask_img.affine, affine)
    mask = np.asarray(mask_img.dataobj)[..., 0]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
    for c in (0, 1):
        dice = 2 * ((mask == c) & (truth == c)).sum() / ((mask == c).sum() + (truth == c).sum())
        assert dice > 0.75, (c, dice)
    row = pd.read_csv(tmp_path / "out" / "volumes.csv").iloc[0]
    assert row["white_matter_voxels"] == (mask == 0).sum() and row["gray_matter_voxels"] == (mask == 1).sum()
    assert row["white_matter_ml"] == pytest.approx((mask == 0).sum() * 2.0 / 1000)  # 1 x 1 x 2 mm voxels
    assert row["gray_white_ratio"] == pytest.approx(row["gray_matter_voxels"] / row["white_matter_voxels"])
    assert (tmp_path / "out" / "sub01_overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_anisotropic_in_plane_voxels_are_resampled_and_mapped_back(checkpoint, tmp_path):
    truth, affine = synthetic_volume(tmp_path / "aniso.nii", zooms=(1.0, 1.0, 1.0))
    # The same anatomy stored with 2 mm voxels along y: half the samples.
    img = nib.load(tmp_path / "aniso.nii", mmap=False)
    data = np.asarray(img.dataobj)[:, ::2].copy()
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 2.0, 1.0, 1.0])), tmp_path / "aniso.nii")
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "aniso.nii")
    assert r.returncode == 0, r.stderr
    mask = np.asarray(nib.load(tmp_path / "out" / "aniso_mask.nii").dataobj)
    assert mask.shape == (40, 24, 10, 1)
    wm = (mask == 0).sum() * 2.0
    assert wm == pytest.approx((truth == 0).sum(), rel=0.2)


def test_probabilities_not_labels_go_back_to_the_input_grid():
    """A model's soft sphere on its 1 mm grid, brought back to 0.8 mm voxels: linear probabilities keep the
    sphere's surface; nearest-neighbour labels would make it a staircase of 1 mm steps."""
    from nibabel.processing import resample_from_to

    from mriseg.volumes import back_to_grid

    def sphere(step, n):
        c = (np.arange(n) + 0.5) * step - 20.0  # voxel centres in mm, both grids span -20..20 mm
        d = np.sqrt(sum(a ** 2 for a in np.meshgrid(c, c, c, indexing="ij"))) - 11.3
        return d, np.array([[step, 0, 0, c[0]], [0, step, 0, c[0]], [0, 0, step, c[0]], [0, 0, 0, 1.0]])

    d, work_affine = sphere(1.0, 40)
    inside = 1 / (1 + np.exp(d / 0.7))  # a smooth edge, as softmax outputs have
    probs = [inside, np.zeros_like(inside), 1 - inside]  # white matter in background
    fine_d, fine_affine = sphere(0.8, 50)
    reference = nib.Nifti1Image(np.zeros(fine_d.shape, np.float32), fine_affine)
    truth = fine_d < 0

    labels = back_to_grid(probs, work_affine, reference)
    assert labels.shape == truth.shape and labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 2}
    nearest = np.asarray(resample_from_to(nib.Nifti1Image(np.argmax(probs, 0).astype(np.uint8), work_affine),
                                          reference, order=0, cval=2).dataobj)

    def dice(a):
        return 2 * (a & truth).sum() / (a.sum() + truth.sum())

    assert dice(labels == 0) > 0.995 and dice(labels == 0) > dice(nearest == 0) + 0.005


def test_slices_and_folders(checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    for i in range(3):
        np.save(tmp_path / "in" / f"slice_{i}.npy", synthetic_pair(rng)[0])
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "in")
    assert r.returncode == 0, r.stderr
    for i in range(3):
        m = np.load(tmp_path / "out" / f"slice_{i}_mask.npy")
        assert m.shape == (48, 40) and m.dtype == np.uint8
    df = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert len(df) == 3 and df["white_matter_ml"].isna().all()
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out2", "--pixel-size", "0.5",
               tmp_path / "in" / "slice_0.npy")
    row = pd.read_csv(tmp_path / "out2" / "volumes.csv").iloc[0]
    assert row["white_matter_mm2"] == pytest.approx(row["white_matter_voxels"] * 0.25)
    assert row["white_matter_ml"] == pytest.approx(row["white_matter_voxels"] * 0.25 / 1000)


def test_one_bad_input_does_not_stop_the_others(checkpoint, tmp_path):
    synthetic_volume(tmp_path / "good.nii.gz")
    synthetic_volume(tmp_path / "movie.nii.gz", frames=2)
    (tmp_path / "garbage.nii.gz").write_bytes(b"definitely not nifti")
    np.save(tmp_path / "cube.npy", np.zeros((4, 4, 4), np.float32))
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "movie.nii.gz",
               tmp_path / "garbage.nii.gz", tmp_path / "good.nii.gz", tmp_path / "cube.npy", tmp_path / "missing.npy")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("predict: error:")]
    assert len(errors) == 4
    assert any("movie.nii.gz" in e and "3-D" in e for e in errors)
    assert any("garbage.nii.gz" in e and "not a readable" in e for e in errors)
    assert any("cube.npy" in e and "2-D" in e for e in errors)
    assert any("missing.npy" in e for e in errors)
    assert list(pd.read_csv(tmp_path / "out" / "volumes.csv")["file"]) == [str(tmp_path / "good.nii.gz")]


def test_an_absent_device_is_exit_2_in_one_line_and_writes_nothing(checkpoint, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --device cuda is not absent here")
    synthetic_volume(tmp_path / "scan.nii.gz")
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--device", "cuda", "--out", tmp_path / "out", tmp_path / "scan.nii.gz")
    assert r.returncode == 2 and r.stderr.strip() == "predict: error: --device=cuda, but no CUDA GPU is visible " \
        "(use auto or cpu)", r.stderr
    assert not (tmp_path / "out").exists()


def test_an_input_whose_overlay_fails_leaves_no_mask_and_no_row(checkpoint, tmp_path, monkeypatch):
    from mriseg import reporting

    real = reporting.plot_overlay

    def full_disk_for_b(image, labels, path, title=""):
        if path.name.startswith("b_"):
            raise OSError(28, "No space left on device")
        real(image, labels, path, title)

    monkeypatch.setattr(reporting, "plot_overlay", full_disk_for_b)
    for name in ("a", "b"):
        synthetic_volume(tmp_path / f"{name}.nii.gz")
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    assert r.returncode == 1 and "b.nii.gz: [Errno 28] No space left on device" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_mask.nii.gz", "a_overlay.png", "qc.png", "volumes.csv"]
    assert list(pd.read_csv(tmp_path / "out" / "volumes.csv")["file"]) == [str(tmp_path / "a.nii.gz")]


def test_checkpoint_and_empty_input_errors(checkpoint, tmp_path):
    r = mriseg("predict", "--model", tmp_path / "nope.pt", "--out", tmp_path / "o", checkpoint)
    assert r.returncode == 2 and "nope.pt: no such checkpoint" in r.stderr
    ckpt = torch.load(checkpoint, weights_only=True)
    del ckpt["normalization"]
    torch.save(ckpt, tmp_path / "old.pt")
    r = mriseg("predict", "--model", tmp_path / "old.pt", "--out", tmp_path / "o", tmp_path)
    assert r.returncode == 2 and "missing normalization" in r.stderr
    (tmp_path / "text.pt").write_text("hello")
    r = mriseg("predict", "--model", tmp_path / "text.pt", "--out", tmp_path / "o", tmp_path)
    assert r.returncode == 2 and "not a loadable mriseg checkpoint" in r.stderr
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "o")
    assert r.returncode == 2 and "no inputs" in r.stderr
    (tmp_path / "empty").mkdir()
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "o", tmp_path / "empty")
    assert r.returncode == 2 and "empty" in r.stderr


@pytest.mark.skipif(not SHARED_IBSR.exists(), reason="../shared/data/ibsr18-dev is absent (real IBSR volumes)")
def test_real_ibsr_volume_keeps_its_4d_shape_and_affine(checkpoint, tmp_path):
    src = SHARED_IBSR / "IBSR_16.nii.gz"
    r = subprocess.run(["mriseg", "predict", "--model", str(checkpoint), "--out", str(tmp_path), str(src)],
                       capture_output=True, text=True)  # the installed console script
    assert r.returncode == 0, r.stderr
    out, ref = nib.load(tmp_path / "IBSR_16_mask.nii.gz"), nib.load(src)
    assert out.shape == ref.shape == (256, 128, 256, 1) and np.allclose(out.affine, ref.affine)


def test_empty_checkpoint_duplicate_names_and_too_small_slices(checkpoint, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    r = mriseg("predict", "--model", tmp_path / "empty.pt", "--out", tmp_path / "o", checkpoint)
    assert r.returncode == 2 and "empty.pt: not a loadable mriseg checkpoint" in r.stderr
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    for d in ("a", "b"):
        np.save(tmp_path / d / "x.npy", synthetic_pair(rng)[0])
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "o", tmp_path / "a", tmp_path / "b")
    assert r.returncode == 2 and "would write the same x_mask file" in r.stderr
    np.save(tmp_path / "a" / "tiny.npy", np.zeros((3, 3), np.float32))
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "o", tmp_path / "a")
    assert r.returncode == 1 and "tiny.npy: slices of 3 x 3 pixels are too small" in r.stderr
    assert (tmp_path / "o" / "x_mask.npy").exists()
    assert list(pd.read_csv(tmp_path / "o" / "volumes.csv")["file"]) == [str(tmp_path / "a" / "x.npy")]


def test_context_model_segments_volumes_and_lone_slices(tmp_path):
    """A 2.5D checkpoint (train.context=1) reads each volume slice with its neighbours; a lone .npy
    slice stands in for its own, and predict says so."""
    import test_training
    from mriseg.volumes import with_context

    x, y = test_training.TRAIN
    xt, yt = test_training.TEST
    stack = lambda t: torch.from_numpy(with_context(t[:, 0].numpy(), 1))
    ckpt = test_training.train({**test_training.CFG, "epochs": 14, "context": 1}, "unet",
                               test_training.dataset((stack(x), y)), {"test": test_training.dataset((stack(xt), yt))},
                               tmp_path / "model.pt", tmp_path / "resume.pt",
                               extra={"axis": "axial", "normalization": NORM, "pixel_size_mm": [1.0, 1.0]})
    assert ckpt["context"] == 1 and ckpt["state_dict"]["stem.0.0.weight"].shape[1] == 3
    assert ckpt["history"][-1]["test_dice_white_matter"] > 0.8
    truth, _ = synthetic_volume(tmp_path / "sub01.nii.gz")
    np.save(tmp_path / "slice.npy", synthetic_pair(np.random.default_rng(2))[0])
    r = mriseg("predict", "--skull-strip", "no", "--model", tmp_path / "model.pt", "--out", tmp_path / "out", tmp_path / "sub01.nii.gz",
               tmp_path / "slice.npy")
    assert r.returncode == 0, r.stderr
    assert "stands in for its own neighbours" in r.stderr
    mask = np.asarray(nib.load(tmp_path / "out" / "sub01_mask.nii.gz").dataobj)[..., 0]
    for c in (0, 1):
        dice = 2 * ((mask == c) & (truth == c)).sum() / ((mask == c).sum() + (truth == c).sum())
        assert dice > 0.75, (c, dice)
    assert np.load(tmp_path / "out" / "slice_mask.npy").shape == (48, 40)


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_labels_score_volumes_against_their_manual_segmentations(checkpoint, tmp_path):
    """`--labels`: each volume's manual labels (found by make-archive's pairing rules) give manual volumes
    and Dice in volumes.csv; a volume without labels is still segmented; mismatched labels fail alone."""
    scans = tmp_path / "scans"
    scans.mkdir()
    truth, affine = synthetic_volume(scans / "sub01.nii.gz")
    ibsr = np.choose(truth, [3, 2, 0]).astype(np.int16)  # IBSR codes: 3 white, 2 gray, 0 background
    nib.save(nib.Nifti1Image(ibsr[..., None], affine), scans / "sub01_seg.nii.gz")
    synthetic_volume(scans / "sub02.nii.gz")
    synthetic_volume(scans / "sub03.nii.gz")
    nib.save(nib.Nifti1Image(ibsr[:, :-1], affine), scans / "sub03_seg.nii.gz")
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", "--labels", "ibsr", scans)
    assert r.returncode == 1, r.stderr  # sub03 failed
    assert "sub03_seg.nii.gz: geometry (40, 47, 10) does not match its image" in r.stderr
    assert "sub02.nii.gz: no manual labels beside it" in r.stderr
    assert not (tmp_path / "out" / "sub01_seg_mask.nii.gz").exists()  # label files are not inputs
    df = pd.read_csv(tmp_path / "out" / "volumes.csv").set_index("file")
    assert list(df.index) == [str(scans / "sub01.nii.gz"), str(scans / "sub02.nii.gz")]
    row = df.loc[str(scans / "sub01.nii.gz")]
    mask = np.asarray(nib.load(tmp_path / "out" / "sub01_mask.nii.gz").dataobj)[..., 0]
    for c, name in ((0, "white_matter"), (1, "gray_matter")):
        assert row[f"manual_{name}_ml"] == pytest.approx((truth == c).sum() * 2.0 / 1000)
        assert row[f"dice_{name}"] == pytest.approx(dice(mask == c, truth == c))
        assert row[f"dice_{name}"] > 0.75
    assert np.isnan(df.loc[str(scans / "sub02.nii.gz"), "dice_white_matter"])
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "o2", "--labels", "3:0,2:7", scans)
    assert r.returncode == 2 and "targets must be 0 (white matter)" in r.stderr


def test_freesurfer_subjects_are_named_after_the_subject_and_scored_with_aseg(checkpoint, tmp_path):
    for subject in ("bert", "ernie"):
        mri = tmp_path / "subjects" / subject / "mri"
        mri.mkdir(parents=True)
        truth, affine = synthetic_volume(tmp_path / "t.nii")
        data = np.asarray(nib.load(tmp_path / "t.nii").dataobj)[..., 0]
        nib.save(nib.MGHImage(data.astype(np.float32), affine), mri / "norm.mgz")
        aseg = np.choose(truth, [41, 3, 0]).astype(np.int32)  # right cerebral white matter, left cortex
        nib.save(nib.MGHImage(aseg, affine), mri / "aseg.mgz")
    # A folder of FreeSurfer subjects is read as make-archive reads it: each subject's mri/norm.mgz.
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", "--labels", "freesurfer-aseg",
               tmp_path / "subjects")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert df["file"].tolist() == [str(tmp_path / "subjects" / s / "mri" / "norm.mgz") for s in ("bert", "ernie")]
    for subject in ("bert", "ernie"):
        mask = np.asarray(nib.load(tmp_path / "out" / f"{subject}_norm_mask.mgz").dataobj)
        assert mask.shape == truth.shape
    assert (df["dice_white_matter"] > 0.75).all() and (df["dice_gray_matter"] > 0.75).all()
    assert df["manual_white_matter_ml"].tolist() == pytest.approx([(truth == 0).sum() * 2.0 / 1000] * 2)
    # One subject's folder, or its mri/ folder (whose aseg.mgz is not an image to segment).
    for i, folder in enumerate((tmp_path / "subjects" / "ernie", tmp_path / "subjects" / "ernie" / "mri")):
        r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / f"one{i}", folder)
        assert r.returncode == 0 and pd.read_csv(tmp_path / f"one{i}" / "volumes.csv")["file"].str.endswith(
            "ernie/mri/norm.mgz").tolist() == [True]


def test_slices_are_centre_padded_to_a_multiple_of_16_as_in_training(checkpoint):
    """The networks pool by up to 16 and re-pad on the left/top; training and make-archive centre each slice in
    its next multiple of 16 (volumes.pad_margins), so predict does too (IBSR_16's 215 x 215 slices: WM Dice 0.857 unpadded, 0.916 padded)."""
    from mriseg.prediction import Predictor, predict_labels

    image, mask = synthetic_pair(np.random.default_rng(4), 57, 53)
    predictor = Predictor(checkpoint, "cpu")
    padded = np.zeros((64, 64), np.float32)
    padded[3:60, 5:58] = image  # 7 and 11 rows/columns of padding, split as pad_margins splits them
    want = predict_labels(predictor.model, torch.from_numpy(padded)[None, None], torch.device("cpu"))[0, 3:60, 5:58]
    got = predictor.labels(image[None])[0]
    assert got.shape == (57, 53) and (got == want).all()
    assert (got == mask).mean() > 0.95
