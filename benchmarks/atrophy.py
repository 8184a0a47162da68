"""Sensitivity to atrophy: how much of a known cortical loss a model's gray matter shows.

On real scans (IBSR dev subjects with their re-made labels, the freesurfer-dev head and stripped brain with
FreeSurfer's labels, the MNI152 template with its tissue maps) the outer layer of the labelled cortex is
replaced by the scan's own CSF intensities (mriseg.atrophy.thin_cortex), everywhere (global) and in the upper
left quarter of the brain (regional). Each scan is segmented as `mriseg predict --skull-strip auto` does,
before and after; recovered = (gray matter after - before) / (true change). A tool for atrophy recovers at
least 80 %. One row per model, scan and simulation; then the mean per model and simulation.

    python benchmarks/atrophy.py --model shipped=src/mriseg/shipped/ibsr18-3views.pt [--model shipped-intensity=src/mriseg/shipped/ibsr18-3views.pt@intensity] \
        [--out benchmarks/results/atrophy/cpu.md]
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

IBSR = ("01", "07", "16")  # one of each of IBSR's three voxel sizes


def scans(ibsr=IBSR, mni152=True):
    """(name, 3-D image, labels in mriseg's classes on its grid) of every scan the benchmark thins: these IBSR
    subjects, the freesurfer-dev subjects, and MNI152 unless told not to (benchmarks/rescan.py)."""
    from mriseg.labels import load_labels
    from mriseg.volumes import load_volume

    for subject in ibsr:
        image = SHARED / "ibsr18-dev" / f"IBSR_{subject}.nii.gz"
        img3 = load_volume(image)[1]
        yield f"IBSR_{subject}", img3, load_labels([image.with_name(f"IBSR_{subject}_seg.nii.gz")], "ibsr", image,
                                                   img3, "intensity")
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        yield name, img3, load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3)
    if mni152:
        mni, truth = template()
        yield "MNI152", mni, truth


def main():
    from mriseg.atrophy import thin_cortex, upper_left_quarter
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="NAME=PATH[@BORDER] of a model, BORDER its --csf-border (default network; repeat for several)")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    predictors = {}
    for name, spec in models.items():
        path, border = spec.rsplit("@", 1) if "@" in spec else (spec, "network")
        predictors[name] = Predictor(path, "cpu", csf_border=border)
    extractor = BrainExtractor(torch.device("cpu"))
    lines = ["# Sensitivity to atrophy: a simulated cortical loss, and what each model's gray matter shows", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Models: {', '.join(f'{k} = `{v}`' for k, v in models.items())}. Segmented as `mriseg predict "
             "--skull-strip auto`. Loss: the outer voxel layer of the labelled gray matter (touching CSF or "
             "background), given the scan's pure-CSF intensities (mriseg.atrophy.thin_cortex, seed 0).", "",
             "| model | scan | simulation | true GM change ml | measured ml | recovered | GM before ml |",
             "|---|---|---|---|---|---|---|"]
    recovered = {}
    for name, img3, labels in scans():
        image = np.asanyarray(img3.dataobj).astype(np.float32)
        voxel_ml = voxel_ml_of(img3)
        simulations = {"global": None, "regional": upper_left_quarter(labels, img3.affine)}
        thinned = {sim: thin_cortex(image, labels, region) for sim, region in simulations.items()}
        for model, predictor in predictors.items():
            def gray_ml(data):
                seg = segment_image(predictor, extractor, nib.Nifti1Image(data, img3.affine), name, "auto")[0]
                return float((seg == 1).sum()) * voxel_ml

            before = gray_ml(image)
            for sim, (atrophied, _, lost) in thinned.items():
                true, measured = -float(lost.sum()) * voxel_ml, gray_ml(atrophied) - before
                recovered.setdefault((model, sim), []).append(measured / true)
                lines.append(f"| {model} | {name} | {sim} | {true:.1f} | {measured:.1f} | {measured / true:.0%} | "
                             f"{before:.0f} |")
                print(lines[-1], flush=True)
    lines += ["", "| model | simulation | recovered, mean over scans | min | max |", "|---|---|---|---|---|"]
    for (model, sim), values in recovered.items():
        lines.append(f"| {model} | {sim} | {np.mean(values):.0%} | {min(values):.0%} | {max(values):.0%} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
