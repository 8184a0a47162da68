"""Synthesis decided with seeds (issue: synthesis that generalises): the same pipeline trained with and
without train.synth, over seeds x folds, each model scored in one table on the IBSR subjects its fold held
out (as the evaluate stage scores them), the freesurfer-dev heads (as `mriseg predict --skull-strip auto`
segments them) and the MNI152 template (benchmarks/any_scanner.py's inputs). Each synthetic run is scored
twice: BatchNorm's statistics as training left them (train.bn_refit false) and re-estimated on the real
training slices (training.refit_batchnorm, exactly what bn_refit true does after the same training). With
--norm group the networks have GroupNorm instead (train.norm), which has no statistics to refit.

    python benchmarks/synthesis_seeds.py --archive ibsr18-dev.zip --workdir /tmp/seeds \
        [--view sagittal] [--epochs 5] [--seeds 0 1] [--folds 0 1] [--synth 0 0.5] [--norm batch] [--out table.md]

The workdir is a clone of this repository (git and dvc); each run edits its params.yaml and runs
`dvc repro bundle` there.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from any_scanner import judge, off_dataset_inputs  # noqa: E402
from heads import HEADS  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from mriseg.params import NORMS  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def prepare(workdir):
    if not (workdir / "dvc.yaml").exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
        subprocess.run(["dvc", "config", "--local", "core.autostage", "false"], cwd=workdir, check=True)


def set_params(workdir, archive, view, epochs, seed, fold, synth, norm):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["archive"] = str(archive)
    params["split"].update({"folds": 5, "fold": fold, "test_size": 0.2})
    params["train"].update({"epochs": epochs, "seed": seed, "synth": synth, "bn_refit": False, "norm": norm})
    params["views"] = {view: {}}
    params["aggregate"]["weights"] = {view: 1.0}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def refitted(model_path, out_path, params):
    """The bundle with each view's BatchNorm statistics re-estimated on its real training slices."""
    from mriseg.data import Feed, SliceDataset
    from mriseg.manifest import read_manifest
    from mriseg.models import build_network
    from mriseg.training import refit_batchnorm

    bundle = torch.load(model_path, weights_only=True)
    manifest = read_manifest("data/manifest.csv")
    for view, ckpt in bundle["views"].items():
        model = build_network(ckpt, model_path)
        model = getattr(model, "net", model)  # the network itself, not its flip-averaged wrapper
        feed = Feed(SliceDataset(manifest, "train", ckpt["context"], view), params["train"]["batch_size"],
                    torch.device("cpu"))
        refit_batchnorm(model, feed, torch.device("cpu"), params["train"]["amp"])
        ckpt["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save(bundle, out_path)


def ibsr_scores(model_path):
    """Mean Dice WM, GM, CSF over the fold's test subjects, as the evaluate stage scores them."""
    from mriseg.data import SliceDataset
    from mriseg.evaluation import score_split
    from mriseg.manifest import read_manifest
    from mriseg.metrics import summarize
    from mriseg.prediction import Predictor

    predictor = Predictor(str(model_path), "cpu", 32)
    first = predictor.views[0]
    test = SliceDataset(read_manifest("data/manifest.csv"), "test", first.context, view=first.axis)
    summary = summarize(score_split(predictor, "data/MRIs", test, 32)[1])
    return [summary[f"dice_{c}"]["mean"] for c in ("white_matter", "gray_matter", "csf")]


def main():
    from mriseg.extraction import BrainExtractor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", required=True, help="zip of the IBSR development subjects")
    p.add_argument("--workdir", required=True)
    p.add_argument("--view", default="sagittal")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--synth", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--norm", default="batch", choices=NORMS, help="train.norm of every run")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    workdir, archive = Path(args.workdir).resolve(), Path(args.archive).resolve()
    prepare(workdir)
    models = workdir / "seed-models"
    models.mkdir(exist_ok=True)
    inputs = off_dataset_inputs()
    extractor = BrainExtractor(torch.device("cpu"))
    rows, params = [], None
    for fold in args.folds:
        for seed in args.seeds:
            for synth in args.synth:
                name = f"fold{fold}-seed{seed}-synth{synth:g}" + ("-groupnorm" if args.norm == "group" else "")
                params = set_params(workdir, archive, args.view, args.epochs, seed, fold, synth, args.norm)
                t0 = time.perf_counter()
                subprocess.run(["dvc", "repro", "bundle"], cwd=workdir, check=True)
                minutes = (time.perf_counter() - t0) / 60
                shutil.copy(workdir / "models/model.pt", models / f"{name}.pt")
                arm = (f"synth {synth:g}, GroupNorm" if args.norm == "group" else
                       "synth 0" if not synth else f"synth {synth:g}, BatchNorm as trained")
                variants = [(arm, models / f"{name}.pt")]
                cwd = os.getcwd()
                os.chdir(workdir)
                try:
                    if synth and args.norm == "batch":
                        refitted(models / f"{name}.pt", models / f"{name}-refit.pt", params)
                        variants.append((f"synth {synth:g}, BatchNorm refit", models / f"{name}-refit.pt"))
                    for arm, path in variants:
                        ibsr = ibsr_scores(path)
                        rows.append({"arm": arm, "fold": fold, "seed": seed, "minutes": minutes, "ibsr": ibsr,
                                     **judge(str(path), extractor, inputs)[0]})
                        print(json.dumps(rows[-1]), flush=True)
                finally:
                    os.chdir(cwd)
                (models / "rows.json").write_text(json.dumps(rows, indent=1))
    write_table(rows, args, params)


def write_table(rows, args, params):
    fmt = lambda v: f"{v:.4f}"
    lines = ["# Synthesis decided with seeds: synth 0 against the mended generator", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"`benchmarks/synthesis_seeds.py`: the {args.view} view alone, {args.epochs} epochs, train.norm "
             f"{args.norm}, folds "
             f"{args.folds} of 5 (IBSR18's 10 development subjects; 8 train, 2 held out), seeds {args.seeds}. IBSR: "
             "Dice on the fold's held-out subjects (evaluate stage's scoring); heads: the freesurfer-dev subjects "
             "through `--skull-strip auto` against FreeSurfer's labels; MNI152: the template against its tissue "
             "maps. Mean over the runs, with the spread (sd over the runs) beside it.", "",
             "| arm | runs | IBSR Dice WM / GM / CSF | heads Dice WM / GM | heads GM vol error | MNI152 Dice WM / GM |",
             "|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        ibsr = np.array([r["ibsr"] for r in mine])
        heads = np.array([np.mean([r[h][:2] for h in HEADS], axis=0) for r in mine])
        volume = np.array([np.mean([abs(r[h][2]) for h in HEADS]) for r in mine])
        mni = np.array([r["MNI152"][:2] for r in mine])
        pm = lambda a: " / ".join(f"{m:.4f} ± {s:.4f}" for m, s in zip(a.mean(0), a.std(0, ddof=1) if len(a) > 1
                                                                        else np.zeros(a.shape[1])))
        lines.append(f"| {arm} | {len(mine)} | {pm(ibsr)} | {pm(heads)} | {pm(volume[:, None])} | {pm(mni)} |")
    lines += ["", "Per run:", "", "| arm | fold | seed | minutes to train | IBSR WM / GM / CSF | "
              "swm-01 WM / GM / GM vol | niivue-01 WM / GM / GM vol | MNI152 WM / GM |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = lambda h: f"{fmt(r[h][0])} / {fmt(r[h][1])} / {r[h][2]:+.1%}"
        lines.append(f"| {r['arm']} | {r['fold']} | {r['seed']} | {r['minutes']:.1f} | "
                     f"{' / '.join(fmt(v) for v in r['ibsr'])} | {head('swm-01')} | {head('niivue-01')} | "
                     f"{fmt(r['MNI152'][0])} / {fmt(r['MNI152'][1])} |")
    lines += ["", "Full params of the last run (train.seed, train.synth and split.fold varied as above):", "",
              "```yaml", yaml.safe_dump(params, sort_keys=False).rstrip(), "```"]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
