"""The embedded default data: an archive in the tutorial's layout built offline from MNI152 2009.

nilearn ships the MNI152 2009 T1 template and its gray- and white-matter probability maps inside
its wheel (1 mm). Each axial slice with at least MIN_BRAIN_PIXELS of tissue becomes one pair:
the T1 slice normalised to [0, 1], and a mask that gives every pixel the most probable class,
background's probability being 1 - p(white matter) - p(gray matter) (CSF and everything else).
Slices are cropped to a fixed CROP box around the brain (192 x 160 pixels, rows x cols) so that a
2-core CPU trains on them in minutes. One template brain: it shows the pipeline working end to
end; it is no clinical benchmark (neighbouring slices of one brain sit on both sides of the split).
"""
import numpy as np

from .archive import write_archive
from .volumes import NORMALIZATION, normalize_volume, to_slices

MIN_BRAIN_PIXELS = 500
CROP = (slice(18, 178), slice(22, 214))  # (X, Y) voxels of the 197 x 233 x 189 template


def mni152_volumes():
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    return t1.get_fdata(), gm, wm


def labels_from_probabilities(wm, gm):
    bg = 1.0 - wm - gm
    return np.argmax(np.stack([wm, gm, bg]), axis=0).astype(np.uint8)  # 0 = WM, 1 = GM, 2 = background


def build_sample_archive(path):
    t1, gm, wm = mni152_volumes()
    image = normalize_volume(t1)[CROP]
    mask = labels_from_probabilities(wm, gm)[CROP]
    images, masks = to_slices(image), to_slices(mask)
    keep = [z for z in range(len(masks)) if (masks[z] < 2).sum() >= MIN_BRAIN_PIXELS]
    # Subject and slice in the name, as make-archive writes them: train.context finds each slice's neighbours.
    pairs = ((f"sub-mni152_slice-{z:03d}_{z}.npy", images[z], masks[z]) for z in keep)
    metadata = {"source": "MNI152 2009 templates shipped with nilearn (1 mm)", "axis": "axial",
                "normalization": NORMALIZATION, "pixel_size_mm": [1.0, 1.0]}
    write_archive(path, pairs, metadata)
    return len(keep)
