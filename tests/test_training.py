"""Real training, a few epochs on tiny synthetic slices, on the CPU."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from mriseg.models import FlipAveraged, UNet, load_checkpoint
from mriseg.params import load_params
from mriseg.data import Feed
from mriseg.devices import autocast, inference_amp
from mriseg.errors import ParamsError
from mriseg.evaluation import evaluate
from mriseg.metrics import compute_loss
from mriseg.augmentation import augment
from mriseg.training import read_resume, read_timing, resolve_recipe, synchronised_batchnorm, train, view_settings
from conftest import synthetic_pair

CFG = {"epochs": 4, "batch_size": 8, "lr": 3e-3, "pretrained": False, "stem_init": "random", "loss": "bce",
       "augment": False, "schedule": "constant", "device": "cpu", "seed": 0, "amp": "auto",
       "channels_last": True, "compile": False, "cudnn_benchmark": True, "eval_batch_size": 32}


def tensors(n, seed, h=48, w=40):
    rng = np.random.default_rng(seed)
    pairs = [synthetic_pair(rng, h, w) for _ in range(n)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    y = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return x, y


TRAIN, TEST = tensors(24, 0), tensors(8, 1)
dataset = lambda tensors: torch.utils.data.TensorDataset(*tensors)
CPU = torch.device("cpu")


def run_train(tmp_path, name="run", model="unet", timing_path=None, **over):
    cfg = resolve_recipe({**CFG, **over})
    return train(cfg, model, dataset(TRAIN), {"test": dataset(TEST)}, tmp_path / f"{name}.pt",
                 tmp_path / f"{name}.resume.pt", timing_path=timing_path,
                 extra={"axis": "axial", "normalization": {"method": "percentile", "low": 0.5, "high": 99.5}})


def test_streamed_cached_and_worker_fed_training_are_the_same(tmp_path):
    """The split held on the device (train.device_cache_gb), streamed on the main process, or streamed by
    DataLoader worker processes: the same batches, so the same metrics to the last digit."""
    cached = run_train(tmp_path, "cached", epochs=2, augment=True, device_cache_gb=1)["history"]
    streamed = run_train(tmp_path, "streamed", epochs=2, augment=True, device_cache_gb=0)["history"]
    workers = run_train(tmp_path, "workers", epochs=2, augment=True, workers=2)["history"]
    assert cached == streamed == workers


def test_training_learns_and_writes_a_safe_checkpoint(tmp_path):
    ckpt = run_train(tmp_path, epochs=6)
    h = ckpt["history"]
    assert [r["epoch"] for r in h] == list(range(1, 7))
    assert h[-1]["train_loss"] < 0.6 * h[0]["train_loss"]
    assert h[-1]["test_dice_white_matter"] > 0.8 and h[-1]["test_dice_gray_matter"] > 0.7
    model, meta = load_checkpoint(tmp_path / "run.pt")  # weights_only=True inside
    assert meta["model"] == "unet" and meta["normalization"]["method"] == "percentile"
    assert not (tmp_path / "run.resume.pt").exists(), "the resume file goes once training is done"


def test_same_seed_gives_the_same_checkpoint_bytes_on_cpu(tmp_path):
    """No wall clock in the checkpoint (it goes to timing_path): a retrain leaves dvc.lock as it was."""
    a = run_train(tmp_path, "a", epochs=2, timing_path=tmp_path / "a.tsv")["history"]
    b = run_train(tmp_path, "b", epochs=2)["history"]
    assert a == b
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert [row["epoch"] for row in read_timing(tmp_path / "a.tsv")] == [1, 2]
    assert all(row["seconds"] > 0 and row["images_per_s"] > 0 for row in read_timing(tmp_path / "a.tsv"))
    c = run_train(tmp_path, "c", epochs=2, seed=1)["history"]
    assert c != a


TOLERANCE = 0.03  # Dice after 8 epochs: fp32 vs bf16 + channels_last


def test_speed_switches_do_not_change_results_beyond_noise(tmp_path):
    fast = run_train(tmp_path, "fast", epochs=8, amp=True)["history"][-1]  # bf16, even where it is emulated
    plain = run_train(tmp_path, "plain", epochs=8, amp=False, channels_last=False)["history"][-1]
    for k in ("test_dice_white_matter", "test_dice_gray_matter"):
        assert abs(fast[k] - plain[k]) < TOLERANCE, (k, fast[k], plain[k])


@pytest.mark.parametrize("loss", ["bce", "ce", "dice_ce"])
def test_every_loss_trains(tmp_path, loss):
    h = run_train(tmp_path, loss, epochs=3, loss=loss, augment=True, schedule="cosine")["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    x, y = TEST
    assert compute_loss(loss, torch.randn(2, 3, 48, 40), y[:2]).ndim == 0


def test_augment_keeps_labels_and_shapes():
    x, y = TRAIN
    xa, ya = augment(x[:8], y[:8], torch.Generator().manual_seed(0))
    assert xa.shape == x[:8].shape and ya.shape == y[:8].shape and ya.dtype == torch.uint8
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2}
    assert not torch.equal(xa, x[:8])
    # Geometry moves image and mask together: bright pixels remain mostly white matter.
    assert (ya[xa[:, 0] > 0.75] == 0).float().mean() > 0.8


def test_bias_field_scales_intensities_smoothly_and_leaves_geometry_alone():
    # A uniform 256 x 256 slice, the size of an archive's: whatever the field does shows as it is.
    x, y = torch.ones(16, 1, 256, 256), torch.zeros(16, 256, 256, dtype=torch.uint8)
    plain_x, plain_y = augment(x, y, torch.Generator().manual_seed(0))
    biased_x, biased_y = augment(x, y, torch.Generator().manual_seed(0), bias_field=0.5)
    assert torch.equal(plain_y, biased_y)
    log_field = torch.where(plain_x > 0.5, (biased_x / plain_x.clamp(min=1e-6)).log(), torch.nan)
    values = log_field[~log_field.isnan()]
    assert values.min() < -0.3 and values.max() > 0.3  # it does change intensities
    assert values.abs().max() <= 1 + 1e-5  # never by more than e times
    # Smooth: next to each other, two pixels get nearly the same factor (within 2 %).
    step = (log_field[..., 1:] - log_field[..., :-1]).abs()
    assert step[~step.isnan()].max() < 0.02


@pytest.mark.parametrize("value", [-0.1, "strong", True, 9])
def test_bad_bias_field_is_one_clear_line(tmp_path, value):
    (tmp_path / "params.yaml").write_text(f"model: unet\ntrain:\n  bias_field: {value}\n")
    with pytest.raises(ParamsError, match=r"params.yaml: train.bias_field must be a number from 0 to 5 .*got"):
        load_params(tmp_path / "params.yaml")


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_training import run_train
    from pathlib import Path
    run_train(Path({tmp!r}), "killed", epochs=8)
""")


def test_killed_training_resumes_to_the_same_result(tmp_path):
    script = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), tmp=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    resume = tmp_path / "killed.resume.pt"
    deadline = time.time() + 300
    while not resume.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert resume.exists() and not (tmp_path / "killed.pt").exists()
    done = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= done < 8
    resumed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {resume} after epoch {done}/8" in resumed.stdout
    assert "epoch 1/8 " not in resumed.stdout
    straight = run_train(tmp_path, "straight", epochs=8)["history"]
    killed = torch.load(tmp_path / "killed.pt", weights_only=True)["history"]
    assert len(killed) == 8
    for a, b in zip((killed), (straight)):
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_tutorial_recipe_is_one_setting_away(tmp_path):
    ckpt = run_train(tmp_path, "tut", epochs=1, recipe="tutorial", loss="dice_ce", augment=True, schedule="cosine",
                     flip_tta=True, width=8)
    assert ckpt["loss"] == "bce" and ckpt["activation"] == "sigmoid"
    assert ckpt["train"]["augment"] is False and ckpt["train"]["schedule"] == "constant"
    assert ckpt["train"]["lr"] == 3e-4 and ckpt["train"]["batch_size"] == 16  # CFG: 3e-3, batch 8
    assert ckpt["flip_tta"] is False and type(load_checkpoint(tmp_path / "tut.pt")[0]) is UNet
    assert ckpt["width"] == 16 and load_checkpoint(tmp_path / "tut.pt")[0].stem[0][0].out_channels == 16


def test_checkpoint_rebuilds_the_trained_width(tmp_path):
    ckpt = run_train(tmp_path, "w8", epochs=1, width=8)
    model, meta = load_checkpoint(tmp_path / "w8.pt")
    assert meta["width"] == 8 and model.stem[0][0].out_channels == 8
    assert ckpt["history"][-1]["test_iou"] == pytest.approx(
        evaluate(model, Feed(dataset(TEST), 32, CPU, channels_last=True), CPU, "auto", meta["loss"],
                 meta["activation"])["iou"], abs=1e-6)


def test_groupnorm_checkpoint_rebuilds_its_layers_and_scores_as_trained(tmp_path):
    """train.norm group: no BatchNorm anywhere (no batch statistics carried to prediction), the checkpoint
    says so and predicts as its last epoch was scored; a BatchNorm network cannot take its weights."""
    ckpt = run_train(tmp_path, "gn", epochs=2, width=8, norm="group")
    model, meta = load_checkpoint(tmp_path / "gn.pt")
    kinds = {type(m) for m in model.modules()}
    assert meta["norm"] == "group" and torch.nn.GroupNorm in kinds and torch.nn.BatchNorm2d not in kinds
    assert ckpt["history"][-1]["test_iou"] == pytest.approx(
        evaluate(model, Feed(dataset(TEST), 32, CPU, channels_last=True), CPU, "auto", meta["loss"],
                 meta["activation"])["iou"], abs=1e-6)
    with pytest.raises(RuntimeError, match="running_mean"):
        UNet(1, 4, width=8).load_state_dict(ckpt["state_dict"])


@pytest.mark.parametrize("text, message", [("model: unet\ntrain:\n  norm: layer\n", r"train.norm must be one of"),
                                           ("model: resnet\ntrain:\n  norm: group\n", r"train.norm 'group' needs model: unet"),
                                           ("model: resnet\ntrain:\n  norm: batch\nviews:\n  axial: {norm: group}\n",
                                            r"views.axial.norm 'group' needs model: unet"),
                                           ("model: unet\ntrain:\n  norm: batch\nviews:\n  axial: {norm: layer}\n",
                                            r"views.axial.norm must be one of \('batch', 'group'\), got 'layer'"),
                                           ("model: unet\ntrain:\n  norm: batch\nviews:\n  axial: {norm: null}\n",
                                            r"views.axial.norm must be one of \('batch', 'group'\), got None"),
                                           ("model: unet\nevaluate:\n  csf_border: smooth\n",
                                            r"evaluate.csf_border must be one of \('network', 'intensity'\)")])
def test_bad_norm_is_one_clear_line(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    """Emulated bf16 (AVX2 CPUs) is ~10x slower than fp32 (benchmarks/results/speed/amp-cpu.md)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    a = torch.ones(8, 8)
    for amp, dtype in (("auto", torch.bfloat16 if native else torch.float32), (True, torch.bfloat16),
                       (False, torch.float32)):
        with autocast(CPU, amp):
            assert (a @ a).dtype == dtype, amp
    # a checkpoint trained under bf16 predicts in fp32 where bf16 is emulated; one trained in fp32 stays fp32
    assert inference_amp(True) == inference_amp("auto") == "auto" and inference_amp(False) is False


def test_bad_amp_is_one_clear_line(tmp_path):
    (tmp_path / "params.yaml").write_text("model: unet\ntrain:\n  amp: fast\n")
    with pytest.raises(ParamsError, match=r"params.yaml: train.amp must be one of \('auto', True, False\), got 'fast'"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("key, value, minimum", [("width", 0, 1), ("width", 2.5, 1), ("width", True, 1),
                                                 ("width", "wide", 1), ("context", -1, 0), ("context", 1.0, 0)])
def test_bad_whole_number_is_one_clear_line(tmp_path, key, value, minimum):
    (tmp_path / "params.yaml").write_text(f"model: unet\ntrain:\n  {key}: {value}\n")
    with pytest.raises(ParamsError, match=rf"params.yaml: train.{key} must be a whole number >= {minimum} .*got"):
        load_params(tmp_path / "params.yaml")


def test_flip_tta_checkpoint_predicts_as_its_epochs_were_scored(tmp_path):
    ckpt = run_train(tmp_path, "tta", epochs=2, loss="dice_ce", augment=True, flip_tta=True)
    model, meta = load_checkpoint(tmp_path / "tta.pt")
    assert meta["flip_tta"] is True and isinstance(model, FlipAveraged)
    r = evaluate(model, Feed(dataset(TEST), 32, CPU, channels_last=True), CPU, "auto", meta["loss"], meta["activation"])
    assert r["iou"] == pytest.approx(ckpt["history"][-1]["test_iou"], abs=1e-6)
    assert r["loss"] == pytest.approx(ckpt["history"][-1]["test_loss"], abs=1e-5)


@pytest.mark.slow  # compiling the model takes about a minute on 2 cores
def test_compile_matches_eager(tmp_path):
    """torch.compile (train.compile) changes speed, not results: same seed, Dice within TOLERANCE."""
    compiled = run_train(tmp_path, "compiled", epochs=2, compile=True)["history"][-1]
    eager = run_train(tmp_path, "eager", epochs=2)["history"][-1]
    for k in ("train_loss", "test_dice_white_matter"):
        assert abs(compiled[k] - eager[k]) < TOLERANCE, (k, compiled[k], eager[k])


def test_resume_file_of_the_last_epoch_only_writes_the_checkpoint(tmp_path, capsys):
    run_train(tmp_path, "full", epochs=2)
    straight = torch.load(tmp_path / "full.pt", weights_only=True)
    # A run killed after its last resume file but before model.pt: rerunning must not start over.
    state_path = tmp_path / "last.resume.pt"
    import mriseg.training as t

    real_save = torch.save

    def die_before_the_checkpoint(obj, path, *a, **k):
        if isinstance(obj, dict) and "state_dict" in obj:
            raise KeyboardInterrupt  # stands in for the kill: resume file of epoch 2 written, model.pt not
        real_save(obj, path, *a, **k)

    t.torch.save = die_before_the_checkpoint
    try:
        with pytest.raises(KeyboardInterrupt):
            run_train(tmp_path, "last", epochs=2)
    finally:
        t.torch.save = real_save
    assert torch.load(state_path, weights_only=True)["epoch"] == 2 and not (tmp_path / "last.pt").exists()
    capsys.readouterr()
    ckpt = run_train(tmp_path, "last", epochs=2)
    out = capsys.readouterr().out
    assert "after epoch 2/2" in out and "epoch 1/2 " not in out, "no epoch may be trained again"
    assert (ckpt["history"]) == (straight["history"])
    assert not state_path.exists()


def test_each_process_takes_its_share_of_every_global_batch():
    from mriseg.training import share_of_batches

    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shares = [share_of_batches(order, 4, rank, 2) for rank in range(2)]
    assert [len(s) for s in shares] == [6, 6]  # 3 global batches of 4, the last filled up from the start
    padded = torch.cat([order, order[:2]])
    for k in range(3):  # the k-th step of both processes together is the k-th global batch
        assert sorted(torch.cat([s[2 * k:2 * k + 2] for s in shares]).tolist()) == sorted(padded[4 * k:4 * k + 4].tolist())
    assert torch.equal(share_of_batches(order, 4, 0, 1), order), "one process: the order as it is"


def test_a_views_own_change_wins_over_the_tutorial_recipe():
    params = {"train": {**CFG, "recipe": "tutorial", "lr": 0.01}, "views": {"axial": {"lr": 0.002}, "coronal": {}}}
    assert view_settings(params, "axial")["lr"] == 0.002  # the view's change, not the recipe's 3e-4
    assert view_settings(params, "coronal")["lr"] == 3e-4 and view_settings(params, "coronal")["batch_size"] == 16


def test_batchnorm_is_synchronised_over_gpus_and_keeps_the_checkpoint_layout():
    model = UNet(3, width=8)
    keys = list(model.state_dict())
    assert synchronised_batchnorm(model, CPU) is model  # SyncBatchNorm runs on GPUs only
    synced = synchronised_batchnorm(model, torch.device("cuda", 0))  # converting needs no GPU
    layers = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers and all(isinstance(m, torch.nn.SyncBatchNorm) for m in layers)
    assert list(synced.state_dict()) == keys


def resume_in_process(rank, world, port, paths, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    state = read_resume(paths[rank], "fp", 8)
    torch.save({"epoch": state["epoch"] if state else None}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_every_process_resumes_from_rank_zeros_file(tmp_path):
    """Two gloo processes; only rank 0's disk holds the resume file (another machine's rank sees none):
    both resume from it, so none starts over with fresh weights while the others carry on."""
    import socket

    torch.save({"fingerprint": "fp", "epoch": 3}, tmp_path / "resume.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [str(tmp_path / "resume.pt"), str(tmp_path / "absent.pt")]
    torch.multiprocessing.spawn(resume_in_process, args=(2, port, paths, str(tmp_path / "seen")), nprocs=2)
    assert [torch.load(tmp_path / f"seen.{r}", weights_only=True)["epoch"] for r in range(2)] == [3, 3]
    assert read_resume(tmp_path / "resume.pt", "other settings", 8) is None

