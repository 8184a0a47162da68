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
