"""Brain-extraction candidates on the head of ../shared/data/freesurfer-dev/swm-01, against its labelled brain
(every voxel FreeSurfer labelled): mask Dice, share of labelled tissue kept, seconds on this machine. The
extractor mriseg uses (extraction.py) is the first row; others run only when their package is installed
(they are not dependencies of mriseg).

    python benchmarks/extractor_candidates.py [--out benchmarks/results/brain-extraction/candidates-cpu.md]
"""
import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import SHARED, dice  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from mriseg.extraction import voxel_ml_of  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def deepbet_mask(img3):
    from mriseg.extraction import BrainExtractor

    return BrainExtractor(torch.device("cpu")).mask(img3, "swm-01")


def bet_port_mask(img3):
    from brainextractor import BrainExtractor  # a Python port of FSL's BET (no weights)

    bet = BrainExtractor(nib.Nifti1Image(np.asanyarray(img3.dataobj).astype(np.float32), img3.affine))
    bet.run()
    return bet.compute_mask().astype(bool)


CANDIDATES = {"deepbet 1.0.2 (mriseg's)": deepbet_mask, "brainextractor 0.3.0 (FSL BET port)": bet_port_mask}


def main():
    from mriseg.labels import load_labels
    from mriseg.volumes import load_volume

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out")
    args = p.parse_args()
    image = SHARED / "freesurfer-dev" / "swm-01" / "T1.nii.gz"
    seg = SHARED / "freesurfer-dev" / "swm-01" / "aparc.DKTatlas+aseg.nii.gz"
    _, img3 = load_volume(image)
    truth = load_labels([seg], "freesurfer-aseg", image, img3)
    labelled = np.asanyarray(nib.load(seg).dataobj).reshape(truth.shape) > 0
    lines = ["# Brain-extraction candidates on a head (swm-01)", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             "Reference: every voxel FreeSurfer labelled (aparc.DKTatlas+aseg > 0).", "",
             "| extractor | mask Dice vs labelled brain | labelled tissue kept | mask ml | seconds |", "|---|---|---|---|---|"]
    for name, extract in CANDIDATES.items():
        try:
            t0 = time.perf_counter()
            mask = extract(img3)
            seconds = time.perf_counter() - t0
        except ImportError as e:
            lines.append(f"| {name} | not installed ({e.name}) | | | |")
            continue
        lines.append(f"| {name} | {dice(mask, labelled):.3f} | {(mask & (truth < 2)).sum() / (truth < 2).sum():.4f} | "
                     f"{mask.sum() * voxel_ml_of(img3):.0f} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
