"""A grid of real IBSR slices beside images synthesised from their labels (mriseg.synthesis), to look at:
each row one slice (axial, coronal, sagittal in turn), the real image, its labels, then synthetic draws;
the last row a slice of the MNI152 atlas that train.synth_atlas draws from.
Also times synthesis per batch against the batch's training step.

    python benchmarks/synthetic_samples.py [--out docs/images/synthetic-samples.png]
        [--record benchmarks/results/synthesis/cpu.md]
"""
import argparse
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
IBSR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsr18-dev"


def slices_with_context(image, mask, view, z):
    """(image (3, F, F), labels and brain distances (6, F, F)) of slice z and its neighbours, as the
    training's dataset gives them with label_context."""
    from mriseg.volumes import FAR, brain_distance, pad_slices, view_slice

    distance = brain_distance(mask)
    cut = lambda volume: np.stack([view_slice(volume, view, z + d) for d in (-1, 0, 1)])
    x, y = cut(image), cut(mask)
    frame = (max(x.shape[1:]) + 15) // 16 * 16
    return (torch.from_numpy(pad_slices(x.astype(np.float32), (frame, frame), 0)),
            torch.from_numpy(np.concatenate([pad_slices(y.astype(np.uint8), (frame, frame), 2),
                                             pad_slices(cut(distance), (frame, frame), FAR)])))


def main():
    from mriseg.scans import working_volumes
    from mriseg.synthesis import atlas_slices, mix_synthetic, synthesize
    from mriseg.volumes import FAR, view_shape

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/images/synthetic-samples.png")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--record", help="also write the timing table here (markdown)")
    args = ap.parse_args()
    if not IBSR.is_dir():
        sys.exit(f"{IBSR}: not found (the IBSR development set in ../shared)")
    rows = []
    for subject, view, at in (("IBSR_01", "axial", 0.55), ("IBSR_05", "coronal", 0.5), ("IBSR_09", "sagittal", 0.4),
                              ("IBSR_16", "axial", 0.35)):
        image, mask = working_volumes(IBSR / f"{subject}.nii.gz", [IBSR / f"{subject}_seg.nii.gz"], "ibsr", None,
                                      1.0, csf="intensity")[:2]
        z = int(view_shape(image.shape, view)[0] * at)
        rows.append(slices_with_context(image, mask, view, z))
    size = max(x.shape[-1] for x, _ in rows)
    atlas = atlas_slices("coronal", 1, (size, size))
    rows.append((torch.zeros(3, size, size), atlas[len(atlas) // 2]))  # the atlas's labels, no image
    pad = lambda t, value: torch.nn.functional.pad(t, (0, size - t.shape[-1], 0, size - t.shape[-2]), value=value)
    x = torch.stack([pad(a, 0) for a, _ in rows])
    y = torch.stack([torch.cat([pad(b[:3], 2), pad(b[3:], FAR)]) for _, b in rows])
    gen = torch.Generator().manual_seed(0)
    draws = [synthesize(y[:, :3], y[:, 3:], gen) for _ in range(args.draws)]
    fig, axes = plt.subplots(len(rows), 2 + args.draws, figsize=(2 * (2 + args.draws), 2 * len(rows)))
    for r in range(len(rows)):
        axes[r, 0].imshow(x[r, 1], cmap="gray", vmin=0, vmax=1)
        axes[r, 1].imshow(y[r, 1], cmap="viridis", vmin=0, vmax=3)
        for k, (images, labels) in enumerate(draws):
            axes[r, 2 + k].imshow(images[r, 1], cmap="gray", vmin=0, vmax=1)
            axes[r, 2 + k].contour((labels[r, 1] < 2).float(), levels=[0.5], colors="r", linewidths=0.4)
    axes[-1, 0].set_title("MNI152 atlas", fontsize=9)
    for ax, title in zip(axes[0], ["real (IBSR)", "labels"] + [f"synthetic {k + 1}" for k in range(args.draws)]):
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("mriseg.synthesis: images drawn from the labels (red: the tissue the target keeps)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")

    # Time: a batch of 4 as training draws it (train.synth 1 and 0.5) against the UNet's step on it.
    from mriseg.devices import cpu_name
    from mriseg.models import build_model
    from train_throughput import commit, publish

    lines = ["# Synthesis against a training step", "",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}. Commit {commit()}. "
             f"The four slices of {args.out} (IBSR, 1 mm, three channels: context 1), mean of 5 batches after one.", "",
             "| what | ms per batch of 4 |", "|---|---|"]
    model = build_model("unet", pretrained=False, in_channels=3, width=32)
    opt = torch.optim.Adam(model.parameters())
    def step():
        loss = model(x).float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = x[:4], y[:4]  # the IBSR slices
    for name, run in (("synthesis, all 4 samples", lambda: mix_synthetic(x, y, gen, 1.0, 1)),
                      ("synthesis, train.synth 0.5", lambda: mix_synthetic(x, y, gen, 0.5, 1)),
                      ("UNet training step (width 32)", step)):
        run()
        t0 = time.perf_counter()
        for _ in range(5):
            run()
        lines.append(f"| {name}, {size}x{size} | {(time.perf_counter() - t0) / 5 * 1000:.0f} |")
    publish(lines, args.record)


if __name__ == "__main__":
    main()
