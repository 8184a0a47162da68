"""Cross-validation the DVC way: folds as params, a real `dvc exp run --queue` / `dvc queue start`, the
experiments compared from `dvc exp show --json`, and the model declared as a DVC artifact."""
import json
import time

import pytest
import yaml

from conftest import ROOT, cohort_zip, make_project, mriseg, mriseg_console, run
from mriseg.experiments import ExperimentsError, compare, finished_experiments, markdown, split_views


def exp(name, params, metrics, state="success"):
    return {"name": name, "executor": {"state": state} if state else None,
            "revs": [{"rev": f"{name:0<40}", "name": name,
                      "data": {"params": {"params.yaml": {"data": params}},
                               "metrics": {"reports/metrics.json": {"data": metrics}}}}]}


def show(*experiments):
    return [{"rev": "workspace", "data": {}, "experiments": None},
            {"rev": "c" * 40, "name": "main", "data": {}, "experiments": list(experiments)}]


def cv_run(name, recipe, fold, seed, wm, gm, **kw):
    return exp(name, {"split": {"folds": 3, "fold": fold, "seed": 42}, "train": {"recipe": recipe, "seed": seed},
                      "views": {"axial": {}}},
               {"dice_white_matter": wm, "dice_gray_matter": gm, "trained_on": {"device": "cpu", "torch": "2"}}, **kw)


def test_compare_groups_by_differing_params_and_pairs_by_fold_and_seed():
    runs = [cv_run(f"t{f}{s}", "tutorial", f, s, 0.90 + f / 100, 0.91) for f in range(3) for s in range(2)]
    runs += [cv_run(f"m{f}{s}", "mriseg", f, s, 0.92 + f / 100 - (f == 2) * 0.05, 0.93) for f in range(3)
             for s in range(2)]
    runs += [cv_run("queued", "mriseg", 0, 5, 0.99, 0.99, state="queued"),
             cv_run("failed", "mriseg", 1, 5, 0.99, 0.99, state="failed")]
    rows = finished_experiments(show(*runs))
    assert len(rows) == 12, "queued and failed experiments are not compared"
    result = compare(rows, baseline="train.recipe=tutorial")
    assert result["differ"] == ["train.recipe"]
    groups = {g["group"]: g for g in result["groups"]}
    mine = groups["train.recipe=mriseg"]
    assert mine["runs"] == 6 and mine["pairs"] == 6
    assert mine["gain"]["dice_white_matter"][0] == pytest.approx((4 * 0.02 - 2 * 0.03) / 6)
    assert mine["wins"] == {"dice_white_matter": 4, "dice_gray_matter": 6}
    assert groups["train.recipe=tutorial"]["scores"]["dice_gray_matter"] == pytest.approx((0.91, 0.0))
    table = markdown(result)
    assert table.count("| m") == 6 and "+0.0033 ±" in table and "(4/6; seed sd 0.0000)" in table


def test_runs_that_tested_other_subjects_are_never_paired():
    """Another split.seed deals the subjects into other folds: fold 0 of seed 7 is not fold 0 of seed 42."""
    runs = [cv_run(f"a{f}", "mriseg", f, 0, 0.90, 0.91) for f in range(3)]
    other = [cv_run(f"b{f}", "mriseg", f, 0, 0.95, 0.96) for f in range(3)]
    for r in other:
        r["revs"][0]["data"]["params"]["params.yaml"]["data"]["split"]["seed"] = 7
    result = compare(finished_experiments(show(*runs, *other)), baseline="split.seed=42")
    assert result["differ"] == ["split.seed"]
    seven = {g["group"]: g for g in result["groups"]}["split.seed=7"]
    assert seven["runs"] == 3 and "pairs" not in seven and "gain" not in seven
    assert "no pairs" in markdown(result)


def test_compare_reports_the_seed_to_seed_spread_within_folds():
    runs = [cv_run(f"m{f}{s}", "mriseg", f, s, 0.90 + f / 100 + s * 0.02, 0.93) for f in range(3) for s in range(2)]
    runs += [cv_run(f"t{f}", "tutorial", f, 0, 0.90, 0.91) for f in range(3)]
    result = compare(finished_experiments(show(*runs)), baseline="train.recipe=tutorial")
    groups = {g["group"]: g for g in result["groups"]}
    # Within each fold the seeds differ by 0.02: sd 0.02 / sqrt(2), whatever the spread across folds.
    assert groups["train.recipe=mriseg"]["seed_sd"]["dice_white_matter"] == pytest.approx(0.02 / 2 ** 0.5)
    assert groups["train.recipe=mriseg"]["seed_sd"]["dice_gray_matter"] == pytest.approx(0.0)
    assert "seed_sd" not in groups["train.recipe=tutorial"]
    table = markdown(result)
    assert "seed sd Dice white matter |" in table and "| 0.0141 | 0.0000 |" in table and "one seed" in table
    # The gain's own spread across seeds, from pairs of the same fold and seed (the baseline ran seed 0 only).
    result = compare(finished_experiments(show(*runs, *(cv_run(f"t{f}1", "tutorial", f, 1, 0.95, 0.91)
                                                        for f in range(3)))), baseline="train.recipe=tutorial")
    mine = {g["group"]: g for g in result["groups"]}["train.recipe=mriseg"]
    # gains per fold: seed 0 f/100, seed 1 f/100 + 0.02 - 0.05 -> differ by 0.03 within every fold
    assert mine["gain_seed_sd"]["dice_white_matter"] == pytest.approx(0.03 / 2 ** 0.5)
    assert "(2/6; seed sd 0.0212)" in markdown(result)
    assert "seed sd" not in markdown(compare(finished_experiments(show(*runs[6:]))))


def test_compare_views_pairs_each_view_alone_with_the_aggregate_of_its_run(tmp_path):
    runs = []
    for fold in range(3):
        run_ = cv_run(f"f{fold}", "mriseg", fold, 0, 0.93 + fold / 100, 0.94)
        run_["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["views"] = {
            "coronal": {"dice_white_matter": 0.92 + fold / 100, "dice_gray_matter": 0.95},
            "axial": {"dice_white_matter": 0.90, "dice_gray_matter": 0.93}}
        runs.append(run_)
    rows = split_views(finished_experiments(show(*runs)))
    assert len(rows) == 9, "each run once aggregated and once per view alone"
    result = compare(rows, baseline="scored=coronal alone")
    assert result["differ"] == ["scored"]
    groups = {g["group"]: g for g in result["groups"]}
    assert sorted(groups) == ["scored=aggregate", "scored=axial alone", "scored=coronal alone"]
    aggregate = groups["scored=aggregate"]
    assert aggregate["pairs"] == 3 and aggregate["wins"] == {"dice_white_matter": 3, "dice_gray_matter": 0}
    assert aggregate["gain"]["dice_white_matter"] == pytest.approx((0.01, 0.0))
    assert groups["scored=axial alone"]["scores"]["dice_gray_matter"] == pytest.approx((0.93, 0.0))
    assert "| f2 | scored=axial alone | 2 | 0 | 0.9000 | 0.9300 |" in markdown(result)
    (tmp_path / "show.json").write_text(json.dumps(show(*runs)))
    out = mriseg_console("compare", "--json", tmp_path / "show.json", "--views", "--baseline", "scored=coronal alone")
    assert out.returncode == 0 and "| scored=aggregate | 3 |" in out.stdout and "(3/3)" in out.stdout, out.stderr
    out = mriseg("compare", "--json", tmp_path / "show.json", "--views", "--where", "split.fold=2")
    assert out.returncode == 0 and "| scored=aggregate | 1 |" in out.stdout and "| f1 |" not in out.stdout
    none = mriseg("compare", "--json", tmp_path / "show.json", "--where", "split.fold=7")
    assert none.returncode == 2 and "none of the 3 finished experiments matches" in none.stderr
    bad = mriseg("compare", "--json", tmp_path / "show.json", "--where", "split.fold")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "compare: error: --where split.fold: expected KEY=VALUE, e.g. train.epochs=30", bad.stderr


def test_compare_refuses_what_it_cannot_compare():
    with pytest.raises(ExperimentsError, match="no finished experiment"):
        compare(finished_experiments(show(cv_run("q", "mriseg", 0, 0, 0.9, 0.9, state="running"))))
    rows = finished_experiments(show(cv_run("a", "mriseg", 0, 0, 0.9, 0.9)))
    with pytest.raises(ExperimentsError, match="--baseline 'x' is none of the groups: all runs"):
        compare(rows, baseline="x")
    with pytest.raises(ExperimentsError, match="no number for iou"):
        compare(rows, metrics=["iou"])
    twice = finished_experiments(show(cv_run("a", "mriseg", 0, 0, 0.9, 0.9), cv_run("b", "mriseg", 0, 0, 0.8, 0.9)))
    with pytest.raises(ExperimentsError, match="experiments a and b both ran all runs with split.fold=0, train.seed=0"):
        compare(twice)


def test_dvc_yaml_declares_the_model_artifact_and_its_plots(tmp_path):
    from dvc.repo import Repo

    artifacts = Repo(str(ROOT)).artifacts.read()["dvc.yaml"]
    model = artifacts["tissue-segmenter"]
    assert model.type == "model" and "unet" in model.labels and model.desc
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert model.path in stages["stages"]["bundle"]["outs"], "the artifact is the bundle stage's output"
    titles = [next(iter(p)) for p in stages["plots"]]
    assert titles == ["Loss", "IoU", "Dice white matter", "Dice gray matter", "Dice CSF"]


@pytest.mark.slow
def test_cross_validation_queued_and_compared(tmp_path):
    """Three folds of a three-subject cohort (the sample has two subjects) through DVC's own queue."""
    archive = cohort_zip(tmp_path / "cohort.zip", subjects=["s01", "s02", "s03"], shape=(24, 28, 20))
    project = make_project(tmp_path / "proj", {
        "data.archive": str(archive), "data.min_tissue": 10, "train.epochs": 1, "evaluate.num_examples": 2,
        "views": {"axial": {}}, "aggregate.weights": {"axial": 1.0}})
    run(["dvc", "exp", "run", "--queue", "-S", "split.folds=3", "-S", "split.fold=range(0,3)"], project)
    run(["dvc", "queue", "start", "-j", "1"], project)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(2)
    assert status.count("Success") == 3, status
    rows = finished_experiments(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert sorted(r["params"]["split.fold"] for r in rows) == [0, 1, 2]
    assert all(r["metrics"]["test_subjects"] == 1 and "dice_white_matter" in r["metrics"] for r in rows)
    tested = {r["metrics"]["per_subject"]["dice_white_matter"]["mean"] for r in rows}
    assert len(rows) == 3 and tested
    out = mriseg("compare", "--out", str(tmp_path / "cv"), cwd=project)
    assert out.returncode == 0, out.stderr
    run_rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "| all runs |" in line]
    assert len(run_rows) == 3 + 1, out.stdout  # one row per experiment, and the one group's summary
    assert (tmp_path / "cv.png").read_bytes()[:4] == b"\x89PNG"
    record = (tmp_path / "cv.md").read_text()
    assert '"split.folds": 3' in record and "torch" in record and str(archive) in record
