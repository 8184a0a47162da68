"""Stage evaluate: models/model.pt on the test split -> reports/metrics.json, curves.png, predictions.png."""
import torch

from mriseg.data import load_split, read_manifest
from mriseg.evaluation import score
from mriseg.io import write_json
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
    x, y, rows = load_split(read_manifest("data/manifest.csv"), "test", ckpt.get("context", 0))
    if not len(x):
        raise SystemExit("evaluate: error: data/manifest.csv has no test pairs (split.test_size)")
    metrics = {**score(model, ckpt, x, y, p["batch_size"], device), "test_slices": len(x),
               "best_epoch": ckpt["best_epoch"]}
    write_json("reports/metrics.json", metrics)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    plot_curves(ckpt["history"], "reports/curves.png", title=ckpt["model"])
    # Evenly spaced test slices, so the figure spans the brain from bottom to top.
    pick = torch.linspace(0, len(x) - 1, max(1, min(p["num_examples"], len(x)))).round().long()
    preds = predict_labels(model, x[pick], device, ckpt["train"].get("amp", True), batch_size=p["batch_size"])
    plot_predictions(x[pick, x.shape[1] // 2].numpy(), y[pick].numpy(), preds, [rows["image"][int(i)].rsplit("/", 1)[-1] for i in pick],
                     "reports/predictions.png")


if __name__ == "__main__":
    main()
