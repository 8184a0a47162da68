"""The synthetic-image generator on its own (mriseg.synthesis), and train.synth in real training."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mriseg.errors import ParamsError
from mriseg.params import load_params
from mriseg.synthesis import atlas_slices, brain_range, fit_frame, mix_synthetic, synthesize
from mriseg.volumes import FAR, brain_distance

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsr18-dev"


def brain_batch(n=4, c=3, h=64, w=64):
    """Slices of an ellipse of gray matter around white matter, with a ventricle (background inside):
    (images, labels, the labels' distances outside the brain), each (n, c, h, w)."""
    rows, cols = np.mgrid[:h, :w]
    r = ((rows - h / 2) / (0.35 * h)) ** 2 + ((cols - w / 2) / (0.3 * w)) ** 2
    labels = np.full((h, w), 2, np.uint8)
    labels[r < 1] = 1
    labels[r < 0.6] = 0
    labels[r < 0.08] = 2
    y = torch.from_numpy(np.stack([np.stack([labels] * c)] * n))
    x = torch.where(y == 0, 0.8, torch.where(y == 1, 0.5, 0.0)) + 0.05 * torch.rand(y.shape, generator=torch.Generator().manual_seed(1))
    return x * (y < 2), y, torch.from_numpy(brain_distance(labels)).expand(n, c, h, w).contiguous()


def test_a_seed_repeats_a_draw_bit_for_bit_and_another_draw_differs():
    x, y, d = brain_batch()
    a = synthesize(y, d, torch.Generator().manual_seed(3))
    b = synthesize(y, d, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    synthesize(y, d, gen)
    c = synthesize(y, d, gen)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.float32 and a[0].shape == x.shape and 0 <= a[0].min() and a[0].max() <= 1


def test_each_draw_gives_the_tissues_new_intensities():
    x, y, d = brain_batch(n=16)
    images, labels = synthesize(y, d, torch.Generator().manual_seed(0))
    white = torch.stack([images[i][labels[i] == 0].mean() for i in range(16)])
    gray = torch.stack([images[i][labels[i] == 1].mean() for i in range(16)])
    assert white.std() > 0.1 and gray.std() > 0.1  # contrast drawn per sample
    assert (white < gray).any() and (white > gray).any()  # any contrast, T1-like or inverted


def test_no_synthetic_head_tissue_is_labelled_and_labels_stay_the_anatomy():
    """Every pixel labelled tissue after synthesis was tissue before it (up to the smooth warp, a few
    pixels at the boundaries); tissue that a synthetic skull-strip cut away is background with a zero image;
    whole heads have signal outside the brain, all of it background."""
    x, y, d = brain_batch(n=32)
    images, labels = synthesize(y, d, torch.Generator().manual_seed(5))
    was_tissue = y < 2
    near = torch.nn.functional.max_pool2d(was_tissue.float().flatten(0, 1)[:, None], 9, 1, 4)[:, 0] > 0
    assert (labels.flatten(0, 1)[~near] == 2).all(), "tissue far from the brain's labels"
    assert ((labels < 2) == was_tissue).float().mean() > 0.97
    outside = ~near.view(labels.shape)
    heads = (images * outside).flatten(1).amax(1) > 0.2
    assert heads.sum() >= 2, "some draws carry a head around the brain"
    assert set(labels.unique().tolist()) <= {0, 1, 2}


def test_most_draws_are_cut_as_a_skull_strip_cuts_as_prediction_sees_brains():
    x, y, d = brain_batch(n=64)
    images, labels = synthesize(y, d, torch.Generator().manual_seed(7))
    far = d > 9  # past what a strip keeps: 5 pixels, roughened by 3
    stripped = [i for i in range(64) if (images[i][far[i]] == 0).all()]
    assert 40 <= len(stripped) < 60  # four in five
    whole = [i for i in range(64) if i not in stripped]
    assert all((images[i] > 0).float().mean() > 0.5 for i in whole[:4])  # a whole head's air has noise


def test_brain_distance_fills_the_brain_and_measures_in_3d():
    x, y, d = brain_batch(n=1, c=1)
    assert d[0, 0, 32, 32] == 0 and y[0, 0, 32, 32] == 2  # the ventricle is inside the brain
    assert (d[y < 2] == 0).all() and d[0, 0, 32, 0] > d[0, 0, 32, 8] > 0  # farther from the brain, farther away
    # A ball: the slices above its top hold no tissue, yet lie a pixel or two from the brain, not FAR.
    z, r, c = np.mgrid[:24, :32, :32]
    ball = np.where((z - 12) ** 2 + (r - 16) ** 2 + (c - 16) ** 2 < 64, 1, 2).astype(np.uint8)
    distance = brain_distance(ball)
    assert (ball[20] == 2).all() and distance[20, 16, 16] == 1 and distance[21, 16, 16] == 2
    assert distance[12, 16, 0] == 9 and (distance[ball < 2] == 0).all()
    assert (brain_distance(np.full((8, 8), 2, np.uint8)) == FAR - 1).all()


def adjacent_tail(images, labels, tissue=0):
    """Per sample, the 99th percentile of the intensity step between neighbouring pixels deep inside one
    tissue over its median step: near 2-4 for noise on a smooth field, far above where the tissue holds an
    edge."""
    inside = labels == tissue
    deep = ~(torch.nn.functional.max_pool2d((~inside).float(), 5, 1, 2) > 0)
    pairs = deep[..., 1:] & deep[..., :-1]
    steps = (images[..., 1:] - images[..., :-1]).abs()
    out = []
    for i in range(len(images)):
        s = steps[i][pairs[i]]
        if len(s) > 100 and s.median() > 1e-3:
            out.append(float(torch.quantile(s, 0.99) / s.median()))
    return np.array(out)


def test_a_synthetic_tissue_is_one_intensity_distribution_without_edges_inside():
    """The generator draws one Gaussian per generation class (SynthSeg's), not two split at the real
    image's median: no edge inside white matter beyond noise, bias and blur. The same measure finds an
    edge inside it as strong as the sample's own white/gray border (what the median split drew)."""
    x, y, d = brain_batch(n=48)
    x = torch.where((y == 0) & (torch.arange(64) >= 32), 0.95, x)  # a real image whose white matter has two halves
    images, labels = synthesize(y, d, torch.Generator().manual_seed(2))
    tail = adjacent_tail(images, labels)
    assert len(tail) > 30 and np.median(tail) < 4.5
    border = torch.stack([(images[i][labels[i] == 0].mean() - images[i][labels[i] == 1].mean()).abs()
                          for i in range(len(images))]).view(-1, 1, 1, 1)
    stepped = images + border * ((labels == 0) & (torch.arange(64) >= 32))
    assert np.median(adjacent_tail(stepped, labels)) > 1.5 * np.median(tail)


def test_a_slice_is_normalised_as_its_whole_brain_would_be():
    """brain_range against volumes.normalize_volume on a whole brain drawn with the same Gaussians: a brain
    of IBSR_01's labels (the working grid, with data.csf intensity), every voxel of a class from that class's
    Gaussian: within three hundredths of the range."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (the IBSR development set in ../shared)")
    from mriseg.scans import working_volumes
    from mriseg.synthesis import CLASSES, TISSUE_CLASSES, class_intensities, mixture

    labels = working_volumes(SHARED / "IBSR_01.nii.gz", [SHARED / "IBSR_01_seg.nii.gz"], "ibsr", None, 1.0,
                             csf="intensity")[1]
    brain = brain_distance(labels) == 0
    classes = np.zeros(labels.shape, np.int64)
    for label, k in TISSUE_CLASSES.items():
        classes[labels == label] = k
    classes[brain & (labels == 2)] = TISSUE_CLASSES[3]  # the brain's unlabelled rest is drawn as CSF
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        mean, spread = class_intensities(torch.rand(1, 2 * CLASSES, generator=gen))
        zero = torch.zeros(1, 1, 1, 1)
        lo, hi = (float(v) for v in brain_range(mean, spread, zero, zero, torch.Generator().manual_seed(1)))
        volume = mixture(torch.from_numpy(classes[brain])[None], mean, spread, torch.Generator().manual_seed(2))
        volume = volume.clamp(min=0).numpy()[0]
        want = np.percentile(volume[volume > 0], [0.5, 99.5])
        assert abs(lo - want[0]) < 0.03 * (want[1] - want[0]) and abs(hi - want[1]) < 0.03 * (want[1] - want[0])


def test_share_zero_draws_nothing_and_a_share_replaces_some_samples():
    x, labels, d = brain_batch(n=8)
    y = torch.cat([labels, d], 1)  # as the dataset gives them with label_context
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    same, centre = mix_synthetic(x, y, gen, 0.0, 1)
    assert same is x and torch.equal(centre, y[:, 1]) and torch.equal(gen.get_state(), state)
    mixed, _ = mix_synthetic(x, y, gen, 0.5, 1)
    replaced = [not torch.equal(mixed[i], x[i]) for i in range(8)]
    assert 0 < sum(replaced) < 8


@pytest.mark.parametrize("key", ["synth", "synth_atlas", "thinning"])
@pytest.mark.parametrize("value", [-0.1, 1.5, "half", True])
def test_bad_synth_is_one_clear_line(tmp_path, key, value):
    (tmp_path / "params.yaml").write_text(f"model: unet\ntrain:\n  {key}: {value}\n")
    with pytest.raises(ParamsError, match=rf"params.yaml: train.{key} must be a number from 0 to 1 .*got"):
        load_params(tmp_path / "params.yaml")


def test_the_atlas_is_the_mni152_brain_cut_as_a_cohorts_slices_are():
    atlas = atlas_slices("coronal", 1, (160, 144), min_tissue=500)
    labels, distance = atlas[:, :3], atlas[:, 3:]
    assert atlas.shape[1:] == (6, 160, 144) and atlas.dtype == torch.uint8
    assert 100 < len(labels) < 233  # the slices with brain, not the template's empty ends
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}  # CSF inside the brain mask
    assert ((labels[:, 1] < 2).flatten(1).sum(1) >= 500).all()
    assert (distance[labels != 2] == 0).all() and (distance[labels == 2] > 0).float().mean() > 0.9
    # Neighbouring channels are the neighbouring slices: the next slice's centre is this one's last channel.
    assert torch.equal(labels[1:-1, 2], labels[2:, 1])


def test_fit_frame_pads_small_slices_and_cuts_large_ones_around_their_centre():
    small = np.ones((2, 20, 30), np.uint8)
    padded = fit_frame(small, (48, 48), 2)
    assert padded.shape == (2, 48, 48) and padded.sum() == 2 * 20 * 30 + 2 * (48 * 48 - 20 * 30) * 2
    # Centred in 32 x 32 (6 rows above, 1 column left), as the dataset centres a slice, then at the top left.
    assert padded[0, 6, 1] == 1 and padded[0, 5, 1] == 2 and padded[0, 6, 0] == 2 and padded[0, 25, 30] == 1
    large = np.zeros((1, 64, 64), np.uint8)
    large[0, 32, 32] = 1
    cut = fit_frame(large, (32, 48), 2)
    assert cut.shape == (1, 32, 48) and cut[0, 16, 24] == 1


def test_the_atlas_is_the_mni152_brain_prepared_as_a_cohorts_subject_is(tmp_path):
    """atlas_slices against the unzip stage's own path (scans.working_volumes, crop, views) on the same brain."""
    import nibabel as nib

    from mriseg.sample import IBSR_CODES, mni152_brain
    from mriseg.scans import tissue_slices, working_volumes
    from mriseg.volumes import crop_to_foreground, to_slices

    t1, labels, affine = mni152_brain()
    nib.save(nib.Nifti1Image(t1, affine), tmp_path / "mni.nii.gz")
    nib.save(nib.Nifti1Image(IBSR_CODES[labels], affine), tmp_path / "mni_seg.nii.gz")
    image, mask, work_affine = working_volumes(tmp_path / "mni.nii.gz", [tmp_path / "mni_seg.nii.gz"], "ibsr", None,
                                               1.0)[:3]
    box = crop_to_foreground(image, work_affine)[2]
    for view in ("axial", "sagittal"):
        slices = to_slices(mask[box], view)
        atlas = atlas_slices(view, 0, (256, 256))
        expected = fit_frame(slices[tissue_slices(slices, 100)], (256, 256), 2)
        assert torch.equal(atlas[:, 0], torch.from_numpy(expected))


def test_atlas_share_zero_draws_nothing_more_than_synthesis_alone():
    x, labels, d = brain_batch(n=8)
    y = torch.cat([labels, d], 1)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    alone = mix_synthetic(x, y, a, 0.5, 1)
    with_atlas = mix_synthetic(x, y, b, 0.5, 1, y[:2], 0.0)
    assert torch.equal(alone[0], with_atlas[0]) and torch.equal(alone[1], with_atlas[1])
    assert torch.equal(a.get_state(), b.get_state())


def test_atlas_anatomy_replaces_the_subjects_labels_only_where_drawn():
    x, labels, d = brain_batch(n=8)
    # slices without tissue (far from any brain): synthesis from their own labels draws none
    empty = torch.cat([torch.full_like(labels, 2), torch.full_like(d, FAR)], 1)
    atlas = torch.cat([labels, d], 1)[:2].clone()
    own = mix_synthetic(x * 0, empty, torch.Generator().manual_seed(0), 1.0, 1, atlas, 0.0)[1]
    drawn = mix_synthetic(x * 0, empty, torch.Generator().manual_seed(0), 1.0, 1, atlas, 1.0)[1]
    assert (own == 2).all()
    assert ((drawn < 2).flatten(1).sum(1) > 100).all()


def test_synth_zero_trains_exactly_as_before(tmp_path, monkeypatch):
    """train.synth 0: the generator is never called and nothing is drawn, so training is today's to the last
    digit (the same checkpoint history as without the setting)."""
    import mriseg.training
    from test_training import run_train

    before = run_train(tmp_path, "before", epochs=2, augment=True)["history"]
    monkeypatch.setattr(mriseg.training, "mix_synthetic", lambda *a: pytest.fail("synthesis ran at train.synth 0"))
    assert run_train(tmp_path, "zero", epochs=2, augment=True, synth=0.0)["history"] == before


def cohort_manifest(tmp_path, subjects=("A", "B")):
    """Two (X, Y, Z) brain volumes on disk and their axial slices, as the train stage's manifest lists them."""
    import pandas as pd

    x, y, _ = brain_batch(n=1, c=8, h=48, w=48)
    rows = []
    for s in subjects:
        np.save(tmp_path / f"{s}.image.npy", x[0].permute(1, 2, 0).numpy().copy())
        np.save(tmp_path / f"{s}.labels.npy", y[0].permute(1, 2, 0).numpy().copy())
        rows += [{"image": str(tmp_path / f"{s}.image.npy"), "mask": str(tmp_path / f"{s}.labels.npy"),
                  "ix": f"{s}:axial:{z}", "subject": s, "slice": z, "view": "axial", "z": z, "split": "train"}
                 for z in range(1, 7)]
    return pd.DataFrame(rows)


def test_synthetic_training_reads_every_channels_labels_and_repeats_with_its_seed(tmp_path):
    import copy

    from mriseg.data import SliceDataset
    from mriseg.volumes import pad_slices, view_slice
    from mriseg.training import SettingsError, resolve_recipe, train
    from test_training import CFG, TEST, TRAIN, dataset

    manifest = cohort_manifest(tmp_path)
    cfg = resolve_recipe({**CFG, "epochs": 2, "context": 1, "augment": True, "synth": 0.5})
    runs = [train(cfg, "unet", SliceDataset(manifest, "train", context=1), {}, tmp_path / f"{k}.pt",
                  tmp_path / f"{k}.r.pt", extra={"axis": "axial"})["history"] for k in "ab"]
    assert runs[0] == runs[1] and np.isfinite(runs[0][-1]["train_loss"])
    real = train({**cfg, "synth": 0.0}, "unet", SliceDataset(manifest, "train", context=1), {}, tmp_path / "c.pt",
                 tmp_path / "c.r.pt", extra={"axis": "axial"})["history"]
    assert real != runs[0]
    train_set = SliceDataset(manifest, "train", context=1)
    atlas = atlas_slices("axial", 1, train_set.frame)
    blank = torch.cat([torch.full_like(atlas[:, :3], 2), atlas[:, 3:]], 1)  # the same draws, no tissue
    with_atlas, with_blank = (train({**cfg, "synth_atlas": 1.0}, "unet", train_set, {}, tmp_path / f"{k}.pt",
                                    tmp_path / f"{k}.r.pt", extra={"axis": "axial"}, atlas=a)["history"]
                              for k, a in (("e", atlas), ("f", blank)))
    assert with_atlas != with_blank and np.isfinite(with_atlas[-1]["train_loss"])
    # Synthesis reads every channel's labels from its own copy: the caller's dataset is left as it was.
    assert not train_set.label_context and train_set[0][1].shape == train_set.frame
    synthetic_set = copy.copy(train_set)
    synthetic_set.label_context = True
    x0, y0 = synthetic_set[0]
    assert y0.shape == (6, *train_set.frame) and torch.equal(y0[1], train_set[0][1])
    distance = brain_distance(np.load(manifest["mask"][0]))  # the 3-D volume's, cut as its slices are
    z = manifest["z"][0]
    expected = np.stack([view_slice(distance, "axial", p) for p in (z - 1, z, z + 1)])
    assert torch.equal(y0[3:], torch.from_numpy(pad_slices(expected, train_set.frame, FAR)))
    with pytest.raises(SettingsError, match=r"train.synth_atlas=1.0 needs the atlas's slices in the training frame"):
        train({**cfg, "synth_atlas": 1.0}, "unet", train_set, {}, tmp_path / "g.pt", tmp_path / "g.r.pt")
    with pytest.raises(SettingsError, match="train.synth=0.5 needs the labels of every input channel"):
        train({**CFG, "synth": 0.5}, "unet", dataset(TRAIN), {"test": dataset(TEST)}, tmp_path / "d.pt",
              tmp_path / "d.r.pt")


def test_after_synthetic_training_batchnorm_holds_the_real_slices_statistics(tmp_path):
    """train.bn_refit: the same weights as without it, and BatchNorm's running statistics those of one pass
    over the real training slices (what prediction feeds), not the mixture training saw."""
    from mriseg.data import SliceDataset
    from mriseg.models import build_model
    from mriseg.training import resolve_recipe, train
    from test_training import CFG

    manifest = cohort_manifest(tmp_path)
    cfg = resolve_recipe({**CFG, "epochs": 1, "context": 1, "augment": True, "synth": 1.0, "amp": False})
    refit, shared = (train({**cfg, "bn_refit": b}, "unet", SliceDataset(manifest, "train", context=1), {},
                           tmp_path / f"{b}.pt", tmp_path / f"{b}.r.pt")["state_dict"] for b in (True, False))
    stats = [k for k in refit if k.endswith("running_mean")]
    weights = [k for k in refit if k.endswith(".weight")]
    assert stats and all(torch.equal(refit[k], shared[k]) for k in weights)
    assert not all(torch.allclose(refit[k], shared[k]) for k in stats)
    model = build_model("unet", pretrained=False, in_channels=3, width=cfg.get("width", 16), num_classes=3)
    model.load_state_dict(shared)
    real, bs = SliceDataset(manifest, "train", context=1), cfg["batch_size"]  # the training's batches, in order
    batches = [torch.stack([real[i][0] for i in range(j, min(j + bs, len(real)))]) for j in range(0, len(real), bs)]
    torch.optim.swa_utils.update_bn(batches, model)
    assert all(torch.allclose(model.state_dict()[k], refit[k], atol=1e-4) for k in stats)  # theirs differ by 0.2-1.5
