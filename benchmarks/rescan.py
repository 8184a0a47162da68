"""Rescan reliability: how much a model's tissue volumes move when the same head is scanned again.

Each scan (IBSR dev subjects, the freesurfer-dev head and stripped brain) is "scanned again" several times
(mriseg.rescan.rescan: a random rigid move with cubic resampling, a new bias field, new Rician noise; seeds
1..N). The rescans are segmented independently (each as `mriseg predict --skull-strip auto` does) and as
sessions of one subject (as `mriseg longitudinal` does). Per scan, mode and tissue: the coefficient of
variation of the volume over the rescans (sd / mean, sd with N - 1) and the worst change between two rescans
((max - min) / mean); and, with a known cortical loss between two rescans (mriseg.atrophy.thin_cortex), how
much of it each mode measures. A follow-up needs this well under a year's change: about
0.8 % of gray matter in healthy adults over 65, twice that in Alzheimer's disease.

    python benchmarks/rescan.py [--model src/mriseg/shipped/ibsr18-3views.pt] [--rescans 3] \
        [--csf-border network --csf-border intensity] [--out benchmarks/results/rescan/cpu.md]
"""
import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from atrophy import scans  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

IBSR = ("07", "16")  # two of IBSR's three voxel sizes (1.0 and 0.84 mm in plane), to fit a 2-core session
TISSUES = (("white_matter_ml", "WM"), ("gray_matter_ml", "GM"), ("csf_ml", "CSF"), ("icv_ml", "ICV"))


def spread(values):
    """(coefficient of variation, worst change between two rescans), both as shares of the mean."""
    values = np.asarray(values, float)
    return float(values.std(ddof=1) / values.mean()), float((values.max() - values.min()) / values.mean())


def independent(predictor, extractor, images, name):
    """Each image segmented on its own, as `mriseg predict --skull-strip auto` does: its volume rows."""
    from mriseg.segment import segment_image, tissue_volumes

    rows = []
    for image in images:
        labels, brain = segment_image(predictor, extractor, image, name, "auto")[:2]
        rows.append(tissue_volumes(labels, brain, image, predictor.classes > 3))
    return rows


def longitudinal(predictor, extractor, images, name):
    """The images as sessions of one subject, as `mriseg longitudinal` segments them: their volume rows."""
    from mriseg.longitudinal import segment_sessions
    from mriseg.segment import tissue_volumes

    labels, brain, _, resampled = segment_sessions(predictor, extractor, images, name, "auto")
    return [tissue_volumes(each, brain, image, predictor.classes > 3) for each, image in zip(labels, resampled)]


def main():
    from mriseg.atrophy import thin_cortex
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.rescan import rescan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--rescans", type=int, default=3, help="rescans per scan (at least 2)")
    p.add_argument("--csf-border", action="append", help="as mriseg predict's (default network); repeat to compare")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    predictors = {border: Predictor(args.model, "cpu", csf_border=border) for border in args.csf_border or ["network"]}
    extractor = BrainExtractor(torch.device("cpu"))
    modes = {f"{mode}{'' if len(predictors) == 1 else f', --csf-border {border}'}": (segment, predictor)
             for border, predictor in predictors.items()
             for mode, segment in (("independent", independent), ("longitudinal", longitudinal))}
    lines = ["# Rescan reliability: tissue volumes of one head scanned again, segmented independently or as "
             "sessions of one subject", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: `{args.model}`, --csf-border {', '.join(predictors)}. {args.rescans} rescans per scan (mriseg.rescan.rescan, seeds 1-{args.rescans}: "
             "rotation up to 4 degrees and shift up to 3 mm per axis, cubic resampling, a new bias field of up to "
             "10 %, new Rician noise of sd 2 % of the 99th percentile). independent: each rescan segmented as "
             "`mriseg predict --skull-strip auto`; longitudinal: the rescans as sessions of one subject, as "
             "`mriseg longitudinal` (registered, one space, one brain mask). CV = sd / mean over the rescans; "
             "worst = (max - min) / mean. Atrophy: rescan 1 of the scan against rescan 2 of the scan with its "
             "outer cortex thinned (mriseg.atrophy.thin_cortex, global), measured gray-matter change / true.", "",
             "| scan | segmented | " + " | ".join(f"{t} ml | {t} CV | {t} worst" for _, t in TISSUES) +
             " | atrophy recovered | s per rescan |", "|---|---|" + "---|---|---|" * len(TISSUES) + "---|---|"]
    summary = {}
    for name, img3, truth in scans(IBSR, mni152=False):
        images = [rescan(img3, seed)[0] for seed in range(1, args.rescans + 1)]
        image = np.asarray(img3.dataobj).astype(np.float32)
        thinned, _, lost = thin_cortex(image, truth)
        pair = [images[0], rescan(nib.Nifti1Image(thinned, img3.affine), 2)[0]]
        true_ml = -float(lost.sum()) * voxel_ml_of(img3)
        for mode, (segment, predictor) in modes.items():
            start = time.perf_counter()
            rows = segment(predictor, extractor, images, name)
            seconds = (time.perf_counter() - start) / args.rescans
            before, after = segment(predictor, extractor, pair, name)
            recovered = (after["gray_matter_ml"] - before["gray_matter_ml"]) / true_ml
            cells = []
            for key, tissue in TISSUES:
                cv, worst = spread([r[key] for r in rows])
                summary.setdefault((mode, tissue), []).append((cv, worst))
                cells.append(f"{np.mean([r[key] for r in rows]):.1f} | {cv:.2%} | {worst:.2%}")
            summary.setdefault((mode, "atrophy"), []).append(recovered)
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + f" | {recovered:.0%} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    lines += ["", "| segmented | tissue | CV, mean over scans | CV, largest | worst change, largest |",
              "|---|---|---|---|---|"]
    for mode in modes:
        for _, tissue in TISSUES:
            cvs, worsts = zip(*summary[(mode, tissue)])
            lines.append(f"| {mode} | {tissue} | {np.mean(cvs):.2%} | {max(cvs):.2%} | {max(worsts):.2%} |")
    lines += ["", "| segmented | atrophy recovered, mean over scans | min | max |", "|---|---|---|---|"]
    for mode in modes:
        values = summary[(mode, "atrophy")]
        lines.append(f"| {mode} | {np.mean(values):.0%} | {min(values):.0%} | {max(values):.0%} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
