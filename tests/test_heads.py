"""Whole-head scans: brain extraction in front of the views (extraction.py), brain volume and quality control
(qc.py) in `mriseg predict`. Real heads from ../shared/data/freesurfer-dev where present."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, OutlineExtractor, mriseg
from mriseg.extraction import BrainExtractor, already_extracted
from mriseg.labels import load_labels
from mriseg.qc import cohort_flags, volume_flags

HEADS = ROOT.parent / "shared" / "data" / "freesurfer-dev"
needs_heads = pytest.mark.skipif(not HEADS.is_dir(), reason=f"needs the FreeSurfer heads at {HEADS}")


@pytest.fixture(scope="module")
def extractor():
    return BrainExtractor(torch.device("cpu"))


def labelled_brain(path):
    return np.asanyarray(nib.load(path).dataobj) > 0


@needs_heads
def test_the_extractor_finds_the_brain_of_a_head_and_tells_a_stripped_one(extractor):
    head = nib.load(HEADS / "swm-01" / "T1.nii.gz")
    brain = extractor.mask(head, "swm-01")
    truth = labelled_brain(HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz")
    assert brain.shape == head.shape and brain.dtype == bool  # on the input's own grid (LIA here)
    assert 2 * (brain & truth).sum() / (brain.sum() + truth.sum()) > 0.9
    assert not already_extracted(np.asanyarray(head.dataobj), brain)
    stripped = nib.load(HEADS / "niivue-01" / "mri" / "norm.mgz")
    assert already_extracted(np.asanyarray(stripped.dataobj), extractor.mask(stripped, "niivue-01"))


def test_flags_say_what_to_look_at():
    labels = np.full((20, 20, 20), 2, np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    labels[8:12, 8:12, 8:12] = 0
    brain = np.zeros(labels.shape, bool)
    brain[4:16, 4:16, 4:16] = True
    assert volume_flags(labels, brain, 1200.0) == []
    touching = brain.copy()
    touching[0] = True  # a whole face of the image
    labels[1, 1, 1] = 1  # a speck of tissue far from the rest
    labels[5:15, 5:15, 5:7] = 2
    flags = volume_flags(labels, touching, 300.0)
    assert flags[0] == "brain mask touches the image border" and "brain 300 ml outside 800-2000 ml" in flags
    assert volume_flags(np.full((8, 8, 8), 2, np.uint8)) == ["no white matter", "no gray matter"]
    split = np.full((20, 20, 20), 2, np.uint8)
    split[2:6, 2:6, 2:6], split[12:18, 12:18, 12:18] = 0, 1
    assert any(f.startswith("tissue in pieces") for f in volume_flags(split))
    ratios = [1.50, 1.55, 1.60, 1.52, 1.58, 3.10]
    assert [bool(f) for f in cohort_flags(ratios)] == [False] * 5 + [True]
    assert cohort_flags(ratios[:4]) == [""] * 4, "fewer than 5 volumes: no cohort to judge against"


@pytest.mark.parametrize("shift, side", [(2, 20), (-2, 16)])
def test_an_input_extracted_before_is_measured_in_its_voxels_within_the_extracted_brain(shift, side):
    from mriseg.extraction import find_brain
    from mriseg.segment import tissue_volumes

    image = np.zeros((30, 30, 30), np.float32)
    image[5:25, 5:25, 5:25] = 100.0
    image[14, 14, 14] = 0.0  # a dark voxel inside the brain belongs to it
    img3 = nib.Nifti1Image(image, np.diag([1.2, 1.2, 1.2, 1.0]))
    brain, decided = find_brain(OutlineExtractor(shift), img3, "stripped.nii.gz", "auto")
    assert decided == "already extracted"
    assert brain.sum() == side**3, "a looser outline adds no voxel the input lacks; a tighter one cuts its rim"
    labels = np.where(image != 0, 1, 2).astype(np.uint8)  # every voxel of the given brain segmented as tissue
    labels[~brain] = 2  # as segment_image measures it
    row = tissue_volumes(labels, brain, img3, with_csf=True)
    assert row["brain_ml"] == pytest.approx(side**3 * 1.2**3 / 1000)
    assert row["gray_matter_ml"] <= row["brain_ml"] and row["icv_ml"] == pytest.approx(row["brain_ml"])


def test_an_image_without_a_brain_keeps_a_marked_row_and_the_others_go_on(checkpoint, tmp_path):
    from conftest import synthetic_volume

    image, _, affine = synthetic_volume(np.random.default_rng(0))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "brain.nii.gz")
    nib.save(nib.Nifti1Image(np.full((40, 44, 36), 7, np.int16), affine), tmp_path / "constant.nii.gz")
    r = mriseg("predict", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "constant.nii.gz",
               tmp_path / "brain.nii.gz")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("predict: error:")]
    assert errors == [f"predict: error: {tmp_path / 'constant.nii.gz'}: constant image: no brain to extract"]
    table = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert list(table["qc"].str.startswith("failed: ")) == [True, False]
    assert table["white_matter_ml"].isna().tolist() == [True, False]
    assert table["skull_strip"][1] == "already extracted"  # the toy brain lies on a zero background
    assert not list((tmp_path / "out").glob("constant_*"))
    assert (tmp_path / "out" / "qc.png").read_bytes()[:4] == b"\x89PNG"


def test_unreadable_extractor_weights_stop_before_anything_is_written(checkpoint, tmp_path, monkeypatch):
    import deepbet

    from conftest import synthetic_volume

    def unreadable(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    monkeypatch.setattr(deepbet, "BrainExtraction", unreadable)
    image, _, affine = synthetic_volume(np.random.default_rng(0))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    r = mriseg("predict", "--model", checkpoint, "--out", tmp_path / "out", tmp_path / "scan.nii.gz")
    assert r.returncode == 2 and r.stderr.strip() == ("predict: error: cannot load deepbet 1.0.2's weights: "
                                                      "PytorchStreamReader failed reading zip archive: failed "
                                                      "finding central directory"), r.stderr
    assert not (tmp_path / "out").exists()
    r = mriseg("predict", "--model", checkpoint, "--skull-strip", "no", "--out", tmp_path / "out",
               tmp_path / "scan.nii.gz")
    assert r.returncode == 0, "without extraction the weights are never read"


@needs_heads
@pytest.mark.slow  # the shipped model's three views over a 256^3 head: about 30 s on 2 cores
def test_a_head_gets_a_brain_mask_a_brain_volume_and_no_tissue_outside_the_brain(tmp_path):
    head = HEADS / "swm-01" / "T1.nii.gz"
    r = mriseg("predict", "--out", tmp_path, head)
    assert r.returncode == 0, r.stderr
    row = pd.read_csv(tmp_path / "volumes.csv").iloc[0]
    assert row["skull_strip"] == "extracted" and row["qc"] == "ok"
    assert 1000 < row["brain_ml"] < 1800
    assert row["gray_matter_fraction"] == pytest.approx(row["gray_matter_ml"] / row["icv_ml"])
    tissue_and_csf = row["white_matter_ml"] + row["gray_matter_ml"] + row["csf_ml"]
    assert row["csf_ml"] > 50 and tissue_and_csf <= row["icv_ml"] < 2000  # FreeSurfer's brain and CSF: 1403 ml
    image, mask_img, brain_img = (nib.load(p) for p in (head, tmp_path / "T1_mask.nii.gz",
                                                         tmp_path / "T1_brainmask.nii.gz"))
    for out in (mask_img, brain_img):
        assert out.shape == image.shape and np.allclose(out.affine, image.affine)
    mask, brain = np.asanyarray(mask_img.dataobj), np.asanyarray(brain_img.dataobj) > 0
    assert (mask[~brain] == 2).all(), "tissue outside the brain mask is background"
    from scipy import ndimage

    near_brain = ndimage.binary_dilation(labelled_brain(HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz"),
                                         iterations=3)
    assert ((mask < 2) & ~near_brain).sum() < 0.005 * (mask < 2).sum(), "scalp, skull or face labelled tissue"
    truth = np.asanyarray(nib.load(HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz").dataobj)
    from mriseg.labels import map_labels

    truth = map_labels([truth], "freesurfer-aseg")
    for c, floor in ((0, 0.88), (1, 0.84)):
        assert 2 * ((mask == c) & (truth == c)).sum() / ((mask == c).sum() + (truth == c).sum()) > floor


@needs_heads
@pytest.mark.slow
def test_auto_leaves_an_extracted_ibsr_subject_as_it_was_within_the_brain(checkpoint, tmp_path):
    ibsr = ROOT.parent / "shared" / "data" / "ibsr18-dev" / "IBSR_07.nii.gz"
    for mode in ("auto", "no"):
        r = mriseg("predict", "--model", checkpoint, "--skull-strip", mode, "--out", tmp_path / mode, ibsr)
        assert r.returncode == 0, r.stderr
    auto, plain = (np.asanyarray(nib.load(tmp_path / m / "IBSR_07_mask.nii.gz").dataobj) for m in ("auto", "no"))
    brain = np.asanyarray(nib.load(tmp_path / "auto" / "IBSR_07_brainmask.nii.gz").dataobj).astype(bool)
    assert np.array_equal(auto[brain], plain[brain]), "inside the extracted brain the labels are those of no"
    assert (auto[~brain] == 2).all() and ((plain != 2) & ~brain).sum() < 0.005 * (plain != 2).sum()
    assert pd.read_csv(tmp_path / "auto" / "volumes.csv")["skull_strip"][0] == "already extracted"


@needs_heads
def test_the_pipeline_strips_a_training_head_once_and_keeps_its_mask(tmp_path):
    """data.skull_strip auto: the unzip stage's preprocessing extracts a head's brain, zeroes the image
    outside it, makes its working labels background there, keeps the mask beside the arrays and says what it
    decided; the native labels stay the reference a test subject is scored against."""
    import json
    import zipfile

    from mriseg.cohort import prepare_cohort

    with zipfile.ZipFile(tmp_path / "heads.zip", "w") as zf:
        zf.write(HEADS / "swm-01" / "T1.nii.gz", "swm01.nii.gz")
        zf.write(HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz", "swm01_seg.nii.gz")
    prepare_cohort(tmp_path / "heads.zip", tmp_path / "MRIs", labels="freesurfer-aseg", skull_strip="auto")
    volumes = tmp_path / "MRIs" / "volumes"
    image, labels = np.load(volumes / "swm01.image.npy"), np.load(volumes / "swm01.labels.npy")
    brain = np.load(volumes / "swm01.brainmask.npy").astype(bool)
    head = nib.load(HEADS / "swm-01" / "T1.nii.gz")
    assert brain.shape == head.shape and 1000 < brain.sum() / 1000 < 1800  # ml at 1 mm: a brain, not a head
    # The working volume: the brain alone (about 1.4 l of a 256 mm box cropped to it), its tissue all seen.
    assert 1000 < (image > 0).sum() / 1000 < 1900 and (image[labels < 2] > 0).mean() > 0.99
    record = json.loads((tmp_path / "MRIs" / "mriseg.json").read_text())["subjects"]["swm01"]
    assert record["skull_strip"] == "extracted"
    reference = load_labels([HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz"], "freesurfer-aseg", "swm-01", head,
                            "intensity")  # data.csf's default
    assert np.array_equal(np.load(volumes / "swm01.native.npy"), reference)


@needs_heads
@pytest.mark.slow  # two preparations and scorings of a 256^3 head, one with the extractor: about 40 s
def test_evaluate_extracts_a_heads_brain_as_predict_does_and_says_so(checkpoint, tmp_path):
    import json
    import zipfile

    with zipfile.ZipFile(tmp_path / "heads.zip", "w") as zf:
        zf.write(HEADS / "swm-01" / "T1.nii.gz", "swm01.nii.gz")
        zf.write(HEADS / "swm-01" / "aparc.DKTatlas+aseg.nii.gz", "swm01_seg.nii.gz")
    tissue = {}
    for mode, said in (("auto", "1 subject(s) brain extracted before scoring (a head): swm01"),
                       ("no", "1 subject(s) scored as it is (--skull-strip no): swm01")):
        args = ("--skull-strip", mode) if mode != "auto" else ()  # auto: the default, as predict's
        r = mriseg("evaluate", tmp_path / "heads.zip", "--labels", "freesurfer-aseg", "--model", checkpoint,
                   "--out", tmp_path / f"{mode}.json", *args)
        assert r.returncode == 0, r.stderr
        assert f"evaluate: {tmp_path / 'heads.zip'}: {said}" in r.stderr.splitlines()
        subject = json.loads((tmp_path / f"{mode}.json").read_text())["subjects"]["swm01"]
        assert subject["skull_strip"] == ("extracted" if mode == "auto" else "no")
        tissue[mode] = subject["white_matter_ml"] + subject["gray_matter_ml"]
    assert tissue["auto"] < 1800 < tissue["no"], "scalp, skull and neck scored as tissue without extraction"


def test_a_training_volume_without_a_brain_stops_unzip_in_one_line(tmp_path):
    from conftest import cohort_zip
    from mriseg.archive import ArchiveError
    from mriseg.cohort import prepare_cohort

    archive = cohort_zip(tmp_path / "c.zip", subjects=("s01",))
    with pytest.raises(ArchiveError, match=r"c.zip: .*s01.nii.gz: (constant image|the brain extractor found no brain|the extracted brain is)"):
        prepare_cohort(archive, tmp_path / "MRIs", skull_strip="yes")
    assert not (tmp_path / "MRIs").exists()


@pytest.mark.parametrize("written, read", [("no", "no"), ('"no"', "no"), ("yes", "yes"), ("auto", "auto")])
def test_data_skull_strip_takes_yaml_yes_and_no_as_written(tmp_path, written, read):
    from mriseg.params import load_params

    (tmp_path / "params.yaml").write_text(f"model: unet\ndata:\n  skull_strip: {written}\n")
    assert load_params(tmp_path / "params.yaml")["data"]["skull_strip"] == read


def test_bad_skull_strip_is_one_clear_line(tmp_path):
    from mriseg.errors import ParamsError
    from mriseg.params import load_params

    (tmp_path / "params.yaml").write_text("model: unet\ndata:\n  skull_strip: always\n")
    with pytest.raises(ParamsError, match=r"data.skull_strip must be one of \('auto', 'yes', 'no'\), got 'always'"):
        load_params(tmp_path / "params.yaml")
