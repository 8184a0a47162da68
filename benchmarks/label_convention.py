"""Where the gray matter ends: the ratio of gray to white matter volume in each reference's labels (IBSR's
manual tracings, FreeSurfer's automatic labels, the MNI152 tissue maps) and in the shipped model's
segmentations of the same heads. IBSR's tracers drew the cortex-CSF border so that most sulcal CSF is gray
matter (its CSF label holds little beyond the ventricles); FreeSurfer's cortex ends at the pial surface. A
model that learned IBSR's border measures more gray matter on any brain than FreeSurfer does, however good
it is: the gray-matter volume error against FreeSurfer it implies is the ratio of the ratios, minus one.

    python benchmarks/label_convention.py [--out table.md]
"""
import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import HEADS, SHARED  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from shipped_mni152 import template  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

IBSR = ("01", "03", "04", "05", "06", "07", "08", "09", "16", "18")


def volumes_ml(labels, voxel_ml):
    """(white matter ml, gray matter ml) of labels in mriseg's classes."""
    from mriseg.segment import tissue_counts

    return tuple(count * voxel_ml for count in tissue_counts(labels))


def row(name, wm, gm, note=""):
    return f"| {name} | {wm:.0f} | {gm:.0f} | {gm / wm:.2f} | {note} |"


def main():
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.labels import load_labels
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image
    from mriseg.volumes import load_volume

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    lines = ["# Gray to white matter: the references' conventions and the shipped model", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: {SHIPPED_MODEL.name} (`mriseg predict --skull-strip auto`). Labels mapped to mriseg's classes "
             "(ibsr and freesurfer-aseg presets; MNI152: each voxel's most probable class of nilearn's maps).", "",
             "| labels | WM ml | GM ml | GM / WM | |", "|---|---|---|---|---|"]
    ratios = []
    for subject in IBSR:
        image = SHARED / "ibsr18-dev" / f"IBSR_{subject}.nii.gz"
        img3 = load_volume(image)[1]
        seg = image.with_name(f"IBSR_{subject}_seg.nii.gz")
        wm, gm = volumes_ml(load_labels([seg], "ibsr", image, img3), voxel_ml_of(img3))
        csf = (np.asanyarray(nib.load(seg).dataobj) == 1).sum() * voxel_ml_of(img3)  # IBSR's own CSF label
        ratios.append(gm / wm)
        lines.append(row(f"IBSR_{subject} manual", wm, gm, f"CSF label {csf:.0f} ml"))
    ibsr = float(np.mean(ratios))
    lines.append(f"| IBSR mean (10) | | | {ibsr:.2f} | range {min(ratios):.2f}-{max(ratios):.2f} |")
    predictor = Predictor(SHIPPED_MODEL, "cpu")
    extractor = BrainExtractor(torch.device("cpu"))
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        voxel_ml = voxel_ml_of(img3)
        wm, gm = volumes_ml(load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3), voxel_ml)
        lines.append(row(f"{name} FreeSurfer", wm, gm, f"IBSR's mean ratio implies GM {ibsr * wm / gm - 1:+.0%} "
                                                       "at FreeSurfer's WM volume"))
        pwm, pgm = volumes_ml(segment_image(predictor, extractor, img3, name, "auto")[0], voxel_ml)
        lines.append(row(f"{name} shipped model", pwm, pgm, f"GM {pgm / gm - 1:+.1%}, WM {pwm / wm - 1:+.1%} "
                                                            "against FreeSurfer"))
        print(*lines[-2:], sep="\n", flush=True)
    mni, truth = template()
    voxel_ml = voxel_ml_of(mni)
    lines.append(row("MNI152 2009 tissue maps", *volumes_ml(truth, voxel_ml)))
    lines.append(row("MNI152 template, shipped model", *volumes_ml(predictor.predict_image(mni)[0], voxel_ml)))
    publish(lines, args.out)


if __name__ == "__main__":
    main()
