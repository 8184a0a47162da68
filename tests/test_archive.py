"""Every way an archive can be wrong is refused with one line naming the file; valid ones pass."""
import io
import zipfile

import numpy as np
import pytest

from mriseg.archive import ArchiveError, extract_archive, npy_bytes, write_archive
from conftest import synthetic_pair


def zip_of(path, entries, symlinks=()):
    """entries: {name: bytes}; symlinks: names stored as symlink entries."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (0o120777 << 16)
            zf.writestr(info, data)
    return path


def good_entries(n=3, h=20, w=16):
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        img, mask = synthetic_pair(rng, h, w)
        out[f"MRIs/MRIs/img_{i}.npy"] = npy_bytes(img)
        out[f"MRIs/Segmentations/segm_{i}.npy"] = npy_bytes(mask)
    return out


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "data" / "MRIs"
    return d


def assert_refused(archive, dest, *words):
    before = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
    with pytest.raises(ArchiveError) as err:
        extract_archive(archive, dest)
    msg = str(err.value)
    assert "\n" not in msg and str(archive) in msg
    for w in words:
        assert w in msg, msg
    after = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
    assert after == before, "a refused archive must leave nothing behind"
    return msg


def test_valid_archive_any_order_with_ignored_extras(tmp_path, dest):
    entries = dict(reversed(list(good_entries().items())))
    entries["__MACOSX/MRIs/MRIs/._img_0.npy"] = b"\x00\x05junk"
    entries["MRIs/MRIs/.DS_Store"] = b"junk"
    entries["MRIs/README.txt"] = b"notes"
    assert extract_archive(zip_of(tmp_path / "a.zip", entries), dest) == 3
    assert sorted(p.name for p in (dest / "MRIs").iterdir()) == ["img_0.npy", "img_1.npy", "img_2.npy"]
    assert np.load(dest / "Segmentations" / "segm_1.npy").dtype == np.uint8


def test_non_square_slices_are_valid(tmp_path, dest):
    assert extract_archive(zip_of(tmp_path / "a.zip", good_entries(h=30, w=17)), dest) == 3
    assert np.load(dest / "MRIs" / "img_0.npy").shape == (30, 17)


def test_refused_archive_leaves_previous_good_output_untouched(tmp_path, dest):
    extract_archive(zip_of(tmp_path / "good.zip", good_entries()), dest)
    before = {p.name: p.read_bytes() for p in (dest / "MRIs").iterdir()}
    bad = good_entries()
    bad["MRIs/Segmentations/segm_2.npy"] = npy_bytes(np.full((20, 16), 7, np.uint8))
    assert_refused(zip_of(tmp_path / "bad.zip", bad), dest, "segm_2.npy")
    assert {p.name: p.read_bytes() for p in (dest / "MRIs").iterdir()} == before


def test_not_a_zip(tmp_path, dest):
    p = tmp_path / "random.zip"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    assert_refused(p, dest, "not a readable zip")


def test_truncated_zip(tmp_path, dest):
    full = zip_of(tmp_path / "full.zip", good_entries()).read_bytes()
    p = tmp_path / "trunc.zip"
    p.write_bytes(full[: len(full) // 2])
    assert_refused(p, dest)


def test_zip_with_damaged_member(tmp_path, dest):
    data = bytearray(zip_of(tmp_path / "full.zip", good_entries()).read_bytes())
    i = data.find(b"\x93NUMPY") + 200  # flip bytes inside the first stored array
    data[i:i + 8] = b"\xff" * 8
    p = tmp_path / "damaged.zip"
    p.write_bytes(bytes(data))
    assert_refused(p, dest, "damaged")


def test_empty_zip(tmp_path, dest):
    assert_refused(zip_of(tmp_path / "empty.zip", {}), dest, "empty")


@pytest.mark.parametrize("name", ["../evil.npy", "MRIs/MRIs/../../../evil.npy", "/etc/evil.npy"])
def test_zip_slip(tmp_path, dest, name):
    entries = good_entries()
    entries[name] = b"x"
    assert_refused(zip_of(tmp_path / "slip.zip", entries), dest, "zip-slip")
    assert not (tmp_path / "evil.npy").exists()


def test_symlink_entry(tmp_path, dest):
    entries = good_entries()
    entries["MRIs/MRIs/link_9.npy"] = b"/etc/passwd"
    assert_refused(zip_of(tmp_path / "link.zip", entries, symlinks={"MRIs/MRIs/link_9.npy"}), dest, "symbolic link")


def test_zip_bomb_declared_size_over_the_cap(tmp_path, dest):
    entries = good_entries()
    entries["MRIs/zeros.bin"] = b"\0" * (3 * 2**20)  # compresses to a few KB
    p = zip_of(tmp_path / "bomb.zip", entries)
    with zipfile.ZipFile(p) as zf:
        zf.testzip()
    with pytest.raises(ArchiveError, match="over the 2 MB cap"):
        extract_archive(p, dest, max_extracted_mb=2)
    assert not dest.exists()


@pytest.mark.parametrize("missing", ["MRIs/MRIs", "MRIs/Segmentations"])
def test_missing_folder(tmp_path, dest, missing):
    entries = {k: v for k, v in good_entries().items() if not k.startswith(missing + "/")}
    assert_refused(zip_of(tmp_path / "nofolder.zip", entries), dest, missing)


def test_npy_files_only_in_nested_folders(tmp_path, dest):
    entries = {k.replace("MRIs/MRIs/", "MRIs/MRIs/deeper/"): v for k, v in good_entries().items()}
    assert_refused(zip_of(tmp_path / "nested.zip", entries), dest, "MRIs/MRIs")


def test_duplicate_entries(tmp_path, dest):
    path = zip_of(tmp_path / "dup.zip", good_entries())
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("MRIs/MRIs/img_0.npy", npy_bytes(np.zeros((20, 16), np.float32)))
    assert_refused(path, dest, "img_0.npy", "more than once")


def test_image_without_mask(tmp_path, dest):
    entries = good_entries()
    del entries["MRIs/Segmentations/segm_1.npy"]
    assert_refused(zip_of(tmp_path / "a.zip", entries), dest, "MRIs/MRIs/img_1.npy", "no mask")


def test_mask_without_image(tmp_path, dest):
    entries = good_entries()
    del entries["MRIs/MRIs/img_2.npy"]
    assert_refused(zip_of(tmp_path / "a.zip", entries), dest, "segm_2.npy", "no image")


def _with(name, data):
    entries = good_entries()
    entries[name] = data
    return entries


def _pickled_object_array():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


BAD_ARRAYS = {
    "object array (pickle)": ("MRIs/MRIs/img_0.npy", _pickled_object_array(), "pickle"),
    "not an npy": ("MRIs/MRIs/img_0.npy", b"hello, not numpy", "not a valid .npy"),
    "shape mismatch": ("MRIs/Segmentations/segm_0.npy", npy_bytes(np.zeros((20, 15), np.uint8)), "shape"),
    "3-D image": ("MRIs/MRIs/img_0.npy", npy_bytes(np.zeros((20, 16, 3), np.float32)), "2-D"),
    "1-D mask": ("MRIs/Segmentations/segm_0.npy", npy_bytes(np.zeros(320, np.uint8)), "2-D"),
    "NaN image": ("MRIs/MRIs/img_0.npy", npy_bytes(np.full((20, 16), np.nan, np.float32)), "NaN"),
    "inf image": ("MRIs/MRIs/img_0.npy", npy_bytes(np.full((20, 16), np.inf, np.float32)), "infinite"),
    "label 3": ("MRIs/Segmentations/segm_0.npy", npy_bytes(np.full((20, 16), 3, np.uint8)), "outside"),
    "negative label": ("MRIs/Segmentations/segm_0.npy", npy_bytes(np.full((20, 16), -1, np.int16)), "outside"),
    "float mask": ("MRIs/Segmentations/segm_0.npy", npy_bytes(np.zeros((20, 16), np.float32)), "integer"),
    "string image": ("MRIs/MRIs/img_0.npy", npy_bytes(np.full((20, 16), "a")), "numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays(tmp_path, dest, case):
    name, data, word = BAD_ARRAYS[case]
    msg = assert_refused(zip_of(tmp_path / "a.zip", _with(name, data)), dest, word)
    assert name.rsplit("/", 1)[-1] in msg


def test_written_archive_round_trips(tmp_path, dest):
    rng = np.random.default_rng(1)
    pairs = [(f"x_{i}.npy", *synthetic_pair(rng)) for i in range(4)]
    write_archive(tmp_path / "w.zip", pairs, {"axis": "axial"})
    assert extract_archive(tmp_path / "w.zip", dest) == 4
    assert np.array_equal(np.load(dest / "Segmentations" / "segm_3.npy"), pairs[3][2])
    assert (dest / "mriseg.json").exists()
