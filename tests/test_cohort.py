"""A cohort zip of labelled volumes (mriseg.cohort.prepare_cohort): valid ones are preprocessed into
memory-mappable arrays; every bad volume input is refused with one line that names the archive and the
zip entry, and leaves nothing behind (a previously prepared dest stays byte-for-byte as it was)."""
import hashlib
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from mriseg.archive import ArchiveError
from mriseg.cohort import holds_volumes, prepare_cohort
from mriseg.volumes import to_slices
from conftest import SHARED_IBSR, cohort_zip, make_project, nifti_gz_bytes, run, synthetic_volume
from test_archive import zip_of

SHAPE = (24, 28, 20)
MIN_TISSUE = 10
SUBJECTS = ("s01", "s02", "s03")


def gz(array, affine=None):
    return nifti_gz_bytes(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine))


def volumes(subjects=SUBJECTS, seed=0, shape=SHAPE):
    """{subject: (int16 image, uint8 IBSR labels 0..3, affine)}."""
    rng = np.random.default_rng(seed)
    return {s: synthetic_volume(rng, shape) for s in subjects}


def entries_of(vols, folders=True):
    """Zip entries as IBSR is published: <s>/<s>.nii.gz + <s>/<s>_seg.nii.gz (flat without folders)."""
    out = {}
    for s, (image, labels, affine) in vols.items():
        folder = f"{s}/" if folders else ""
        out[f"{folder}{s}.nii.gz"] = gz(image, affine)
        out[f"{folder}{s}_seg.nii.gz"] = gz(labels, affine)
    return out


def prepare(archive, dest, **kw):
    return prepare_cohort(archive, dest, **{"min_tissue": MIN_TISSUE, **kw})


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "data" / "MRIs"


def listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(archive, dest, entry, *words, **kw):
    """One line, starting with the archive path, naming the zip entry (never the temporary copy) and
    what is wrong; nothing left behind beside dest."""
    before = listing(dest.parent)
    with pytest.raises(ArchiveError) as err:
        prepare(archive, dest, **kw)
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{archive}: "), msg
    assert entry in msg, msg
    assert str(dest.parent) not in msg, f"names the temporary copy, not the entry: {msg}"
    for w in words:
        assert w in msg, msg
    assert listing(dest.parent) == before, "a refused archive must leave nothing behind"
    return msg


def bad_zip(tmp_path, changes=(), drop=(), folders=True, symlinks=()):
    """A valid three-subject cohort with some entries replaced/added (changes) or removed (drop)."""
    entries = entries_of(volumes(), folders)
    for name in drop:
        del entries[name]
    entries.update(dict(changes))
    return zip_of(tmp_path / "cohort.zip", entries, symlinks)


# 1. valid cohorts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("folders", [True, False], ids=["folder-per-subject", "flat"])
def test_valid_cohort_is_prepared(tmp_path, dest, folders):
    archive = cohort_zip(tmp_path / "cohort.zip", subjects=SUBJECTS, folders=folders, shape=SHAPE)
    assert holds_volumes(archive)
    n_subjects, n_slices = prepare(archive, dest)
    assert n_subjects == len(SUBJECTS)
    assert listing(dest.parent) == ["MRIs"], "no temporary folders left behind"

    meta = json.loads((dest / "mriseg.json").read_text())
    assert meta["layout"] == "volumes"
    assert sorted(meta["subjects"]) == list(SUBJECTS)
    assert meta["min_tissue"] == MIN_TISSUE
    assert n_slices == sum(len(r["kept"]["axial"]) for r in meta["subjects"].values()) > 0

    written = sorted(p.relative_to(dest).as_posix() for p in (dest / "volumes").iterdir())
    assert written == sorted(f"volumes/{s}.{kind}.npy" for s in SUBJECTS
                             for kind in ("image", "labels", "native", "traced"))
    for s in SUBJECTS:
        record = meta["subjects"][s]
        assert record["source"] == (f"{s}/{s}.nii.gz" if folders else f"{s}.nii.gz")
        image = np.load(dest / "volumes" / f"{s}.image.npy", mmap_mode="r")
        labels = np.load(dest / "volumes" / f"{s}.labels.npy", mmap_mode="r")
        native = np.load(dest / "volumes" / f"{s}.native.npy", mmap_mode="r")
        assert isinstance(image, np.memmap) and isinstance(labels, np.memmap) and isinstance(native, np.memmap)
        assert image.dtype == np.float32 and image.ndim == 3
        assert np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0
        assert labels.dtype == np.uint8 and labels.shape == image.shape
        assert set(np.unique(labels)) <= {0, 1, 2, 3} and {0, 1, 3} <= set(np.unique(labels))
        assert native.dtype == np.uint8 and native.shape == SHAPE and list(SHAPE) == record["native_shape"]
        assert set(np.unique(native)) <= {0, 1, 2, 3}
        assert record["shape"] == list(image.shape)  # (X, Y, Z) on the isotropic working grid
        assert sorted(record["kept"]) == ["axial", "coronal", "sagittal"]
        for view, kept in record["kept"].items():
            along = image.shape[{"sagittal": 0, "coronal": 1, "axial": 2}[view]]
            assert kept and all(0 <= z < along for z in kept)
            assert all((to_slices(labels, view)[z] < 2).sum() >= MIN_TISSUE for z in kept)

    hashes = json.loads((dest / "files.json").read_text())
    assert sorted(hashes) == written
    for rel, digest in hashes.items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest, rel


def test_kept_voxels_are_no_isotropic_grid_and_predict_treats_them_as_a_cohort(tmp_path, dest):
    from mriseg.prediction import working_grid_axis

    prepare(cohort_zip(tmp_path / "a.zip", subjects=("s01", "s02"), shape=SHAPE, zooms=(1.0, 1.2, 1.4)), dest,
            pixel_size=0)
    meta = json.loads((dest / "mriseg.json").read_text())
    assert meta["grid"] == "voxels" and meta["pixel_size_mm"] is None
    for grid, axis in (("voxels", None), ("isotropic", None), ("inplane", "coronal")):  # None: cropped, 3-D
        assert working_grid_axis({"grid": grid, "axis": "coronal"}) == axis
    assert working_grid_axis({"axis": "coronal"}) == "coronal"  # the tutorial's archives record no grid


def test_preparing_again_replaces_dest_and_leaves_nothing_behind(tmp_path, dest):
    prepare(cohort_zip(tmp_path / "a.zip", subjects=("s01", "s02"), shape=SHAPE), dest)
    prepare(cohort_zip(tmp_path / "b.zip", subjects=("t01",), folders=False, shape=SHAPE, seed=1), dest)
    assert listing(dest.parent) == ["MRIs"]
    assert sorted(json.loads((dest / "mriseg.json").read_text())["subjects"]) == ["t01"]
    assert sorted(p.name for p in (dest / "volumes").iterdir()) == ["t01.image.npy", "t01.labels.npy",
                                                                    "t01.native.npy", "t01.traced.npy"]


# 2. unreadable / truncated ------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["s02/s02.nii.gz", "s02/s02_seg.nii.gz"], ids=["image", "labels"])
def test_truncated_gzip_volume(tmp_path, dest, entry):
    data = entries_of(volumes())[entry]
    archive = bad_zip(tmp_path, {entry: data[: len(data) // 2]})
    assert_refused(archive, dest, entry, "not a readable NIfTI/MGZ volume")


@pytest.mark.parametrize("entry", ["s02/s02.nii.gz", "s02/s02_seg.nii.gz"], ids=["image", "labels"])
def test_unreadable_volume(tmp_path, dest, entry):
    archive = bad_zip(tmp_path, {entry: b"this is not a NIfTI volume at all" * 10})
    assert_refused(archive, dest, entry, "not a readable NIfTI/MGZ volume")


# 3. not 3-D ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["image", "labels"])
def test_4d_volume_with_several_frames_is_refused(tmp_path, dest, which):
    image, labels, affine = volumes()["s02"]
    entry = "s02/s02.nii.gz" if which == "image" else "s02/s02_seg.nii.gz"
    array = image if which == "image" else labels
    archive = bad_zip(tmp_path, {entry: gz(np.stack([array] * 3, axis=-1), affine)})
    assert_refused(archive, dest, entry, "expected a 3-D volume", "(24, 28, 20, 3)")


def test_2d_volume_is_refused(tmp_path, dest):
    image, _, affine = volumes()["s02"]
    archive = bad_zip(tmp_path, {"s02/s02.nii.gz": gz(image[:, :, 10], affine)})
    assert_refused(archive, dest, "s02/s02.nii.gz", "expected a 3-D volume")


def test_trailing_singleton_axis_is_accepted(tmp_path, dest):
    vols = volumes(("s01", "s02"))
    entries = entries_of(vols)
    image, labels, affine = vols["s01"]
    entries["s01/s01.nii.gz"] = gz(image[..., None], affine)  # (x, y, z, 1) image, 3-D labels
    image, labels, affine = vols["s02"]
    entries["s02/s02.nii.gz"] = gz(image[..., None], affine)  # both (x, y, z, 1)
    entries["s02/s02_seg.nii.gz"] = gz(labels[..., None], affine)
    n_subjects, n_slices = prepare(zip_of(tmp_path / "c.zip", entries), dest)
    assert n_subjects == 2 and n_slices > 0
    for s in ("s01", "s02"):
        assert np.load(dest / "volumes" / f"{s}.native.npy").shape == SHAPE
        assert np.load(dest / "volumes" / f"{s}.image.npy").ndim == 3


# 4./5. pairing ------------------------------------------------------------------------------------------

def test_image_without_labels(tmp_path, dest):
    archive = bad_zip(tmp_path, drop=["s02/s02_seg.nii.gz"])
    assert_refused(archive, dest, "s02/s02.nii.gz", "image without labels", "s02_seg.nii.gz")


def test_image_without_labels_flat(tmp_path, dest):
    archive = bad_zip(tmp_path, drop=["s03_seg.nii.gz"], folders=False)
    assert_refused(archive, dest, "s03.nii.gz", "image without labels")


def test_labels_without_image(tmp_path, dest):
    archive = bad_zip(tmp_path, drop=["s02/s02.nii.gz"])
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "labels without an image")


def test_labels_beside_another_subjects_image(tmp_path, dest):
    """Labels moved into the wrong folder: the image has none beside it."""
    entries = entries_of(volumes())
    entries["s01/s02_seg.nii.gz"] = entries.pop("s02/s02_seg.nii.gz")
    assert_refused(zip_of(tmp_path / "c.zip", entries), dest, "s02/s02.nii.gz", "image without labels")


# 6. geometry --------------------------------------------------------------------------------------------

def test_label_shape_differs_from_image(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels[:, :, :-2], affine)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "geometry", "(24, 28, 18)", "s02/s02.nii.gz")


def test_label_affine_differs_from_image(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    shifted = affine.copy()
    shifted[:3, 3] = [5.0, -3.0, 2.0]
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, shifted)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "geometry", "affine")


def test_label_voxel_size_differs_from_image(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, np.diag([1.0, 1.0, 1.5, 1.0]))})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "geometry")


# 7. label values ----------------------------------------------------------------------------------------

def test_label_value_outside_the_preset(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    labels = labels.copy()
    labels[12, 14, 10] = 7
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, affine)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "label values [7]", "ibsr")


def test_non_integer_label_values(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    labels = labels.astype(np.float32)
    labels[12, 14, 10] = 2.5
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, affine)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "whole numbers")


def test_negative_label_values(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    labels = labels.astype(np.int16)
    labels[12, 14, 10] = -1
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, affine)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "label values [-1]")


# 8. NaN / inf -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_image_voxels(tmp_path, dest, value):
    image, _, affine = volumes()["s02"]
    image = image.astype(np.float32)
    image[12, 14, 10] = value
    archive = bad_zip(tmp_path, {"s02/s02.nii.gz": gz(image, affine)})
    assert_refused(archive, dest, "s02/s02.nii.gz", "NaN or infinite")


def test_non_finite_label_voxels(tmp_path, dest):
    _, labels, affine = volumes()["s02"]
    labels = labels.astype(np.float32)
    labels[12, 14, 10] = np.nan
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, affine)})
    assert_refused(archive, dest, "s02/s02_seg.nii.gz", "NaN or infinite")


# 9. size caps -------------------------------------------------------------------------------------------

def test_volume_over_the_size_cap(tmp_path, dest):
    # 24 x 28 x 20 int16 voxels = 26,880 bytes, over a 0.01 MB (10,486 bytes) cap
    archive = bad_zip(tmp_path)
    assert_refused(archive, dest, "s01/s01.nii.gz", "over the 0.01 MB cap", "data.max_volume_mb",
                   max_volume_mb=0.01)


def test_declared_uncompressed_size_over_the_cap(tmp_path, dest):
    archive = bad_zip(tmp_path, {"notes/zeros.bin": b"\0" * (3 * 2**20)})  # compresses to a few KB
    assert_refused(archive, dest, "", "over the 2 MB cap", "data.max_extracted_mb", max_extracted_mb=2)


# nothing usable -----------------------------------------------------------------------------------------

def test_zip_without_volumes(tmp_path, dest):
    archive = zip_of(tmp_path / "c.zip", {"README.txt": b"notes", "__MACOSX/s01/._s01.nii.gz": b"junk"})
    msg = assert_refused(archive, dest, "", "no labelled volumes found")
    assert ".raw" not in msg, f"names the temporary folder: {msg}"


def test_no_slice_with_enough_tissue(tmp_path, dest):
    msg = assert_refused(bad_zip(tmp_path), dest, "", "no slice has 1000000 tissue pixels", "data.labels",
                         min_tissue=10**6)
    assert msg.startswith(f"{tmp_path / 'cohort.zip'}: no slice has"), msg


# 10. duplicate subject ids ------------------------------------------------------------------------------

def test_duplicate_subject_ids_in_two_folders(tmp_path, dest):
    vols = volumes(("s01", "s02"))
    entries = entries_of(vols)
    entries.update({f"site-b/{k}": v for k, v in entries_of(volumes(("s02",), seed=5)).items()})
    msg = assert_refused(zip_of(tmp_path / "c.zip", entries), dest, "s02/s02.nii.gz", "'s02'")
    assert "site-b/s02/s02.nii.gz" in msg


def test_duplicate_subject_ids_flat_and_in_a_folder(tmp_path, dest):
    entries = entries_of(volumes(("s01", "s02")), folders=False)
    entries.update(entries_of(volumes(("s02",), seed=5)))
    msg = assert_refused(zip_of(tmp_path / "c.zip", entries), dest, "s02/s02.nii.gz", "'s02'")
    assert msg.count("s02.nii.gz") == 2


# 11. zip-slip and symlinks ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, word", [("../evil.nii.gz", "'..'"), ("s01/../../evil.nii.gz", "'..'"),
                                        ("/etc/evil.nii.gz", "absolute path")],
                         ids=["parent", "nested-parent", "absolute"])
def test_zip_slip(tmp_path, dest, name, word):
    _, labels, affine = volumes()["s01"]
    archive = bad_zip(tmp_path, {name: gz(labels, affine)})
    assert_refused(archive, dest, name, "zip-slip", word)
    assert not (tmp_path / "evil.nii.gz").exists() and not (dest.parent / "evil.nii.gz").exists()


def test_symlink_entry(tmp_path, dest):
    archive = bad_zip(tmp_path, {"s01/link.nii.gz": b"/etc/passwd"}, symlinks={"s01/link.nii.gz"})
    assert_refused(archive, dest, "s01/link.nii.gz", "symbolic link")


# 12. a refused archive keeps the previous good output ---------------------------------------------------

@pytest.mark.parametrize("case", ["late: bad labels of the last subject", "early: zip-slip"])
def test_refused_archive_leaves_previous_good_output_untouched(tmp_path, dest, case):
    prepare(cohort_zip(tmp_path / "good.zip", subjects=("s01", "s02"), shape=SHAPE), dest)
    before, parent_before = snapshot(dest), listing(dest.parent)
    assert parent_before == ["MRIs"] and "files.json" in before and "mriseg.json" in before
    if case.startswith("late"):  # s01, s02 pass and are written to the temporary folder first
        _, labels, affine = volumes()["s03"]
        labels = labels.copy()
        labels[0, 0, 0] = 9
        archive, entry = bad_zip(tmp_path, {"s03/s03_seg.nii.gz": gz(labels, affine)}), "s03/s03_seg.nii.gz"
    else:
        archive, entry = bad_zip(tmp_path, {"../evil.nii.gz": b"x"}), "../evil.nii.gz"
    assert_refused(archive, dest, entry)
    assert snapshot(dest) == before
    assert listing(dest.parent) == parent_before


# 13. the unzip stage, end to end -------------------------------------------------------------------------

def test_unzip_stage_refuses_a_bad_cohort_with_one_line(tmp_path):
    _, labels, affine = volumes()["s02"]
    labels = labels.copy()
    labels[12, 14, 10] = 7
    archive = bad_zip(tmp_path, {"s02/s02_seg.nii.gz": gz(labels, affine)})
    project = make_project(tmp_path / "proj", {"data.archive": str(archive), "data.min_tissue": MIN_TISSUE})
    r = run(["dvc", "repro", "unzip"], project, check=False, timeout=300)
    assert r.returncode != 0, r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("unzip: error:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith("unzip: error: data/archive.zip: s02/s02_seg.nii.gz: label values [7]"), errors[0]
    assert not (project / "data" / "MRIs").exists()
    assert not [p.name for p in (project / "data").iterdir() if p.name.startswith(".MRIs")]


@pytest.mark.skipif(not SHARED_IBSR.is_dir(), reason=f"needs the IBSR volumes at {SHARED_IBSR}")
def test_real_ibsr_subjects_zipped_as_published(tmp_path):
    """Two real IBSR subjects, a folder each as IBSR is published: 1.5 mm coronal acquisitions of 0.94 and
    0.84 mm pixels, resampled to a 1 mm isotropic grid that all three views cut; labels keep their image's
    own grid for 3-D scoring."""
    archive = tmp_path / "ibsr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for s in ("IBSR_07", "IBSR_16"):
            for suffix in ("", "_seg"):
                zf.write(SHARED_IBSR / f"{s}{suffix}.nii.gz", f"{s}/{s}{suffix}.nii.gz")
    assert holds_volumes(archive)
    n_subjects, n_slices = prepare_cohort(archive, tmp_path / "MRIs")
    meta = json.loads((tmp_path / "MRIs" / "mriseg.json").read_text())
    assert n_subjects == 2 and meta["grid"] == "isotropic" and meta["pixel_size_mm"] == [1.0, 1.0]
    for s in ("IBSR_07", "IBSR_16"):
        rec = meta["subjects"][s]
        image = np.load(tmp_path / "MRIs" / "volumes" / f"{s}.image.npy", mmap_mode="r")
        native = np.load(tmp_path / "MRIs" / "volumes" / f"{s}.native.npy")
        # 128 coronal slices of 1.5 mm -> 192 of 1 mm, cropped to the head; 0.94/0.84 mm pixels -> 1 mm.
        assert 150 < image.shape[1] <= 193 and max(image.shape[0], image.shape[2]) < 230
        assert rec["native_shape"] == [256, 128, 256] and native.shape == (256, 128, 256)
        assert 120 < len(rec["kept"]["coronal"]) <= image.shape[1] and set(np.unique(native)) == {0, 1, 2, 3}
    assert n_slices == sum(len(meta["subjects"][s]["kept"]["axial"]) for s in meta["subjects"])


def test_labels_as_traced_are_kept_beside_the_re_made_ones(tmp_path):
    """data.csf intensity re-makes the CSF; the labels as traced (data.csf labels) stay beside them, on the
    same grid, for scoring the change of convention; with data.csf labels there is nothing to keep."""
    archive = cohort_zip(tmp_path / "cohort.zip", subjects=SUBJECTS, shape=SHAPE)
    prepare(archive, tmp_path / "remade")
    prepare(archive, tmp_path / "as-traced", csf="labels")
    assert not list((tmp_path / "as-traced" / "volumes").glob("*.traced.npy"))
    moved = 0
    for s in SUBJECTS:
        traced = np.load(tmp_path / "remade" / "volumes" / f"{s}.traced.npy")
        remade = np.load(tmp_path / "remade" / "volumes" / f"{s}.native.npy")
        assert np.array_equal(traced, np.load(tmp_path / "as-traced" / "volumes" / f"{s}.native.npy"))
        assert np.array_equal(traced == 0, remade == 0)  # white matter never moves
        moved += int((traced != remade).sum())
    assert moved > 0, "the synthetic cohort has gray matter darker than halfway to CSF"
