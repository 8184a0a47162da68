"""Tutorial recipe vs mriseg's default recipe on real IBSR subjects, subject-wise cross-validation.

The shared IBSR subjects become one archive (`mriseg make-archive --labels ibsr`); each fold holds out
whole subjects for testing. For every fold, network and recipe the same epochs are trained; the
mriseg recipe is params.yaml's `train` section (it also holds out one training subject as validation
to pick the best epoch), the tutorial recipe is the same with the tutorial's settings (BCE on one-hot
masks, no augmentation, constant learning rate, random 1-channel stem, last epoch). Scores on the
held-out subjects: IoU as the tutorial computes it, and dataset-level Dice per tissue.

    python benchmarks/ibsr.py                     # CPU default, sized for < 45 min on 2 cores
    python benchmarks/ibsr.py --device cuda --folds 5 --epochs 30 --train-stride 1
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mriseg.archive import extract_archive
from mriseg.data import archive_metadata, list_pairs, load_split
from mriseg.make_archive import make_archive
from mriseg.metrics import scores
from mriseg.models import load_checkpoint
from mriseg.training import evaluate, pick_device, train

ROOT = Path(__file__).resolve().parents[1]


def folds_of(subjects, k, seed):
    order = np.random.default_rng(seed).permutation(sorted(subjects))
    return [sorted(order[i::k]) for i in range(k)]


def run_one(rows, test_subjects, model, recipe, cfg, args, meta):
    df = pd.DataFrame(rows)
    df["split"] = np.where(df["subject"].isin(test_subjects), "test", "train")
    train_subjects = sorted(set(df["subject"]) - set(test_subjects))
    if recipe == "mriseg" and len(train_subjects) > 2:
        df.loc[df["subject"] == train_subjects[0], "split"] = "val"
    # Every n-th slice of the training subjects: neighbouring slices are near copies, and time is short.
    is_train = df["split"] == "train"
    keep = ~is_train | (df["slice"] % args.train_stride == 0)
    df = df[keep]
    x, y, _ = load_split(df, "train")
    evals = {"val": load_split(df, "val")[:2]} if (df["split"] == "val").any() else {}
    cfg = {**cfg, "recipe": recipe, "epochs": args.epochs, "device": args.device, "pretrained": args.pretrained}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt = train(cfg, model, (x, y), evals, Path(tmp) / "m.pt", Path(tmp) / "r.pt", extra=meta)
        seconds = time.perf_counter() - t0
        net, _ = load_checkpoint(Path(tmp) / "m.pt", pick_device(args.device))
    xt, yt, _ = load_split(df, "test")
    r = evaluate(net, xt, yt, 32, pick_device(args.device), cfg["amp"], ckpt["loss"], ckpt["activation"])
    s = scores(r["confusion"])
    return {"iou": r["iou"], "dice_wm": s["dice_white_matter"], "dice_gm": s["dice_gray_matter"],
            "train_slices": len(x), "best_epoch": ckpt["best_epoch"], "minutes": seconds / 60}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "ibsr18-dev"))
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-stride", type=int, default=4, help="train on every n-th slice of training subjects")
    p.add_argument("--models", default="unet,resnet")
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights for the ResNet encoder (needs the cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ibsr.md"))
    args = p.parse_args()
    if not Path(args.src).exists():
        sys.exit(f"{args.src}: IBSR subjects not found (the shared data folder)")
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]

    with tempfile.TemporaryDirectory() as tmp:
        make_archive(args.src, Path(tmp) / "ibsr.zip", labels="ibsr")
        extract_archive(Path(tmp) / "ibsr.zip", Path(tmp) / "MRIs")
        rows = list_pairs(Path(tmp) / "MRIs")
        meta = archive_metadata(Path(tmp) / "MRIs")
        subjects = sorted({r["subject"] for r in rows})
        results = []
        for fold, test_subjects in enumerate(folds_of(subjects, args.folds, args.seed)):
            for model in args.models.split(","):
                for recipe in ("tutorial", "mriseg"):
                    r = run_one(rows, test_subjects, model, recipe, cfg, args, meta)
                    results.append({"fold": fold, "test subjects": " ".join(test_subjects), "model": model,
                                    "recipe": recipe, **r})
                    print(f"fold {fold} {model:6s} {recipe:8s} IoU {r['iou']:.4f} Dice WM {r['dice_wm']:.4f} "
                          f"GM {r['dice_gm']:.4f} ({r['minutes']:.1f} min)", flush=True)

    df = pd.DataFrame(results)
    summary = df.groupby(["model", "recipe"])[["iou", "dice_wm", "dice_gm"]].agg(["mean", "std"])
    lines = [f"{len(subjects)} IBSR subjects, {args.folds}-fold subject-wise CV, {args.epochs} epochs, every "
             f"{args.train_stride} training slice(s), device {pick_device(args.device)}", "",
             "| fold | test subjects | model | recipe | IoU (tutorial) | Dice WM | Dice GM | train slices | best epoch | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['fold']} | {r['test subjects']} | {r['model']} | {r['recipe']} | {r['iou']:.4f} | "
                     f"{r['dice_wm']:.4f} | {r['dice_gm']:.4f} | {r['train_slices']} | {r['best_epoch']} | {r['minutes']:.1f} |")
    lines += ["", "| model | recipe | IoU mean ± sd | Dice WM mean ± sd | Dice GM mean ± sd |", "|---|---|---|---|---|"]
    for (model, recipe), row in summary.iterrows():
        lines.append(f"| {model} | {recipe} | {row[('iou', 'mean')]:.4f} ± {row[('iou', 'std')]:.4f} | "
                     f"{row[('dice_wm', 'mean')]:.4f} ± {row[('dice_wm', 'std')]:.4f} | "
                     f"{row[('dice_gm', 'mean')]:.4f} ± {row[('dice_gm', 'std')]:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
