"""The DVC pipeline for real: a temporary git repo, `dvc repro`, `dvc exp run -S`, `dvc metrics diff`."""
import ast
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, cohort_zip, make_project, make_tiny_archive, run, set_params
from mriseg.labels import load_labels
from mriseg.metrics import confusion_of, subject_scores
from mriseg.volumes import load_volume

STAGES = ("fetch", "unzip", "split", "train@axial", "bundle", "evaluate")  # a slice archive: one view
VIEW_STAGES = ("train@axial", "train@coronal", "train@sagittal")


def ran(output):
    return {s for s in STAGES + VIEW_STAGES if f"Running stage '{s}'" in output}


def imported_modules(script):
    """The mriseg modules a script can import: its imports and theirs, transitively, those inside functions too."""
    seen, todo = set(), [ROOT / script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1 or (node.module or "").startswith("mriseg"):
                module = (node.module or "").removeprefix("mriseg").lstrip(".").split(".")[0]
                names = [module] if module else [a.name for a in node.names]
                todo += [p for p in (ROOT / "src/mriseg" / f"{n}.py" for n in names) if p.exists()]
                todo.append(ROOT / "src/mriseg/__init__.py")
    return {str(p.relative_to(ROOT)) for p in seen} - {script}


def test_every_stage_depends_on_the_code_it_runs_and_no_more():
    """A change to any module a stage imports re-runs that stage, and a change to any other leaves it alone
    (editing the network must not throw away a preprocessed cohort): dvc.yaml lists exactly those as deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        script = stage["cmd"].split()[1]
        code = {d for d in stage["deps"] if d.startswith("src/")}
        missing, extra = imported_modules(script) - code, code - imported_modules(script)
        assert script in stage["deps"] and not missing, f"stage {name}: add {sorted(missing)} to its deps"
        assert not extra, f"stage {name}: {sorted(extra)} are not imported: remove them from its deps"
    for name in ("fetch", "unzip", "split"):  # the data layer never imports the network
        assert "src/mriseg/models.py" not in stages[name]["deps"], name


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    archive = make_tiny_archive(tmp / "tiny.zip", n=30)
    proj = make_project(tmp / "proj", {"data.archive": str(archive), "train.epochs": 2, "split.test_size": 6,
                                       "evaluate.num_examples": 3, "views": {"axial": {}}})
    out = run(["dvc", "repro"], proj).stdout
    assert ran(out) == set(STAGES)
    return proj


def test_repro_writes_metrics_and_reports(project):
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    for key in ("iou", "iou_white_matter", "iou_gray_matter", "dice_white_matter", "dice_gray_matter", "loss"):
        assert 0 <= metrics[key] <= (1 if key != "loss" else 10), key
    assert metrics["test_slices"] == 6
    assert "dice_csf" not in metrics  # the tutorial's slice layout: three classes, no CSF to score
    for png in ("curves.png", "predictions.png"):
        assert (project / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = pd.read_csv(project / "data" / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 24, "test": 6}
    loss = pd.read_csv(project / "reports/train/axial/plots/metrics/test/loss.tsv", sep="\t")
    assert list(loss["step"]) == [1, 2]


def test_nothing_changed_runs_nothing(project):
    out = run(["dvc", "repro"], project).stdout
    assert ran(out) == set() and "up to date" in out


def git_changes(project):
    return run(["git", "status", "--porcelain", "--untracked-files=all"], project).stdout


def test_a_forced_rerun_with_the_same_seed_changes_no_tracked_file(project):
    """No wall clock and no temporary names in what DVC and git track: a retrain on the CPU with identical
    params and seed writes every output byte for byte as before (timing goes to the untracked logs/)."""
    run("git add -A && git commit -qm 'first run'", project)
    out = run(["dvc", "repro", "--force"], project).stdout
    assert ran(out) == set(STAGES)
    assert git_changes(project) == ""
    assert (project / "logs" / "train" / "axial.tsv").exists()


def test_exp_run_resnet_reruns_only_train_and_evaluate_and_metrics_diff(project):
    run("git add -A && git commit -qm 'unet baseline' --allow-empty", project)
    before = json.loads((project / "reports" / "metrics.json").read_text())
    out = run(["dvc", "exp", "run", "-S", "model=resnet", "-S", "train.pretrained=false"], project).stdout
    assert ran(out) == {"train@axial", "bundle", "evaluate"}
    after = json.loads((project / "reports" / "metrics.json").read_text())
    assert after != before
    diff = run(["dvc", "metrics", "diff", "--json"], project).stdout
    changes = json.loads(diff)["reports/metrics.json"]
    assert changes, "dvc metrics diff reports no change"
    for key, change in changes.items():  # unchanged metrics are left out of the diff
        assert change["old"] == pytest.approx(before[key]) and change["new"] == pytest.approx(after[key]), key
    assert {k for k in before if before[k] != after[k]} == set(changes)
    show = run(["dvc", "exp", "show", "--csv"], project).stdout
    assert "model" in show.splitlines()[0] and "resnet" in show
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    assert (project / "plots_html" / "index.html").exists()


def test_editing_the_network_keeps_the_prepared_data(project):
    """An edit of models.py re-runs training and what follows, never fetch, unzip or split (a real cohort's
    preprocessing can take hours)."""
    models = project / "src" / "mriseg" / "models.py"
    models.write_text(models.read_text() + "\n# an edit of the network's code\n")
    try:
        out = run(["dvc", "repro"], project).stdout
        assert ran(out) == {"train@axial", "bundle", "evaluate"}
    finally:
        run("git checkout -q src/mriseg/models.py", project)
        run(["dvc", "repro"], project)  # back to the committed run (from the run-cache)


def test_split_param_reruns_split_train_evaluate(project):
    out = run(["dvc", "exp", "run", "-S", "split.seed=7"], project).stdout
    assert ran(out) == {"split", "train@axial", "bundle", "evaluate"}


def listing(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_archive_fails_unzip_in_one_line_and_the_cache_brings_the_data_back(project, tmp_path):
    """Without persist, DVC clears a stage's outputs before running it; unzip writes to a temporary folder,
    so a refused archive leaves nothing half-written, and the last good data comes back from the cache."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("MRIs/MRIs/img_1.npy", b"not numpy at all")
        zf.writestr("MRIs/Segmentations/segm_1.npy", b"not numpy either")
    data_before = listing(project / "data" / "MRIs")
    set_params(project, {"data.archive": str(bad)})
    r = run(["dvc", "repro", "unzip"], project, check=False)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("unzip: error:")]
    assert len(errors) == 1 and "img_1.npy" in errors[0] and "not a valid .npy" in errors[0]
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitignore", "archive.zip", "manifest.csv"]
    run("git checkout -q params.yaml", project)
    out = run(["dvc", "repro", "unzip"], project).stdout
    assert ran(out) == set() and "Stage 'unzip' is cached - skipping run" in out
    assert listing(project / "data" / "MRIs") == data_before


def test_switching_the_archive_back_restores_it_from_the_run_cache(project, tmp_path):
    first = yaml.safe_load((project / "params.yaml").read_text())["data"]["archive"]
    data_before, zip_before = listing(project / "data" / "MRIs"), (project / "data" / "archive.zip").read_bytes()
    other = make_tiny_archive(tmp_path / "other.zip", n=20, seed=1)
    out = run(["dvc", "exp", "run", "-S", f"data.archive={other}"], project).stdout
    assert {"fetch", "unzip"} <= ran(out)
    assert listing(project / "data" / "MRIs") != data_before
    hidden = tmp_path / "away.zip"
    os.replace(first, hidden)  # fetching it again would fail: what comes back can only come from the cache
    try:
        out = run(["dvc", "exp", "run", "-S", f"data.archive={first}"], project).stdout
    finally:
        os.replace(hidden, first)
    assert not {"fetch", "unzip"} & ran(out), out
    assert "Stage 'fetch' is cached - skipping run" in out
    assert (project / "data" / "archive.zip").read_bytes() == zip_before
    assert listing(project / "data" / "MRIs") == data_before


def test_killed_dvc_train_resumes(project):
    set_params(project, {"train.epochs": 12})  # killed half a second after its first epoch's resume file
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@axial"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    resume = project / "models" / "resume" / "axial.pt"
    deadline = time.time() + 300
    while not resume.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert resume.exists(), "training wrote no per-epoch resume file"
    out = run(["dvc", "repro", "train@axial"], project).stdout
    assert "resuming from models/resume/axial.pt after epoch" in out
    steps = pd.read_csv(project / "reports/train/axial/plots/metrics/train/loss.tsv", sep="\t")["step"]
    assert list(steps) == list(range(1, 13)), "the resumed curve continues without gaps or repeats"
    assert not resume.exists()
    run("git checkout -q params.yaml", project)


@pytest.fixture(scope="module")
def cohort_project(tmp_path_factory):
    """The pipeline on a zip of labelled volumes, a folder per subject as IBSR is published."""
    tmp = tmp_path_factory.mktemp("cohort")
    archive = cohort_zip(tmp / "cohort.zip", subjects=[f"s{i:02d}" for i in range(5)], shape=(28, 32, 24))
    proj = make_project(tmp / "proj", {"data.archive": str(archive), "data.min_tissue": 10, "train.epochs": 2,
                                       "split.test_size": 2, "evaluate.num_examples": 3})
    out = run(["dvc", "repro"], proj).stdout
    assert ran(out) == set(STAGES + VIEW_STAGES) and "preprocessed 5 subjects" in out
    return proj, archive


def test_cohort_of_volumes_trains_and_is_scored_per_subject_in_3d(cohort_project):
    project, _ = cohort_project
    meta = json.loads((project / "data" / "MRIs" / "mriseg.json").read_text())
    assert meta["layout"] == "volumes" and sorted(meta["subjects"]) == [f"s{i:02d}" for i in range(5)]
    assert meta["classes"] == ["white_matter", "gray_matter", "background", "csf"] and meta["csf"] == "intensity"
    bundle = torch.load(project / "models" / "model.pt", weights_only=True)
    assert {(v["csf"], v["skull_strip"]) for v in bundle["views"].values()} == {("intensity", "no")}, \
        "each checkpoint records how its training brains were made"
    manifest = pd.read_csv(project / "data" / "manifest.csv")
    assert (manifest.groupby("subject")["split"].nunique() == 1).all()  # no subject on two sides
    table = pd.read_csv(project / "reports" / "subjects.csv")
    subjects = table[table["scored"] == "aggregate"]
    assert sorted(subjects["subject"]) == sorted(set(manifest.loc[manifest["split"] == "test", "subject"]))
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test_subjects"] == 2
    for key in ("dice_white_matter", "dice_gray_matter", "volume_error_white_matter", "dice_csf"):
        assert metrics[key] == metrics["per_subject"][key]["mean"] == pytest.approx(subjects[key].mean(), abs=1e-5)
        assert metrics["per_subject"][key]["sd"] == pytest.approx(subjects[key].std(), abs=1e-5)
    # Each view alone is scored too, so that `dvc metrics` shows what the aggregate gains.
    assert sorted(metrics["views"]) == ["axial", "coronal", "sagittal"]
    assert all(0 <= metrics["views"][v]["dice_white_matter"] <= 1 for v in metrics["views"])
    assert len({metrics["views"][v]["dice_gray_matter"] for v in metrics["views"]}) == 3  # three networks
    for view, rows in table[table["scored"] != "aggregate"].groupby("scored"):  # each view alone, per subject
        assert sorted(rows["subject"]) == sorted(subjects["subject"])
        assert metrics["views"][view]["dice_white_matter"] == pytest.approx(rows["dice_white_matter"].mean(), abs=1e-5)
    assert sorted(set(table["scored"])) == ["aggregate", "axial", "coronal", "sagittal"]
    assert (subjects["manual_white_matter_ml"] > 0).all()
    assert ran(run(["dvc", "repro"], project).stdout) == set()


def test_one_views_params_rerun_only_that_view_and_weights_only_the_bundle(cohort_project):
    project, _ = cohort_project
    run("git add -A && git commit -qm 'three views'", project)
    out = run(["dvc", "exp", "run", "-S", "+views.coronal.epochs=1"], project).stdout
    assert ran(out) == {"train@coronal", "bundle", "evaluate"}
    out = run(["dvc", "exp", "run", "-S", "aggregate.weights.sagittal=0"], project).stdout
    assert ran(out) == {"bundle", "evaluate"}
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["views"]["sagittal"] != {}  # still scored alone; it only no longer counts in the aggregate
    run("git checkout -q params.yaml dvc.lock reports && dvc checkout -q", project)  # back to the committed run


def test_evaluate_stage_and_predict_give_a_volume_the_same_dice(cohort_project, tmp_path):
    """A test subject scored by the evaluate stage (from the preprocessed cohort) and by `mriseg predict
    --labels --skull-strip no` (from the original NIfTI files in the zip; the pipeline's data.skull_strip is no,
    and auto would measure an extracted input within deepbet's outline): the same prediction on the same grid."""
    project, archive = cohort_project
    subjects = pd.read_csv(project / "reports" / "subjects.csv")
    subjects = subjects[subjects["scored"] == "aggregate"].reset_index(drop=True)
    subject = subjects["subject"][0]
    with zipfile.ZipFile(archive) as zf:
        for name in (f"{subject}.nii.gz", f"{subject}_seg.nii.gz"):
            (tmp_path / name).write_bytes(zf.read(f"{subject}/{name}"))
    r = subprocess.run([sys.executable, "-m", "mriseg", "predict", "--model", project / "models" / "model.pt",
                        "--out", tmp_path / "out", "--labels", "ibsr", "--skull-strip", "no", "--device", "cpu",
                        tmp_path / f"{subject}.nii.gz"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    predicted = pd.read_csv(tmp_path / "out" / "volumes.csv").iloc[0]
    for tissue in ("white_matter", "gray_matter"):
        assert predicted[f"dice_{tissue}"] == pytest.approx(subjects[f"dice_{tissue}"][0], abs=1e-6)
        assert predicted[f"{tissue}_ml"] == pytest.approx(subjects[f"{tissue}_ml"][0], rel=1e-6)
    # Gray matter against the labels as traced (their own CSF, before data.csf re-made it), from the NIfTI files.
    image = load_volume(tmp_path / f"{subject}.nii.gz")[1]
    traced = load_labels([tmp_path / f"{subject}_seg.nii.gz"], "ibsr", tmp_path / f"{subject}.nii.gz", image, "labels")
    mask = np.asanyarray(nib.load(tmp_path / "out" / f"{subject}_mask.nii.gz").dataobj)
    want = subject_scores(confusion_of(mask, traced))
    for key in ("dice_gray_matter", "volume_error_gray_matter"):
        assert subjects[f"{key}_as_traced"][0] == pytest.approx(want[key], abs=1e-5)
        assert predicted[f"{key}_as_traced"] == pytest.approx(want[key], abs=1e-5), "predict --labels reports it too"
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert "dice_gray_matter_as_traced" in metrics and "dice_gray_matter_as_traced" in metrics["views"]["axial"]
