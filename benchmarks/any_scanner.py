"""Models judged off their training data, in one table (issue: one model for every scanner): the two
FreeSurfer-processed subjects of other scanners in ../shared/data/freesurfer-dev (a head with skull, a
FreeSurfer-stripped brain; never trained on) as `mriseg predict` segments them (brain extraction in front,
--skull-strip auto), against FreeSurfer's labels; the skull-stripped MNI152 2009 template against its own
tissue maps; and the IBSR subjects each model's run held out (its evaluate stage's reports/metrics.json),
where it has any. The shipped model is the baseline row.

    python benchmarks/any_scanner.py --model NAME=model.pt[:metrics.json] ... [--out table.md]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import HEADS, SHARED  # noqa: E402
from mriseg.devices import cpu_name  # noqa: E402
from shipped_mni152 import template  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def scored(labels, truth, voxel_ml=0.001):
    from mriseg.metrics import confusion_of, subject_scores

    s = subject_scores(confusion_of(labels, truth), voxel_ml)
    return s["dice_white_matter"], s["dice_gray_matter"], s["volume_error_gray_matter"]


def judge(path, extractor, inputs):
    """(per input: Dice WM, Dice GM, GM volume error), seconds per head, the model's training settings."""
    from mriseg.prediction import Predictor
    from mriseg.segment import segment_image

    predictor = Predictor(path, "cpu")
    results, seconds = {}, []
    for name, (img3, truth, where) in inputs.items():
        t0 = time.perf_counter()
        labels = segment_image(predictor, extractor if name in HEADS else None, img3, where,
                               "auto" if name in HEADS else "no")[0]
        seconds += [time.perf_counter() - t0] if name in HEADS else []
        results[name] = scored(labels, truth)
        print(path, name, *(f"{v:.4f}" for v in results[name]), flush=True)
    settings = {view: v["train"] for view, v in torch.load(path, weights_only=True)["views"].items()}
    return results, float(np.mean(seconds)), settings


def off_dataset_inputs():
    """{name: (image, reference labels, where)}: the freesurfer-dev heads against FreeSurfer's labels, and
    the skull-stripped MNI152 template against its tissue maps."""
    from mriseg.labels import load_labels
    from mriseg.volumes import load_volume

    inputs = {}
    for name, (image, seg) in HEADS.items():
        img3 = load_volume(SHARED / image)[1]
        inputs[name] = (img3, load_labels([SHARED / seg], "freesurfer-aseg", SHARED / image, img3), name)
    mni, truth = template()
    inputs["MNI152"] = (mni, truth, "MNI152 template")
    return inputs


def main():
    from mriseg.extraction import BrainExtractor
    from mriseg.models import SHIPPED_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[],
                   help="NAME=PATH[:METRICS]: a bundled model, and the metrics.json of the run that trained it")
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    models = [("shipped (baseline)", str(SHIPPED_MODEL), None)]
    for spec in args.model:
        name, _, rest = spec.partition("=")
        path, _, metrics = rest.partition(":")
        models.append((name, path, metrics or None))
    inputs = off_dataset_inputs()
    extractor = BrainExtractor(torch.device("cpu"))
    lines = ["# Off the training data: other scanners' heads, the MNI152 template, held-out IBSR", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             "Heads: `mriseg predict --skull-strip auto` (deepbet in front) against FreeSurfer's labels "
             "(freesurfer-aseg preset); MNI152: the skull-stripped template against its tissue maps; IBSR: the "
             "test subjects of the run that trained the model (its reports/metrics.json; the shipped model "
             "trained on all 10). Dice WM / GM; GM vol: gray-matter volume error against the reference.", "",
             "| model | swm-01 head Dice WM / GM | swm-01 GM vol | niivue-01 Dice WM / GM | niivue-01 GM vol | "
             "heads mean Dice WM / GM | MNI152 Dice WM / GM | IBSR held out Dice WM / GM | s per head |",
             "|---|---|---|---|---|---|---|---|---|"]
    settings = {}
    for name, path, metrics in models:
        r, seconds, settings[name] = judge(path, extractor, inputs)
        heads = np.mean([r[h][:2] for h in HEADS], axis=0)
        ibsr = "-"
        if metrics:
            m = json.loads(Path(metrics).read_text())
            m = m.get("aggregate", m)
            ibsr = f"{m['dice_white_matter']:.4f} / {m['dice_gray_matter']:.4f}"
        lines.append(f"| {name} | {r['swm-01'][0]:.4f} / {r['swm-01'][1]:.4f} | {r['swm-01'][2]:+.1%} | "
                     f"{r['niivue-01'][0]:.4f} / {r['niivue-01'][1]:.4f} | {r['niivue-01'][2]:+.1%} | "
                     f"{heads[0]:.4f} / {heads[1]:.4f} | {r['MNI152'][0]:.4f} / {r['MNI152'][1]:.4f} | {ibsr} | "
                     f"{seconds:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "Models: " + "; ".join(f"{name}: `{path}`" for name, path, _ in models) + ".", "",
              "Training settings of each model (train, per view):", "", "```json",
              json.dumps(settings, indent=1, sort_keys=True), "```"]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
