"""The IBSR benchmark's fold manifests (the benchmark itself needs the shared subjects and hours), and IBSR
subjects turned into FreeSurfer's form."""
import importlib.util

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, SHARED_IBSR
from mriseg.data import load_split
from mriseg.make_archive import load_labels


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ibsr_benchmark", ROOT / "benchmarks" / "ibsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thinned_training_slices_keep_their_real_neighbours(tmp_path):
    rows = []
    for s, subject in enumerate("ABC"):
        for z in range(8):
            image, mask = tmp_path / f"sub-{subject}_slice-{z}_{8 * s + z}.npy", tmp_path / f"m{8 * s + z}.npy"
            np.save(image, np.full((2, 3), 10 * s + z, np.float32))
            np.save(mask, np.zeros((2, 3), np.uint8))
            rows.append({"image": str(image), "mask": str(mask), "ix": str(8 * s + z), "subject": subject, "slice": z})
    df = load_benchmark().fold_manifest(rows, ["C"], n_val=1, train_stride=2)
    assert df.groupby("split")["subject"].agg(lambda s: "".join(sorted(set(s)))).to_dict() == {
        "test": "C", "val": "A", "train": "B", "unused": "B"}
    x, _, kept = load_split(df, "train", context=1)
    assert list(kept["slice"]) == [0, 2, 4, 6]
    # Odd slices are not trained on, but still lend their pixels as neighbours (as at test time).
    assert x[:, :, 0, 0].tolist() == [[10, 10, 11], [11, 12, 13], [13, 14, 15], [15, 16, 17]]
    assert len(load_split(df, "test", context=1)[0]) == 8


@pytest.mark.skipif(not SHARED_IBSR.exists(), reason="needs ../shared/data/ibsr18-dev (the shared IBSR subjects)")
def test_ibsr_subject_in_freesurfer_form_keeps_its_tissue_volumes(tmp_path):
    """Conformed to 256^3 LIA 1 mm with aseg codes, then read back with the freesurfer-aseg preset: the same
    white and gray matter volumes (within 1 %) as the IBSR labels with the ibsr preset."""
    subprocess.run([sys.executable, ROOT / "benchmarks" / "ibsr_as_freesurfer.py", "--out", tmp_path, "IBSR_07"],
                   check=True, capture_output=True)
    norm = nib.load(tmp_path / "IBSR_07" / "mri" / "norm.mgz")
    assert norm.shape == (256, 256, 256) and nib.aff2axcodes(norm.affine) == ("L", "I", "A")
    assert norm.get_data_dtype() == np.uint8
    fs = load_labels([tmp_path / "IBSR_07" / "mri" / "aseg.mgz"], "freesurfer-aseg", "norm.mgz", norm)
    seg = nib.load(SHARED_IBSR / "IBSR_07_seg.nii.gz")
    ibsr = load_labels([SHARED_IBSR / "IBSR_07_seg.nii.gz"], "ibsr", "IBSR_07.nii.gz", nib.squeeze_image(seg))
    voxel = np.prod(seg.header.get_zooms()[:3])
    for tissue in (0, 1):
        assert (fs == tissue).sum() == pytest.approx((ibsr == tissue).sum() * voxel, rel=0.01)
