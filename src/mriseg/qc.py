"""Quality control a person can check: flags per volume in volumes.csv's `qc` column ("ok", or the
reasons joined by "; "), and qc.png, one row per volume (three orthogonal slices through the brain,
tissue in colour, the brain mask's outline, the flags) so that a cohort is looked over in a minute."""
import numpy as np

from .extraction import BRAIN_ML  # the plausible range of the extractor's masks
# The white/gray ratio of a volume against the run's others: robust z-score (median, MAD) beyond this,
# judged when the run holds at least COHORT_MIN volumes.
RATIO_Z, COHORT_MIN = 3.5, 5
# Tissue in one piece: the largest connected piece holds at least this share of the tissue voxels.
ONE_PIECE = 0.95
# The brain mask cut by the image's faces: more of its voxels on them than this share (a brainstem
# running out of the field of view is about 0.03 % of a brain; a lost vertex of the head 0.5 %).
BORDER = 0.001
PAGE = 40  # rows of one qc.png page (qc.png, qc-2.png, ...)


def volume_flags(labels, brain=None, brain_ml=None):
    """Reasons to look at one volume: labels (0 WM, 1 GM, 2 background, 3 CSF) on its grid, brain its mask."""
    from scipy import ndimage

    flags = []
    if brain is not None:
        on_faces = sum(int(np.take(brain, i, axis=a).sum()) for a in range(3) for i in (0, -1))
        if on_faces > BORDER * brain.sum():  # more than the brainstem leaving through the bottom
            flags.append("brain mask touches the image border")
        if brain_ml is not None and not BRAIN_ML[0] <= brain_ml <= BRAIN_ML[1]:
            flags.append(f"brain {brain_ml:.0f} ml outside {BRAIN_ML[0]:.0f}-{BRAIN_ML[1]:.0f} ml")
    for value, tissue in ((0, "white matter"), (1, "gray matter")):
        if not (labels == value).any():
            flags.append(f"no {tissue}")
    tissue = labels < 2
    if tissue.any():
        pieces, n = ndimage.label(tissue)
        largest = np.bincount(pieces.ravel())[1:].max() / tissue.sum()
        if largest < ONE_PIECE:
            flags.append(f"tissue in pieces (largest {100 * largest:.0f} %)")
    return flags


def cohort_flags(ratios):
    """For each white/gray ratio of a run, its flag ('' or why): a robust z-score over the run."""
    ratios = np.asarray(ratios, dtype=float)
    ok = np.isfinite(ratios)
    if ok.sum() < COHORT_MIN:
        return [""] * len(ratios)
    median = np.median(ratios[ok])
    mad = 1.4826 * np.median(np.abs(ratios[ok] - median)) or 1e-9
    z = (ratios - median) / mad
    return [f"white/gray ratio off the run's (robust z {v:+.1f})" if np.isfinite(v) and abs(v) > RATIO_Z else ""
            for v in z]


def qc_text(flags):
    """volumes.csv's qc cell: "ok", or the flags joined by "; " (empty ones left out)."""
    return "; ".join(f for f in flags if f) or "ok"


def add_cohort_flags(table):
    """volumes.csv's table with each volume's cohort flag (cohort_flags) joined to its qc."""
    import pandas as pd

    ratios = pd.to_numeric(table["gray_white_ratio"], errors="coerce")
    extra = cohort_flags(ratios)
    qc = [qc_text([flag if flag != "ok" else "", extra_flag]) if extra_flag else flag
          for flag, extra_flag in zip(table["qc"].fillna("").astype(str), extra)]
    return table.assign(qc=qc)


def thumbnails(image, labels, brain, size=128):
    """Three orthogonal slices through the brain's centre (sagittal, coronal, axial of the array's axes), each
    {image uint8, labels uint8, brain bool} at most `size` pixels a side: what a qc.png row shows."""
    where = np.argwhere(brain if brain is not None and brain.any() else labels < 2)
    centre = where.mean(axis=0).round().astype(int) if len(where) else np.array(labels.shape) // 2
    lo, hi = np.percentile(image, [1, 99.5]) if image.size else (0, 1)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    out = []
    for axis in range(3):
        step = max(1, -(-max(s for i, s in enumerate(labels.shape) if i != axis) // size))
        cut = [slice(None, None, step)] * 3
        cut[axis] = int(centre[axis])
        mask = brain[tuple(cut)] if brain is not None else np.zeros_like(labels[tuple(cut)], bool)
        out.append({"image": np.rot90(scaled[tuple(cut)]), "labels": np.rot90(labels[tuple(cut)]),
                    "brain": np.rot90(mask)})
    return out


def save_thumbs(path, image, labels, brain, affine):
    """What qc.png shows of a volume, in RAS+ orientation, saved to an .npz (arrays, no pickles): a cohort's
    thumbnails wait on disk, not in memory. Returns path."""
    import nibabel as nib

    def canonical(array):
        return np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), affine)).dataobj)

    views = thumbnails(canonical(image.astype(np.float32)), canonical(labels),
                       canonical(brain.astype(np.uint8)).astype(bool) if brain is not None else None)
    np.savez(path, **{f"{k}{i}": v[k] for i, v in enumerate(views) for k in v})
    return path


def load_thumbs(path):
    with np.load(path, allow_pickle=False) as z:
        return [{k: z[f"{k}{i}"] for k in ("image", "labels", "brain")} for i in range(3)]


def save_pages(rows, thumb_files, out_dir):
    """qc.png (and qc-2.png, ... past PAGE rows): rows are (name, qc), thumb_files their save_thumbs files.
    Returns the pages written."""
    from pathlib import Path

    from .reporting import TISSUE_COLOURS, plt, save_figure, tissue_layer

    pages = []
    for start in range(0, len(rows), PAGE):
        chunk = rows[start:start + PAGE]
        fig, axes = plt.subplots(len(chunk), 3, figsize=(7.5, 2.6 * len(chunk)), squeeze=False)
        for r, (name, flags) in enumerate(chunk):
            for c, view in enumerate(load_thumbs(thumb_files[start + r])):
                ax = axes[r, c]
                ax.imshow(view["image"], cmap="gray")
                ax.imshow(tissue_layer(view["labels"]), cmap=TISSUE_COLOURS, vmin=0, vmax=3, alpha=0.45,
                          interpolation="nearest")
                if view["brain"].any():
                    ax.contour(view["brain"], levels=[0.5], colors="yellow", linewidths=0.8)
                ax.set_axis_off()
            axes[r, 0].set_title(f"{name}: {flags}", loc="left", fontsize=8,
                                 color="black" if flags == "ok" else "red")
        path = Path(out_dir) / ("qc.png" if not start else f"qc-{start // PAGE + 1}.png")
        save_figure(fig, path)
        pages.append(path)
    return pages
