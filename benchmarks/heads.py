"""Whole heads from other scanners (../shared/data/freesurfer-dev: a head with skull, a FreeSurfer-stripped
brain) against their FreeSurfer labels, as `mriseg predict` segments them: brain extraction in front
(--skull-strip auto), then the views. Per subject: the extractor's mask against the labelled brain (Dice;
share of labelled tissue kept), what auto decided, tissue Dice and volume error, seconds per volume
(extraction included). Beside each head, the same head stripped by its own labels (every labelled voxel,
aparc+aseg > 0), so that what extraction costs is one row away. And an already-extracted IBSR subject with
auto and with --skull-strip no: auto must leave it unchanged.

    python benchmarks/heads.py [--model models/model.pt] [--csf-border network] [--out benchmarks/results/brain-extraction/cpu.md]
"""
import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HEADS = {"swm-01": ("freesurfer-dev/swm-01/T1.nii.gz", "freesurfer-dev/swm-01/aparc.DKTatlas+aseg.nii.gz"),
         "niivue-01": ("freesurfer-dev/niivue-01/mri/norm.mgz", "freesurfer-dev/niivue-01/mri/aparc.a2009s+aseg.mgz")}


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def segment(predictor, extractor, img3, where, skull_strip):
    """As `mriseg predict` segments a volume (segment.segment_image), timed."""
    from mriseg.segment import segment_image

    t0 = time.perf_counter()
    labels, brain, decided = segment_image(predictor, extractor if skull_strip != "no" else None, img3, where,
                                           skull_strip)[:3]
    return labels, brain, decided, time.perf_counter() - t0


def row(name, labels, truth, img3, seconds, decided, brain=None, labelled=None, image=None):
    """One input's cells. ICV: segment.tissue_volumes' icv_ml against the reference's white matter, gray
    matter and CSF (FreeSurfer's: its labels and the sulcal CSF within them, labels.fill_sulci)."""
    from mriseg.extraction import share_outside, voxel_ml_of
    from mriseg.metrics import confusion_of, subject_scores
    from mriseg.segment import tissue_volumes

    voxel_ml = voxel_ml_of(img3)
    s = subject_scores(confusion_of(labels, truth), voxel_ml)
    icv = tissue_volumes(labels, brain, img3, True)["icv_ml"]
    reference_icv = float((truth != 2).sum()) * voxel_ml
    extraction = (f"{share_outside(image, brain):.3f} | {dice(brain, labelled):.3f} | "
                  f"{(brain & (truth < 2)).sum() / (truth < 2).sum():.4f}" if brain is not None else "- | - | -")
    csf = (f"{s['dice_csf']:.4f} | {s['volume_error_csf']:+.3f}" if "dice_csf" in s else "- | -")
    return (f"| {name} | {decided} | {extraction} | {s['dice_white_matter']:.4f} | {s['dice_gray_matter']:.4f} | "
            f"{csf} | {s['volume_error_white_matter']:+.3f} | {s['volume_error_gray_matter']:+.3f} | "
            f"{icv:.0f} / {reference_icv:.0f} ({icv / reference_icv - 1:+.3f}) | {seconds:.1f} |")


def main():
    from mriseg.extraction import EXTRACTOR, BrainExtractor
    from mriseg.labels import load_labels
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.volumes import load_volume

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--csf-border", default="network", help="as mriseg predict's (network, intensity)")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    predictor = Predictor(args.model, "cpu", csf_border=args.csf_border)
    extractor = BrainExtractor(predictor.device)
    lines = ["# Whole heads from other scanners: brain extraction, then the views", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: {args.model}, --csf-border {predictor.csf_border}. Extractor: {EXTRACTOR}. "
             "Reference: FreeSurfer's labels (freesurfer-aseg preset, "
             "cortical parcels gray matter, ventricles and the unlabelled sulcal CSF within the labelled brain "
             "CSF); labelled brain = every voxel with a label. IBSR_07: its re-made labels (data.csf intensity).", "",
             "| input | skull_strip | bright voxels > 5 voxels from the mask (auto: extracted already if <= 0.05) | "
             "mask Dice vs labelled brain | labelled tissue kept | Dice WM | Dice GM | Dice CSF | volume error CSF | "
             "volume error WM | volume error GM | ICV ml / reference (error) | s per volume |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        truth = load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3)
        labelled = np.asanyarray(nib.load(SHARED / seg).dataobj).reshape(truth.shape) > 0
        labels, brain, decided, seconds = segment(predictor, extractor, img3, name, "auto")
        lines.append(row(f"{name} (auto)", labels, truth, img3, seconds, decided, brain, labelled,
                         np.asanyarray(img3.dataobj)))
        stripped = nib.Nifti1Image(np.where(labelled, np.asanyarray(img3.dataobj), 0).astype(np.float32), img3.affine)
        labels, _, decided, seconds = segment(predictor, extractor, stripped, name, "no")
        lines.append(row(f"{name} stripped by its labels (no)", labels, truth, img3, seconds, decided))
        print(lines[-2], lines[-1], sep="\n", flush=True)
    ibsr = SHARED / "ibsr18-dev" / "IBSR_07.nii.gz"
    if ibsr.exists():
        img3 = load_volume(ibsr)[1]
        truth = load_labels([ibsr.with_name("IBSR_07_seg.nii.gz")], "ibsr", ibsr, img3, "intensity")
        for mode in ("auto", "no"):
            labels, brain, decided, seconds = segment(predictor, extractor, img3, "IBSR_07", mode)
            lines.append(row(f"IBSR_07 ({mode})", labels, truth, img3, seconds, decided, brain, truth != 2,
                             np.asanyarray(img3.dataobj)))
            print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
