"""`mriseg evaluate`: a trained model scored on every slice of another archive, overall and per subject."""
import json

import numpy as np
import torch

from conftest import NORM, mriseg, mriseg_console, synthetic_pair
from mriseg.archive import write_archive
from mriseg.evaluation import score
from mriseg.models import load_checkpoint
from mriseg.volumes import pad_slices, with_context


def subject_archive(path, subjects=("a", "b"), n=10, seed=5, metadata=None, named=True):
    """Consecutive synthetic slices per subject, named as make-archive names them (indices run on)."""
    rng = np.random.default_rng(seed)
    pairs, ix = [], 0
    for s in subjects:
        for i in range(n):
            name = f"sub-{s}_slice-{i}_{ix}.npy" if named else f"img_{ix}.npy"
            pairs.append((name, *synthetic_pair(rng)))
            ix += 1
    write_archive(path, pairs, metadata)
    return pairs


def test_scores_overall_and_per_subject_like_the_evaluate_stage(checkpoint, tmp_path):
    pairs = subject_archive(tmp_path / "heldout.zip", metadata={"axis": "coronal", "normalization": NORM,
                                                                 "pixel_size_mm": [1.0, 1.0]})
    r = mriseg_console("evaluate", tmp_path / "heldout.zip", "--model", checkpoint, "--out", tmp_path / "scores.json",
               "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert "axis coronal (model: axial)" in r.stderr  # trained on other slices: said, not refused
    result = json.loads((tmp_path / "scores.json").read_text())
    assert sorted(result["subjects"]) == ["a", "b"]
    assert [result["subjects"][s]["slices"] for s in "ab"] == [10, 10] and result["overall"]["slices"] == 20

    # The same numbers as the evaluate stage's scoring of these slices, in the archive's order, padded as
    # training and prediction pad them (centred in a multiple of 16; masks with background).
    model, ckpt = load_checkpoint(checkpoint)
    x = torch.from_numpy(pad_slices(np.stack([p[1] for p in pairs])))[:, None]
    y = torch.from_numpy(pad_slices(np.stack([p[2] for p in pairs]), fill=2))
    for part, sl in (("overall", slice(0, 20)), ("a", slice(0, 10)), ("b", slice(10, 20))):
        got = result["overall"] if part == "overall" else result["subjects"][part]
        want = score(model, ckpt, torch.utils.data.TensorDataset(x[sl], y[sl]), 8, torch.device("cpu"))
        for key, value in want.items():
            assert abs(got[key] - value) < 1e-6, (part, key, got[key], value)
    assert result["overall"]["dice_white_matter"] > 0.8
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["slices", "iou", "dice_white_matter"] and lines[-1].split()[0] == "all"


def test_context_model_reads_neighbours_from_the_names(tmp_path):
    import test_training

    x, y = test_training.TRAIN
    stack = lambda t: torch.from_numpy(with_context(t[:, 0].numpy(), 1))
    test_training.train({**test_training.CFG, "epochs": 6, "context": 1}, "unet",
                        torch.utils.data.TensorDataset(stack(x), y), {},
                        tmp_path / "model.pt", tmp_path / "resume.pt",
                        extra={"axis": "axial", "normalization": NORM, "pixel_size_mm": [1.0, 1.0]})
    pairs = subject_archive(tmp_path / "named.zip", n=6)
    r = mriseg("evaluate", tmp_path / "named.zip", "--model", tmp_path / "model.pt", "--out", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    model, ckpt = load_checkpoint(tmp_path / "model.pt")
    images = np.stack([p[1] for p in pairs])
    # Each subject is its own volume: neighbours never cross from subject a to b.
    xs = torch.from_numpy(pad_slices(np.concatenate([with_context(images[:6], 1), with_context(images[6:], 1)])))
    masks = torch.from_numpy(pad_slices(np.stack([p[2] for p in pairs]), fill=2))
    want = score(model, ckpt, torch.utils.data.TensorDataset(xs, masks),
                 32, torch.device("cpu"))
    got = json.loads((tmp_path / "s.json").read_text())["overall"]
    assert abs(got["iou"] - want["iou"]) < 1e-6 and abs(got["loss"] - want["loss"]) < 1e-6

    subject_archive(tmp_path / "tutorial.zip", n=6, named=False)  # the tutorial's names: no neighbours known
    r = mriseg("evaluate", tmp_path / "tutorial.zip", "--model", tmp_path / "model.pt")
    assert r.returncode == 0, r.stderr
    assert "stands in for its 1 neighbour(s)" in r.stderr and r.stdout.splitlines()[-1].split()[:2] == ["all", "12"]


def test_bad_archive_or_checkpoint_is_one_line_naming_the_file(checkpoint, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "broken.zip", "w") as zf:
        zf.writestr("MRIs/MRIs/img_0.npy", b"")
    r = mriseg("evaluate", tmp_path / "broken.zip", "--model", checkpoint)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(tmp_path / "broken.zip") in r.stderr
    subject_archive(tmp_path / "ok.zip", n=2)
    r = mriseg("evaluate", tmp_path / "ok.zip", "--model", tmp_path / "missing.pt")
    assert r.returncode == 2 and "missing.pt: no such checkpoint" in r.stderr and r.stderr.count("\n") == 1


def archive_axis(path):
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("MRIs/mriseg.json"))


def test_make_archive_like_a_model_slices_as_it_was_trained(checkpoint, tmp_path):
    from test_make_archive import ibsr_folder

    src = ibsr_folder(tmp_path)  # 1 x 1.5 x 1 mm voxels: auto slices them coronally; the model is axial
    assert mriseg("make-archive", src, "--out", tmp_path / "auto.zip", "--min-tissue", "10").returncode == 0
    assert archive_axis(tmp_path / "auto.zip")["axis"] == "coronal"
    r = mriseg("make-archive", src, "--out", tmp_path / "like.zip", "--min-tissue", "10", "--like", checkpoint)
    assert r.returncode == 0, r.stderr
    meta = archive_axis(tmp_path / "like.zip")
    assert meta["axis"] == "axial" and meta["pixel_size_mm"] == [1.0, 1.0]

    r = mriseg("evaluate", tmp_path / "auto.zip", "--model", checkpoint)
    assert r.returncode == 0 and "axis coronal (model: axial)" in r.stderr and "--like" in r.stderr
    r = mriseg("evaluate", tmp_path / "like.zip", "--model", checkpoint)
    assert r.returncode == 0 and "note" not in r.stderr, r.stderr

    r = mriseg("make-archive", src, "--out", tmp_path / "x.zip", "--like", checkpoint, "--axis", "axial")
    assert r.returncode == 2 and "drop --axis" in r.stderr and r.stderr.count("\n") == 1
    r = mriseg("make-archive", src, "--out", tmp_path / "x.zip", "--like", tmp_path / "none.pt")
    assert r.returncode == 2 and "none.pt: no such checkpoint" in r.stderr
    r = mriseg("evaluate", tmp_path / "like.zip", "--model", checkpoint, "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size: 0: must be at least 1" in r.stderr


def test_like_a_model_that_records_no_pixel_size(tmp_path):
    """A model trained on an archive without MRIs/mriseg.json (the tutorial's) records its plane but no
    pixel size: --like says so and resamples to --pixel-size (1 mm by default), never to raw voxels."""
    from test_make_archive import ibsr_folder
    from test_training import run_train

    assert "pixel_size_mm" not in run_train(tmp_path, "tutorial_like", epochs=1)
    src = ibsr_folder(tmp_path)
    for extra, want in (([], [1.0, 1.0]), (["--pixel-size", "0.5"], [0.5, 0.5])):
        r = mriseg("make-archive", src, "--out", tmp_path / "a.zip", "--min-tissue", "10",
                   "--like", tmp_path / "tutorial_like.pt", *extra)
        assert r.returncode == 0 and "records no pixel size" in r.stderr, r.stderr
        meta = archive_axis(tmp_path / "a.zip")
        assert meta["axis"] == "axial" and meta["pixel_size_mm"] == want
        # Nothing to compare the pixel size with, so evaluate has no difference to note.
        r = mriseg("evaluate", tmp_path / "a.zip", "--model", tmp_path / "tutorial_like.pt")
        assert r.returncode == 0 and "differ" not in r.stderr, r.stderr
