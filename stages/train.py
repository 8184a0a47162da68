"""Stage train@<view>: data/manifest.csv -> models/views/<view>.pt, one network for one plane (axial, coronal
or sagittal), per-epoch curves in reports/train/<view> (DVCLive). params.yaml's `train`, with the view's own
changes from `views.<view>` on top. Wall-clock time per epoch: logs/train/<view>.tsv (untracked, so that a
retrain with the same seed leaves git and dvc.lock as they were)."""
import sys

from mriseg.data import SliceDataset, archive_metadata, archive_views, data_id, read_manifest, usable_context
from mriseg.models import PretrainedWeightsUnavailable
from mriseg.params import load_params
from mriseg.training import resolve_recipe, train
from mriseg.volumes import LEFT_RIGHT_VIEWS


def main(view):
    params = load_params()
    planes = archive_views("data/MRIs")
    if view not in planes:
        sys.exit(f"train: error: data/MRIs holds {planes[0]} slices only (a slice archive): "
                 f"remove views.{view} from params.yaml")
    manifest = read_manifest("data/manifest.csv")
    cfg = resolve_recipe({**params["train"], **(params["views"][view] or {})})
    context = cfg["context"] = usable_context(manifest, cfg.get("context", 0))
    data = {split: SliceDataset(manifest, split, context, view) for split in ("train", "val", "test")}
    meta = archive_metadata("data/MRIs")
    print(f"train {view}: {len(data['train'])} slices {data['train'].frame}, val {len(data['val'])}, "
          f"test {len(data['test'])} ({meta['layout']}); model {params['model']}, {2 * context + 1} input channel(s)")
    try:
        train(cfg, params["model"], data["train"], {"val": data["val"], "test": data["test"]},
              f"models/views/{view}.pt", f"models/resume/{view}.pt", live_dir=f"reports/train/{view}",
              eval_batch_size=cfg["eval_batch_size"], data_id=data_id("data/manifest.csv", "data/MRIs"),
              extra={"axis": view, **{k: meta[k] for k in ("normalization", "pixel_size_mm", "grid")}},
              mirror=view in LEFT_RIGHT_VIEWS, timing_path=f"logs/train/{view}.tsv",
              artifact={"name": f"tissue-segmenter-{view}", "labels": [params["model"], view, "2.5d"],
                        "desc": f"the {view} view of the tissue-segmenter artifact (dvc.yaml)"})
    except PretrainedWeightsUnavailable as e:
        sys.exit(f"train: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1])
