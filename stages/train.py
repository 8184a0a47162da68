"""Stage train@<view>: data/manifest.csv -> models/views/<view>.pt, one network for one plane (axial, coronal
or sagittal), per-epoch curves in reports/train/<view> (DVCLive). params.yaml's `train`, with the view's own
changes from `views.<view>` on top. Wall-clock time per epoch: logs/train/<view>.tsv (untracked, so that a
retrain with the same seed leaves git and dvc.lock as they were).

train.processes > 1 starts PyTorch's launcher (torchrun --standalone) on this script, one process per GPU
(or gloo processes on the CPU). Under a torchrun you started yourself (several machines, SLURM), the
script trains as one of its processes and launches nothing."""
import logging
import os
import sys

import torch

from mriseg.data import SliceDataset
from mriseg.devices import DistributedError, launched, usable_cores
from mriseg.errors import DataError, stage_error
from mriseg.manifest import archive_metadata, archive_views, data_id, read_manifest, usable_context
from mriseg.params import load_params
from mriseg.synthesis import atlas_slices
from mriseg.training import train, view_settings
from mriseg.volumes import LEFT_RIGHT_VIEWS


def launch(processes, device, view):
    """Run this stage as `processes` processes under torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_gpu and processes > torch.cuda.device_count():
        raise DistributedError(f"params.yaml: train.processes={processes}, but {torch.cuda.device_count()} CUDA "
                               "GPU(s) are visible: one process per GPU")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failing rank says why
    # The machine's cores shared out (torchrun would give each process one thread, with a banner saying so).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // processes)))
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(processes), __file__, view]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise DistributedError(f"rank {rank} of {processes} processes failed (exit code {failure.exitcode})") from None
    return 0


def main(view):
    params = load_params()
    cfg = view_settings(params, view)
    if cfg.get("processes", 1) > 1 and launched()[1] == 1:
        return launch(cfg["processes"], cfg["device"], view)
    lead = launched()[0] == 0
    planes = archive_views("data/MRIs")
    if view not in planes:
        raise DataError(f"data/MRIs holds {planes[0]} slices only (a slice archive): "
                        f"remove views.{view} from params.yaml")
    manifest = read_manifest("data/manifest.csv")
    context = cfg["context"] = usable_context(manifest, cfg.get("context", 0), log=print if lead else lambda m: None)
    data = {split: SliceDataset(manifest, split, context, view) for split in ("train", "val", "test")}
    meta = archive_metadata("data/MRIs")
    if lead:
        print(f"train {view}: {len(data['train'])} slices {data['train'].frame}, val {len(data['val'])}, "
              f"test {len(data['test'])} ({meta['layout']}); model {params['model']}, "
              f"{2 * context + 1} input channel(s)")
    atlas = None
    if cfg.get("synth") and cfg.get("synth_atlas"):
        if meta["layout"] != "volumes":
            raise DataError("train.synth_atlas needs a cohort of volumes (data/MRIs holds slices): set it to 0")
        atlas = atlas_slices(view, context, data["train"].frame, (meta["pixel_size_mm"] or [None])[0],
                             params["data"]["min_tissue"])
    train(cfg, params["model"], data["train"], {"val": data["val"], "test": data["test"]},
          f"models/views/{view}.pt", f"models/resume/{view}.pt", live_dir=f"reports/train/{view}",
          eval_batch_size=cfg["eval_batch_size"], data_id=data_id("data/manifest.csv", "data/MRIs"),
          extra={"axis": view, **{k: meta[k] for k in ("normalization", "pixel_size_mm", "grid", "csf", "skull_strip")}},
          mirror=view in LEFT_RIGHT_VIEWS, timing_path=f"logs/train/{view}.tsv",
          artifact={"name": f"tissue-segmenter-{view}", "labels": [params["model"], view, "2.5d"],
                    "desc": f"the {view} view of the tissue-segmenter artifact (dvc.yaml)"}, atlas=atlas,
          classes=meta["classes"])
    return 0


if __name__ == "__main__":
    sys.exit(stage_error("train", main, sys.argv[1]))
