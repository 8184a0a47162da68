"""The training loop: slices streamed from disk through a DataLoader (or held on the device when a split
fits train.device_cache_gb), device-side augmentation, one-hot and metrics, resumable epochs."""
import copy
import csv
import gc
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import CLASS_NAMES
from .augmentation import augment, thin_cortex
from .synthesis import mix_synthetic
from .data import Feed
from .devices import (autocast, broadcast_from_rank0, broadcast_object, describe_device, gather_over_ranks,
                      join_processes, leave_processes, rank_and_world, sum_over_ranks, use_all_cores)
from .errors import ParamsError
from .evaluation import evaluate
from .io import atomic_path, save_torch
from .metrics import NUM_CLASSES, class_logits, compute_loss, confusion_matrix, scores, tutorial_iou
from .models import FlipAveraged, build_model


# `train.recipe: tutorial` puts back every training choice of the reference tutorial in one setting.
TUTORIAL_RECIPE = {"lr": 3e-4, "batch_size": 16, "loss": "bce", "augment": False, "schedule": "constant",
                   "stem_init": "random", "context": 0, "flip_tta": False, "width": 16, "norm": "batch", "synth": 0.0,
                   "synth_atlas": 0.0, "thinning": 0.0}


class SettingsError(ParamsError):
    """train settings that cannot work with this data or this number of processes."""


def resolve_recipe(cfg):
    return {**cfg, **TUTORIAL_RECIPE} if cfg.get("recipe") == "tutorial" else dict(cfg)


def loader_workers(setting, device):
    """train.workers: auto reads on the main process on the CPU (a batch's reads cost far less than its
    step, and workers would take the step's cores) and with up to 4 worker processes for a GPU."""
    if setting != "auto":
        return int(setting)
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def log_epoch(live, row):
    live.step = row["epoch"]  # DVCLive steps are epoch numbers
    for key, value in row.items():
        if key != "epoch":
            split, _, metric = key.partition("_")
            live.log_metric(f"{split}/{metric}", value)
    live.next_step()


TIMING_COLUMNS = ("epoch", "seconds", "images_per_s")


def write_timing(timing, path):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, TIMING_COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows(timing)


def read_timing(path):
    """The per-epoch wall clock a training wrote to its timing_path: rows of epoch, seconds, images_per_s."""
    with open(path, newline="") as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")]


def share_of_batches(order, batch_size, rank, world):
    """This process's items of each global batch of `order`: the rank-th of `world` equal parts. With
    several processes the last global batch is filled up from the start of the order (as DistributedSampler
    pads), so that every process takes the same number of steps; one process gets `order` as it is."""
    if world == 1:
        return order
    order = torch.cat([order, order[torch.arange((-len(order)) % batch_size) % len(order)]])
    return order.view(-1, world, batch_size // world)[:, rank].reshape(-1)


def data_fingerprint(config, data_id):
    return hashlib.sha256(json.dumps({"config": config, "data": data_id}, sort_keys=True).encode()).hexdigest()


def view_settings(params, view):
    """The settings one view trains with: params.yaml's `train`, with `train.recipe` applied, then the view's
    own changes (`views.<view>`) on top, so that a per-view change wins even over the tutorial recipe."""
    return {**resolve_recipe(params["train"]), **(params["views"].get(view) or {})}


def for_processes(model, device, world):
    """The model as several processes train it: BatchNorm synchronised over them on GPUs, so that it normalises
    the global batch (SyncBatchNorm runs on GPUs only: on the CPU each process normalises its own share), then
    DistributedDataParallel, which averages the gradients. One process: the model as it is."""
    if world == 1:
        return model
    model = synchronised_batchnorm(model, device)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def synchronised_batchnorm(model, device):
    """On GPUs, the model's BatchNorm layers as SyncBatchNorm (in place; same parameters, buffers and state_dict
    keys, so a checkpoint loads into the plain model)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model


def read_resume(path, fingerprint, epochs):
    """The resume file's state when it belongs to this training (same settings and data), else None. Under
    several processes only rank 0 reads it (its disk is the one written to) and every process gets its copy,
    so all of them resume from the same epoch, or none does."""
    state = None
    if rank_and_world()[0] == 0 and Path(path).exists():
        # RNG states must stay on the CPU; the optimizer state follows the parameters on load.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint or state["epoch"] > epochs:
            state = None
    return broadcast_object(state)


def open_live(live_dir, history):
    """DVCLive for rank 0. Always a fresh log: a resumed run replays its history first, so the curves hold each
    epoch exactly once, even when the kill fell between logging an epoch and saving its resume file."""
    from dvclive import Live

    live = Live(live_dir, resume=False, dvcyaml=None, save_dvc_exp=False)
    for row in history:
        log_epoch(live, row)
    return live


def train_epoch(step_model, feed, order, opt, cfg, augment_gen, mirror, device, loss_name, activation, desc, show,
                atlas=None):
    """One pass over this process's share of the shuffled training items: {'train_loss', 'train_iou', ...}
    summed over every process, and the number of items seen. atlas: extra anatomy for synthesis."""
    amp, batch_size = cfg.get("amp", "auto"), feed.batches.batch_size
    step_model.train()
    total_loss = torch.zeros((), device=device)
    total_iou = torch.zeros((), device=device)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=device)
    for xb, yb in tqdm(feed(order), total=math.ceil(len(order) / batch_size), unit="batch", desc=desc, leave=False,
                       disable=not show):
        if cfg.get("synth") or cfg.get("thinning"):
            xb, yb = thin_cortex(xb, yb, augment_gen, cfg.get("thinning", 0.0))
            xb, yb = mix_synthetic(xb, yb, augment_gen, cfg.get("synth", 0.0), cfg.get("context", 0), atlas,
                                   cfg.get("synth_atlas", 0.0))
        if cfg.get("augment"):
            xb, yb = augment(xb, yb, augment_gen, cfg.get("bias_field", 0.0), flip=mirror)
        with autocast(device, amp):
            logits = step_model(xb).float()
        loss = compute_loss(loss_name, logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Running sums stay on the device: no host synchronisation inside the epoch.
        with torch.no_grad():
            total_loss += loss.detach() * len(xb)
            total_iou += tutorial_iou(class_logits(logits.detach(), activation), yb)
            cm += confusion_matrix(logits.detach(), yb)
    batches = torch.tensor(math.ceil(len(order) / batch_size), device=device)
    seen = torch.tensor(len(order), device=device)
    sum_over_ranks(total_loss, total_iou, cm, batches, seen)
    return {"train_loss": float(total_loss) / int(seen), "train_iou": float(total_iou) / int(batches),
            **{f"train_{k}": v for k, v in scores(cm.cpu()).items()}}, int(seen)


def train(cfg, model_name, train_set, eval_sets, out_path, resume_path, live_dir=None, eval_batch_size=32,
          extra=None, data_id="", mirror=True, timing_path=None, artifact=None, atlas=None, classes=CLASS_NAMES[:3]):
    """Train `model_name` with the settings `cfg` (params.yaml's `train`, recipe applied: view_settings).

    train_set: a Dataset of (image [C,H,W] float32, mask [H,W] uint8), all of one shape (data.SliceDataset).
    eval_sets: {"test": dataset, "val": ...}, scored after every epoch; the best epoch is chosen on "val"
    when there is one, else the last one. Every epoch ends with a resume file; rerun with the same data
    (data_id: see manifest.data_id) and settings and training carries on from there. Per-epoch metrics go
    to DVCLive in live_dir. Writes the checkpoint to out_path. mirror: the slices' columns run left-right
    (axial, coronal), so flips in augmentation and train.flip_tta give plausible brains; off for sagittal.
    artifact: DVCLive's log_artifact arguments (name, desc, labels) for the checkpoint, when live_dir is set.
    atlas: (m, 2C, H, W) labels and brain distances of extra anatomy that train.synth_atlas draws synthetic
    samples from (synthesis.atlas_slices, in train_set's frame). classes: the names of the classes the labels hold
    (archive_metadata's: four with CSF, the first three without), one output of the network each.
    Wall-clock times go to timing_path (TSV: epoch, seconds, images_per_s) and nowhere else, so that a
    retrain with the same seed writes the same checkpoint and curves, byte for byte.

    Under torchrun (several processes: DistributedDataParallel, NCCL on CUDA, gloo on the CPU),
    train.batch_size is the global batch: each process takes its share of every global batch (the items
    DistributedSampler would give it, cut from the one permutation all processes draw) and draws its
    own augmentation; scores are sums over the processes; rank 0 alone reads and writes the resume file
    and writes the checkpoint, DVCLive and timing.
    """
    use_all_cores()
    device = join_processes(cfg["device"])
    rank, world = rank_and_world()
    if cfg["batch_size"] % world:
        raise SettingsError(f"train.batch_size={cfg['batch_size']} (the global batch) does not divide among "
                            f"{world} processes (train.processes)")
    lead = rank == 0  # writes every output
    torch.manual_seed(cfg["seed"])
    torch.backends.cudnn.benchmark = cfg.get("cudnn_benchmark", True)
    amp, channels_last = cfg.get("amp", "auto"), cfg.get("channels_last", True)
    loss_name = cfg.get("loss", "bce")
    activation = "sigmoid" if loss_name == "bce" else "softmax"
    context = cfg.get("context", 0)
    channels = train_set[0][0].shape[0]
    if channels != 2 * context + 1:
        raise SettingsError(f"train.context={context} needs {2 * context + 1} input channels, the data has {channels}")

    if cfg.get("thinning") and "csf" not in classes:
        # Thinning turns cortex into CSF: three-class data (data.csf: none, a slice archive) trains without it.
        if lead:
            print(f"train.thinning={cfg['thinning']} skipped: the data has no CSF class to thin the cortex into "
                  "(data.csf: none, or a slice archive)")
        cfg = {**cfg, "thinning": 0.0}
    label_users = [key for key in ("synth", "thinning") if cfg.get(key)]
    if label_users:
        # synthesis and thinning use each input channel's own labels (synthesis their distances too): a copy,
        # the caller's set stays as it was
        distances = bool(cfg.get("synth"))
        train_set = copy.copy(train_set)
        train_set.label_context, train_set.label_distances = True, distances
        x0, y0 = train_set[0]
        if y0.shape != ((1 + distances) * x0.shape[0], *x0.shape[1:]):
            key = label_users[0]
            raise SettingsError(f"train.{key}={cfg[key]} needs the labels of every input channel: train on a "
                                "data.SliceDataset")
    if cfg.get("synth") and cfg.get("synth_atlas"):
        if atlas is None or atlas.shape[1:] != train_set[0][1].shape:
            raise SettingsError(f"train.synth_atlas={cfg['synth_atlas']} needs the atlas's slices in the training "
                                f"frame {tuple(train_set[0][1].shape)} (synthesis.atlas_slices), got "
                                f"{None if atlas is None else tuple(atlas.shape[1:])}")
        atlas = atlas.to(device)
        if len(classes) < len(CLASS_NAMES):  # a model without CSF: the atlas's CSF is background, as in its data
            labels = atlas[:, :channels]
            atlas = torch.cat([torch.where(labels == CLASS_NAMES.index("csf"), CLASS_NAMES.index("background"),
                                           labels), atlas[:, channels:]], 1)
    else:
        atlas = None
    feeds = make_feeds(cfg, train_set, eval_sets, device, world, eval_batch_size, channels_last)
    model = build_model(model_name, pretrained=cfg["pretrained"], stem_init=cfg.get("stem_init", "random"),
                        in_channels=channels, width=cfg.get("width", 16), num_classes=len(classes),
                        norm=cfg.get("norm", "batch"))
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    epochs = cfg["epochs"]
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if cfg.get("schedule") == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    gen = torch.Generator().manual_seed(cfg["seed"])  # the order of the training items, the same everywhere
    # One process draws its augmentation from the same generator (as it always has); several, each their own.
    augment_gen = gen if world == 1 else torch.Generator().manual_seed(cfg["seed"] * 1000 + 1 + rank)

    # A resume file holds one augmentation generator per process: it fits only the same number of processes.
    fingerprint = data_fingerprint({"model": model_name, "train": cfg, **({"processes": world} if world > 1 else {})},
                                   data_id)
    history, timing, start, best = [], [], 0, {"score": -1.0, "epoch": None, "state_dict": None}
    state = read_resume(resume_path, fingerprint, epochs)
    if state is not None:  # loaded before DDP wraps the model, which starts every process from rank 0's weights
        history, start, best, timing = restore(state, model, opt, sched, gen, augment_gen if world > 1 else None)
        if lead:
            print(f"resuming from {resume_path} after epoch {start}/{epochs}")
    flip_tta = bool(cfg.get("flip_tta")) and mirror
    step_model, score_model = stepped_and_scored(model, cfg, device, world, flip_tta, activation)
    live = open_live(live_dir, history) if live_dir is not None and lead else None

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        mine = share_of_batches(torch.randperm(len(train_set), generator=gen), cfg["batch_size"], rank, world)
        sums, seen = train_epoch(step_model, feeds["train"], mine, opt, cfg, augment_gen, mirror, device, loss_name,
                                 activation, f"epoch {epoch + 1}/{epochs}", lead, atlas)
        sched.step()
        row = {"epoch": epoch + 1, **sums}
        seconds = time.perf_counter() - t0  # the sums above waited for the device
        timing.append({"epoch": epoch + 1, "seconds": seconds, "images_per_s": seen / seconds})
        # BatchNorm's running statistics moved with each process's last batch: score rank 0's, the ones it saves.
        broadcast_from_rank0(list(model.buffers()))
        for split in eval_sets:
            if split in feeds:
                r = evaluate(score_model, feeds[split], device, amp, loss_name, activation)
                row.update({f"{split}_{k}": v for k, v in
                            {"loss": r["loss"], "iou": r["iou"], **scores(r["confusion"])}.items()})
        history.append(row)
        augment_states = gather_over_ranks(augment_gen.get_state()) if world > 1 else None
        if not lead:
            continue
        print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={row[k]:.4f}" for k in row if k.endswith(
            ("_loss", "_iou", "_dice_gray_matter"))) + f" ({seconds:.1f} s, {seen / seconds:.1f} images/s)")
        if "val" in feeds and row["val_iou"] > best["score"]:
            best = {"score": row["val_iou"], "epoch": epoch + 1,
                    "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if live is not None:
            log_epoch(live, row)
        save_torch({"fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    **({"augment_generators": augment_states} if augment_states else {}),
                    "history": history, "timing": timing, "best": best}, resume_path)
        if timing_path is not None:
            write_timing(timing, timing_path)

    ckpt = None
    if lead:
        if best["state_dict"] is not None:
            model.load_state_dict(best["state_dict"])
        if cfg.get("synth") and cfg.get("bn_refit", False):
            refit_batchnorm(model, feeds["train"], device, amp)
        state_dict = model.state_dict()
        ckpt = {"format": 1, "model": model_name, "state_dict": {k: v.cpu() for k, v in state_dict.items()},
                "classes": list(classes), "activation": activation, "loss": loss_name, "context": context,
                "width": cfg.get("width", 16), "norm": cfg.get("norm", "batch"), "flip_tta": flip_tta,
                "best_epoch": best["epoch"] or epochs, "history": history, "train": cfg,
                "trained_on": describe_device(device), **(extra or {})}
        finish(ckpt, out_path, resume_path, live, artifact)
    leave_processes()
    return ckpt


def refit_batchnorm(model, feed, device, amp):
    """BatchNorm's running statistics re-estimated over one pass of the real training slices, weights
    untouched (torch's update_bn): in training they averaged real and synthetic batches, a mixture that
    prediction never feeds. Only the process that writes the checkpoint makes the pass."""
    with autocast(device, amp):
        torch.optim.swa_utils.update_bn((xb for xb, _ in feed()), model)


def stepped_and_scored(model, cfg, device, world, flip_tta, activation):
    """(the model the optimizer steps, the one that scores each epoch). DDP averages the gradients over the
    processes; scoring needs no synchronised forward: the bare model, with flip_tta as the checkpoint will
    predict. Both compiled with train.compile."""
    compiled = torch.compile(model) if cfg.get("compile") else model
    step_model = compiled if world == 1 else for_processes(model, device, world)
    if world > 1 and cfg.get("compile"):
        step_model = torch.compile(step_model)
    return step_model, FlipAveraged(compiled, activation) if flip_tta else compiled


def restore(state, model, opt, sched, gen, augment_gen):
    """A resume file's state put back: weights, optimizer, schedule and every generator (augment_gen: this
    process's own, under several processes). Returns (history, epochs done, best epoch so far, timing)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    if augment_gen is not None:
        augment_gen.set_state(state["augment_generators"][rank_and_world()[0]])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["epoch"], state["best"], state.get("timing", [])


def finish(ckpt, out_path, resume_path, live, artifact):
    """The checkpoint written, the resume file gone, DVCLive closed (with the model as its artifact)."""
    save_torch(ckpt, out_path)
    Path(resume_path).unlink(missing_ok=True)
    if live is not None:
        if artifact:
            # A pipeline output already: DVC caches it as the stage's out, DVCLive only annotates it.
            live.log_artifact(str(out_path), type="model", cache=False, **artifact)
        live.end()


def make_feeds(cfg, train_set, eval_sets, device, world, eval_batch_size, channels_last):
    """A Feed per non-empty split: held on the device while they fit train.device_cache_gb (train first),
    else streamed from disk; the training split in each process's share of the global batch."""
    workers, budget = loader_workers(cfg.get("workers", "auto"), device), cfg.get("device_cache_gb", 0) * 2**30
    if workers:
        # Loader workers are forked from this process; a collection in them would write to every object they
        # inherited and copy ~100 MB of this heap into each. Frozen objects are never collected.
        gc.collect()
        gc.freeze()
    feeds = {}
    for split, dataset in {"train": train_set, **eval_sets}.items():
        if len(dataset):
            bs = cfg["batch_size"] // world if split == "train" else eval_batch_size
            feeds[split] = Feed(dataset, bs, device, workers, budget, channels_last)
            budget -= feeds[split].nbytes if feeds[split].cached is not None else 0
    return feeds
