"""Stage train: data/manifest.csv -> models/model.pt, per-epoch curves in reports/train (DVCLive)."""
import sys

from mriseg.data import SliceDataset, archive_metadata, data_id, read_manifest, usable_context
from mriseg.models import PretrainedWeightsUnavailable
from mriseg.params import load_params
from mriseg.training import resolve_recipe, train


def main():
    params = load_params()
    manifest = read_manifest("data/manifest.csv")
    cfg = resolve_recipe(params["train"])
    context = cfg["context"] = usable_context(manifest, cfg.get("context", 0))
    data = {split: SliceDataset(manifest, split, context) for split in ("train", "val", "test")}
    meta = archive_metadata("data/MRIs")
    print(f"train {len(data['train'])} slices {data['train'].frame}, val {len(data['val'])}, "
          f"test {len(data['test'])} ({meta['layout']}); model {params['model']}, {2 * context + 1} input channel(s)")
    try:
        train(cfg, params["model"], data["train"], {"val": data["val"], "test": data["test"]}, "models/model.pt",
              "models/resume.pt", live_dir="reports/train", eval_batch_size=params["train"]["eval_batch_size"],
              extra={k: meta[k] for k in ("axis", "normalization", "pixel_size_mm")},
              data_id=data_id("data/manifest.csv", "data/MRIs"))
    except PretrainedWeightsUnavailable as e:
        sys.exit(f"train: error: {e}")


if __name__ == "__main__":
    main()
