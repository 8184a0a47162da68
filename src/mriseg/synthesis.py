"""Synthetic training images from label maps, per batch on the device (SynthSeg's and SynthStrip's idea, in
2.5-D slices): the network sees every contrast, resolution, bias field and skull-strip, and learns anatomy.

Each slice comes with its labels and the 3-D distance outside its volume's brain (brain_distance: one
channel of each per input channel; data.SliceDataset with label_context). From them a batch is drawn:
1. labels and distance deformed by a random smooth warp;
2. generation classes from the labels, one Gaussian each: white matter, gray matter, CSF (with whatever
   the brain holds unlabelled: the sulci's rest), then shells grown outward by the 3-D distance: CSF, dura,
   inner table, diploe, outer table, muscle, fat, skin (thickness per sample, in pixels of the working grid;
   docs/synthesis.md), blobs of face and neck beyond, and air; every one outside the brain is background to
   the network;
3. shaped as prediction's inputs: four in five cut as a skull-strip cuts (the brain mask eroded by up to 2
   or grown by up to 5 pixels, roughened; tissue cut away becomes background, as its image is zero); the
   rest whole heads, a third of them stopping after the dura or the skull;
4. per class and sample a mean U(0, 1) and spread U(0, .12); SynthSeg's bias field (exp of N(0, U(0, .7)) on
   a coarse grid); SynthSeg's resolution (5 % native, 10 % isotropic U(1, 4) px, else one axis U(1, 8) px:
   rows, columns or across the slices; blurred by .75 x thickness, sampled down and linearly back up);
   noise and a random gamma;
5. normalised as volumes.normalize_volume maps a whole brain: percentiles of the sample's own tissue
   intensities pooled as a brain holds them (BRAIN_SHARES), not of the slice's pixels.
Every draw comes from the training's CPU generator (a seed repeats a batch bit for bit on the same kind of
device; a resume carries on): small ones directly, the per-pixel ones from a device generator seeded by it.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .augmentation import sample_labels, to_device
from .volumes import FAR, NORMALIZATION, brain_distance, pad_slices

BACKGROUND, CSF = 2, 3  # mriseg's classes: 0 white matter, 1 gray matter, 2 background, 3 CSF
# Generation classes: 0 air, 1 white matter, 2 gray matter, 3 CSF (and the brain's unlabelled rest), then shells.
TISSUE_CLASSES = {0: 1, 1: 2, CSF: 3}  # label -> its generation class
SHELLS = {"csf": (0.5, 4), "dura": (0.5, 2), "inner_table": (1, 3), "diploe": (1, 5), "outer_table": (1, 3),
          "muscle": (0, 6), "fat": (1, 8), "skin": (1, 2)}
FIRST_SHELL = 4
BLOBS = FIRST_SHELL + len(SHELLS)
CLASSES = BLOBS + 1
# How a brain's voxels divide among white matter, gray matter and CSF with the unlabelled rest (IBSR_01, 05,
# 16 with data.csf intensity, inside brain_distance's brain: 0.30-0.35, 0.53-0.61, 0.09-0.14).
BRAIN_SHARES = (0.32, 0.56, 0.12)
STRIPPED = 0.8  # share of draws cut as a skull-strip cuts (prediction extracts the brain first)


def synthesize(labels, distance, gen):
    """Synthetic images for a batch: labels (n, C, H, W) uint8, each input channel's own slice labels;
    distance (n, C, H, W) uint8, each pixel's distance outside its volume's brain (brain_distance).

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

    labels, distance = warp(labels, distance, d[:, 0], pixels)
    brain = distance < 0.5
    # Roughened by a smooth field of up to 3 pixels outside the brain (never inward).
    distance = distance + 1.5 * at(1) * (smooth_noise(n, h, w, pixels) + 1) * ~brain
    classes = torch.zeros(labels.shape, dtype=torch.long, device=device)
    for label, k in TISSUE_CLASSES.items():
        classes = torch.where(labels == label, k, classes)
    classes = torch.where(brain & (labels == BACKGROUND), TISSUE_CLASSES[CSF], classes)
    low, high = (torch.tensor([bounds[k] for bounds in SHELLS.values()], device=device) for k in (0, 1))
    outer = torch.cumsum(low + (high - low) * d[:, 2:2 + len(SHELLS)], 1)  # (n, shells): each shell's outer edge
    # Whole heads (a fifth) stop after the dura (2 shells) or the skull (5) a third of the time each.
    shells = torch.where(at(10) < 1 / 3, 2, torch.where(at(10) < 2 / 3, 5, len(SHELLS)))
    for i in reversed(range(len(SHELLS))):
        inside_shell = (distance > 0) & (distance <= outer[:, i].view(n, 1, 1, 1)) & (shells > i)
        classes = torch.where(inside_shell & ~brain, FIRST_SHELL + i, classes)
    # Face and neck: smooth blobs beyond the skin of whole heads.
    blobs = (smooth_noise(n, h, w, pixels) > 0.4) & (distance > outer[:, -1].view(n, 1, 1, 1))
    classes = torch.where(blobs & (shells == len(SHELLS)), BLOBS, classes)
    # Most cut as a skull-strip cuts: the brain mask grown by -2 to +5 pixels; tissue cut away is background.
    cut = torch.where(at(11) < STRIPPED, -2 + 7 * at(12), float("inf"))
    kept = torch.where(cut < 0, inside_distance(brain, 2) > -cut, brain | (distance <= cut))
    classes = torch.where(kept, classes, 0)
    labels = torch.where(kept, labels, torch.full_like(labels, BACKGROUND))

    mean, spread = class_intensities(d[:, 16:16 + 2 * CLASSES])
    image = mixture(classes, mean, spread, pixels)
    strength = 0.7 * at(13) * (at(14) < 0.95)  # SynthSeg: a field in 95 % of draws, sd U(0, .7)
    image = image * bias_field(n, (h, w), strength, pixels)
    image = resolution(image, u[:, 15], torch.rand(n, 2, generator=gen))
    noise = 0.05 * torch.rand(n, 1, 1, 1, generator=gen).to(device)
    image = image + noise * torch.randn(image.shape, generator=pixels, device=device)
    lo, hi = brain_range(mean, spread, strength, noise, pixels)
    image = torch.where(kept, ((image - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1), 0)
    return image.pow(torch.exp(0.4 * at(-1))), labels


def mix_synthetic(images, labels, gen, share, context, atlas=None, atlas_share=0.0):
    """A training batch with a share of its samples (a probability each) replaced by synthetic ones.
    labels (n, 2C, H, W): every input channel's labels, then their distances outside the brain (as
    data.SliceDataset gives them with label_context); (n, H, W) labels of the centre slice out. share 0
    draws nothing. atlas: (m, 2C, H, W) extra anatomy in the same form (atlas_slices); each synthetic sample
    is drawn from one of its slices instead of its own with probability atlas_share (0 draws nothing more)."""
    centre = labels[:, context]
    if not share:
        return images, centre
    picked = torch.nonzero(torch.rand(len(images), generator=gen) < share).flatten()
    if not len(picked):
        return images, centre
    source = labels[picked]
    if atlas is not None and atlas_share:
        from_atlas = torch.nonzero(torch.rand(len(picked), generator=gen) < atlas_share).flatten()
        which = torch.randint(len(atlas), (len(from_atlas),), generator=gen)
        if len(from_atlas):
            from_atlas, which = to_device(from_atlas, images.device), to_device(which, images.device)
            source = source.clone()
            source[from_atlas] = atlas[which]
    picked = to_device(picked, images.device)
    c = images.shape[1]
    synthetic, synthetic_labels = synthesize(source[:, :c], source[:, c:], gen)
    images, centre = images.clone(), centre.clone()
    images[picked] = synthetic.to(images.dtype)
    centre[picked] = synthetic_labels[:, context]
    return images, centre


def atlas_slices(view, context, frame, pixel_size=1.0, min_tissue=100):
    """Extra anatomy to synthesise from: the MNI152 2009 template's tissue maps (nilearn's wheel; each voxel's
    most probable class inside the template's brain mask: sample.mni152_brain), prepared as a cohort's
    subject is (RAS+, pixel_size mm, cropped), cut along `view`: (m, 2C, H, W) uint8, the labels of every
    slice with min_tissue tissue pixels and of its 2 * context neighbours, then their distances outside the
    brain (brain_distance, in 3-D), each centred as the dataset centres slices and fitted to `frame`."""
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
    box = crop_to_foreground(normalize_volume(image), np.eye(4))[2]  # the box the unzip stage crops to
    labels = labels[box]
    distance, labels = to_slices(brain_distance(labels), view), to_slices(labels, view)
    kept = tissue_slices(labels, min_tissue)
    if not kept:
        raise DataError(f"train.synth_atlas: no {view} slice of the MNI152 atlas has {min_tissue} tissue pixels "
                        "(data.min_tissue)")
    return torch.from_numpy(np.concatenate([fit_frame(with_context(labels, context)[kept], frame, BACKGROUND),
                                            fit_frame(with_context(distance, context)[kept], frame, FAR)], 1))


def fit_frame(slices, frame, fill):
    """(..., H, W) slices centred in the next multiple of 16 (as the dataset centres them), then placed at the
    top left of frame, or cut to it around their centre where they are larger."""
    padded = pad_slices(slices, None, fill)
    cut = [max(0, (p - f) // 2) for p, f in zip(padded.shape[-2:], frame)]
    padded = padded[..., cut[0]:cut[0] + frame[0], cut[1]:cut[1] + frame[1]]
    out = np.full(slices.shape[:-2] + tuple(frame), fill, slices.dtype)
    out[..., :padded.shape[-2], :padded.shape[-1]] = padded
    return out


def warp(labels, distance, strength, pixels):
    """Labels (nearest) and distances (linear) under one random smooth displacement per sample: a 5x5 grid of
    offsets of sd up to 0.04 (2 % of the frame), upsampled (SynthSeg's elastic deformation, in the plane)."""
    n, c, h, w = labels.shape
    offsets = torch.randn(n, 2, 5, 5, generator=pixels, device=labels.device) * 0.04 * strength.view(n, 1, 1, 1)
    field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    identity = torch.eye(2, 3, device=labels.device).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, c, h, w], align_corners=False) + field
    distance = F.grid_sample(distance.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sample_labels(labels, grid, BACKGROUND), distance


def class_intensities(u):
    """Per sample and generation class a mean U(0, 1) (air U(0, .1)) and a spread U(0, .12): SynthSeg's
    U(0, 250) and U(0, 30) on its scale of 250."""
    scale = torch.tensor([0.1] + [1.0] * (CLASSES - 1), device=u.device)
    return u[:, :CLASSES] * scale, u[:, CLASSES:2 * CLASSES] * 0.12


def mixture(classes, mean, spread, pixels):
    """Each pixel's intensity drawn from its generation class's Gaussian."""
    n = classes.shape[0]
    index = classes.flatten(1)
    pick = lambda table: torch.gather(table, 1, index).view(classes.shape)
    noise = torch.randn(classes.shape, generator=pixels, device=classes.device)
    return (pick(mean) + pick(spread) * noise).view(n, *classes.shape[1:])


def bias_field(n, size, strength, pixels):
    """SynthSeg's bias field in the plane: exp of N(0, strength) on a grid of ceil(.025 x the frame) (at least
    3) points, upsampled linearly; strength (n, 1, 1, 1). It has a level of its own, as a slice of a 3-D
    field has: a slice may come out brighter or darker than its brain."""
    points = max(3, math.ceil(0.025 * max(size)))
    coarse = torch.randn(n, 1, points, points, generator=pixels, device=pixels.device) * strength
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=True).exp()


def resolution(image, kind, draws):
    """SynthSeg's resolution, per sample: 5 % native; 10 % isotropic, U(1, 4) pixels; else one axis (rows,
    columns or across the slices) U(1, 8) pixels. A slice thickness U(1, that) blurs it (sigma .75 x
    thickness), then it is sampled down (nearest) and linearly back up. kind: U(0, 1) per sample; draws
    (n, 2): U(0, 1) for the resolution and the thickness."""
    n, c, h, w = image.shape
    out = []
    for i in range(n):
        x, k = image[i:i + 1], float(kind[i])
        if k < 0.05:
            out.append(x)
            continue
        axes = (0, 1, 2) if k < 0.15 else (int((k - 0.15) / 0.85 * 3),)  # 0 rows, 1 columns, 2 across slices
        res = 1 + (3 if k < 0.15 else 7) * float(draws[i, 0])
        thickness = 1 + (res - 1) * float(draws[i, 1])
        for axis in axes:
            x = blur_along(x, axis, 0.75 * thickness)
            if axis < 2 and res > 1.05:
                size = [h, w]
                low = [max(1, round(s / res)) if a == axis else s for a, s in enumerate(size)]
                x = F.interpolate(F.interpolate(x, size=low, mode="nearest"), size=size, mode="bilinear",
                                  align_corners=False)
        out.append(x)
    return torch.cat(out)


def blur_along(x, axis, sigma):
    """A Gaussian blur of x (1, C, H, W) along rows (0), columns (1) or its channels, the neighbouring
    slices (2), with replicated edges."""
    c = x.shape[1]
    radius = max(1, math.ceil(3 * sigma))
    if axis == 2:
        if c == 1:
            return x
        radius = min(radius, c - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    if axis == 2:  # across the slices: the channels as one more spatial axis
        y = F.pad(x.permute(0, 2, 3, 1).reshape(1, 1, -1, c), (radius, radius, 0, 0), mode="replicate")
        y = F.conv2d(y, kernel.view(1, 1, 1, -1))
        return y.view(1, x.shape[2], x.shape[3], c).permute(0, 3, 1, 2)
    shape = (1, 1, 2 * radius + 1, 1) if axis == 0 else (1, 1, 1, 2 * radius + 1)
    pad = (0, 0, radius, radius) if axis == 0 else (radius, radius, 0, 0)
    return F.conv2d(F.pad(x, pad, mode="replicate"), kernel.view(shape).expand(c, *shape[1:]), groups=c)


def brain_range(mean, spread, strength, noise, pixels, voxels=16384):
    """(lo, hi), each (n, 1, 1, 1): volumes.normalize_volume's percentiles (0.5, 99.5 of the positive values)
    of a brain drawn with each sample's own intensities: `voxels` values of its white matter, gray matter
    and CSF in BRAIN_SHARES, under a bias of the sample's strength and its noise. So a slice
    is normalised as its whole brain would be, not by its own pixels (a slice near the top, mostly cortex,
    keeps its cortex darker than white matter)."""
    n = mean.shape[0]
    counts = [round(s * voxels) for s in BRAIN_SHARES]
    classes = torch.cat([torch.full((k,), TISSUE_CLASSES[label], dtype=torch.long, device=mean.device)
                         for label, k in zip((0, 1, CSF), counts)]).expand(n, -1)
    values = mixture(classes, mean, spread, pixels)
    values = values * torch.exp(strength.view(n, 1) * torch.randn(values.shape, generator=pixels,
                                                                  device=mean.device))
    values = values + noise.view(n, 1) * torch.randn(values.shape, generator=pixels, device=mean.device)
    values = torch.where(values > 0, values, float("nan"))
    q = torch.tensor([NORMALIZATION["low"] / 100, NORMALIZATION["high"] / 100], device=mean.device)
    lo, hi = torch.nanquantile(values, q, dim=1).view(2, n, 1, 1, 1)
    return lo.nan_to_num(0.0), hi.nan_to_num(1.0)


def smooth_noise(n, h, w, pixels):
    """n smooth random fields in [-1, 1] (a 6x6 grid upsampled), one per sample for every channel."""
    coarse = torch.rand(n, 1, 6, 6, generator=pixels, device=pixels.device) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).clamp(-1, 1)


def inside_distance(mask, reach):
    """Depth in pixels inside the mask (1 on its edge, up to reach + 1), 0 outside: how many 3x3 erosions
    each pixel survives, plus one."""
    depth = mask.float()
    for _ in range(reach):
        mask = ~(F.max_pool2d((~mask).float(), 3, stride=1, padding=1) > 0)
        depth = depth + mask.float()
    return depth
