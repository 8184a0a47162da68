"""Synthetic training images from label maps, per batch on the device (SynthSeg's and SynthStrip's idea, in
2.5-D slices): the network sees every contrast, resolution, bias field and skull-strip, and learns anatomy.

From each slice's labels (and its neighbours', one per input channel) a batch of images is drawn:
1. the labels deformed by a random smooth warp;
2. generation classes: white and gray matter each split in two by the real image's intensity (deep nuclei
   against cortex, say), the CSF inside the brain, then shells grown outward from the brain: CSF, dura,
   inner table, diploe, outer table, muscle, fat, skin (thickness per sample, in pixels of the 1 mm grid;
   docs/synthesis.md), blobs of face and neck beyond, and air; every one of them is background to the
   network. A third of the heads stop after the dura or the skull; a third are cut as a skull-strip cuts,
   by the brain mask grown or shrunk (tissue cut away becomes background, as its image is zero);
3. per class and sample an intensity mean and spread (a Gaussian mixture), a smooth bias field, a blur to
   a random resolution along a random in-plane axis or across the slices, noise and a random gamma;
4. normalised as real volumes are (robust percentiles of the non-zero pixels to [0, 1]).
Every draw comes from the training's CPU generator (a seed repeats a batch bit for bit on the same kind of
device; a resume carries on): small ones directly, the per-pixel ones from a device generator seeded by it.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .augmentation import sample_labels, smooth_field, to_device
from .volumes import pad_slices

BACKGROUND, CSF = 2, 3  # mriseg's classes: 0 white matter, 1 gray matter, 2 background, 3 CSF
# Generation classes: 0 air, 1-2 white matter, 3-4 gray matter, 5 CSF inside the brain, then the shells.
SHELLS = {"csf": (0.5, 4), "dura": (0.5, 2), "inner_table": (1, 3), "diploe": (1, 5), "outer_table": (1, 3),
          "muscle": (0, 6), "fat": (1, 8), "skin": (1, 2)}
FIRST_SHELL = 6
BLOBS = FIRST_SHELL + len(SHELLS)
CLASSES = BLOBS + 1
REACH = int(sum(hi for _, hi in SHELLS.values())) + 4  # pixels of distance measured outside the brain


def synthesize(labels, real, gen):
    """Synthetic images for a batch: labels (n, C, H, W) uint8, each input channel's own slice labels;
    real (n, C, H, W) float, the real images (only their ranks within a tissue class are used).

    Returns (images (n, C, H, W) float32 in [0, 1], labels (n, C, H, W) uint8): the deformed labels, with
    tissue a skull-strip cut away set to background."""
    n, c, h, w = labels.shape
    device = labels.device
    pixels = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    # Every per-sample number of this batch, drawn at once and copied to the device once.
    u = torch.cat([torch.rand(n, 16 + 2 * CLASSES, generator=gen), torch.randn(n, 1, generator=gen)], 1)
    d = to_device(u, device)

    def at(k):  # column k, shaped to broadcast over a sample's pixels
        return d[:, k].view(n, 1, 1, 1)

    labels, real = warp(labels, real, d[:, 0], pixels)
    tissue = labels < BACKGROUND
    brain = fill_holes(closing(tissue, 2))
    # Distance outside the brain in pixels, roughened by a smooth field of up to 3 pixels (never inward).
    distance = outside_distance(brain) + 1.5 * at(1) * (smooth_noise(n, h, w, pixels) + 1) * ~brain
    classes = tissue_classes(labels, real, brain)
    low, high = (torch.tensor([bounds[k] for bounds in SHELLS.values()], device=device) for k in (0, 1))
    outer = torch.cumsum(low + (high - low) * d[:, 2:2 + len(SHELLS)], 1)  # (n, shells): each shell's outer edge
    # Heads that stop after the dura (2 shells) or the skull (5), for a third of the samples; the rest whole.
    shells = torch.where(at(10) < 1 / 6, 2, torch.where(at(10) < 1 / 3, 5, len(SHELLS)))
    for i in reversed(range(len(SHELLS))):
        inside_shell = (distance > 0) & (distance <= outer[:, i].view(n, 1, 1, 1)) & (shells > i)
        classes = torch.where(inside_shell & ~brain, FIRST_SHELL + i, classes)
    # Face and neck: smooth blobs beyond the skin of whole heads.
    blobs = (smooth_noise(n, h, w, pixels) > 0.4) & (distance > outer[:, -1].view(n, 1, 1, 1))
    classes = torch.where(blobs & (shells == len(SHELLS)), BLOBS, classes)
    # A third cut as a skull-strip cuts: the brain mask grown by -2 to +6 pixels; tissue cut away is background.
    cut = torch.where(at(11) < 1 / 3, -2 + 8 * at(12), float("inf"))
    kept = torch.where(cut < 0, outside_distance(~brain, 3) > -cut, brain | (distance <= cut))
    classes = torch.where(kept, classes, 0)
    labels = torch.where(kept, labels, torch.full_like(labels, BACKGROUND))

    image = mixture(classes, d[:, 16:16 + 2 * CLASSES], pixels)
    image = image * smooth_field(n, (h, w), 0.7, gen, device)  # coil inhomogeneity, as SynthSeg's U(0, .7)
    image = blur(image, u[:, 13], u[:, 14])
    image = image + 0.05 * at(15) * torch.randn(image.shape, generator=pixels, device=device)
    image = normalise(torch.where(kept, image, 0).clamp(min=0))
    return image.pow(torch.exp(0.4 * at(-1))), labels


def mix_synthetic(images, labels, gen, share, context, atlas=None, atlas_share=0.0):
    """A training batch with a share of its samples (a probability each) replaced by synthetic ones; labels
    (n, C, H, W) of every input channel in, (n, H, W) of the centre slice out. share 0 draws nothing.
    atlas: (labels, images) of extra anatomy (atlas_slices); each synthetic sample is drawn from one of its
    slices instead of its own with probability atlas_share (0 draws nothing more)."""
    centre = labels[:, context]
    if not share:
        return images, centre
    picked = torch.nonzero(torch.rand(len(images), generator=gen) < share).flatten()
    if not len(picked):
        return images, centre
    source, real = labels[picked], images[picked]
    if atlas is not None and atlas_share:
        from_atlas = torch.nonzero(torch.rand(len(picked), generator=gen) < atlas_share).flatten()
        which = torch.randint(len(atlas[0]), (len(from_atlas),), generator=gen)
        if len(from_atlas):
            from_atlas, which = to_device(from_atlas, images.device), to_device(which, images.device)
            source, real = source.clone(), real.clone()
            source[from_atlas], real[from_atlas] = atlas[0][which], atlas[1][which].to(real.dtype)
    picked = to_device(picked, images.device)
    synthetic, synthetic_labels = synthesize(source, real, gen)
    images, centre = images.clone(), centre.clone()
    images[picked] = synthetic.to(images.dtype)
    centre[picked] = synthetic_labels[:, context]
    return images, centre


def atlas_slices(view, context, frame, pixel_size=1.0, min_tissue=100):
    """Extra anatomy to synthesise from: the MNI152 2009 template's tissue maps (nilearn's wheel; each voxel's
    most probable class inside the template's brain mask: sample.mni152_brain) and its T1 (only its ranks within a tissue are
    used), prepared as a cohort's subject is (RAS+, pixel_size mm, normalised, cropped), cut along `view`:
    (labels (m, C, H, W) uint8, images (m, C, H, W) float32) of every slice with min_tissue tissue pixels,
    with its 2 * context neighbours, each centred as the dataset centres slices and fitted to `frame`."""
    import nibabel as nib

    from .errors import DataError
    from .sample import mni152_brain
    from .scans import tissue_slices
    from .volumes import crop_to_foreground, normalize_volume, resample_inplane, resample_labels, to_slices, with_context

    t1, labels, affine = mni152_brain()
    labels = nib.Nifti1Image(labels, affine)
    image = nib.Nifti1Image(t1, affine)
    image = np.asanyarray(resample_inplane(image, None, pixel_size, order=1).dataobj)
    labels = np.rint(np.asanyarray(resample_labels(labels, None, pixel_size).dataobj)).astype(np.uint8)
    image, _, box = crop_to_foreground(normalize_volume(image), np.eye(4))
    image, labels = to_slices(image, view), to_slices(labels[box], view)
    kept = tissue_slices(labels, min_tissue)
    if not kept:
        raise DataError(f"train.synth_atlas: no {view} slice of the MNI152 atlas has {min_tissue} tissue pixels "
                        "(data.min_tissue)")
    fit = lambda x, fill: fit_frame(x, frame, fill)
    return (torch.from_numpy(fit(with_context(labels, context)[kept], BACKGROUND)),
            torch.from_numpy(fit(with_context(image, context)[kept], 0)))


def fit_frame(slices, frame, fill):
    """(..., H, W) slices centred in the next multiple of 16 (as the dataset centres them), then placed at the
    top left of frame, or cut to it around their centre where they are larger."""
    padded = pad_slices(slices, None, fill)
    cut = [max(0, (p - f) // 2) for p, f in zip(padded.shape[-2:], frame)]
    padded = padded[..., cut[0]:cut[0] + frame[0], cut[1]:cut[1] + frame[1]]
    out = np.full(slices.shape[:-2] + tuple(frame), fill, slices.dtype)
    out[..., :padded.shape[-2], :padded.shape[-1]] = padded
    return out


def warp(labels, real, strength, pixels):
    """Labels (nearest) and images (linear) under one random smooth displacement per sample: a 5x5 grid of
    offsets of sd up to 0.04 (2 % of the frame), upsampled (SynthSeg's elastic deformation, in the plane)."""
    n, c, h, w = labels.shape
    offsets = torch.randn(n, 2, 5, 5, generator=pixels, device=labels.device) * 0.04 * strength.view(n, 1, 1, 1)
    field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    identity = torch.eye(2, 3, device=labels.device).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, c, h, w], align_corners=False) + field
    real = F.grid_sample(real.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sample_labels(labels, grid, BACKGROUND), real


def tissue_classes(labels, real, brain):
    """Generation classes inside the brain: each tissue split at its median real intensity (per sample),
    CSF where the filled brain holds no tissue; air elsewhere."""
    classes = torch.zeros(labels.shape, dtype=torch.long, device=labels.device)
    for tissue, first in ((0, 1), (1, 3)):
        where = labels == tissue
        brighter = real > masked_median(real, where)
        classes = torch.where(where, first + brighter.long(), classes)
    return torch.where(brain & ((labels == BACKGROUND) | (labels == CSF)), 5, classes)


def masked_median(x, mask):
    """Per sample, the median of x where mask (0 where the mask is empty), shaped to broadcast."""
    values = torch.where(mask, x.float(), float("nan")).flatten(1)
    median = torch.nanmedian(values, dim=1).values.nan_to_num(0.0)
    return median.view(-1, *[1] * (x.dim() - 1))


def mixture(classes, u, pixels):
    """Per sample and class a mean U(0, 1) and spread U(0, .12) (air darker: mean U(0, .1)); a pixel's
    intensity drawn from its class's Gaussian."""
    n = classes.shape[0]
    mean = u[:, :CLASSES] * torch.tensor([0.1] + [1.0] * (CLASSES - 1), device=u.device)
    spread = u[:, CLASSES:2 * CLASSES] * 0.12
    index = classes.flatten(1)
    pick = lambda table: torch.gather(table, 1, index).view(classes.shape)
    noise = torch.randn(classes.shape, generator=pixels, device=classes.device)
    return (pick(mean) + pick(spread) * noise).view(n, *classes.shape[1:])


def blur(image, which, amount):
    """A random resolution: a Gaussian blur of sigma U(0, 2.5) pixels along rows or columns (a thick slice
    in the plane), or the neighbouring slices mixed in (a thick slice across them), or none, per sample."""
    n, c, h, w = image.shape
    sigma = (0.1 + 2.4 * amount).tolist()
    out = []
    for i in range(n):
        x = image[i:i + 1]
        kind = int(which[i] * 4)  # 0 rows, 1 columns, 2 across slices, 3 none
        if kind < 2:
            radius = 8
            t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
            kernel = torch.exp(-0.5 * (t / sigma[i]) ** 2)
            kernel = kernel / kernel.sum()
            shape = (1, 1, 2 * radius + 1, 1) if kind == 0 else (1, 1, 1, 2 * radius + 1)
            pad = (0, 0, radius, radius) if kind == 0 else (radius, radius, 0, 0)
            x = F.conv2d(F.pad(x, pad, mode="replicate"), kernel.view(shape).expand(c, *shape[1:]), groups=c)
        elif kind == 2 and c > 1:
            a = amount[i].item() / 3  # up to a third from each neighbour
            before, after = torch.cat([x[:, :1], x[:, :-1]], 1), torch.cat([x[:, 1:], x[:, -1:]], 1)
            x = (1 - 2 * a) * x + a * (before + after)
        out.append(x)
    return torch.cat(out)


def normalise(image):
    """Each sample's robust 0.5-99.5th percentiles of its non-zero pixels to [0, 1], clipped, as
    volumes.normalize_volume maps a real volume."""
    values = torch.where(image > 0, image, float("nan")).flatten(1)
    q = torch.tensor([0.005, 0.995], device=image.device)
    lo, hi = torch.nanquantile(values, q, dim=1).view(2, -1, 1, 1, 1)
    lo, hi = lo.nan_to_num(0.0), hi.nan_to_num(1.0)
    return ((image - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1) * (image > 0)


def smooth_noise(n, h, w, pixels):
    """n smooth random fields in [-1, 1] (a 6x6 grid upsampled), one per sample for every channel."""
    coarse = torch.rand(n, 1, 6, 6, generator=pixels, device=pixels.device) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).clamp(-1, 1)


def dilate(mask, radius=1):
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def grow(mask, step):
    """One pixel of growth, by a square on odd steps and a cross on even ones: octagons, near-Euclidean."""
    if step % 2:
        return dilate(mask)
    m = mask.float()
    return (F.max_pool2d(m, (3, 1), stride=1, padding=(1, 0)) + F.max_pool2d(m, (1, 3), stride=1, padding=(0, 1))) > 0


def closing(mask, radius):
    n, c, h, w = mask.shape
    flat = mask.reshape(n * c, 1, h, w)
    return (~dilate(~dilate(flat, radius), radius)).reshape(n, c, h, w)


def fill_holes(mask):
    """The mask with every pixel filled that has mask on all four sides along its row and column: the
    ventricles and the sulci's CSF, all inside the skull."""
    seen = lambda dim: (mask.cumsum(dim) > 0) & (mask.flip(dim).cumsum(dim).flip(dim) > 0)
    return mask | (seen(-1) & seen(-2))


def outside_distance(mask, reach=REACH):
    """Distance in pixels from the mask, 0 on it, up to `reach` (beyond: reach + 1); measured at half
    resolution when it reaches far (shells need no finer steps; a max-pool per pixel of reach at full
    resolution costs most of a CPU training step)."""
    n, c, h, w = mask.shape
    grown = mask.reshape(n * c, 1, h, w).float()
    half = reach > 4
    if half:
        grown = F.max_pool2d(grown, 2, ceil_mode=True)
    grown = grown > 0
    steps = math.ceil(reach / 2) if half else reach
    distance = torch.where(grown, 0.0, steps + 1.0)
    for step in range(1, steps + 1):
        grown = grow(grown, step)
        distance = torch.where(grown & (distance > step), float(step), distance)
    if half:
        distance = F.interpolate(distance * 2, size=(h, w), mode="bilinear", align_corners=False)
        distance = torch.where(mask.reshape(n * c, 1, h, w), 0.0, distance.clamp(min=1.0, max=reach + 1.0))
    return distance.reshape(n, c, h, w)
