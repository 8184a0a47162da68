"""Training throughput: the tutorial's loop against mriseg's, same data, model and machine, one run.

The tutorial loop is re-implemented faithfully: a Dataset that np.loads each slice and one-hot encodes
its mask on the CPU per item, a DataLoader, fp32, and `.item()` on the loss every batch. mriseg's loop
is `mriseg.training.train` itself (one-hot and metrics on the device, bf16 autocast, channels_last),
timed twice: `mriseg-cached` holds the split on the device (train.device_cache_gb, the in-memory loop),
`mriseg-streamed` reads every batch from disk through its DataLoader (train.device_cache_gb: 0), as a
cohort larger than the cache trains. Each measurement runs in its own process so peak memory is its own.

    python benchmarks/train_throughput.py --data sample   # CPU, the embedded sample's slices (192 x 160)
    python benchmarks/train_throughput.py                 # CPU, 208 px synthetic slices, both networks
    python benchmarks/train_throughput.py --device cuda   # GPU, 394 px (the tutorial's size), 325 slices
    python benchmarks/train_throughput.py --models unet --processes 2   # + 2 torchrun processes, 1 thread each
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mriseg.devices import describe_device
from mriseg.metrics import tutorial_iou
from mriseg.models import build_model
from mriseg.training import read_timing, train


def make_slices(folder, n, size, seed=0):
    """n tutorial-layout pairs on disk: smooth random images, masks of three tissue classes."""
    rng = np.random.default_rng(seed)
    (folder / "MRIs").mkdir(parents=True, exist_ok=True)
    (folder / "Segmentations").mkdir(exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        r = np.hypot(yy - rng.uniform(0.4, 0.6), xx - rng.uniform(0.4, 0.6))
        mask = np.where(r < 0.2, 0, np.where(r < 0.35, 1, 2)).astype(np.uint8)
        image = (np.choose(mask, [0.9, 0.55, 0.02]) + rng.normal(0, 0.03, mask.shape)).astype(np.float32)
        np.save(folder / "MRIs" / f"img_{i}.npy", image)
        np.save(folder / "Segmentations" / f"segm_{i}.npy", mask)


class TutorialDataset(torch.utils.data.Dataset):
    def __init__(self, folder):
        self.images = sorted((folder / "MRIs").glob("*.npy"))
        self.folder = folder

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = np.load(self.images[i])
        mask = np.load(self.folder / "Segmentations" / f"segm_{self.images[i].stem.split('_')[-1]}.npy")
        onehot = np.eye(3)[mask]  # per item, on the CPU, float64 as in the tutorial
        return torch.tensor(image).unsqueeze(0), torch.tensor(onehot).permute(2, 0, 1).float()


def tutorial_loop(model_name, folder, device, epochs, batch_size):
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    dl = torch.utils.data.DataLoader(TutorialDataset(folder), batch_size=batch_size, shuffle=True)
    criterion = torch.nn.BCEWithLogitsLoss()
    speeds = []
    for _ in range(epochs):
        model.train()
        t0, seen, losses, ious = time.perf_counter(), 0, [], []
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            y_hat = model(x)
            loss = criterion(y_hat, y)
            loss.backward()
            opt.step()
            ious.append(tutorial_iou(y_hat, y.argmax(1)).item())
            losses.append(loss.item())
            seen += len(x)
        speeds.append(seen / (time.perf_counter() - t0))
    return float(np.median(speeds[1:] or speeds)), float(np.mean(losses))


def mriseg_loop(model_name, folder, device, epochs, batch_size, cache_gb=8, workers="auto", **switches):
    import pandas as pd

    from mriseg.data import SliceDataset
    from mriseg.manifest import MANIFEST_COLUMNS, list_pairs

    manifest = pd.DataFrame(list_pairs(folder)).assign(split="train")[MANIFEST_COLUMNS]
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": 3e-4, "pretrained": False, "stem_init": "random",
           "loss": "bce", "augment": False, "schedule": "constant", "device": str(device), "seed": 0,
           "amp": "auto", "channels_last": True, "compile": False, "cudnn_benchmark": True,
           "device_cache_gb": cache_gb, "workers": workers, **switches}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train(cfg, model_name, SliceDataset(manifest, "train"), {}, Path(tmp) / "m.pt", Path(tmp) / "r.pt",
                     timing_path=Path(tmp) / "timing.tsv")
        if ckpt is None:  # not rank 0 of several processes: rank 0 reports for all
            return None, None
        speeds = [row["images_per_s"] for row in read_timing(Path(tmp) / "timing.tsv")]
    return float(np.median(speeds[1:] or speeds)), ckpt["history"][-1]["train_loss"]


def commit():
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")


def publish(lines, out=None):
    """A benchmark's record: printed, and written to `out` (a markdown file) when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


def worker(args):
    device = torch.device(args.device)
    folder = Path(args.folder)
    if args.loop == "tutorial":
        speed, loss = tutorial_loop(args.model, folder, device, args.epochs, args.batch_size)
    else:
        speed, loss = mriseg_loop(args.model, folder, device, args.epochs, args.batch_size, compile=args.compile,
                                  cache_gb=0 if args.streamed else 8)
    if speed is None:
        return
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": speed, "peak_mb": peak, "loss": loss}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, help="slice size in pixels (default 208 on cpu, 394 on cuda)")
    p.add_argument("--slices", type=int, help="training slices (default 32 on cpu, 325 on cuda)")
    p.add_argument("--epochs", type=int, default=2, help="the median of epochs 2 to N is reported; the first warms up")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--models", default="unet,resnet")
    p.add_argument("--compile", action="store_true", help="also time mriseg with train.compile=true")
    p.add_argument("--processes", type=int, help="also time mriseg as N processes under torchrun (DDP; gloo on "
                   "the CPU, each with its share of the cores; one GPU each, or all sharing one), same global batch")
    p.add_argument("--data", choices=["synthetic", "sample"], default="synthetic",
                   help="synthetic square slices (--size, --slices), or the embedded MNI152 sample's")
    p.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", nargs=2, metavar=("LOOP", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.loop, args.model = args.worker
        return worker(args)

    name = describe_device(torch.device(args.device))["device"]
    loops = ["tutorial", "mriseg-cached", "mriseg-streamed"] + (["mriseg-compile"] if args.compile else [])
    loops += [f"mriseg-{args.processes}-processes"] if args.processes else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "MRIs"
        if args.data == "sample":  # the sample's axial slices, in the tutorial's layout
            import zipfile

            from mriseg.archive import extract_archive
            from mriseg.make_archive import make_archive
            from mriseg.sample import build_sample_archive

            build_sample_archive(Path(tmp) / "sample.zip")
            (Path(tmp) / "volumes").mkdir()
            with zipfile.ZipFile(Path(tmp) / "sample.zip") as zf:  # make-archive takes a flat folder
                for name in zf.namelist():
                    (Path(tmp) / "volumes" / Path(name).name).write_bytes(zf.read(name))
            make_archive(Path(tmp) / "volumes", Path(tmp) / "slices.zip", labels="ibsr", axis="axial", pixel_size=1.0)
            n = extract_archive(Path(tmp) / "slices.zip", folder)
            shape = np.load(next((folder / "MRIs").glob("*.npy"))).shape
        else:
            size = args.size or (394 if args.device == "cuda" else 208)
            n, shape = args.slices or (325 if args.device == "cuda" else 32), (size, size)
            make_slices(folder, n, size)
        print(f"# {name}; torch {torch.__version__}; commit {commit()}; {args.data} data, {n} slices of "
              f"{shape[0]} x {shape[1]}, batch {args.batch_size}, median of epochs 2-{args.epochs}")
        for model in args.models.split(","):
            base = None
            for loop in loops:
                cmd = [sys.executable, __file__, "--worker", loop.split("-")[0], model, "--folder", str(folder),
                       "--device", args.device, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
                cmd += {"mriseg-compile": ["--compile"], "mriseg-streamed": ["--streamed"]}.get(loop, [])
                env = None
                if loop.endswith("-processes"):  # torchrun; the machine's threads shared out among the processes
                    cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.processes)]
                    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // args.processes))}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    sys.exit(f"{loop} {model} failed:\n{out.stderr[-2000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                base = base or r["images_per_s"]
                rows.append((model, loop, r["images_per_s"], r["peak_mb"], r["images_per_s"] / base, r["loss"]))
                print(f"  {model:6s} {loop:16s} {r['images_per_s']:8.1f} images/s", file=sys.stderr)
    mem = "peak GPU MB" if args.device == "cuda" else "peak RSS MB"
    print(f"| model | loop | images/s | {mem} | speed-up | last-epoch loss |")
    print("|---|---|---|---|---|---|")
    for model, loop, speed, peak, ratio, loss in rows:
        print(f"| {model} | {loop} | {speed:.1f} | {peak:.0f} | {ratio:.2f}x | {loss:.4f} |")


if __name__ == "__main__":
    main()
