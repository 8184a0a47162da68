"""IBSR subjects turned into FreeSurfer's form (benchmarks/ibsr_as_freesurfer.py)."""
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, SHARED_IBSR
from mriseg.labels import load_labels


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
