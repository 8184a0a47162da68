"""Rescan reliability: how much a model's tissue volumes move when the same head is scanned again.

Each scan (IBSR dev subjects, the freesurfer-dev head and stripped brain) is "scanned again" several times
(mriseg.rescan.rescan: a random rigid move with cubic resampling, a new bias field, new Rician noise; seeds
1..N), and each rescan is segmented as `mriseg predict --skull-strip auto` segments a volume. Per scan and
tissue: the coefficient of variation of the volume over the rescans (sd / mean, sd with N - 1) and the worst
change between two rescans ((max - min) / mean). A follow-up needs this well under a year's change: about
0.8 % of gray matter in healthy adults over 65, twice that in Alzheimer's disease.

    python benchmarks/rescan.py [--model src/mriseg/shipped/ibsr18-3views.pt] [--rescans 4] \
        [--out benchmarks/results/rescan/cpu.md]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import HEADS, SHARED  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

IBSR = ("01", "07", "16")  # one of each of IBSR's three voxel sizes
TISSUES = (("white_matter_ml", "WM"), ("gray_matter_ml", "GM"), ("csf_ml", "CSF"), ("icv_ml", "ICV"))


def scans():
    """(name, 3-D image) of every scan the benchmark rescans."""
    from mriseg.volumes import load_volume

    for subject in IBSR:
        yield f"IBSR_{subject}", load_volume(SHARED / "ibsr18-dev" / f"IBSR_{subject}.nii.gz")[1]
    for name, (image, _) in HEADS.items():
        yield name, load_volume(SHARED / image)[1]


def spread(values):
    """(coefficient of variation, worst change between two rescans), both as shares of the mean."""
    values = np.asarray(values, float)
    return float(values.std(ddof=1) / values.mean()), float((values.max() - values.min()) / values.mean())


def main():
    from mriseg.extraction import BrainExtractor
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.rescan import rescan
    from mriseg.segment import segment_image, tissue_volumes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--rescans", type=int, default=4, help="rescans per scan (at least 2)")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    predictor = Predictor(args.model, "cpu")
    extractor = BrainExtractor(torch.device("cpu"))
    lines = ["# Rescan reliability: tissue volumes of one head scanned again", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: `{args.model}`. {args.rescans} rescans per scan (mriseg.rescan.rescan, seeds 1-{args.rescans}: "
             "rotation up to 4 degrees and shift up to 3 mm per axis, cubic resampling, a new bias field of up to "
             "10 %, new Rician noise of sd 2 % of the 99th percentile), each segmented as `mriseg predict "
             "--skull-strip auto`. CV = sd / mean over the rescans; worst = (max - min) / mean.", "",
             "| scan | extraction | " + " | ".join(f"{t} ml (mean) | {t} CV | {t} worst" for _, t in TISSUES) +
             " | s per rescan |", "|---|---|" + "---|---|---|" * len(TISSUES) + "---|"]
    per_tissue = {t: [] for _, t in TISSUES}
    for name, img3 in scans():
        rows, decided, start = [], set(), time.perf_counter()
        for seed in range(1, args.rescans + 1):
            again = rescan(img3, seed)[0]
            labels, brain, stripped = segment_image(predictor, extractor, again, name, "auto")[:3]
            rows.append(tissue_volumes(labels, brain, again, predictor.classes > 3))
            decided.add(stripped)
        seconds = (time.perf_counter() - start) / args.rescans
        cells = []
        for key, tissue in TISSUES:
            cv, worst = spread([r[key] for r in rows])
            per_tissue[tissue].append((cv, worst))
            cells.append(f"{np.mean([r[key] for r in rows]):.1f} | {cv:.2%} | {worst:.2%}")
        lines.append(f"| {name} | {', '.join(sorted(decided))} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", "| tissue | CV, mean over scans | CV, largest | worst change, largest |", "|---|---|---|---|"]
    for tissue, values in per_tissue.items():
        cvs, worsts = zip(*values)
        lines.append(f"| {tissue} | {np.mean(cvs):.2%} | {max(cvs):.2%} | {max(worsts):.2%} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
