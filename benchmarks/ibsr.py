"""Tutorial recipe vs mriseg's default recipe on real IBSR subjects, subject-wise cross-validation.

The shared IBSR subjects become one archive (`mriseg make-archive --labels ibsr`); each fold holds out
whole subjects for testing. For every fold, network and variant the same epochs are trained. A
variant is a recipe with optional overrides of params.yaml's `train` section: `mriseg` is that
section as it is, `tutorial` the same with the tutorial's settings (BCE on one-hot masks, no
augmentation, constant learning rate, random 1-channel stem), `mriseg,augment=false,val=1` overrides
two switches (`val=N` holds out N training subjects to pick the best epoch). Scores on the held-out
subjects: IoU as the tutorial computes it, and dataset-level Dice per tissue.

    python benchmarks/ibsr.py                     # CPU default, sized for < 45 min on 2 cores
    python benchmarks/ibsr.py --folds 5 --epochs 30 --train-stride 1     # on a GPU
    python benchmarks/ibsr.py --models unet --variants tutorial mriseg mriseg,augment=false
    python benchmarks/ibsr.py --variants tutorial,epochs=60 mriseg,epochs=60    # compared with each other
    benchmarks/ibsr_parallel.sh ibsr.zip out/    # 5 folds on one GPU, one process per run, from one archive
"""
import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from mriseg.archive import extract_archive
from mriseg.data import SliceDataset, archive_metadata, list_pairs
from mriseg.make_archive import make_archive
from mriseg.evaluation import score
from mriseg.models import load_checkpoint
from mriseg.training import pick_device, resolve_recipe, train

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_NAMES = r"[^\w.-]"


def folds_of(subjects, k, seed):
    order = np.random.default_rng(seed).permutation(sorted(subjects))
    return [sorted(order[i::k]) for i in range(k)]


def parse_variant(spec):
    """'mriseg,loss=ce,val=1' -> ('mriseg', {'loss': 'ce'}, 1)."""
    recipe, *items = spec.split(",")
    if recipe not in ("mriseg", "tutorial"):
        raise SystemExit(f"--variants {spec!r}: starts with mriseg or tutorial")
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variants {spec!r}: {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    return recipe, overrides, int(overrides.pop("val", 0))


def fold_manifest(rows, test_subjects, n_val=0, train_stride=1):
    """The manifest of one fold: test subjects, the first n_val other subjects for validation, the rest
    for training, of whose slices only every train_stride-th is trained on ("unused" for the others).

    Skipped slices stay in the manifest, so that with train.context the trained slices still get their
    real neighbours as channels, as they do at test time (dropping the rows would give them copies of
    themselves instead).
    """
    df = pd.DataFrame(rows)
    df["split"] = np.where(df["subject"].isin(test_subjects), "test", "train")
    train_subjects = sorted(set(df["subject"]) - set(test_subjects))
    df.loc[df["subject"].isin(train_subjects[:n_val]), "split"] = "val"
    # Neighbouring slices are near copies, and time is short.
    df.loc[(df["split"] == "train") & (df["slice"] % train_stride != 0), "split"] = "unused"
    return df


def run_one(rows, test_subjects, model, variant, cfg, args, meta, keep=None):
    recipe, overrides, n_val = parse_variant(variant)
    df = fold_manifest(rows, test_subjects, n_val, args.train_stride)
    cfg = resolve_recipe({**cfg, "recipe": recipe, "epochs": args.epochs, "device": args.device,
                          "pretrained": args.pretrained, **overrides})
    context = cfg.get("context", 0)
    data = {split: SliceDataset(df, split, context) for split in ("train", "val", "test")}
    evals = {"val": data["val"]} if len(data["val"]) else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "m.pt"  # kept: for looking at the predictions later
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ckpt = train(cfg, model, data["train"], evals, out, Path(tmp) / "r.pt",
                     extra={k: meta[k] for k in ("axis", "normalization", "pixel_size_mm")})
        seconds = time.perf_counter() - t0
        net, _ = load_checkpoint(out, pick_device(args.device))
    s = score(net, ckpt, data["test"], 32, pick_device(args.device))  # as the evaluate stage scores the test split
    # Batch and width recorded: "mriseg" is params.yaml's recipe of the day.
    return {"iou": s["iou"], "dice_wm": s["dice_white_matter"], "dice_gm": s["dice_gray_matter"],
            "train_slices": len(data["train"]), "best_epoch": ckpt["best_epoch"], "minutes": seconds / 60, "epochs": cfg["epochs"],
            "batch_size": cfg["batch_size"], "width": cfg.get("width", 16) if model == "unet" else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "ibsr18-dev"))
    p.add_argument("--archive", help="an archive that `mriseg make-archive` made, used instead of making one from "
                   "--src (parallel runs share one; no nibabel needed)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-stride", type=int, default=4, help="train on every n-th slice of training subjects")
    p.add_argument("--models", default="unet,resnet")
    p.add_argument("--variants", nargs="+", default=["tutorial", "mriseg"],
                   help="recipes to compare: tutorial, mriseg, or either with ,key=value overrides")
    p.add_argument("--axis", choices=["auto", "axial", "coronal", "sagittal"],
                   help="make-archive's slicing plane (default auto: coronal for IBSR, its acquisition plane)")
    p.add_argument("--pixel-size", type=float, help="in-plane mm of the archive (make-archive; default 1.0, 0 keeps "
                   "the voxels)")
    p.add_argument("--only-folds", help="comma-separated fold numbers to run (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights for the ResNet encoder (needs the cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ibsr.md"))
    p.add_argument("--keep-models", metavar="DIR",
                   help="keep every trained checkpoint as DIR/fold<f>-<model>-<variant>.pt")
    p.add_argument("--jsonl", help="also append every finished run to this file, as it finishes")
    p.add_argument("--table", nargs="+", metavar="JSONL",
                   help="only write the table, from --jsonl files of earlier runs (e.g. folds run in parallel)")
    args = p.parse_args()
    if args.table:
        results = [json.loads(line) for path in args.table for line in Path(path).read_text().splitlines() if line]
    else:
        results = run_all(args)
    text = table(results)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def device_name(device):
    device = pick_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})"


def run_all(args):
    source = args.archive or args.src
    if not Path(source).exists():
        sys.exit(f"{source}: not found ({'--archive' if args.archive else 'the shared IBSR folder, --src'})")
    if args.archive and (args.axis or args.pixel_size is not None):
        sys.exit(f"{args.archive}: --axis and --pixel-size make an archive; --archive takes its slices as they are")
    folds = {int(f) for f in args.only_folds.split(",")} if args.only_folds else set(range(args.folds))
    if not folds <= set(range(args.folds)):
        sys.exit(f"--only-folds {args.only_folds}: folds are 0 to {args.folds - 1} (--folds {args.folds})")
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive
        if archive is None:
            archive = Path(tmp) / "ibsr.zip"
            given = {"axis": args.axis, "pixel_size": args.pixel_size}  # unset: make_archive's own defaults
            make_archive(args.src, archive, labels="ibsr", **{k: v for k, v in given.items() if v is not None})
        extract_archive(archive, Path(tmp) / "MRIs")
        rows = list_pairs(Path(tmp) / "MRIs")
        meta = archive_metadata(Path(tmp) / "MRIs")
        subjects = sorted({r["subject"] for r in rows})
        mm = meta["pixel_size_mm"]  # None: the archive kept the scans' voxels
        setup = {"subjects": len(subjects), "axis": meta["axis"], "pixel_size": mm[0] if mm else "native",
                 "folds": args.folds, "train_stride": args.train_stride, "device": device_name(args.device),
                 "torch": torch.__version__}  # GPU machines bring their own install
        results = []
        for fold, test_subjects in enumerate(folds_of(subjects, args.folds, args.seed)):
            if fold not in folds:
                continue
            for model in args.models.split(","):
                for variant in args.variants:
                    keep = None
                    if args.keep_models:  # file names without , and = (mriseg,lr=0.001 -> mriseg_lr_0.001)
                        keep = Path(args.keep_models) / f"fold{fold}-{model}-{re.sub(NOT_IN_NAMES, '_', variant)}.pt"
                    r = run_one(rows, test_subjects, model, variant, cfg, args, meta, keep)
                    results.append({"fold": fold, "test subjects": " ".join(test_subjects), "model": model,
                                    "recipe": variant, **r, **setup})
                    print(f"fold {fold} {model:6s} {variant:24s} IoU {r['iou']:.4f} Dice WM {r['dice_wm']:.4f} "
                          f"GM {r['dice_gm']:.4f} ({r['minutes']:.1f} min)", flush=True)
                    if args.jsonl:
                        with open(args.jsonl, "a") as f:
                            f.write(json.dumps(results[-1]) + "\n")
    return results


def baseline_of(variant, ran):
    """The tutorial variant that `variant` is compared with, among those that ran for its network: the one
    with the same overrides ('mriseg,epochs=60' against 'tutorial,epochs=60'), else plain 'tutorial'."""
    _, overrides, n_val = parse_variant(variant)
    same = [v for v in ran if v != variant and parse_variant(v) == ("tutorial", overrides, n_val)]
    return same[0] if same else "tutorial"


def table(results):
    """Markdown: one row per run, then mean ± sd per network and recipe, with the paired IoU gain over the
    tutorial recipe (same folds, same overrides where that ran)."""
    df = pd.DataFrame(results).sort_values(["fold", "model"], kind="stable")
    s = results[0]
    epochs = "/".join(str(e) for e in sorted(df["epochs"].unique()))
    pixels = "the scans' own pixel size" if s["pixel_size"] == "native" else f"{s['pixel_size']} mm"
    lines = [f"{s['subjects']} IBSR subjects, {s['axis']} slices at {pixels}, {s['folds']}-fold "
             f"subject-wise CV, {epochs} epochs, every {s['train_stride']} training slice(s), {s['device']}", "",
             "| fold | test subjects | model | recipe | IoU (tutorial) | Dice WM | Dice GM | train slices | best epoch | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        lines.append(f"| {r['fold']} | {r['test subjects']} | {r['model']} | {r['recipe']} | {r['iou']:.4f} | "
                     f"{r['dice_wm']:.4f} | {r['dice_gm']:.4f} | {r['train_slices']} | {r['best_epoch']} | {r['minutes']:.1f} |")
    lines += ["", "| model | recipe | folds | IoU mean ± sd | IoU − tutorial's (paired) | Dice WM mean ± sd | Dice GM mean ± sd |",
              "|---|---|---|---|---|---|---|"]
    iou = df.pivot_table(index=["model", "fold"], columns="recipe", values="iou")
    for (model, recipe), g in df.groupby(["model", "recipe"], sort=False):
        gain = "–"
        base = baseline_of(recipe, set(df.loc[df["model"] == model, "recipe"]))
        if recipe != "tutorial" and base in iou:
            d = (iou[recipe] - iou[base]).loc[model].dropna()
            against = "" if base == "tutorial" else f"; vs {base}"
            gain = f"{d.mean():+.4f} (better in {(d > 0).sum()} of {len(d)}{against})" if len(d) else "–"
        sd = lambda c: f"{g[c].std():.4f}" if len(g) > 1 else "–"
        lines.append(f"| {model} | {recipe} | {len(g)} | {g['iou'].mean():.4f} ± {sd('iou')} | {gain} | "
                     f"{g['dice_wm'].mean():.4f} ± {sd('dice_wm')} | {g['dice_gm'].mean():.4f} ± {sd('dice_gm')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
