"""The IBSR benchmark: its fold manifests, short real runs on a small made archive (alone and as parallel
processes), and IBSR subjects turned into FreeSurfer's form."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, SHARED_IBSR
from mriseg.data import SliceDataset
from mriseg.make_archive import load_labels, make_archive
from mriseg.models import load_checkpoint
from test_make_archive import ibsr_folder


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ibsr_benchmark", ROOT / "benchmarks" / "ibsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thinned_training_slices_keep_their_real_neighbours(tmp_path):
    rows = []
    for s, subject in enumerate("ABC"):
        for z in range(8):
            image, mask = tmp_path / f"sub-{subject}_slice-{z}_{8 * s + z}.npy", tmp_path / f"m{8 * s + z}.npy"
            np.save(image, np.full((2, 3), 10 * s + z, np.float32))
            np.save(mask, np.zeros((2, 3), np.uint8))
            rows.append({"image": str(image), "mask": str(mask), "ix": str(8 * s + z), "subject": subject, "slice": z,
                         "view": "axial", "z": -1})
    df = load_benchmark().fold_manifest(rows, ["C"], n_val=1, train_stride=2)
    assert df.groupby("split")["subject"].agg(lambda s: "".join(sorted(set(s)))).to_dict() == {
        "test": "C", "val": "A", "train": "B", "unused": "B"}
    train = SliceDataset(df, "train", context=1)
    assert list(train.rows["slice"]) == [0, 2, 4, 6]
    # Odd slices are not trained on, but still lend their pixels as neighbours (as at test time).
    top, left = 7, 6  # 2 x 3 slices centred in 16 x 16
    assert [train[i][0][:, top, left].tolist() for i in range(4)] == [[10, 10, 11], [11, 12, 13], [13, 14, 15],
                                                                      [15, 16, 17]]
    assert len(SliceDataset(df, "test", context=1)) == 8


def four_subject_archive(tmp_path, pixel_size=1.0):
    make_archive(ibsr_folder(tmp_path, ("S1", "S2", "S3", "S4")), tmp_path / "a.zip", labels="ibsr", axis="axial",
                 pixel_size=pixel_size, min_tissue=10)
    return tmp_path / "a.zip"


def run_benchmark(*args):
    return subprocess.run([sys.executable, ROOT / "benchmarks" / "ibsr.py", *args], capture_output=True, text=True)


def test_variants_are_compared_with_the_tutorial_run_of_the_same_overrides():
    row = {"subjects": 4, "axis": "axial", "pixel_size": 1.0, "folds": 2, "train_stride": 1, "device": "cpu",
           "dice_wm": 0.9, "dice_gm": 0.9, "train_slices": 10, "best_epoch": 1, "minutes": 1.0, "epochs": 30}
    ious = {("unet", "tutorial"): [0.70, 0.72], ("unet", "tutorial,epochs=60"): [0.60, 0.61],
            ("unet", "mriseg,epochs=60"): [0.75, 0.80], ("unet", "mriseg,epochs=60.0,val=0"): [0.75, 0.80],
            ("unet", "mriseg,lr=0.001"): [0.74, 0.71], ("resnet", "tutorial"): [0.70, 0.70],
            ("resnet", "mriseg,epochs=60"): [0.71, 0.73]}
    results = [{**row, "fold": fold, "test subjects": "S1", "model": model, "recipe": recipe, "iou": iou}
               for (model, recipe), values in ious.items() for fold, iou in enumerate(values)]
    gains = {tuple(line.split(" | ")[:2]): line.split(" | ")[4] for line in load_benchmark().table(results).splitlines()
             if line.startswith(("| unet |", "| resnet |"))}
    assert gains == {
        ("| unet", "tutorial"): "–",
        ("| unet", "tutorial,epochs=60"): "-0.1050 (better in 0 of 2)",
        ("| unet", "mriseg,epochs=60"): "+0.1700 (better in 2 of 2; vs tutorial,epochs=60)",
        ("| unet", "mriseg,epochs=60.0,val=0"): "+0.1700 (better in 2 of 2; vs tutorial,epochs=60)",
        ("| unet", "mriseg,lr=0.001"): "+0.0150 (better in 1 of 2)",
        ("| resnet", "tutorial"): "–",
        # No 60-epoch tutorial run for this network: against its plain tutorial run.
        ("| resnet", "mriseg,epochs=60"): "+0.0200 (better in 2 of 2)"}


def test_benchmark_runs_on_a_made_archive_and_pairs_variants_with_the_same_overrides(tmp_path):
    """Real training for one epoch per run, on an archive made once (as parallel GPU runs share one);
    'mriseg,epochs=2' is compared with 'tutorial,epochs=2', not with the 1-epoch 'tutorial'."""
    jsonl, out = tmp_path / "rows.jsonl", tmp_path / "table.md"
    run = run_benchmark("--archive", four_subject_archive(tmp_path, pixel_size=1.5), "--src", tmp_path / "absent",
                        "--folds", "2", "--only-folds", "1", "--epochs", "1", "--train-stride", "2", "--models", "unet",
                        "--device", "cpu", "--jsonl", jsonl, "--out", out, "--keep-models", tmp_path / "models",
                        "--variants", "tutorial", "tutorial,epochs=2", "mriseg,epochs=2")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["fold"], r["recipe"], r["epochs"], r["best_epoch"]) for r in rows] == [
        (1, "tutorial", 1, 1), (1, "tutorial,epochs=2", 2, 2), (1, "mriseg,epochs=2", 2, 2)]
    # Rows record the batch size: "mriseg" means params.yaml's recipe of the day; the tutorial's is fixed.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    assert [r["batch_size"] for r in rows] == [16, 16, params["batch_size"]]
    kept = sorted((tmp_path / "models").iterdir())
    assert [p.name for p in kept] == ["fold1-unet-mriseg_epochs_2.pt", "fold1-unet-tutorial.pt",
                                      "fold1-unet-tutorial_epochs_2.pt"]
    _, ckpt = load_checkpoint(kept[0])
    assert ckpt["loss"] == params["loss"] and len(ckpt["history"]) == 2
    assert all(r["pixel_size"] == 1.5 and 0 <= r["iou"] <= 1 for r in rows)  # read from the archive
    assert {r["torch"] for r in rows} == {torch.__version__}
    text = out.read_text()
    assert text.startswith("4 IBSR subjects, axial slices at 1.5 mm, 2-fold subject-wise CV, 1/2 epochs,")
    gain = next(line for line in text.splitlines() if line.startswith("| unet | mriseg,epochs=2 | 1 |"))
    expected = rows[2]["iou"] - rows[1]["iou"]
    assert f"| {expected:+.4f} (better in {int(expected > 0)} of 1; vs tutorial,epochs=2) |" in gain


def run_parallel(*args):
    env = {**os.environ, "IBSR_ARGS": "--folds 2 --epochs 1 --train-stride 2 --device cpu", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    return subprocess.run(["bash", ROOT / "benchmarks" / "ibsr_parallel.sh", *args], capture_output=True, text=True,
                          env=env)


def test_parallel_runs_share_one_archive_and_merge_their_rows(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("0 unet tutorial\n1 unet mriseg,epochs=2\n")
    run = run_parallel(four_subject_archive(tmp_path), tmp_path / "out", "2", "600", jobs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(line.split()[1:] for line in run.stdout.splitlines() if " rc=" in line) == [
        ["0-unet-tutorial", "rc=0"], ["1-unet-mriseg,epochs=2", "rc=0"]]
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["fold"], r["recipe"]) for r in rows) == [(0, "tutorial"), (1, "mriseg,epochs=2")]
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert any(line.startswith("| 0 | ") and "| unet | tutorial |" in line for line in table)
    assert any(line.startswith("| 1 | ") and "| unet | mriseg,epochs=2 |" in line for line in table)


def test_parallel_runs_stop_when_time_is_up_and_keep_no_process(tmp_path):
    archive, jobs = four_subject_archive(tmp_path), tmp_path / "jobs.txt"
    jobs.write_text("0 unet mriseg,epochs=50\n1 unet mriseg,epochs=50\n")
    run = run_parallel(archive, tmp_path / "out", "2", "3", jobs)
    assert run.returncode == 1 and "stopped after 3 s" in run.stderr and "no run finished" in run.stderr
    assert subprocess.run(["pgrep", "-f", str(archive)], capture_output=True).stdout == b""
    again = run_parallel(archive, tmp_path / "out", "2", "3", jobs)  # its rows would be counted twice
    assert again.returncode == 2 and again.stderr.startswith(f"{tmp_path / 'out' / 'rows'}: exists;")


def test_benchmark_refuses_bad_arguments_in_one_line(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"")
    for args, message in [(["--archive", tmp_path / "none.zip"], f"{tmp_path / 'none.zip'}: not found (--archive)"),
                          (["--archive", archive, "--axis", "axial"],
                           f"{archive}: --axis and --pixel-size make an archive; --archive takes its slices as they are"),
                          (["--archive", archive, "--folds", "5", "--only-folds", "1,5"],
                           "--only-folds 1,5: folds are 0 to 4 (--folds 5)")]:
        run = run_benchmark(*args)
        assert run.returncode == 1 and run.stderr.strip() == message


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
