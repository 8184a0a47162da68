"""PNG reports a person can look at: training curves and predictions beside the ground truth."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from .io import atomic_path  # noqa: E402

# Label colours by value (0 WM, 1 GM, 2 background, 3 CSF): white matter light, gray matter mid-gray, CSF dark
# gray, background black, like a T1 image.
LABEL_CMAP = ListedColormap(["#f2f2f2", "#8c8c8c", "#000000", "#404040"])
# Tissue over a scan by value: white matter blue, gray matter orange, CSF green (background, value 2, masked).
TISSUE_COLOURS = ListedColormap(["#1f77b4", "#ff7f0e", "#000000", "#2ca02c"])
TISSUE_LEGEND = "white matter blue, gray matter orange, CSF green"


def tissue_layer(labels):
    """Labels as an overlay for imshow(cmap=TISSUE_COLOURS, vmin=0, vmax=3): background masked."""
    return np.ma.masked_equal(labels, 2)


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(histories, path, title=""):
    """Loss and tutorial IoU per epoch, for train and every scored split, of each view's network
    (histories: {view: per-epoch rows})."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "iou")):
        for (view, history), colour in zip(histories.items(), ("C0", "C1", "C2", "C3")):
            epochs = [r["epoch"] for r in history]
            for split, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
                key = f"{split}_{metric}"
                if history and key in history[0]:
                    ax.plot(epochs, [r[key] for r in history], style, ms=3, color=colour,
                            alpha=1.0 if split == "test" else 0.5, label=f"{view} {split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("IoU (tutorial definition)" if metric == "iou" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{title} loss")
    axes[1].set_title(f"{title} IoU")
    save_figure(fig, path)


def plot_predictions(images, masks, preds, names, path):
    """One row per slice: image, ground truth, prediction, and the pixels where they disagree."""
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False, layout="constrained")
    for row, (img, gt, pr, name) in enumerate(zip(images, masks, preds, names)):
        wrong = gt != pr
        cells = ((img, "gray", f"{name}"), (gt, LABEL_CMAP, "ground truth"), (pr, LABEL_CMAP, "prediction"))
        for ax, (data, cmap, title) in zip(axes[row], cells):
            ax.imshow(data, cmap=cmap, vmin=0, vmax=3 if cmap is LABEL_CMAP else None, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        axes[row, 3].imshow(img, cmap="gray")
        axes[row, 3].imshow(np.ma.masked_where(~wrong, wrong), cmap=ListedColormap(["red"]), alpha=0.8,
                            interpolation="nearest")
        axes[row, 3].set_title(f"errors ({wrong.mean():.1%} of pixels)", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle("white matter = light, gray matter = mid-gray, CSF = dark gray, background = black; errors in red",
                 fontsize=10)
    save_figure(fig, path)


def plot_overlay(image, labels, path, title=""):
    """Slices of an input with its predicted classes overlaid (TISSUE_LEGEND)."""
    images, labels = (image[None], labels[None]) if image.ndim == 2 else (image, labels)
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False, layout="constrained")
    for ax, img, lab in zip(axes[0], images, labels):
        ax.imshow(img, cmap="gray")
        ax.imshow(tissue_layer(lab), cmap=TISSUE_COLOURS, vmin=0, vmax=3, alpha=0.45,
                  interpolation="nearest")
        ax.axis("off")
    fig.suptitle(f"{title}  ({TISSUE_LEGEND})", fontsize=10)
    save_figure(fig, path)
