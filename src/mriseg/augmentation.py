"""Augmentation on the device, per batch: flips, small rotations and scales, gamma and gain jitter, and a
smooth bias field, all drawn from a CPU generator so that a seed repeats them and a resume continues them."""
import math

import torch
import torch.nn.functional as F


def to_device(t, device):
    """A small CPU tensor to the device without making the host wait for the GPU: pinned, non-blocking."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def augment(x, y, gen, bias_field=0.0, flip=True):
    """Random left-right flip (only with flip: slices whose columns run left-right), rotation (+-10 deg),
    scale (+-10 %), gamma and gain jitter, per image; with bias_field > 0 also a smooth multiplicative
    intensity field, exp of a cubic polynomial in the slice's coordinates with coefficients in
    [-bias_field, bias_field] (MRI's coil inhomogeneity, drawn as TorchIO's RandomBiasField draws it; its
    default strength is 0.5)."""
    n = x.shape[0]
    u = torch.rand(5, n, generator=gen) * 2 - 1  # drawn on the CPU generator: reproducible, resumable
    flip = torch.where(u[0] > 0, -1.0, 1.0) if flip else torch.ones(n)
    angle, scale = u[1] * math.radians(10), 1 + 0.1 * u[2]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(n)], 1),
                         torch.stack([sin * flip, cos, torch.zeros(n)], 1)], 1)
    draws = torch.cat([theta.flatten(), torch.exp(0.2 * u[3]), 1 + 0.1 * u[4]])
    theta, gamma, gain = to_device(draws, x.device).split([6 * n, n, n])  # one copy per batch
    theta = theta.view(n, 2, 3).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = sample_labels(y[:, None], grid)[:, 0]
    x = x.clamp(min=0).pow(gamma.view(n, 1, 1, 1)) * gain.view(n, 1, 1, 1)
    if bias_field > 0:
        x = x * smooth_field(n, x.shape[-2:], bias_field, gen, x.device).to(x.dtype)
    return x, y


def sample_labels(labels, grid, background=2):
    """uint8 labels (n, C, H, W) sampled (nearest) at grid; what falls outside the frame is background
    (shifted so that grid_sample's zero padding lands on it)."""
    moved = F.grid_sample(labels.float() - background, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (moved + background).to(torch.uint8)


def smooth_field(n, size, strength, gen, device, order=3):
    """n random fields exp(sum c_ij * r^i * c^j), 0 < i + j <= order, over a slice of `size` (rows, cols).

    No constant term: the field varies across the slice around 1 (the gain jitter scales it whole). The
    exponent is clamped to [-1, 1], so that images filling their frame get no extreme corners."""
    rows, cols = (torch.linspace(-1, 1, k, device=device) for k in size)
    powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i) if i + j]
    basis = torch.stack([rows[:, None] ** i * cols[None, :] ** j for i, j in powers])  # (terms, H, W)
    # Drawn on the CPU generator like the other draws; the field itself is built where the batch is.
    coef = to_device((torch.rand(n, len(powers), generator=gen) * 2 - 1) * strength, device)
    return torch.einsum("nt,thw->nhw", coef, basis).clamp(-1, 1).exp()[:, None]


def thin_cortex(images, labels, gen, share, gray=1, background=2, csf=3):
    """A training batch with the outer cortex of a share of its samples (a probability each) thinned, as
    atrophy thins it: the gray matter within 1 or 2 pixels (face-connected steps, drawn per sample) of CSF or
    background, in the whole slice or in a random half of it (a line through the tissue's centre), becomes
    CSF, with intensities drawn as the slice's own pure CSF (its CSF one pixel in from its edge: mean and
    spread per channel) and labelled CSF. Each input channel is thinned by its own labels, so the
    neighbouring slices lose their cortex as the centre does. labels (n, C or 2C, H, W) as data.SliceDataset
    gives them with label_context (every channel's labels, then any distances, untouched); a sample with fewer
    than 20 pure CSF pixels is left as it is. share 0 draws nothing."""
    if not share:
        return images, labels
    n, c = images.shape[:2]
    u = torch.rand(n, 4, generator=gen)
    picked = torch.nonzero(u[:, 0] < share).flatten()
    if not len(picked):
        return images, labels
    # pixel noise from a generator on the images' device, seeded from the CPU generator: one draw per batch
    pixels = torch.Generator(images.device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    u = to_device(u[picked], images.device)
    picked = to_device(picked, images.device)
    x, y = images[picked].float(), labels[picked, :c]
    grey, outside, fluid = y == gray, (y == csf) | (y == background), y == csf

    lost = grey & cross_dilation(outside)
    two = (u[:, 1] < 0.5).view(-1, 1, 1, 1)  # half the samples lose 2 pixels
    lost |= two & grey & cross_dilation(outside | lost)
    # half the samples lose it in the half of the slice beyond a random line through the tissue's centre
    rows, cols = (torch.arange(k, device=x.device, dtype=torch.float32) for k in x.shape[-2:])
    tissue = (y[:, c // 2] != background) & (y[:, c // 2] != csf)
    count = tissue.sum((-2, -1)).clamp(min=1)
    r0 = (tissue * rows[:, None]).sum((-2, -1)) / count
    c0 = (tissue * cols[None, :]).sum((-2, -1)) / count
    angle = u[:, 2] * 2 * math.pi
    side = ((rows[None, :, None] - r0.view(-1, 1, 1)) * torch.cos(angle).view(-1, 1, 1)
            + (cols[None, None, :] - c0.view(-1, 1, 1)) * torch.sin(angle).view(-1, 1, 1)) > 0
    lost &= ((u[:, 3] < 0.5).view(-1, 1, 1) | side)[:, None]

    pure = fluid & ~cross_dilation(~fluid)
    k = pure.sum((-2, -1)).float()  # (m, C)
    mean = (x * pure).sum((-2, -1)) / k.clamp(min=1)
    spread = ((x - mean[..., None, None]) ** 2 * pure).sum((-2, -1)).div(k.clamp(min=1)).sqrt()
    # a channel with too little CSF of its own takes the sample's mean over its channels
    whole = k.sum(1, keepdim=True).clamp(min=1)
    own = k >= 20
    mean = torch.where(own, mean, (mean * k).sum(1, keepdim=True) / whole)
    spread = torch.where(own, spread, (spread * k).sum(1, keepdim=True) / whole)
    lost &= (k.sum(1) >= 20).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=pixels, device=x.device)
    fluid_like = (mean[..., None, None] + spread[..., None, None] * noise).clamp(min=0)
    images, labels = images.clone(), labels.clone()
    images[picked] = torch.where(lost, fluid_like, x).to(images.dtype)
    labels[picked, :c] = torch.where(lost, torch.full_like(y, csf), y)
    return images, labels


def cross_dilation(mask):
    """A boolean (n, C, H, W) mask grown by one pixel to its four face neighbours in each slice."""
    m = mask.float().flatten(0, 1)[:, None]
    grown = torch.maximum(F.max_pool2d(m, (3, 1), 1, (1, 0)), F.max_pool2d(m, (1, 3), 1, (0, 1)))
    return grown[:, 0].view(mask.shape) > 0
