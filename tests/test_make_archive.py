"""`mriseg make-archive`: labelled volumes in, an archive the pipeline consumes unchanged out."""
import json
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest

from mriseg.archive import extract_archive
from mriseg.manifest import list_pairs, make_split
from mriseg.labels import SourceError
from mriseg.make_archive import make_archive
from conftest import SHARED_IBSR


def phantom(shape=(30, 20, 12)):
    """IBSR-style labels (0 bg, 1 CSF, 2 GM, 3 WM) in an ellipsoid, and a T1-like image."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = x**2 + y**2 + (z / 1.2) ** 2
    labels = np.zeros(shape, np.int16)
    labels[r < 0.8] = 2
    labels[r < 0.4] = 3
    labels[r < 0.05] = 1
    image = np.choose(labels, [0, 40, 90, 140]).astype(np.int16)
    return image, labels


def save(path, data, zooms=(1.0, 1.5, 1.0), trailing=True):
    data = data[..., None] if trailing else data
    img = (nib.MGHImage if str(path).endswith(".mgz") else nib.Nifti1Image)(
        data.astype(np.int32 if str(path).endswith(".mgz") else data.dtype), np.diag([*zooms, 1.0]))
    nib.save(img, path)


def ibsr_folder(tmp_path, subjects=("S1", "S2", "S3")):
    src = tmp_path / "src"
    src.mkdir()
    for s in subjects:
        image, labels = phantom()
        save(src / f"{s}.nii.gz", image)
        save(src / f"{s}_seg.nii.gz", labels)
    return src


def test_slices_of_a_smaller_subject_sit_where_prediction_puts_them(tmp_path):
    """Each slice centred in its own multiple of 16 (volumes.pad_margins), then at the top left of the archive's
    one size: as SliceDataset pads in training and `mriseg predict` pads, never centred in the larger frame."""
    from mriseg.volumes import pad_margins

    src = tmp_path / "src"
    src.mkdir()
    for name, shape in (("big", (60, 40, 12)), ("small", (30, 20, 12))):
        image, labels = phantom(shape)
        save(src / f"{name}.nii.gz", image)
        save(src / f"{name}_seg.nii.gz", labels)
    make_archive(src, tmp_path / "a.zip", axis="axial", pixel_size=1.0, min_tissue=10)
    extract_archive(tmp_path / "a.zip", tmp_path / "MRIs")
    rows = [r for r in list_pairs(tmp_path / "MRIs") if r["subject"] == "small"]
    top, left, h, w = pad_margins(30, 30)  # 30 x 20 voxels of 1 x 1.5 mm -> 30 x 30 pixels of 1 mm
    for r in rows:
        mask = np.load(r["mask"])
        assert mask.shape == (64, 64)
        assert (mask[h:] == 2).all() and (mask[:, w:] == 2).all(), "the slice stays in its own 16-pixel frame"
        assert (mask[top:top + 30, left:left + 30] < 2).any()


def test_ibsr_pairs_become_a_valid_archive_with_subjects(tmp_path):
    src = ibsr_folder(tmp_path)
    n_subjects, n_slices = make_archive(src, tmp_path / "a.zip", labels="ibsr", axis="axial", pixel_size=1.0,
                                        min_tissue=10)
    assert n_subjects == 3 and n_slices > 0
    assert extract_archive(tmp_path / "a.zip", tmp_path / "MRIs") == n_slices
    rows = list_pairs(tmp_path / "MRIs")
    assert {r["subject"] for r in rows} == {"S1", "S2", "S3"}
    meta = json.loads((tmp_path / "MRIs" / "mriseg.json").read_text())
    assert meta["axis"] == "axial" and meta["pixel_size_mm"] == [1.0, 1.0]
    image = np.load(tmp_path / "MRIs" / "MRIs" / f"{rows[len(rows) // 2]['image'].rsplit('/', 1)[1]}")
    mask = np.load(rows[len(rows) // 2]["mask"])
    # 30 x 20 voxels of 1 x 1.5 mm -> 30 x 30 pixels of 1 mm, padded to a multiple of 16.
    assert image.shape == mask.shape == (32, 32)
    assert image.max() <= 1.0 and set(np.unique(mask)) <= {0, 1, 2}
    assert image[mask == 0].mean() > image[mask == 1].mean()  # white matter brighter on T1
    df = make_split(rows, by="auto", test_size=1, seed=0)
    assert (df.groupby("subject")["split"].nunique() == 1).all()


def test_freesurfer_subject_folders_and_aseg_preset(tmp_path):
    image, labels = phantom()
    aseg = np.choose(labels, [0, 4, 3, 2])  # 4 = lateral ventricle, 3 = cortex, 2 = cerebral white matter
    for s in ("bert", "ernie"):
        (tmp_path / "fs" / s / "mri").mkdir(parents=True)
        save(tmp_path / "fs" / s / "mri" / "norm.mgz", image, zooms=(1, 1, 1), trailing=False)
        save(tmp_path / "fs" / s / "mri" / "aseg.mgz", aseg, zooms=(1, 1, 1), trailing=False)
    r = subprocess.run([sys.executable, "-m", "mriseg", "make-archive", str(tmp_path / "fs"), "--out",
                        str(tmp_path / "fs.zip"), "--labels", "freesurfer-aseg", "--min-tissue", "10"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    extract_archive(tmp_path / "fs.zip", tmp_path / "MRIs")
    rows = list_pairs(tmp_path / "MRIs")
    assert {r["subject"] for r in rows} == {"bert", "ernie"}
    masks = np.stack([np.load(r["mask"]) for r in rows])
    assert (masks == 0).any() and (masks == 1).any()
    # A NIfTI pair named like a FreeSurfer subject would mix two volumes under one subject: refused.
    save(tmp_path / "fs" / "bert.nii.gz", image)
    save(tmp_path / "fs" / "bert_seg.nii.gz", labels)
    with pytest.raises(SourceError, match="both subject 'bert'"):
        make_archive(tmp_path / "fs", tmp_path / "mixed.zip", labels="freesurfer-aseg")


def test_fsl_fast_pve_maps(tmp_path):
    image, labels = phantom()
    src = tmp_path / "fast"
    src.mkdir()
    save(src / "s01.nii.gz", image)
    for k, cls in enumerate((1, 2, 3)):  # pve_0 CSF, pve_1 GM, pve_2 WM
        save(src / f"s01_pve_{k}.nii.gz", (labels == cls).astype(np.float32))
    make_archive(src, tmp_path / "f.zip", labels="fsl-fast", min_tissue=10)
    extract_archive(tmp_path / "f.zip", tmp_path / "MRIs")
    masks = np.stack([np.load(r["mask"]) for r in list_pairs(tmp_path / "MRIs")])
    assert set(np.unique(masks)) == {0, 1, 2}


def test_explicit_mapping_and_coronal_axis(tmp_path):
    src = ibsr_folder(tmp_path, ("A", "B"))
    make_archive(src, tmp_path / "c.zip", labels="3:1,2:0", axis="coronal", pixel_size=0, min_tissue=10)
    with zipfile.ZipFile(tmp_path / "c.zip") as zf:
        meta = json.loads(zf.read("MRIs/mriseg.json"))
    assert meta["axis"] == "coronal" and meta["pixel_size_mm"] is None
    extract_archive(tmp_path / "c.zip", tmp_path / "MRIs")
    rows = list_pairs(tmp_path / "MRIs")
    mid = [r for r in rows if r["subject"] == "A"]
    mid = mid[len(mid) // 2]
    image, mask = np.load(mid["image"]), np.load(mid["mask"])
    assert image[mask == 1].mean() > image[mask == 0].mean()  # swapped on purpose: 3 (WM) -> 1


def test_mismatched_geometry_is_refused(tmp_path):
    src = ibsr_folder(tmp_path, ("A",))
    image, labels = phantom((30, 20, 11))
    save(src / "A_seg.nii.gz", labels)
    with pytest.raises(SourceError, match="A_seg.nii.gz: geometry"):
        make_archive(src, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no labelled volumes"):
        make_archive(tmp_path / "empty", tmp_path / "x.zip")
    with pytest.raises(SourceError, match="--labels"):
        make_archive(tmp_path / "empty", tmp_path / "x.zip", labels="3->0")


@pytest.mark.skipif(not SHARED_IBSR.exists(), reason="../shared/data/ibsr18-dev is absent (real IBSR volumes)")
def test_real_ibsr_subjects(tmp_path):
    src = tmp_path / "ibsr"
    src.mkdir()
    for s in ("IBSR_07", "IBSR_16"):
        for suffix in ("", "_seg"):
            (src / f"{s}{suffix}.nii.gz").symlink_to(SHARED_IBSR / f"{s}{suffix}.nii.gz")
    make_archive(src, tmp_path / "ibsr.zip", labels="ibsr")
    n = extract_archive(tmp_path / "ibsr.zip", tmp_path / "MRIs")
    rows = list_pairs(tmp_path / "MRIs")
    assert {r["subject"] for r in rows} == {"IBSR_07", "IBSR_16"} and 150 < n < 400
    # IBSR was acquired in coronal 1.5 mm slices: auto slices there, at the native 0.84-1 mm in-plane.
    assert json.loads((tmp_path / "MRIs" / "mriseg.json").read_text())["axis"] == "coronal"
    mask = np.stack([np.load(r["mask"]) for r in rows])
    wm_fraction = (mask == 0).sum() / (mask < 2).sum()
    assert 0.3 < wm_fraction < 0.55  # adult brains: white matter is roughly 40 % of tissue


@pytest.mark.parametrize("zooms, expected", [((1.0, 1.5, 1.0), "coronal"), ((1.0, 1.0, 3.0), "axial"),
                                              ((2.0, 1.0, 1.0), "sagittal"), ((1.0, 1.0, 1.1), "axial")])
def test_auto_axis_slices_across_the_thickest_voxels(tmp_path, zooms, expected):
    src = tmp_path / "src"
    src.mkdir()
    image, labels = phantom()
    save(src / "S1.nii.gz", image, zooms)
    save(src / "S1_seg.nii.gz", labels, zooms)
    make_archive(src, tmp_path / "a.zip", min_tissue=10)
    extract_archive(tmp_path / "a.zip", tmp_path / "MRIs")
    assert json.loads((tmp_path / "MRIs" / "mriseg.json").read_text())["axis"] == expected


def test_labels_follow_the_interpolated_image_when_pixels_are_resampled(tmp_path):
    """0.9375 mm pixels to 1 mm (IBSR_01-06): the label of each new pixel is the tissue its linearly
    interpolated intensity says, as the network sees it; nearest neighbour drops a row in 16 and disagrees."""
    from mriseg.volumes import resample_inplane, resample_labels

    shape = (64, 6, 64)
    x, z = np.meshgrid(np.arange(shape[0]), np.arange(shape[2]), indexing="ij")
    wm = ((x - 31.3) / 20.5) ** 2 + ((z - 30.8) / 13.7) ** 2 < 1  # white matter ellipse in gray matter
    labels = np.repeat(np.where(wm, 0, 1)[:, None, :], shape[1], axis=1).astype(np.uint8)
    affine = np.diag([0.9375, 1.5, 0.9375, 1.0])
    image = nib.Nifti1Image(np.where(labels == 0, 140.0, 90.0).astype(np.float32), affine)
    resampled = np.asanyarray(resample_inplane(image, "coronal", 1.0, order=1).dataobj)
    mask = resample_labels(nib.Nifti1Image(labels, affine), "coronal", 1.0)
    nearest = np.asanyarray(resample_inplane(nib.Nifti1Image(labels, affine), "coronal", 1.0, order=0).dataobj)
    assert mask.shape == resampled.shape == nearest.shape == (61, 6, 61)
    assert np.allclose(mask.affine, resample_inplane(image, "coronal", 1.0).affine)
    mask = np.asanyarray(mask.dataobj)
    clear = np.abs(resampled - 115) > 1e-3  # not exactly half way between the tissues
    assert ((mask == 0) == (resampled > 115))[clear].all()
    assert ((nearest == 0) != (resampled > 115))[clear].sum() > 20
    # Pixels that need no resampling keep their labels exactly.
    same = resample_labels(nib.Nifti1Image(labels, np.diag([1.0, 1.5, 1.0, 1.0])), "coronal", 1.0)
    assert np.array_equal(np.asanyarray(same.dataobj), labels)
