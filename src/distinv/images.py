"""Ground truths synthesised at any size (no downloads), or read from a user's image file."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def dead_leaves(
    height: int, width: int, seed: int = 0, colour: bool = True, min_radius: float | None = None
) -> torch.Tensor:
    """A dead-leaves image: disks falling one behind the other (each hides what falls after it) until the
    image is covered, radii from a power law (scale invariant, like natural images), each disk with its own
    colour and a faint oriented texture. Shape ``(1, 3 or 1, height, width)`` in [0, 1]; a 4096x4096 colour
    image takes seconds on one core.

    :param min_radius: smallest radius in pixels (default ``max(height, width) / 256``, at least 1); the largest
        is ``max(height, width) / 6``.
    """
    g = torch.Generator().manual_seed(seed)
    channels = 3 if colour else 1
    image = torch.zeros(channels, height, width)
    covered = torch.zeros(height, width, dtype=torch.bool)
    scale = max(height, width)
    r_max = scale / 6
    r_min = max(1.0, scale / 256) if min_radius is None else min(float(min_radius), r_max / 2)
    batch = 1000
    for _ in range(200):  # batches; a final background leaf fills what is left
        u = torch.rand(batch, generator=g)
        radii = 1.0 / torch.sqrt(u / r_min**2 + (1 - u) / r_max**2)  # density ~ r^-3 on [r_min, r_max]
        centres = torch.rand(batch, 2, generator=g) * torch.tensor([height, width])
        colours = torch.rand(batch, channels, generator=g)
        angles = torch.rand(batch, generator=g) * math.pi
        frequencies = 0.05 + 0.25 * torch.rand(batch, generator=g)
        for k in range(batch):
            r, (cy, cx) = radii[k].item(), centres[k].tolist()
            y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
            x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy = torch.arange(y0, y1, dtype=torch.float32).view(-1, 1) + 0.5 - cy
            xx = torch.arange(x0, x1, dtype=torch.float32).view(1, -1) + 0.5 - cx
            free = ((yy**2 + xx**2) <= r * r) & ~covered[y0:y1, x0:x1]
            if not free.any():
                continue
            along = xx * math.cos(angles[k]) + yy * math.sin(angles[k])
            texture = (colours[k].view(-1, 1, 1) * (1 + 0.08 * torch.sin(frequencies[k] * along))).clamp(0, 1)
            image[:, y0:y1, x0:x1][:, free] = texture[:, free]
            covered[y0:y1, x0:x1] |= free
        if covered.float().mean() > 0.995:
            break
    image[:, ~covered] = torch.rand(channels, 1, generator=g)
    return image.unsqueeze(0)


def load_image(path: str | Path, height: int, width: int, colour: bool = True) -> torch.Tensor:
    """A user's PNG/JPEG/TIFF, centre-cropped to the aspect ratio and resized to ``height x width``, in [0, 1]."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    try:
        with Image.open(path) as img:
            tensor = pil_to_tensor(img.convert("RGB" if colour else "L")).float() / 255
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image={str(path)!r} cannot be read as an image ({exc}): give a PNG, JPEG or TIFF.") from None
    _, h, w = tensor.shape
    ratio = width / height
    crop = (h, min(w, round(h * ratio))) if w / h >= ratio else (min(h, round(w / ratio)), w)
    tensor = resize(center_crop(tensor, list(crop)), [height, width], antialias=True)
    return tensor.clamp(0, 1).unsqueeze(0)


# Modified Shepp-Logan (Toft): intensity, semi-axes (a, b), centre (x0, y0), rotation (degrees).
_SHEPP_LOGAN_2D = [
    (1.0, 0.69, 0.92, 0.0, 0.0, 0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0),
]


def shepp_logan_2d(size: int) -> torch.Tensor:
    """The modified Shepp-Logan phantom evaluated analytically at the pixel centres of a ``size x size`` grid
    over [-1, 1]^2 (not an upsampled small image). Shape ``(1, 1, size, size)``, values in [0, 1]. Each ellipse
    is evaluated only over its bounding box, so the time is linear in the number of pixels."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    image = torch.zeros(size, size, dtype=torch.float32)
    for value, a, b, x0, y0, degrees in _SHEPP_LOGAN_2D:
        t = math.radians(degrees)
        half_x = math.hypot(a * math.cos(t), b * math.sin(t))  # half-widths of the rotated ellipse's box
        half_y = math.hypot(a * math.sin(t), b * math.cos(t))
        cols = _box(coords, x0 - half_x, x0 + half_x)
        rows = _box(-coords, y0 - half_y, y0 + half_y)
        if cols is None or rows is None:
            continue
        y, x = -coords[rows].view(-1, 1), coords[cols].view(1, -1)
        u = (x - x0) * math.cos(t) + (y - y0) * math.sin(t)
        v = -(x - x0) * math.sin(t) + (y - y0) * math.cos(t)
        image[rows, cols] += value * ((u / a) ** 2 + (v / b) ** 2 <= 1).float()
    return image.clamp_(0, 1).view(1, 1, size, size)


def _box(coords: torch.Tensor, low: float, high: float) -> slice | None:
    """The index range of the monotonic ``coords`` that fall in ``[low, high]`` (None if empty)."""
    inside = torch.nonzero((coords >= low) & (coords <= high)).view(-1)
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.numel() else None


# 3D modified Shepp-Logan (Kak & Slaney): intensity, semi-axes (a, b, c), centre (x0, y0, z0), rotation
# about z (degrees).
SHEPP_LOGAN_3D = [
    (1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0),
    (-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0),
    (-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18),
    (-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18),
    (0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0),
    (0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0),
    (0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0),
    (0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0),
]


def shepp_logan_3d(size: int) -> torch.Tensor:
    """The 3D Shepp-Logan phantom (ellipsoids) evaluated analytically at voxel centres of a ``size^3`` grid
    over [-1, 1]^3, one slice at a time (memory: the volume plus one slice). Shape ``(1, 1, D, H, W)`` with
    D along z, in [0, 1]."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-coords, coords, indexing="ij")
    volume = torch.zeros(size, size, size)
    for k in range(size):
        z = coords[k].item()
        slab = volume[k]
        for value, a, b, c, x0, y0, z0, degrees in SHEPP_LOGAN_3D:
            dz = ((z - z0) / c) ** 2
            if dz > 1:
                continue
            t = math.radians(degrees)
            u = (x - x0) * math.cos(t) + (y - y0) * math.sin(t)
            v = -(x - x0) * math.sin(t) + (y - y0) * math.cos(t)
            slab += value * ((u / a) ** 2 + (v / b) ** 2 <= 1 - dz)
    return volume.clamp_(0, 1).view(1, 1, size, size, size)


def radio_sky(
    size: int, dynamic_range: float = 1e3, num_extended: int = 12, num_points: int | None = None, seed: int = 0
) -> torch.Tensor:
    """A synthetic radio sky: elliptical Gaussian sources (extended emission) and point sources (one pixel),
    positive, peak 1, and source peaks log-uniform between ``1 / dynamic_range`` and 1 (radio skies span
    decades of brightness). Each Gaussian is drawn only within 4 sigma of its centre, so the time grows with
    the number of pixels, not with sources times pixels. Shape ``(1, 1, size, size)``, in [0, 1].

    :param num_points: default ``max(20, size // 8)``.
    """
    g = torch.Generator().manual_seed(seed)
    num_points = max(20, size // 8) if num_points is None else num_points
    log_range = math.log(dynamic_range)

    def peaks(n: int) -> torch.Tensor:
        return torch.exp(-log_range * torch.rand(n, generator=g, dtype=torch.float64))

    sky = torch.zeros(size, size, dtype=torch.float32)
    amplitude = peaks(num_extended)
    amplitude[0] = 1.0  # the brightest source sets the dynamic range
    sigma_major = size * (0.01 + 0.06 * torch.rand(num_extended, generator=g, dtype=torch.float64))
    axis_ratio = 0.3 + 0.7 * torch.rand(num_extended, generator=g, dtype=torch.float64)
    angle = math.pi * torch.rand(num_extended, generator=g, dtype=torch.float64)
    centre = size * (0.1 + 0.8 * torch.rand(num_extended, 2, generator=g, dtype=torch.float64))
    for k in range(num_extended):
        s_major, s_minor = sigma_major[k].item(), sigma_major[k].item() * axis_ratio[k].item()
        cy, cx = centre[k].tolist()
        reach = 4 * s_major
        y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 1)
        yy = torch.arange(y0, y1, dtype=torch.float32).view(-1, 1) - cy
        xx = torch.arange(x0, x1, dtype=torch.float32).view(1, -1) - cx
        c, s = math.cos(angle[k].item()), math.sin(angle[k].item())
        along, across = xx * c + yy * s, -xx * s + yy * c
        blob = torch.exp(-0.5 * ((along / s_major) ** 2 + (across / s_minor) ** 2))
        sky[y0:y1, x0:x1] += amplitude[k].item() * blob
    where = torch.randint(0, size * size, (num_points,), generator=g)
    sky.view(-1).index_add_(0, where, peaks(num_points).float())
    return (sky / sky.max()).view(1, 1, size, size)
