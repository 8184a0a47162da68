import hashlib
import json

import numpy as np

from mriseg.archive import extract_archive
from mriseg.sample import build_sample_archive, labels_from_probabilities
from conftest import make_project, run


def test_label_rule_takes_the_most_probable_class():
    wm = np.array([0.6, 0.3, 0.1, 0.45])
    gm = np.array([0.3, 0.6, 0.1, 0.45])
    assert labels_from_probabilities(wm, gm).tolist() == [0, 1, 2, 0]


def test_sample_archive_is_deterministic_and_in_the_tutorial_layout(tmp_path):
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    n = build_sample_archive(a)
    build_sample_archive(b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert extract_archive(a, tmp_path / "MRIs") == n and 100 <= n <= 200
    img = np.load(tmp_path / "MRIs" / "MRIs" / "sub-mni152_slice-090_90.npy")
    mask = np.load(tmp_path / "MRIs" / "Segmentations" / "segm_90.npy")
    assert img.dtype == np.float32 and mask.dtype == np.uint8 and img.shape == mask.shape == (192, 160)
    assert 0 <= img.min() and img.max() <= 1.0
    assert set(np.unique(mask)) == {0, 1, 2}
    # White matter is brighter than gray matter on T1.
    assert img[mask == 0].mean() > img[mask == 1].mean() + 0.1


def test_default_pipeline_on_the_sample_reaches_the_tutorial_iou(tmp_path):
    """The README's `dvc repro`, defaults untouched: mriseg's UNet recipe on the MNI152 sample."""
    proj = make_project(tmp_path / "proj")
    run(["dvc", "repro"], proj, timeout=1200)
    metrics = json.loads((proj / "reports" / "metrics.json").read_text())
    assert metrics["iou"] >= 0.80, metrics
    assert metrics["dice_white_matter"] >= 0.9 and metrics["dice_gray_matter"] >= 0.9, metrics
