"""Stage evaluate: models/model.pt (the views and their weights) on the test split -> reports/metrics.json,
reports/subjects.csv (one row per test subject, and per subject and view alone), curves.png, predictions.png.

A cohort's test subjects are scored in 3-D on their own grids: the views' aggregate (the top-level keys,
means over subjects; per_subject adds the sd) and each view alone (views.<view>), so that `dvc metrics`
shows what aggregation gains. A slice archive's test slices are scored by its one network as before."""
import sys

import torch

from mriseg.data import SliceDataset
from mriseg.errors import DataError, stage_error
from mriseg.evaluation import score_split, write_subjects
from mriseg.io import write_json
from mriseg.manifest import read_manifest
from mriseg.metrics import summarize
from mriseg.params import load_params
from mriseg.prediction import Predictor, predict_labels
from mriseg.reporting import plot_curves, plot_predictions


def main():
    params = load_params()
    p = params["evaluate"]
    predictor = Predictor("models/model.pt", params["train"]["device"], p["batch_size"], p.get("csf_border", "network"))
    first = predictor.views[0]
    test = SliceDataset(read_manifest("data/manifest.csv"), "test", first.context, view=first.axis)
    if not len(test):
        raise DataError("data/manifest.csv has no test pairs (split.test_size)")
    overall, subjects, view_subjects = score_split(predictor, "data/MRIs", test, p["batch_size"])
    best = {v.name: v.ckpt["best_epoch"] for v in predictor.views}
    summary = summarize(subjects) if subjects else {}
    view_summary = {view: summarize(rows) for view, rows in view_subjects.items()}
    if overall:  # a slice archive
        metrics = {**overall, "test_slices": len(test), "best_epoch": best[first.name]}
    else:
        metrics = {key: s["mean"] for key, s in summary.items()}
        if view_summary:
            metrics["views"] = {view: {key: s["mean"] for key, s in stats.items()}
                                for view, stats in view_summary.items()}
        metrics["best_epoch"] = best if len(best) > 1 else best[first.name]
    metrics["test_subjects"] = len(subjects)
    metrics["trained_on"] = first.ckpt.get("trained_on", {})  # device and torch version, for dvc exp show
    if summary:
        metrics["per_subject"] = summary
    write_json("reports/metrics.json", metrics)
    write_subjects(subjects, "reports/subjects.csv", view_subjects)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                   if k not in ("per_subject", "views", "trained_on")))
    for key, s in metrics.get("per_subject", {}).items():
        print(f"per subject {key}: {s['mean']:.4f} +- {s['sd']:.4f}")
    for view, stats in view_summary.items():
        print(f"{view} alone, per subject: " + " ".join(f"{k} {s['mean']:.4f} +- {s['sd']:.4f}"
                                                       for k, s in stats.items() if k.startswith("dice")))

    plot_curves({v.name: v.ckpt["history"] for v in predictor.views}, "reports/curves.png",
                title=first.ckpt["model"])
    # Evenly spaced test slices of the first view, so the figure spans the brain.
    pick = torch.linspace(0, len(test) - 1, max(1, min(p["num_examples"], len(test)))).round().long().tolist()
    x, y = (torch.stack(t) for t in zip(*(test[i] for i in pick)))
    preds = predict_labels(first.model, x, predictor.device, first.amp, batch_size=p["batch_size"])
    names = [f"{r.subject} {r.view} {r.slice}" if r.z >= 0 else r.image.rsplit("/", 1)[-1]
             for r in test.rows.iloc[pick].itertuples()]
    plot_predictions(x[:, x.shape[1] // 2].numpy(), y.numpy(), preds, names, "reports/predictions.png")


if __name__ == "__main__":
    sys.exit(stage_error("evaluate", main))
