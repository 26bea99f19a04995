"""Image quality against a ground truth: PSNR and SSIM (volumes averaged over their z-slices).

Both take replicated tensors, or :class:`~distinv.placements.row_bands.RowBands` (sharded by rows, the reference sharded
alike), through :mod:`distinv.placements.vectors`: each rank scores its part (SSIM's windows reading 5 rows of its
neighbours' bands) and the sums over parts (one all-reduce of a few numbers for bands, nothing for replicated
images) give every rank the value the whole images would give, without gathering an image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distinv.placements.row_bands import ROWS
from distinv.placements.vectors import (
    Vector,
    global_rows,
    local_part,
    mean_square,
    rows_beyond,
    sum_over_parts,
    with_local,
)

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # torchmetrics' (and deepinv's) defaults
SSIM_CHUNK_ROWS = 128  # rows of a band scored at once (the map's temporaries are about 20 such slices)
SSIM_CHUNK_VALUES = 2**22  # values of the images scored at once (samples x channels x rows x columns), at least a row


def psnr(x: Vector, reference: Vector, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` (clamped to ``[0, data_range]``) against ``reference`` (placed as
    ``x`` is)."""
    error = with_local(x, local_part(x).detach().clamp(0, data_range) - local_part(reference))
    mse = mean_square(error)
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(x: Vector, reference: Vector, data_range: float = 1.0) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, reflected borders: torchmetrics' SSIM, which deepinv's uses) of
    ``x`` against ``reference`` (placed as ``x`` is); volumes are averaged over their z-slices. Scored a few rows
    (and slices) at a time, so that the map's temporaries stay small whatever the image's size.

    A volume's z-slices are whole on their rank (sharded volumes are cut along z); an image's rows need 5 rows of
    its neighbours' bands beyond its own.
    """
    clamped = local_part(x).detach().clamp(0, data_range)
    reference_part = local_part(reference).to(clamped.dtype)
    if clamped.ndim == 5:  # (B, C, D, H, W): slices as a batch
        slices = [t.transpose(1, 2).flatten(0, 1) for t in (clamped, reference_part)]
        per_slice = _ssim_per_sample(*slices, data_range)
        count = torch.tensor(float(per_slice.numel()), dtype=torch.float64, device=per_slice.device)
        total = sum_over_parts(x, torch.stack([per_slice.sum(), count]))
        return float(total[0] / total[1])
    top, bottom = rows_beyond(with_local(x, clamped), reference, reach=SSIM_WINDOW // 2)
    part_sums = _ssim_per_sample(clamped, reference_part, data_range, top, bottom) * clamped.shape[ROWS]
    per_sample = sum_over_parts(x, part_sums) / global_rows(x)
    return float(per_sample.mean())


def _ssim_per_sample(
    x: torch.Tensor,
    reference: torch.Tensor,
    data_range: float,
    top: torch.Tensor | None = None,
    bottom: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean SSIM per sample ``(N,)`` (float64) of ``(N, C, H, W)`` images, or of a band of rows whose neighbours'
    rows are ``top``/``bottom`` (``(N, 2C, rows, W)``: the band's channels, then the reference's; none: the
    image's own border, reflected)."""
    n, channels = x.shape[0], x.shape[1]
    if top is None:
        top = bottom = x.new_zeros((n, 2 * channels, 0, x.shape[-1]))
    reach, rows = SSIM_WINDOW // 2, x.shape[ROWS]
    per_chunk = SSIM_CHUNK_ROWS * channels * x.shape[-1]
    samples = max(1, SSIM_CHUNK_VALUES // per_chunk)
    sums = torch.zeros(n, dtype=torch.float64, device=x.device)
    for first in range(0, n, samples):  # a few samples and rows at a time: the map's temporaries stay small
        batch = slice(first, min(n, first + samples))
        for start in range(0, rows, SSIM_CHUNK_ROWS):
            stop = min(rows, start + SSIM_CHUNK_ROWS)
            a = _rows(x[batch], top[batch, :channels], bottom[batch, :channels], start - reach, stop + reach)
            b = _rows(reference[batch], top[batch, channels:], bottom[batch, channels:], start - reach, stop + reach)
            sums[batch] += _ssim_map(a, b, data_range).double().sum(dim=(1, 2, 3))
    return sums / (channels * rows * x.shape[-1])


def _rows(band: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Rows ``low:high`` of the band extended by its halos (``top`` before row 0, ``bottom`` after the last), the
    rows beyond the halos (the image's own border) reflected as torchmetrics pads; columns reflected by the
    window's reach."""
    rows, reach = band.shape[ROWS], SSIM_WINDOW // 2
    first, last = max(low, -top.shape[ROWS]), min(high, rows + bottom.shape[ROWS])
    pieces = [top.narrow(ROWS, top.shape[ROWS] + first, -first)] if first < 0 else []
    pieces.append(band.narrow(ROWS, max(first, 0), min(last, rows) - max(first, 0)))
    if last > rows:
        pieces.append(bottom.narrow(ROWS, 0, last - rows))
    part = torch.cat(pieces, dim=ROWS) if len(pieces) > 1 else pieces[0]
    return F.pad(part, (reach, reach, first - low, high - last), mode="reflect")


def _ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """torchmetrics' SSIM index per pixel, from inputs already padded by the window's reach (valid windows only)."""
    channels = a.shape[1]
    dist = torch.arange((1 - SSIM_WINDOW) / 2, (1 + SSIM_WINDOW) / 2, 1, dtype=a.dtype, device=a.device)
    gauss = torch.exp(-((dist / SSIM_SIGMA) ** 2) / 2)
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    outputs = F.conv2d(torch.cat((a, b, a * a, b * b, a * b)), kernel, groups=channels).split(a.shape[0])
    mu_a_sq, mu_b_sq, mu_ab = outputs[0].pow(2), outputs[1].pow(2), outputs[0] * outputs[1]
    sigma_a_sq = torch.clamp(outputs[2] - mu_a_sq, min=0.0)
    sigma_b_sq = torch.clamp(outputs[3] - mu_b_sq, min=0.0)
    sigma_ab = outputs[4] - mu_ab
    return ((2 * mu_ab + c1) * (2 * sigma_ab + c2)) / ((mu_a_sq + mu_b_sq + c1) * (sigma_a_sq + sigma_b_sq + c2))
