"""Stage evaluate: models/model.pt on the test split -> reports/metrics.json (slice metrics, and per-subject
scores summarised), reports/subjects.csv (one row per test subject), curves.png, predictions.png."""
import torch

from mriseg.data import SliceDataset, read_manifest
from mriseg.evaluation import score_split, write_subjects
from mriseg.io import write_json
from mriseg.metrics import summarize
from mriseg.models import load_checkpoint
from mriseg.params import load_params
from mriseg.prediction import predict_labels
from mriseg.reporting import plot_curves, plot_predictions
from mriseg.training import pick_device


def main():
    params = load_params()
    p = params["evaluate"]
    device = pick_device(params["train"]["device"])
    model, ckpt = load_checkpoint("models/model.pt", device)
    test = SliceDataset(read_manifest("data/manifest.csv"), "test", ckpt.get("context", 0))
    if not len(test):
        raise SystemExit("evaluate: error: data/manifest.csv has no test pairs (split.test_size)")
    overall, subjects = score_split(model, ckpt, "data/MRIs", test, p["batch_size"], device)
    metrics = {**overall, "test_slices": len(test), "best_epoch": ckpt["best_epoch"], "test_subjects": len(subjects)}
    if subjects:
        metrics["per_subject"] = summarize(subjects)
    write_json("reports/metrics.json", metrics)
    write_subjects(subjects, "reports/subjects.csv")
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                   if k != "per_subject"))
    for key, s in metrics.get("per_subject", {}).items():
        print(f"per subject {key}: {s['mean']:.4f} +- {s['sd']:.4f}")

    plot_curves(ckpt["history"], "reports/curves.png", title=ckpt["model"])
    # Evenly spaced test slices, so the figure spans the brain from bottom to top.
    pick = torch.linspace(0, len(test) - 1, max(1, min(p["num_examples"], len(test)))).round().long().tolist()
    x, y = (torch.stack(t) for t in zip(*(test[i] for i in pick)))
    preds = predict_labels(model, x, device, ckpt["train"].get("amp", True), batch_size=p["batch_size"])
    names = [f"{r.subject} slice {r.slice}" if r.z >= 0 else r.image.rsplit("/", 1)[-1]
             for r in test.rows.iloc[pick].itertuples()]
    plot_predictions(x[:, x.shape[1] // 2].numpy(), y.numpy(), preds, names, "reports/predictions.png")


if __name__ == "__main__":
    main()
