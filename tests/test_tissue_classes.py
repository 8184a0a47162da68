"""The CSF class: label presets' CSF, data.csf's rules, the intracranial volume, simulated atrophy."""
import numpy as np
import pytest
import torch

from conftest import SHARED_IBSR, synthetic_volume
from mriseg import CLASS_NAMES
from mriseg.atrophy import outer_cortex, thin_cortex, upper_left_quarter
from mriseg.extraction import intracranial
from mriseg.labels import (SourceError, apply_csf_rule, csf_border, csf_thresholds, gray_to_csf, map_labels,
                           parse_labels, remake_csf)


def test_presets_map_each_sources_csf_to_the_csf_class():
    assert map_labels([np.array([0, 1, 2, 3])], "ibsr").tolist() == [2, 3, 1, 0]
    aseg = np.zeros((25, 25, 25), np.int32)
    aseg[3:22, 3:22, 3:22] = 3  # cortex
    aseg[8:17, 8:17, 8:17] = 2  # white matter
    aseg[12, 12, 12] = 4  # a ventricle voxel
    aseg[3:22, 12, 3:7] = 0  # a sulcus one voxel wide and four deep: unlabelled, within the labelled brain
    out = map_labels([aseg], "freesurfer-aseg")
    assert out[12, 12, 12] == 3 and (out[5:20, 12, 4:7] == 3).all()  # ventricle and sulcal CSF
    assert out[0, 0, 0] == 2 and out[12, 12, 1] == 2  # outside the brain: background
    assert (out == 0).sum() == 9 ** 3 - 1 and (out == 1).sum() == (aseg == 3).sum()
    for ventricle in (4, 5, 14, 15, 24, 43, 44, 72):
        assert map_labels([np.array([[[ventricle]]])], "freesurfer-aseg").item() == 3
    pve = [np.array([0.7, 0.2, 0.1, 0.0]), np.array([0.2, 0.7, 0.1, 0.0]), np.array([0.1, 0.1, 0.8, 0.0])]
    assert map_labels(pve, "fsl-fast").tolist() == [3, 1, 0, 2]
    assert parse_labels("1:3,2:1,3:0") == {1: 3, 2: 1, 3: 0}
    with pytest.raises(SourceError, match="3 \\(CSF\\)"):
        parse_labels("1:4")


def test_csf_rules_none_labels_and_intensity():
    rng = np.random.default_rng(0)
    image, ibsr, _ = synthetic_volume(rng)
    classes = map_labels([ibsr], "ibsr")
    assert set(np.unique(apply_csf_rule(classes, None, "none"))) == {0, 1, 2}
    assert np.array_equal(apply_csf_rule(classes, None, "labels"), classes)
    with pytest.raises(SourceError, match="data.csf 'bogus'"):
        apply_csf_rule(classes, image, "bogus")
    # Gray matter as dark as CSF (a widened sulcus the tracers called gray matter) becomes CSF; nothing else moves.
    dark = (classes == 1) & (np.arange(image.shape[0])[:, None, None] < 12)
    image = np.where(dark, 40, image).astype(np.int16)
    remade = remake_csf(classes, image)
    assert np.array_equal(remade == 0, classes == 0)  # white matter never moves
    assert np.array_equal(remade == 2, classes == 2)  # no scanned voxel was left unlabelled here
    assert ((remade == 3) & (classes == 1)).sum() >= 0.95 * dark.sum()  # the dark gray matter is CSF now
    assert ((remade == 3) & (classes == 1) & ~dark).sum() <= 0.01 * (classes == 1).sum()  # the bright stays
    # A dark unlabelled sulcus inside the brain (scanned, label 0) is CSF but for its mouth at the surface,
    # beyond the closing; the zeros outside the strip stay.
    sulcus = (classes == 1) & (np.abs(np.arange(image.shape[1]) - image.shape[1] // 2) < 2)[None, :, None]  # 3 wide
    unlabelled = np.where(sulcus, 2, classes)
    remade = remake_csf(unlabelled, np.where(sulcus, 35, image))
    assert (remade[sulcus] == 3).mean() > 0.75 and (remade[(classes == 2) & (image == 0)] == 2).all()
    with pytest.raises(SourceError, match="not darker than gray matter"):
        remake_csf(classes, np.where(classes == 3, 250, image))


def test_gray_to_csf_takes_the_gray_matter_darker_than_halfway_to_pure_csf_only():
    rng = np.random.default_rng(1)
    image, ibsr, _ = synthetic_volume(rng)
    classes = map_labels([ibsr], "ibsr")
    dark = (classes == 1) & (np.arange(image.shape[0])[:, None, None] < 12)  # a widened sulcus: CSF-dark
    image = np.where(dark | (classes == 0) & (np.arange(image.shape[0])[:, None, None] < 20), 40, image)
    flip = gray_to_csf(classes, image.astype(np.float32))
    assert flip[dark].all() and not flip[classes != 1].any()  # dark white matter is never touched
    assert flip[(classes == 1) & ~dark].mean() < 0.01  # gray matter (110 +- 6) is far above the border (75)
    assert not gray_to_csf(apply_csf_rule(classes, None, "none"), image).any()  # no CSF to measure it from
    assert not gray_to_csf(classes, np.where(classes == 3, 250, image)).any()  # not a T1: left as it is


def test_predictor_draws_the_csf_border_by_intensity_when_told(checkpoint):
    """By default the views' own border; with intensity no gray matter is darker than the border measured on
    the views' own labels, and only gray matter moved to CSF. A three-class model has no border to draw."""
    import nibabel as nib

    from mriseg.errors import ParamsError
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor

    network, intensity = Predictor(SHIPPED_MODEL, "cpu"), Predictor(SHIPPED_MODEL, "cpu", csf_border="intensity")
    assert (network.csf_border, intensity.csf_border) == ("network", "intensity")
    image, _, affine = synthetic_volume(np.random.default_rng(2), shape=(48, 52, 44))
    img3 = nib.Nifti1Image(image, affine)
    volume = network.working_volume(img3)[1]
    before, after = (p.volume_probabilities(volume).argmax(axis=0) for p in (network, intensity))
    moved = before != after
    assert moved.any() and (before[moved] == 1).all() and (after[moved] == 3).all()
    assert not ((after == 1) & (volume < csf_border(csf_thresholds(before, volume, csf_depth=3)))).any()
    assert Predictor(checkpoint, "cpu").csf_border == "network"  # three classes: the views' output as it is
    with pytest.raises(ParamsError, match="has no CSF class"):
        Predictor(checkpoint, "cpu", csf_border="intensity")
    with pytest.raises(ParamsError, match="csf border 'smooth'"):
        Predictor(SHIPPED_MODEL, "cpu", csf_border="smooth")


@pytest.mark.skipif(not SHARED_IBSR.is_dir(), reason=f"needs the IBSR volumes at {SHARED_IBSR}")
def test_remade_ibsr_labels_move_gray_matter_only():
    from mriseg.labels import load_labels
    from mriseg.volumes import load_volume

    image = SHARED_IBSR / "IBSR_07.nii.gz"
    img3 = load_volume(image)[1]
    seg = [SHARED_IBSR / "IBSR_07_seg.nii.gz"]
    traced, remade = (load_labels(seg, "ibsr", image, img3, rule) for rule in ("labels", "intensity"))
    assert np.array_equal(traced == 0, remade == 0)  # white matter never moves
    moved = traced != remade
    assert np.isin(traced[moved], (1, 2)).all() and (remade[moved] == 3).all()
    assert (np.asanyarray(img3.dataobj)[moved & (traced == 2)] > 0).all()  # never the strip's zeros
    # IBSR's sulcal CSF: a twentieth or more of its gray matter, yet most gray matter stays
    assert 0.05 < (moved & (traced == 1)).sum() / (traced == 1).sum() < 0.4


def test_intracranial_volume_of_a_synthetic_head_of_known_volume():
    zooms = (0.9, 1.0, 1.2)
    shape = (90, 80, 70)
    mm = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * z for n, z in zip(shape, zooms)], indexing="ij"))
    r = np.sqrt((mm ** 2).sum(0))
    labels = np.full(shape, 2, np.uint8)
    labels[r < 35] = 3  # CSF to the inner table
    labels[r < 32] = 1
    labels[r < 22] = 0
    sulcus = (np.abs(mm[0]) < 1.5) & (r > 26)  # a sulcus the model called background, open to the outside
    labels[sulcus & (r < 35)] = 2
    voxel_ml = np.prod(zooms) / 1000
    icv = intracranial(labels, None, zooms).sum() * voxel_ml
    assert icv == pytest.approx(4 / 3 * np.pi * 35 ** 3 / 1000, rel=0.02)
    brain = r < 36  # a brain mask beyond the segmented CSF counts too
    assert intracranial(labels, brain, zooms).sum() * voxel_ml == pytest.approx(4 / 3 * np.pi * 36 ** 3 / 1000, rel=0.02)


def test_thin_cortex_replaces_the_outer_cortex_with_csf_intensities():
    rng = np.random.default_rng(1)
    image, ibsr, affine = synthetic_volume(rng)
    labels = map_labels([ibsr], "ibsr")
    atrophied, new_labels, lost = thin_cortex(image, labels, seed=3)
    assert lost.sum() and (labels[lost] == 1).all() and (new_labels[lost] == 3).all()
    assert np.array_equal(atrophied[~lost], image[~lost])  # nothing else changes
    assert np.median(atrophied[lost]) < 0.5 * np.median(image[lost])  # as dark as the scan's CSF
    assert np.array_equal(new_labels[~lost], labels[~lost])
    two = outer_cortex(labels, 2)
    assert (two & lost).sum() == lost.sum() and two.sum() > lost.sum()  # the second layer lies under the first
    region = upper_left_quarter(labels, affine)
    regional = thin_cortex(image, labels, region)[2]
    assert 0.1 * lost.sum() < regional.sum() < 0.5 * lost.sum() and not (regional & ~region).any()


def cortex_batch(n=8, c=3, h=64, w=64):
    """Slices of white matter in a ring of cortex in a ring of CSF, noisy T1 intensities, as data.SliceDataset
    gives them with label_context: (images (n, c, h, w), labels then distances (n, 2c, h, w))."""
    rows, cols = np.mgrid[:h, :w]
    r = np.hypot(rows - h / 2, cols - w / 2)
    labels = np.select([r < 10, r < 18, r < 24], [0, 1, 3], 2).astype(np.uint8)
    y = torch.from_numpy(np.stack([np.stack([labels] * c)] * n))
    x = torch.tensor([0.8, 0.5, 0.0, 0.15])[y.long()] + 0.02 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    distance = torch.randint(0, 9, y.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    return x.clamp(min=0), torch.cat([y, distance], 1)


def test_thinning_turns_the_outer_cortex_into_csf_and_leaves_the_rest():
    from mriseg.augmentation import thin_cortex as thin_slices

    x, y = cortex_batch()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    same, same_labels = thin_slices(x, y, gen, 0.0)
    assert same is x and same_labels is y and torch.equal(gen.get_state(), state)  # share 0 draws nothing
    thinned, labels = thin_slices(x, y, gen, 1.0)
    lost = (y[:, :3] == 1) & (labels[:, :3] == 3)
    changed = (labels != y)
    assert torch.equal(changed[:, :3], lost) and not changed[:, 3:].any()  # only cortex moves; distances untouched
    assert torch.equal(thinned != x, lost)  # only the lost pixels change intensity
    per_sample = lost[:, 1].flatten(1).sum(1)
    ring = 2 * np.pi * 18  # pixels in one layer of the cortex's outer edge, about
    assert (per_sample > 0.3 * ring).all() and (per_sample < 2.5 * ring).all()  # 1 or 2 layers, whole or half
    assert len(set(per_sample.tolist())) > 1  # layers and halves are drawn per sample
    near = np.hypot(*np.mgrid[:64, :64] - 32.0) >= 16 - 0.5  # within 2 px of the CSF at radius 18
    assert not (lost & ~torch.from_numpy(near)).any()
    assert abs(thinned[lost].mean() - 0.15) < 0.02 and thinned[lost].std() < 0.05  # the slice's own CSF, noisy
    # each channel thinned by its own labels: a channel without cortex loses none
    y2 = y.clone()
    y2[:, 0] = torch.where(y2[:, 0] == 1, 0, y2[:, 0])
    _, labels2 = thin_slices(x, y2, torch.Generator().manual_seed(0), 1.0)
    assert not (labels2[:, 0] == 3).logical_and(y2[:, 0] != 3).any() and (labels2[:, 1] != y2[:, 1]).any()
    # a slice without CSF of its own to draw from is left as it is
    dry = y.clone()
    dry[:, :3] = torch.where(dry[:, :3] == 3, 2, dry[:, :3])
    assert torch.equal(thin_slices(x, dry, torch.Generator().manual_seed(0), 1.0)[1], dry)


def test_thinning_trains_on_every_channels_labels_and_skips_data_without_csf(tmp_path, capsys):
    import pandas as pd
    from test_training import CFG, TEST, TRAIN, dataset

    from mriseg.data import SliceDataset
    from mriseg.training import resolve_recipe, train

    x, y = cortex_batch(n=1, c=8, h=48, w=48)
    rows = []
    for s in "AB":  # two (X, Y, Z) volumes on disk and their axial slices, as the train stage's manifest lists them
        np.save(tmp_path / f"{s}.image.npy", x[0].permute(1, 2, 0).numpy().copy())
        np.save(tmp_path / f"{s}.labels.npy", y[0, :8].permute(1, 2, 0).numpy().copy())
        rows += [{"image": str(tmp_path / f"{s}.image.npy"), "mask": str(tmp_path / f"{s}.labels.npy"),
                  "ix": f"{s}:axial:{z}", "subject": s, "slice": z, "view": "axial", "z": z, "split": "train"}
                 for z in range(1, 7)]
    manifest = pd.DataFrame(rows)
    cfg = resolve_recipe({**CFG, "epochs": 2, "context": 1, "augment": True, "loss": "dice_ce"})
    run = lambda name, **over: train({**cfg, **over}, "unet", SliceDataset(manifest, "train", context=1), {},
                                     tmp_path / f"{name}.pt", tmp_path / f"{name}.r.pt", extra={"axis": "axial"},
                                     classes=CLASS_NAMES)["history"]
    thinned = run("a", thinning=0.5)
    assert thinned == run("b", thinning=0.5) and np.isfinite(thinned[-1]["train_loss"])
    assert thinned != run("c")
    # three-class data has no CSF to thin the cortex into: the default share trains as 0 does, and says so
    three_class = lambda name, **over: train({**CFG, **over}, "unet", dataset(TRAIN), {"test": dataset(TEST)},
                                             tmp_path / f"{name}.pt", tmp_path / f"{name}.r.pt")["history"]
    capsys.readouterr()
    assert three_class("d", thinning=0.5) == three_class("e")
    assert "train.thinning=0.5 skipped: the data has no CSF class" in capsys.readouterr().out
