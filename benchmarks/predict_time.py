"""Seconds to segment one 1 mm whole-head T1 volume with `mriseg predict`, one view against three, on this
machine: the MNI152 2009 template (197 x 233 x 189, nilearn's wheel), whole head (its scalp and skull
make the largest crop, the slowest case); --brain adds it skull-stripped.

Each row times Predictor.predict_volume (read, resample to the working grid, crop, every view's slices
through its network with its test-time flips, probabilities averaged, back to the input's grid) as the
median of --repeats runs after one warm-up, in this process, with torch's threads as set (all cores by
default). The one-view row is the bundle's first view alone (a bundle of one), same weights.

    python benchmarks/predict_time.py                          # the shipped model
    python benchmarks/predict_time.py --model models/model.pt  # a bundle the pipeline trained
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def mni152_heads(folder):
    """(whole head, skull-stripped) NIfTI paths of the MNI152 2009 template."""
    import nibabel as nib
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    head, brain = folder / "mni152_head.nii.gz", folder / "mni152_brain.nii.gz"
    nib.save(nib.Nifti1Image(t1.get_fdata().astype(np.float32), t1.affine), head)
    nib.save(nib.Nifti1Image((t1.get_fdata() * mask).astype(np.float32), t1.affine), brain)
    return head, brain


def first_view_only(model, path):
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    if "views" in ckpt:
        view = next(iter(ckpt["views"]))
        ckpt = {**ckpt, "views": {view: ckpt["views"][view]}, "weights": {view: 1.0}}
    torch.save(ckpt, path)
    return path


def main():
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--brain", action="store_true", help="also time the skull-stripped template")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = mni152_heads(tmp)[:2 if args.brain else 1]
        for label, model in (("1 view", first_view_only(args.model, tmp / "one.pt")), ("bundle", Path(args.model))):
            predictor = Predictor(model, "cpu")
            names = "+".join(v.name for v in predictor.views)
            for path in inputs:
                predictor.predict_volume(path)  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    predictor.predict_volume(path)
                    times.append(time.perf_counter() - t0)
                rows.append((f"{len(predictor.views)} ({names})", path.name, statistics.median(times), min(times)))
                print(f"{rows[-1][0]} {path.name}: median {rows[-1][2]:.1f} s", file=sys.stderr, flush=True)
    lines = ["# Seconds per 1 mm whole-head volume, `mriseg predict` on the CPU",
             "", f"Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
             f"Commit {commit()}. Model: {args.model}. Median (min) of {args.repeats} runs after a warm-up.", "",
             "| views | input (197 x 233 x 189, 1 mm) | seconds per volume | fastest |", "|---|---|---|---|"]
    lines += [f"| {v} | {name} | {med:.1f} | {fast:.1f} |" for v, name, med, fast in rows]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
