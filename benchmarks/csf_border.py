"""The gray matter / CSF border drawn two ways (`mriseg predict --csf-border`): network (the views' own
output) and intensity (of it, the gray matter darker than halfway between the scan's own pure CSF and pure
gray matter becomes CSF, voxel by voxel: labels.gray_to_csf). On the freesurfer-dev heads (FreeSurfer's labels),
the MNI152 template (its tissue maps) and IBSR subjects (their re-made labels: data.csf intensity, whose rule
averages 3x3x3 voxels; the shipped model was trained on them, so these rows are in-sample), each segmented as
`mriseg predict --skull-strip auto` does: Dice, volume errors, gray / white matter ratio.

    python benchmarks/csf_border.py [--model src/mriseg/shipped/ibsr18-3views.pt] [--out ...]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from atrophy import scans  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def main():
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.metrics import confusion_of, subject_scores
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    predictors = {border: Predictor(args.model, "cpu", csf_border=border) for border in ("network", "intensity")}
    extractor = BrainExtractor(torch.device("cpu"))
    lines = ["# The gray matter / CSF border: the views' own (network) and the scan's intensities (intensity)", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"Model: {args.model}. Segmented as `mriseg predict --skull-strip auto --csf-border ...`. References: "
             "FreeSurfer's labels with the sulcal CSF filled in (freesurfer-dev), the MNI152 2009 tissue maps, "
             "IBSR's re-made labels (data.csf intensity; in-sample for a model trained on all 10 IBSR subjects).", "",
             "| scan | border | Dice WM | Dice GM | Dice CSF | volume error WM | volume error GM | volume error CSF | "
             "GM / WM (reference) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, img3, truth in scans():
        for border, predictor in predictors.items():
            labels = segment_image(predictor, extractor, img3, name, "auto")[0]
            truth = truth.reshape(labels.shape)
            s = subject_scores(confusion_of(labels, truth), voxel_ml_of(img3))
            ratio, reference = (labels == 1).sum() / (labels == 0).sum(), (truth == 1).sum() / (truth == 0).sum()
            lines.append(f"| {name} | {border} | {s['dice_white_matter']:.4f} | {s['dice_gray_matter']:.4f} | "
                         f"{s['dice_csf']:.4f} | {s['volume_error_white_matter']:+.1%} | "
                         f"{s['volume_error_gray_matter']:+.1%} | {s['volume_error_csf']:+.1%} | "
                         f"{ratio:.2f} ({reference:.2f}) |")
            print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    main()
