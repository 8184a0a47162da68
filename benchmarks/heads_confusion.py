"""Where the shipped model's tissue goes on the freesurfer-dev heads: ml of each FreeSurfer class (rows) that
the model segments as each class (columns), as `mriseg predict --skull-strip auto` segments them (heads.py's
reference: the freesurfer-aseg preset, the sulcal CSF within the labelled brain as CSF).

    python benchmarks/heads_confusion.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import HEADS, SHARED, segment  # noqa: E402

NAMES = {0: "WM", 1: "GM", 3: "CSF", 2: "background"}


def main():
    from mriseg.devices import cpu_name
    from mriseg.extraction import BrainExtractor, voxel_ml_of
    from mriseg.labels import load_labels
    from mriseg.metrics import confusion_of
    from mriseg.models import SHIPPED_MODEL
    from mriseg.prediction import Predictor
    from mriseg.volumes import load_volume
    from train_throughput import commit

    predictor = Predictor(str(SHIPPED_MODEL), "cpu")
    extractor = BrainExtractor(predictor.device)
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
          f"Model: {SHIPPED_MODEL}.\n")
    print("| scan | FreeSurfer | " + " | ".join(f"model {n} ml" for n in NAMES.values()) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        truth = load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3)
        labels = segment(predictor, extractor, img3, name, "auto")[0]
        counts, ml = confusion_of(labels, truth), voxel_ml_of(img3)  # counts[true, predicted]
        for t, tname in NAMES.items():
            cells = " | ".join(f"{int(counts[t, p]) * ml:.0f}" for p in NAMES)
            print(f"| {name} | {tname} | {cells} |")


if __name__ == "__main__":
    main()
