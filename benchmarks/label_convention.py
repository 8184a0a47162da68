"""Where the gray matter ends: white matter, gray matter and CSF in each reference's labels, IBSR's as traced and
as `data.csf: intensity` re-makes them, FreeSurfer's (its unlabelled sulcal CSF filled in: labels.fill_sulci), the
MNI152 tissue maps; and a model's segmentations of the FreeSurfer heads and the template.

IBSR's tracers drew the cortex-CSF border so that most sulcal CSF is gray matter (its CSF label holds little
beyond the ventricles). The re-made labels give the gray matter darker than halfway to pure CSF back to CSF
(labels.remake_csf); white matter never moves. Writes a PNG of IBSR slices with both labels to look at.

    python benchmarks/label_convention.py [--model PATH] [--out table.md] [--png docs/images/ibsr-csf.png]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import HEADS, SHARED  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from shipped_mni152 import template  # noqa: E402
from train_throughput import commit, publish  # noqa: E402

IBSR = ("01", "03", "04", "05", "06", "07", "08", "09", "16", "18")


def volumes_ml(labels, voxel_ml):
    """(white matter, gray matter, CSF) ml of labels in mriseg's classes."""
    return tuple(float((labels == k).sum()) * voxel_ml for k in (0, 1, 3))


def row(name, wm, gm, csf, note=""):
    return f"| {name} | {wm:.0f} | {gm:.0f} | {csf:.0f} | {gm / wm:.2f} | {note} |"


def ibsr_figure(examples, path):
    """One row per subject: its coronal slice, IBSR's labels, the re-made ones (CSF green)."""
    from mriseg.reporting import TISSUE_COLOURS, plt, save_figure, tissue_layer

    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3.1 * len(examples)), squeeze=False)
    for r, (name, image, before, after) in enumerate(examples):
        for c, (labels, title) in enumerate(((None, name), (before, "IBSR's labels"),
                                             (after, "data.csf: intensity"))):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray")
            if labels is not None:
                ax.imshow(tissue_layer(labels), cmap=TISSUE_COLOURS, vmin=0, vmax=3, alpha=0.5,
                          interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.suptitle("IBSR's gray matter holds the sulcal CSF; the re-made labels give it back "
                 "(white matter blue, gray matter orange, CSF green)", fontsize=9)
    save_figure(fig, path)


def main():
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.labels import csf_thresholds, load_labels
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image
    from mriseg.volumes import load_volume

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="model whose segmentations are measured too")
    p.add_argument("--out", help="also write the table here (markdown)")
    p.add_argument("--png", help="write the IBSR slices with both labels here")
    args = p.parse_args()
    lines = ["# White matter, gray matter and CSF: the references' conventions, IBSR's re-made labels, a model", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: {Path(args.model).name} (`mriseg predict --skull-strip auto`). Labels in mriseg's classes: "
             "ibsr preset with data.csf labels (as traced) and intensity (re-made); freesurfer-aseg with its "
             "unlabelled sulcal CSF filled in; MNI152: each voxel's most probable class of nilearn's maps, CSF "
             "inside its brain mask. Pure CSF / GM: the intensities remake_csf measures (threshold halfway).", "",
             "| labels | WM ml | GM ml | CSF ml | GM / WM | |", "|---|---|---|---|---|---|"]
    ratios, examples = {"labels": [], "intensity": []}, []
    for subject in IBSR:
        image = SHARED / "ibsr18-dev" / f"IBSR_{subject}.nii.gz"
        img3 = load_volume(image)[1]
        seg = image.with_name(f"IBSR_{subject}_seg.nii.gz")
        traced, remade = (load_labels([seg], "ibsr", image, img3, rule) for rule in ("labels", "intensity"))
        assert np.array_equal(traced == 0, remade == 0)  # white matter never moves
        csf, gray = csf_thresholds(traced, np.asanyarray(img3.dataobj).astype(np.float32))
        for rule, labels in (("labels", traced), ("intensity", remade)):
            wm, gm, c = volumes_ml(labels, voxel_ml_of(img3))
            ratios[rule].append(gm / wm)
            note = f"pure CSF {csf:.0f}, GM {gray:.0f}" if rule == "intensity" else ""
            lines.append(row(f"IBSR_{subject} {'re-made' if rule == 'intensity' else 'as traced'}", wm, gm, c, note))
        if subject in ("01", "07", "16"):
            z = img3.shape[1] // 2  # the coarse 1.5 mm axis: a coronal slice in IBSR's voxels
            examples.append((f"IBSR_{subject}", np.rot90(np.asanyarray(img3.dataobj)[:, z]),
                             np.rot90(traced[:, z]), np.rot90(remade[:, z])))
    for rule, name in (("labels", "as traced"), ("intensity", "re-made")):
        r = ratios[rule]
        lines.append(f"| IBSR {name}, mean (10) | | | | {np.mean(r):.2f} | range {min(r):.2f}-{max(r):.2f} |")
    predictor = Predictor(args.model, "cpu")
    extractor = BrainExtractor(torch.device("cpu"))
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        voxel_ml = voxel_ml_of(img3)
        wm, gm, csf = volumes_ml(load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3), voxel_ml)
        lines.append(row(f"{name} FreeSurfer", wm, gm, csf))
        pwm, pgm, pcsf = volumes_ml(segment_image(predictor, extractor, img3, name, "auto")[0], voxel_ml)
        lines.append(row(f"{name} model", pwm, pgm, pcsf, f"GM {pgm / gm - 1:+.1%}, WM {pwm / wm - 1:+.1%} "
                                                           "against FreeSurfer"))
        print(*lines[-2:], sep="\n", flush=True)
    mni, truth = template()
    voxel_ml = voxel_ml_of(mni)
    lines.append(row("MNI152 2009 tissue maps", *volumes_ml(truth, voxel_ml)))
    lines.append(row("MNI152 template, model", *volumes_ml(predictor.predict_image(mni)[0], voxel_ml)))
    lines += ["", "A skull-stripped IBSR brain holds only the CSF inside its strip: compare its CSF with FreeSurfer's "
              "sulcal and ventricular CSF, not with an intracranial total."]
    if args.png:
        ibsr_figure(examples, args.png)
        lines.append(f"Figure: `{args.png}`.")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
