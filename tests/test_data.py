import random

import numpy as np
import pytest
import torch

from mriseg.archive import extract_archive
from mriseg.data import SliceDataset
from mriseg.manifest import list_pairs, make_split, read_manifest, usable_context, write_manifest
from mriseg.errors import ParamsError
from conftest import make_tiny_archive


def rows_for(names):
    return [{"image": f"d/MRIs/{n}.npy", "mask": f"d/Segmentations/segm_{n.rsplit('_', 1)[1]}.npy",
             "ix": n.rsplit("_", 1)[1], "subject": "", "slice": -1, "view": "axial", "z": -1} for n in names]


def stacked(dataset):
    """Every item of a dataset, stacked: (images [N,C,H,W], masks [N,H,W])."""
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def test_split_is_deterministic_and_independent_of_listing_order():
    names = [f"img_{i}" for i in range(50)]
    a = make_split(rows_for(names), test_size=10, seed=3)
    shuffled = rows_for(names)
    random.Random(0).shuffle(shuffled)
    b = make_split(shuffled, test_size=10, seed=3)
    assert dict(zip(a["image"], a["split"])) == dict(zip(b["image"], b["split"]))
    assert (a["split"] == "test").sum() == 10
    c = make_split(rows_for(names), test_size=10, seed=4)
    assert dict(zip(a["image"], a["split"])) != dict(zip(c["image"], c["split"]))


def test_list_pairs_sorts_by_index_not_by_directory_order(tmp_path):
    extract_archive(make_tiny_archive(tmp_path / "t.zip", n=12), tmp_path / "MRIs")
    rows = list_pairs(tmp_path / "MRIs")
    assert [r["ix"] for r in rows] == [str(i) for i in range(12)]
    assert all(r["mask"].endswith(f"segm_{r['ix']}.npy") for r in rows)


def test_fraction_count_and_validation_part():
    rows = rows_for([f"s_{i}" for i in range(40)])
    df = make_split(rows, test_size=0.25, val_size=5, seed=0)
    assert df["split"].value_counts().to_dict() == {"train": 25, "test": 10, "val": 5}
    with pytest.raises(ParamsError, match="split.test_size"):
        make_split(rows, test_size=40)


def subject_rows(n_subjects, n_slices=10):
    rows = []
    for s in range(n_subjects):
        for z in range(n_slices):
            n = f"sub-IBSR_{s:02d}_slice-{z:03d}_{s * 100 + z}"
            rows.append({**rows_for([n])[0], "subject": f"IBSR_{s:02d}", "slice": z})
    return rows


def test_split_by_subject_never_leaks():
    rows = subject_rows(6)
    df = make_split(rows, by="auto", test_size=2, val_size=1, seed=0)
    sides = df.groupby("subject")["split"].nunique()
    assert (sides == 1).all()
    assert df.drop_duplicates("subject")["split"].value_counts().to_dict() == {"train": 3, "test": 2, "val": 1}


def sides(df):
    return df.drop_duplicates("subject").set_index("subject")["split"].to_dict()


def test_folds_test_every_subject_exactly_once():
    rows = subject_rows(7, n_slices=3)
    runs = [sides(make_split(rows, val_size=1, seed=5, folds=3, fold=k)) for k in range(3)]
    tested = [sorted(s for s, side in run.items() if side == "test") for run in runs]
    assert sorted(sum(tested, [])) == sorted({r["subject"] for r in rows}), "each subject tested once"
    assert sorted(map(len, tested)) == [2, 2, 3]
    for run in runs:  # val comes out of the training side, one subject
        assert list(run.values()).count("val") == 1 and list(run.values()).count("train") == 7 - 1 - sum(
            v == "test" for v in run.values())
    # Deterministic from the seed and the names, not from the order of the listing.
    assert sides(make_split(rows[::-1], val_size=1, seed=5, folds=3, fold=1)) == runs[1]
    assert sides(make_split(rows, val_size=1, seed=6, folds=3, fold=1)) != runs[1]


@pytest.mark.parametrize("folds, fold, message", [(8, 0, "split.folds=8 needs from 2 to 7"),
                                                  (3, 3, "split.fold=3 must be from 0 to 2")])
def test_bad_folds_are_one_line(folds, fold, message):
    with pytest.raises(ParamsError, match=message):
        make_split(subject_rows(7, n_slices=1), folds=folds, fold=fold)


def test_subject_split_refused_without_subjects():
    with pytest.raises(ParamsError, match="carry no subject"):
        make_split(rows_for(["a_1", "a_2", "a_3"]), by="subject", test_size=1)


def volume_rows(subjects, n_slices=4):
    """What list_pairs gives for a cohort of volumes: each subject's one image file, cut in three views."""
    return [{"image": f"volumes/{s}.image.npy", "mask": f"volumes/{s}.labels.npy", "ix": f"{s}:{view}:{z}",
             "subject": s, "slice": z, "view": view, "z": z}
            for s in subjects for view in ("axial", "coronal", "sagittal") for z in range(n_slices)]


def test_a_cohort_of_volumes_is_split_by_subject_or_refused():
    subjects = [f"s{i:02d}" for i in range(5)]
    df = make_split(volume_rows(subjects), by="auto", test_size=0.2)
    assert (df.groupby("subject")["split"].nunique() == 1).all()
    assert df.drop_duplicates("subject")["split"].value_counts().to_dict() == {"train": 4, "test": 1}
    # Slices of one volume in three planes cross each other: a slice split would test on trained voxels.
    with pytest.raises(ParamsError, match="split.by=slice: a cohort of volumes is split by subject"):
        make_split(volume_rows(subjects), by="slice", test_size=0.2)
    with pytest.raises(ParamsError, match=r"holds one subject \(s00\); a cohort of volumes"):
        make_split(volume_rows(["s00"]), by="auto", test_size=0.2)


def test_manifest_round_trip_and_slices_padded_as_prediction_pads(tmp_path):
    """Each slice is centred in the next multiple of 16 (as `mriseg predict` pads), then placed at the top left
    of the split's frame, masks padded with background: one rule, one shape per split."""
    extract_archive(make_tiny_archive(tmp_path / "t.zip", n=6, h=30, w=20), tmp_path / "MRIs")
    big = np.arange(34 * 22, dtype=np.float32).reshape(34, 22)
    np.save(tmp_path / "MRIs" / "MRIs" / "img_0.npy", big)
    np.save(tmp_path / "MRIs" / "Segmentations" / "segm_0.npy", np.zeros((34, 22), np.uint8))
    df = make_split(list_pairs(tmp_path / "MRIs"), test_size=2, seed=0)
    write_manifest(df, tmp_path / "manifest.csv")
    back = read_manifest(tmp_path / "manifest.csv")
    assert back.equals(df)
    x, y = stacked(SliceDataset(back, "train"))
    assert x.dtype == torch.float32 and y.dtype == torch.uint8 and x.shape[1] == 1
    assert x.shape[2] % 16 == 0 and x.shape[3] % 16 == 0
    everything = SliceDataset(back.assign(split="train"), "train")
    assert everything.frame == (48, 32)
    x0, y0 = everything[0]
    assert torch.equal(x0[0, 7:41, 5:27], torch.from_numpy(big)) and x0.sum() == big.sum()
    assert (y0[7:41, 5:27] == 0).all() and (y0 == 2).sum() == 48 * 32 - 34 * 22
    x1 = everything[1][0][0]  # a 30 x 20 slice: centred in 32 x 32, then the frame's rows below it
    assert (x1[32:] == 0).all() and (x1[1:31, 6:26] > 0).any() and x1[0].sum() == 0


def subject_manifest(tmp_path, slices, split_of=lambda z: "train"):
    """One subject's slices (image value = slice number) written to disk, as a manifest."""
    (tmp_path / "MRIs").mkdir(parents=True)
    (tmp_path / "Segmentations").mkdir()
    rows = []
    for z in slices:
        image = tmp_path / "MRIs" / f"sub-A_slice-{z:03d}_{z}.npy"
        mask = tmp_path / "Segmentations" / f"segm_{z}.npy"
        np.save(image, np.full((4, 6), z, np.float32))
        np.save(mask, np.full((4, 6), z % 3, np.uint8))
        rows.append({"image": str(image), "mask": str(mask), "ix": str(z), "subject": "A", "slice": z, "view": "axial",
                     "z": -1, "split": split_of(z)})
    import pandas as pd

    return pd.DataFrame(rows)


def test_context_gives_each_slice_its_neighbours_as_channels(tmp_path):
    # Slices 5 and 6 were not kept (too little tissue): 4 and 7 repeat themselves in their place.
    df = subject_manifest(tmp_path, [1, 2, 3, 4, 7, 8], split_of=lambda z: "test" if z == 3 else "train")
    data = SliceDataset(df, "train", context=1)
    x, y = stacked(data)
    assert x.shape == (5, 3, 16, 16) and list(data.rows["slice"]) == [1, 2, 4, 7, 8]
    assert x[:, :, 6, 5].tolist() == [[1, 1, 2], [1, 2, 3], [3, 4, 4], [7, 7, 8], [7, 8, 8]]
    assert y[:, 6, 5].tolist() == [1, 2, 1, 1, 2]  # labels stay the centre slice's own
    x2, _ = stacked(SliceDataset(df, "train", context=2))
    assert x2[1, :, 6, 5].tolist() == [2, 1, 2, 3, 4]
    assert torch.equal(stacked(SliceDataset(df, "train"))[0][:, 0], x[:, 1])


def test_cohort_slices_read_their_volume_rows_and_real_neighbours(tmp_path):
    """A cohort's slice is cut from its memory-mapped (X, Y, Z) volume in its view's plane; its neighbours
    are that plane's real neighbouring slices, also those not trained on (too little tissue); past the
    ends the slice stands in for itself."""
    import pandas as pd

    volume = np.broadcast_to(np.arange(6, dtype=np.float32), (18, 20, 6)).copy()  # axial slice z holds z
    np.save(tmp_path / "A.image.npy", volume)
    np.save(tmp_path / "A.labels.npy", (volume % 3).astype(np.uint8))
    df = pd.DataFrame([{"image": str(tmp_path / "A.image.npy"), "mask": str(tmp_path / "A.labels.npy"),
                        "ix": f"A:{v}:{z}", "subject": "A", "slice": z, "view": v, "z": z, "split": "train"}
                       for v in ("axial", "coronal") for z in (0, 2, 5)])
    assert len(SliceDataset(df, "train", context=1, view="coronal")) == 3
    data = SliceDataset(df, "train", context=1, view="axial")
    x, y = stacked(data)
    assert data.frame == (32, 32) and x.shape == (3, 3, 32, 32)
    assert x[:, :, 6, 7].tolist() == [[0, 0, 1], [1, 2, 3], [4, 5, 5]] and y[:, 6, 7].tolist() == [0, 2, 2]
    assert isinstance(data._array(str(tmp_path / "A.image.npy")), np.memmap)


def test_archives_without_subject_names_stand_in_for_their_neighbours(tmp_path):
    extract_archive(make_tiny_archive(tmp_path / "t.zip", n=6), tmp_path / "MRIs")
    df = make_split(list_pairs(tmp_path / "MRIs"), test_size=2, seed=0)
    x, _ = stacked(SliceDataset(df, "train", context=1))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 2], x[:, 1])
    # The train stage trains such archives (the tutorial's) on single slices, and says so.
    said = []
    assert usable_context(df, 1, said.append) == 0 and "training on single slices" in said[0]
    assert usable_context(subject_manifest(tmp_path / "s", [1, 2]), 2, said.append) == 2 and len(said) == 1


def test_label_context_gives_each_channel_its_own_slices_labels(tmp_path):
    """For synthesis (train.synth) a slice's labels come with its neighbours', one per input channel, by the
    rule its image channels follow; a slice archive's neighbour in another split lends no labels."""
    df = subject_manifest(tmp_path, [1, 2, 3, 4, 7, 8], split_of=lambda z: "test" if z == 3 else "train")
    x, y = stacked(SliceDataset(df, "train", context=1, label_context=True))
    labels, distance = y[:, :3], y[:, 3:]  # then each channel's distance outside the brain
    assert labels.shape == x.shape and y.shape[1] == 6 and y.dtype == torch.uint8
    assert labels[:, :, 6, 5].tolist() == [[1, 1, 2], [1, 2, 2], [1, 1, 1], [1, 1, 2], [1, 2, 2]]
    assert (distance[labels != 2] == 0).all() and (distance[labels == 2] > 0).any()
    # thinning alone needs no distances: the same labels, without them
    _, bare = stacked(SliceDataset(df, "train", context=1, label_context=True, label_distances=False))
    assert torch.equal(bare, labels)
