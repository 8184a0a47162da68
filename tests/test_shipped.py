"""The model shipped with the package: `mriseg predict` with no --model segments a T1 volume."""
import nibabel as nib
import numpy as np
import pytest
import torch

from mriseg.metrics import confusion_of, subject_scores
from mriseg.models import SHIPPED_MODEL, load_views
from mriseg.sample import labels_from_probabilities, mni152_volumes
from conftest import SHARED_IBSR, mriseg


def test_shipped_model_is_small_and_loads_with_weights_only():
    assert SHIPPED_MODEL.stat().st_size <= 50 * 2**20
    ckpt = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)
    assert sorted(ckpt["views"]) == ["axial", "coronal", "sagittal"]
    assert [v for v, *_ in load_views(SHIPPED_MODEL)] == ["axial", "coronal", "sagittal"]
    assert (SHIPPED_MODEL.parent / "MODEL.md").read_text().count("IBSR") >= 2  # the card and its attribution


@pytest.mark.slow  # three networks over a whole 1 mm brain: about 30 s on 2 cores
def test_predict_without_model_segments_the_mni152_template(tmp_path):
    """The skull-stripped MNI152 2009 template (nilearn's wheel; no IBSR subject) against its own tissue
    maps, each voxel's most probable class: the shipped model is the default of `mriseg predict`."""

    t1, gm, wm, brain, affine = mni152_volumes()
    nib.save(nib.Nifti1Image((t1 * brain).astype(np.float32), affine), tmp_path / "mni152.nii.gz")
    r = mriseg("predict", "--out", tmp_path / "out", "--device", "cpu", tmp_path / "mni152.nii.gz")
    assert r.returncode == 0, r.stderr
    pred = np.asanyarray(nib.load(tmp_path / "out" / "mni152_mask.nii.gz").dataobj)
    truth = labels_from_probabilities(wm, gm, brain)
    scores = subject_scores(confusion_of(pred, truth))
    # The target is 0.9 for both. The shipped model, trained with the CSF class and train.thinning
    # (15 epochs per view), reaches white matter 0.888, gray matter 0.887, CSF 0.521
    # (benchmarks/results/shipped-model/mni152-cpu.md; 0.911 / 0.890 outside the deep nuclei and the
    # cerebellum, which the template's maps and IBSR's labels
    # define differently): these floors catch a regression, they do not claim the target.
    assert scores["dice_white_matter"] >= 0.87 and scores["dice_gray_matter"] >= 0.87, scores
    assert scores["dice_csf"] >= 0.4, scores


@pytest.mark.slow  # two whole-brain predictions of three networks: about a minute on 2 cores
@pytest.mark.skipif(not SHARED_IBSR.is_dir(), reason=f"needs the IBSR volumes at {SHARED_IBSR}")
def test_shipped_model_measures_a_simulated_cortical_loss():
    """A lobe-sized loss of the outer cortex layer (IBSR_07, given its own CSF intensities): the shipped model's
    gray matter shows most of it (benchmarks/results/atrophy/cpu.md: 104 %; the model before train.thinning
    37 %). A tool for atrophy recovers at least 80 %."""
    from mriseg.atrophy import thin_cortex, upper_left_quarter
    from mriseg.labels import load_labels
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image
    from mriseg.volumes import load_volume

    path = SHARED_IBSR / "IBSR_07.nii.gz"
    img3 = load_volume(path)[1]
    labels = load_labels([SHARED_IBSR / "IBSR_07_seg.nii.gz"], "ibsr", path, img3, "intensity")
    image = np.asanyarray(img3.dataobj).astype(np.float32)
    atrophied, _, lost = thin_cortex(image, labels, upper_left_quarter(labels, img3.affine))
    predictor = Predictor(SHIPPED_MODEL, "cpu")
    gray = [int((segment_image(predictor, None, nib.Nifti1Image(data, img3.affine), path, "no")[0] == 1).sum())
            for data in (image, atrophied)]
    recovered = (gray[0] - gray[1]) / int(lost.sum())
    assert 0.8 <= recovered <= 1.25, recovered
