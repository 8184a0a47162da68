"""bf16 autocast against fp32 on this machine: one training step, and `mriseg predict` of one volume, in the
same run. train.amp auto takes bf16 only where the device computes it natively (CUDA, CPUs with AVX-512
BF16 or AMX: devices.bf16_is_native); this table is why, on a CPU without it, auto takes fp32.

Training step: the default UNet (width 32, context 1: 3 input channels, 4 classes), batch 4 of 208 x 208
random slices, Adam, cross-entropy; median of --steps steps after one warm-up. Predict: the shipped model
on the skull-stripped MNI152 2009 template (Predictor.predict_volume: resample, crop, slices through each
network with its flips, probabilities averaged, back to the input's grid), one run each (no warm-up): its
three views in fp32, then its axial view alone in fp32 and in bf16 (where bf16 is emulated, three views
would take most of an hour), whose labels are compared voxel by voxel.

    python benchmarks/precision.py [--model src/mriseg/shipped/ibsr18-3views.pt] [--out FILE.md]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mriseg.devices import autocast, bf16_is_native, cpu_name  # noqa: E402
from predict_time import first_view_only, mni152_heads  # noqa: E402
from train_throughput import commit, publish  # noqa: E402


def step_seconds(amp, steps):
    from mriseg.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, width=32).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 3e-4)
    x = torch.randn(4, 3, 208, 208).to(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (4, 208, 208))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def predict_seconds(model, path, amp):
    from mriseg.prediction import Predictor

    predictor = Predictor(model, "cpu")
    for view in predictor.views:
        view.amp = amp
    t0 = time.perf_counter()
    labels = predictor.predict_volume(path)
    return time.perf_counter() - t0, np.asarray(labels)


def main():
    from mriseg.models import SHIPPED_MODEL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", help="also write the table here (markdown)")
    args = p.parse_args()
    native = bf16_is_native(torch.device("cpu"))
    rows = []
    fp32, bf16 = (step_seconds(amp, args.steps) for amp in (False, True))
    rows.append(f"| training step (batch 4, 3 x 208 x 208) | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.1f}x | - |")
    print(rows[-1], file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        brain = mni152_heads(Path(tmp))[1]
        fp32, a = predict_seconds(args.model, brain, False)
        rows.append(f"| predict, 3 views, skull-stripped MNI152 | {fp32:.1f} | {'-' if native else 'not timed'} | | |")
        print(rows[-1], file=sys.stderr, flush=True)
        one = first_view_only(args.model, Path(tmp) / "one.pt")
        (fp32, a), (bf16, b) = (predict_seconds(one, brain, amp) for amp in (False, True))
        tissue = (a != 2) | (b != 2)
        rows.append(f"| predict, 1 view (axial), skull-stripped MNI152 | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.1f}x "
                    f"| {(a == b)[tissue].mean():.4f} |")
    lines = ["# bf16 autocast against fp32 on this machine (seconds)", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}, bf16 native: {'yes' if native else 'no'} (so train.amp "
             f"auto takes {'bf16' if native else 'fp32'}). Commit {commit()}. Model: {args.model}.", "",
             "| work | fp32 s | bf16 s | bf16 / fp32 | same label (voxels either calls tissue or CSF) |",
             "|---|---|---|---|---|", *rows]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
