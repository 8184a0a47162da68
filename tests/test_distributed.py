"""Training under torchrun for real: the train stage as 2 gloo processes on the CPU, in a temporary DVC
project (train.processes: 2 starts PyTorch's launcher)."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import make_project, make_tiny_archive, run, set_params

pytestmark = pytest.mark.slow  # two gloo processes per run, about a minute each on 2 cores
EPOCHS = 6


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    archive = make_tiny_archive(tmp / "tiny.zip", n=40)
    proj = make_project(tmp / "proj", {"data.archive": str(archive), "train.epochs": EPOCHS, "split.test_size": 8,
                                       "evaluate.num_examples": 2, "views": {"axial": {}},
                                       "train.batch_size": 4, "train.device": "cpu"})
    run(["dvc", "repro", "split"], proj)
    return proj


def train_stage(project, **params):
    set_params(project, {f"train.{k}": v for k, v in params.items()})
    out = run(["dvc", "repro", "train@axial"], project).stdout
    history = json.loads((project / "reports/train/axial/metrics.json").read_text())
    return out, history


def final(history):
    return {k: history["test"][k] for k in ("dice_white_matter", "dice_gray_matter", "iou")}


@pytest.fixture(scope="module")
def runs(project):
    one = train_stage(project, processes=1, seed=0)
    other_seed = train_stage(project, processes=1, seed=1)
    two = train_stage(project, processes=2, seed=0)
    return one, other_seed, two


def test_two_processes_train_as_one_within_the_spread_of_seeds(runs):
    (_, one), (_, seed1), (_, two) = runs
    # 2 processes see the same global batches, but draw their own augmentation, normalise each half batch on
    # its own (BatchNorm) and take the soft Dice of the loss per half: changes of the kind a new seed makes.
    # So the tolerance is the seed-to-seed spread of one process (at least 0.02 on this tiny data).
    spread = max(abs(final(one)[k] - final(seed1)[k]) for k in final(one))
    tolerance = max(0.02, 2 * spread)
    for key, value in final(one).items():
        assert final(two)[key] == pytest.approx(value, abs=tolerance), (key, spread)
    assert final(two)["dice_white_matter"] > 0.5, "two processes trained"


def test_only_rank_zero_writes(project, runs):
    out, _ = runs[2]
    for epoch in range(1, EPOCHS + 1):
        assert out.count(f"epoch {epoch}/{EPOCHS} train_loss=") == 1, out
    timing = pd.read_csv(project / "logs/train/axial.tsv", sep="\t")
    assert list(timing["epoch"]) == list(range(1, EPOCHS + 1))
    steps = pd.read_csv(project / "reports/train/axial/plots/metrics/test/iou.tsv", sep="\t")["step"]
    assert list(steps) == list(range(1, EPOCHS + 1))
    assert not (project / "models/resume/axial.pt").exists()


def test_killed_two_process_run_resumes_to_the_same_metrics(project, runs):
    _, uninterrupted = runs[2]
    (project / "models/views/axial.pt").unlink()
    set_params(project, {"train.processes": 2, "train.seed": 0})
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@axial"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    resume = project / "models" / "resume" / "axial.pt"
    deadline = time.time() + 300
    while not resume.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    assert resume.exists(), "rank 0 wrote no resume file before the kill"
    out = run(["dvc", "repro", "train@axial"], project).stdout
    assert "resuming from models/resume/axial.pt after epoch" in out
    resumed = json.loads((project / "reports/train/axial/metrics.json").read_text())
    assert resumed == uninterrupted


@pytest.mark.parametrize("params, message", [
    ({"processes": 0}, "train.processes must be a whole number >= 1"),
    ({"processes": 3, "batch_size": 4}, "train.batch_size=4 (the global batch) does not divide among 3 processes"),
])
def test_bad_process_settings_fail_in_one_line(project, params, message):
    set_params(project, {"train.batch_size": 4, **{f"train.{k}": v for k, v in params.items()}})
    r = run(["dvc", "repro", "train@axial"], project, check=False)
    assert r.returncode != 0
    assert message in r.stderr + r.stdout
    assert not (project / "models/resume/axial.pt").exists()
    set_params(project, {"train.processes": 1, "train.batch_size": 4})


def test_changing_processes_reruns_only_training_and_what_follows(project):
    set_params(project, {"train.processes": 1, "train.batch_size": 4, "train.seed": 0})
    run(["dvc", "repro"], project)
    assert "Running stage" not in run(["dvc", "repro"], project).stdout, "nothing changed, nothing runs"
    run("git add -A && git commit -qm 'one process'", project)
    out = run(["dvc", "exp", "run", "-S", "train.processes=2", "-S", "train.device=cpu"], project).stdout
    assert {s for s in ("fetch", "unzip", "split", "train@axial", "bundle", "evaluate")
            if f"Running stage '{s}'" in out} == {"train@axial", "bundle", "evaluate"}
