"""The shipped model (or --model) on the skull-stripped MNI152 2009 template against its own tissue maps
(each voxel's most probable class, nilearn's wheel): per view alone and aggregated, 3-D Dice and volume
error on the template's grid. No IBSR subject is in it; its labels come from another method (probabilistic
tissue maps of an average brain), so deep nuclei and the cerebellum score lower than the cortex: the
aggregate is also scored inside and outside those regions.

    python benchmarks/shipped_mni152.py [--model models/model.pt] [--save-input mni152_brain.nii.gz]
"""
import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def template():
    """The skull-stripped MNI152 2009 template (a 3-D image) and its tissue labels (sample.mni152_brain)."""
    from mriseg.sample import mni152_brain

    t1, truth, affine = mni152_brain()
    return nib.Nifti1Image(t1, affine), truth


def main():
    from mriseg.metrics import confusion_of, subject_scores
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--save-input", help="also write the skull-stripped template it segments (the README's example)")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    img3, truth = template()
    affine = img3.affine
    if args.save_input:
        nib.save(img3, args.save_input)
    predictor = Predictor(args.model, "cpu")
    work_affine, volume = predictor.working_volume(img3)
    alone = {}
    aggregate = predictor.volume_probabilities(volume, each=lambda view, probs: alone.setdefault(view.name, probs))
    lines = ["# The shipped model on the skull-stripped MNI152 2009 template", "",
             f"Machine: {cpu_name()}, torch {torch.__version__}. Commit {commit()}. Model: {args.model}; each view "
             f"alone as its network draws it, the aggregate with the CSF border {predictor.csf_border} "
             "(`mriseg predict`'s default).", "",
             "Reference: each voxel's most probable class of nilearn's maps; CSF: neither tissue, inside the brain mask.",
             "", "| views | Dice white matter | Dice gray matter | Dice CSF | volume error white matter | "
             "volume error gray matter | volume error CSF |", "|---|---|---|---|---|---|---|"]
    labels = {name: predictor.on_input_grid(probs, work_affine, img3)
              for name, probs in [*alone.items(), ("aggregate", aggregate)]}
    # Where an average brain's tissue maps and IBSR's manual labels define tissue differently: the deep
    # nuclei (IBSR: gray matter) and the cerebellum and brainstem (blurred folia in the template).
    x, y, z = np.meshgrid(*(np.arange(n) for n in truth.shape), indexing="ij")
    mm = [affine[i, 0] * x + affine[i, 1] * y + affine[i, 2] * z + affine[i, 3] for i in range(3)]
    nuclei = (np.abs(mm[0]) <= 30) & (mm[1] >= -35) & (mm[1] <= 25) & (mm[2] >= -10) & (mm[2] <= 25)
    cerebrum = mm[2] >= -20
    regions = {"aggregate, deep nuclei box (x -30..30, y -35..25, z -10..25 mm)": nuclei,
               "aggregate, below z = -20 mm (cerebellum, brainstem)": ~cerebrum,
               "aggregate, above z = -20 mm": cerebrum,
               "aggregate, above z = -20 mm outside the nuclei box": cerebrum & ~nuclei}
    rows = [(name, pred, truth) for name, pred in labels.items()]
    rows += [(name, labels["aggregate"][inside], truth[inside]) for name, inside in regions.items()]
    for name, pred, true in rows:
        s = subject_scores(confusion_of(pred, true))
        csf = (s.get("dice_csf", float("nan")), s.get("volume_error_csf", float("nan")))
        lines.append(f"| {name} | {s['dice_white_matter']:.3f} | {s['dice_gray_matter']:.3f} | {csf[0]:.3f} | "
                     f"{s['volume_error_white_matter']:+.1%} | {s['volume_error_gray_matter']:+.1%} | {csf[1]:+.1%} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
