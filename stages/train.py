"""Stage train: data/manifest.csv -> models/model.pt, per-epoch curves in reports/train (DVCLive)."""
import sys

from mriseg.data import archive_metadata, load_split, read_manifest, usable_context
from mriseg.models import PretrainedWeightsUnavailable
from mriseg.params import load_params
from mriseg.training import resolve_recipe, train


def main():
    params = load_params()
    manifest = read_manifest("data/manifest.csv")
    cfg = resolve_recipe(params["train"])
    context = cfg["context"] = usable_context(manifest, cfg.get("context", 0))
    x, y, rows = load_split(manifest, "train", context)
    evals = {s: load_split(manifest, s, context)[:2] for s in ("val", "test")}
    meta = archive_metadata("data/MRIs")
    print(f"train {len(x)} slices {tuple(x.shape[2:])}, val {len(evals['val'][0])}, test {len(evals['test'][0])}; "
          f"model {params['model']}, {x.shape[1]} input channel(s)")
    try:
        train(cfg, params["model"], (x, y), evals, "models/model.pt", "models/resume.pt",
              live_dir="reports/train", eval_batch_size=params["train"]["eval_batch_size"],
              extra={**meta, "input_size": list(x.shape[2:])})
    except PretrainedWeightsUnavailable as e:
        sys.exit(f"train: error: {e}")


if __name__ == "__main__":
    main()
