"""A lean parallel-beam projector pair: a ray-driven (Joseph-style) Radon transform, a few angles at a time.

deepinv's ``Tomography`` stores one sampling grid per angle for its forward and another for its adjoint (about
67 MB per angle at 2048²) and samples the whole rotated, padded square bilinearly. Here nothing is stored but the
angles, and each angle costs two 1D linear interpolations instead of a 2D one:

1. *sheared row sums*: for an angle whose rays run closer to the columns than to the rows (``|cos| >= |sin|``),
   the ray through detector ``u`` crosses image row ``Y`` at column ``X = (u + sin Y) / cos``. Each row is shifted
   by ``tan * Y`` (an integer shift and one interpolation fraction per row) and the rows are summed: a profile
   ``p[g]`` of ``g = X - tan * Y``, on a grid of half pixels (two interleaved phases of whole pixels);
2. *detector resampling*: the detector ``u`` reads the profile at ``g = u / cos`` (linear interpolation), times
   ``1 / |cos|``, the ray's length per row.

Angles closer to the rows are the same on the transposed image (the detectors reversed). The adjoint is the exact
transpose of these two steps (not an approximate back-projection), and each is the other's autograd backward, so
both differentiate to any order. The geometry is deepinv's: detectors ``ceil(sqrt(2) W)`` at unit spacing centred
on the image (deepinv's padding), angles in degrees, sinograms ``(B, C, detectors, angles)``. The values differ
from deepinv's bilinear rotation by the interpolation alone: under 0.5% per angle on a smooth image, 1-2.5% of the
sinogram's norm on the sharp Shepp-Logan phantom (``tests/test_parallel_beam.py`` states the bounds), with the
profile sampled twice per pixel (``PROFILE_OVERSAMPLING``) so that the pair smooths no more than deepinv's. The
profile's grid is aligned with the detectors at 0 and 90 degrees, where both interpolations fall on the grid.

Volumes ``(B, C, D, W, W)`` rotating about z are projected slice by slice (the slices are planes like channels)
to ``(B, C, D, detectors, angles)``, as tomography_3d lays them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics

WORKSPACE_BYTES = 256 * 2**20
# profile samples per pixel: halves the detector interpolation's smoothing (at 1, the pair smooths high frequencies
# about 1.6x as much as deepinv's bilinear rotation; at 2, about as much)
PROFILE_OVERSAMPLING = 2
# images whose rows' windows (rows x planes x angles x profile) hold fewer values than this are gathered all at
# once (one vectorised call per phase instead of a Python loop over rows, 4x faster at 128² and 15 angles);
# larger ones one row at a time
ROWS_TOGETHER_BELOW = 2**21
# on a GPU, the rows' windows one call may hold (two taps of float32: 128 MiB), whatever the image's size
GPU_VALUES_PER_CALL = 2**24
# values a block holds per (plane, angle) pair, in units of the image width (estimated from the arrays it makes:
# the oversampled profile and its stacked phases, the rows' windows, the adjoint's padded profile, the detector
# gathers)
VALUES_PER_PAIR_PER_WIDTH = 16


def padded_width(width: int) -> int:
    """The detector count: the image's diagonal, as deepinv computes it (float32 sqrt(2))."""
    return int((torch.tensor(2.0).sqrt() * width).ceil())


@dataclass
class _Shear:
    """One chunk of angles' interpolation plan (all ``|cos| >= |sin|`` in the frame it runs in).

    The profile is sampled ``PROFILE_OVERSAMPLING`` times per pixel, as as many interleaved phases of ``length``
    entries: ``phases[k]`` holds ``shift``/``fraction`` ``(angles, W)``, where row ``r`` of the image enters phase
    ``k``; ``index0/1``, ``weight0/1`` ``(angles, detectors)``: the two entries of the interleaved profile each
    detector reads and their weights (``1/|cos|`` included, zero outside the profile).
    """

    length: int
    phases: list[tuple[torch.Tensor, torch.Tensor]]
    index0: torch.Tensor
    weight0: torch.Tensor
    index1: torch.Tensor
    weight1: torch.Tensor


class ParallelBeam(LinearPhysics):
    """Parallel-beam projections of ``(B, C, W, W)`` images (or ``(B, C, D, W, W)`` volumes about z).

    :param angles: projection angles in degrees, ``(A,)``.
    :param img_width: ``W``, the image's side.
    :param scale: a factor on ``A`` (and so on ``A^T``), e.g. ``1 / ||R||`` for a unit-norm operator.
    :param workspace_bytes: the most one block of planes and angles may hold (its profiles and row windows);
        default 256 MiB. Smaller budgets mean more blocks, not other values.
    :param device: where the angles live (inputs may be on any device of the same kind).
    :param backend: ``"torch"`` (default: the pair described above, CPU and CUDA) or ``"astra"`` (ASTRA Toolbox's
        projectors, where ``astra-toolbox`` is installed: its CPU ``"linear"`` projector for CPU tensors, its CUDA
        one for CUDA tensors; the same geometry, equal to the torch pair up to interpolation, one plane at a time).
    :raises ValueError: a bad shape, budget or backend name; ``ImportError`` for ``backend="astra"`` without ASTRA.
    """

    def __init__(
        self,
        angles: torch.Tensor,
        img_width: int,
        scale: float = 1.0,
        workspace_bytes: int = WORKSPACE_BYTES,
        device: torch.device | str = "cpu",
        backend: str = "torch",
    ):
        super().__init__()
        angles = torch.as_tensor(angles, dtype=torch.float32)
        if angles.ndim != 1 or angles.numel() == 0:
            raise ValueError(f"angles of shape {tuple(angles.shape)}: give a 1D tensor of at least one angle (deg).")
        if isinstance(img_width, bool) or not isinstance(img_width, int | float) or img_width != int(img_width):
            raise ValueError(f"img_width={img_width!r}: give the image's side as a whole number of pixels.")
        if img_width < 2:
            raise ValueError(f"img_width={img_width}: give the image's side, at least 2 pixels.")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r}: give a finite factor > 0 (e.g. 1 / ||R|| for a unit-norm operator).")
        if workspace_bytes < 1:
            raise ValueError(f"workspace_bytes={workspace_bytes}: give a positive budget.")
        self.register_buffer("angles", angles.to(device), persistent=False)
        self._host_degrees = angles.double()  # the plans' sizes are read here: no device round trip per call
        self.img_width, self.scale, self.workspace_bytes = int(img_width), float(scale), int(workspace_bytes)
        self.detectors = padded_width(self.img_width)
        if backend not in ("torch", "astra"):
            raise ValueError(f"backend={backend!r}: give 'torch' (default) or 'astra' (ASTRA Toolbox's projectors).")
        self.backend = backend
        self._astra = None
        if backend == "astra":
            from distinv.operators.astra import AstraParallelBeam, import_astra

            import_astra(torch.device(device).type)
            before = self.detectors // 2 - self.img_width // 2
            self._astra = AstraParallelBeam(self.angles, self.img_width, self.detectors, before)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802 - deepinv's name
        """Sinograms ``(B, C, detectors, angles)`` (volumes: ``(B, C, D, detectors, angles)``)."""
        images, unfold = self._fold(x, "x", self.img_width)
        if images.shape[0] * images.shape[1] == 0:  # an empty batch: nothing to project
            return unfold(images.new_zeros(*images.shape[:2], self.detectors, len(self.angles)))
        return unfold(MatchedPair.apply(images, self, False) * self.scale)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802
        """The exact transpose of :meth:`A`: images ``(B, C, W, W)`` (volumes ``(B, C, D, W, W)``)."""
        sinograms, unfold = self._fold(y, "y", self.detectors, len(self.angles))
        if sinograms.shape[0] * sinograms.shape[1] == 0:
            return unfold(sinograms.new_zeros(*sinograms.shape[:2], self.img_width, self.img_width))
        return unfold(MatchedPair.apply(sinograms, self, True) * self.scale)

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:  # noqa: N802
        """With ``fbp=True`` the filtered back-projection (a ramp filter along the detectors, then the adjoint,
        scaled by ``pi / (2 angles)`` as deepinv's FBP); else deepinv's least squares."""
        if not fbp:
            return super().A_dagger(y, **kwargs)
        filtered = ramp_filter(y, dim=-2)
        return self.A_adjoint(filtered) * (math.pi / (2 * len(self.angles))) / self.scale**2

    def _fold(self, t: torch.Tensor, name: str, rows: int, columns: int | None = None):
        """``t`` as 4D (a volume's slices folded into channels) and the function that unfolds a result."""
        last = (rows, columns if columns is not None else rows)
        if t.ndim not in (4, 5) or tuple(t.shape[-2:]) != last:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}: expected (B, C, {last[0]}, {last[1]}) or a volume "
                f"(B, C, D, {last[0]}, {last[1]}) for this operator."
            )
        if t.ndim == 4:
            return t, lambda r: r
        b, c, d = t.shape[:3]
        return t.reshape(b, c * d, *t.shape[3:]), lambda r: r.reshape(b, c, d, *r.shape[2:])

    # ------------------------------------------------------------------ the pair, block by block
    def _blocks(self, planes: int, itemsize: int) -> list[tuple[slice, torch.Tensor, bool]]:
        """``(planes, angle indexes, transposed)`` blocks that each fit the workspace: the angles closer to the
        columns (run on the image), then those closer to the rows (run on the transposed image)."""
        theta = self._host_degrees * (math.pi / 180)
        closer_to_columns = theta.cos().abs() >= theta.sin().abs()
        pairs = max(1, self.workspace_bytes // (VALUES_PER_PAIR_PER_WIDTH * self.img_width * itemsize))
        blocks = []
        for transposed, members in ((False, closer_to_columns), (True, ~closer_to_columns)):
            indexes = members.nonzero().flatten()
            if len(indexes) == 0:
                continue
            per_angles = max(1, min(len(indexes), pairs // planes))
            per_planes = max(1, min(planes, pairs // per_angles))
            for a in range(0, len(indexes), per_angles):
                for p in range(0, planes, per_planes):
                    blocks.append((slice(p, min(p + per_planes, planes)), indexes[a : a + per_angles], transposed))
        return blocks

    def _shear(self, angle_indexes: torch.Tensor, transposed: bool, like: torch.Tensor) -> _Shear:
        """The chunk's plan, in float64 for the positions (``tan * Y`` reaches thousands of pixels)."""
        device = like.device
        w, n = self.img_width, self.detectors
        before = self.detectors // 2 - w // 2  # deepinv's padding before the image
        centre = (n - 1) / 2
        # the profile's coordinate g is the column index where the ray crosses the row Y = 0 (so that at 0 and 90
        # degrees both interpolations fall on the grid): row Y is crossed at column g + tan * Y. The profile's
        # extent comes from the host's angles (tan * Y is extreme at the extreme tan and Y), the plan's arrays are
        # made on the device: no copy back to the host, no synchronisation, per call.
        host = self._host_degrees[angle_indexes] * (math.pi / 180)
        host_tan = host.cos() / host.sin() if transposed else host.sin() / host.cos()
        corners = [
            t * y
            for t in (host_tan.min().item(), host_tan.max().item())
            for y in (before - centre, w - 1 + before - centre)
        ]
        lowest = math.floor(-max(corners)) - 1
        length = math.ceil(w - 1 - min(corners)) + 1 - lowest + 1
        theta = self.angles.detach().to(device, torch.float64)[angle_indexes.to(device)] * (math.pi / 180)
        cos, sin = (theta.sin(), theta.cos()) if transposed else (theta.cos(), theta.sin())
        rows = torch.arange(w, dtype=torch.float64, device=device) + before - centre  # Y of each image row, centred
        entry = (sin / cos)[:, None] * rows[None, :]  # column index at g = 0, per (angle, row)
        fine = PROFILE_OVERSAMPLING
        phases = []
        for k in range(fine):  # phase k: g = lowest + k / fine + i
            start = lowest + k / fine + entry  # column index of the phase's entry 0, per (angle, row)
            shift = start.floor()
            phases.append((shift.long().to(like.device), (start - shift).to(device=like.device, dtype=like.dtype)))
        detector = torch.arange(n, dtype=torch.float64, device=device) - centre
        # the interleaved profile's index each detector reads
        position = (detector[None, :] / cos[:, None] + (centre - before) - lowest) * fine
        index0 = position.floor()
        fraction = position - index0
        ray = (1 / cos.abs())[:, None]

        def read(index: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inside = (index >= 0) & (index < length * fine)
            return (
                index.clamp(0, length * fine - 1).long().to(like.device),
                (weight * ray * inside).to(device=like.device, dtype=like.dtype),
            )

        (i0, w0), (i1, w1) = read(index0, 1 - fraction), read(index0 + 1, fraction)
        return _Shear(
            length,
            phases,
            i0,
            w0,
            i1,
            w1,
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, W, W)`` to ``(B, C, detectors, angles)``, unscaled, no graph."""
        b, c, w, n = x.shape[0], x.shape[1], self.img_width, self.detectors
        if self._astra is not None:
            return self._astra.project(x.reshape(b * c, w, w)).reshape(b, c, n, len(self.angles))
        planes = x.reshape(b * c, w, w)
        out = x.new_empty((b * c, len(self.angles), n))
        for which, angle_indexes, transposed in self._blocks(b * c, x.element_size()):
            image = planes[which].transpose(1, 2) if transposed else planes[which]
            plan = self._shear(angle_indexes, transposed, x)
            sinogram = _resample(_sheared_row_sums(image, plan), plan)
            out[which, angle_indexes.to(x.device)] = sinogram.flip(-1) if transposed else sinogram
        return out.transpose(1, 2).reshape(b, c, n, len(self.angles))

    def back_project(self, y: torch.Tensor) -> torch.Tensor:
        """The exact transpose of :meth:`project`: ``(B, C, detectors, angles)`` to ``(B, C, W, W)``, no graph."""
        b, c, w, n = y.shape[0], y.shape[1], self.img_width, self.detectors
        if self._astra is not None:
            return self._astra.back_project(y.reshape(b * c, n, len(self.angles))).reshape(b, c, w, w)
        sinograms = y.reshape(b * c, n, len(self.angles))
        total = y.new_zeros((b * c, w, w))
        for which, angle_indexes, transposed in self._blocks(b * c, y.element_size()):
            plan = self._shear(angle_indexes, transposed, y)
            chunk = sinograms[which][:, :, angle_indexes.to(y.device)].transpose(1, 2)
            profile = _resample_adjoint(chunk.flip(-1) if transposed else chunk, plan)
            _add_sheared_rows_adjoint(profile, plan, total[which].transpose(1, 2) if transposed else total[which])
        return total.reshape(b, c, w, w)


def _sheared_row_sums(image: torch.Tensor, plan: _Shear) -> torch.Tensor:
    """The interleaved profiles ``(P, angles, PROFILE_OVERSAMPLING * length)`` of ``image (P, W, W)``."""
    phases = [_phase_row_sums(image, shift, fraction, plan.length) for shift, fraction in plan.phases]
    return torch.stack(phases, -1).flatten(-2)


def _phase_row_sums(image: torch.Tensor, shift: torch.Tensor, fraction: torch.Tensor, length: int) -> torch.Tensor:
    """One phase's profiles ``(P, angles, length)``: every row of ``image (P, W, W)`` shifted by its angle's shift
    (linear interpolation by its fraction) and summed; all angles at once, the rows too for small images."""
    planes, width = image.shape[0], image.shape[1]
    pad = length + 2
    together = rows_per_call(image.device, width, planes * len(shift) * (length + 1))
    if together > 1:
        profile = None
        for first in range(0, width, together):  # rows first:last at once (all of them for small images)
            last = min(width, first + together)
            rows = torch.arange(last - first, device=image.device)[:, None]
            windows = F.pad(image[:, first:last], (pad, pad)).unfold(-1, length + 1, 1)
            windows = windows[:, rows, (shift[:, first:last] + pad).T]  # (P, rows, A, L + 1)
            weights = torch.stack([1 - fraction[:, first:last], fraction[:, first:last]], -1)  # (angles, rows, 2)
            part = torch.einsum("prali,ari->pal", torch.stack([windows[..., :-1], windows[..., 1:]], -1), weights)
            profile = part if profile is None else profile.add_(part)
        return profile
    profile = image.new_zeros((planes, len(shift), length))
    keep = 1 - fraction
    for r in range(width):
        padded = F.pad(image[:, r, :], (pad, pad))
        windows = padded.unfold(-1, length + 1, 1)[:, shift[:, r] + pad]  # (P, angles, length + 1)
        profile.addcmul_(windows[..., :-1], keep[:, r, None]).addcmul_(windows[..., 1:], fraction[:, r, None])
    return profile


def rows_per_call(device: torch.device, width: int, values_per_row: int) -> int:
    """How many image rows one vectorised call of the row sums (or their transpose) takes, each row's windows
    holding ``values_per_row`` values. On the CPU all rows of a small image (below ``ROWS_TOGETHER_BELOW`` values;
    a Python loop would dominate), else one at a time (cache-sized, in place); on a GPU as many rows as
    ``GPU_VALUES_PER_CALL`` values allow, so that a large image takes a few large kernels, not thousands of small
    ones."""
    if device.type == "cpu":
        return width if width * values_per_row < ROWS_TOGETHER_BELOW else 1
    return max(2, min(width, GPU_VALUES_PER_CALL // max(1, values_per_row)))


def _add_sheared_rows_adjoint(profile: torch.Tensor, plan: _Shear, total: torch.Tensor) -> None:
    """Adds the transpose of :func:`_sheared_row_sums` of the interleaved ``profile`` into ``total (P, W, W)``
    (which may be a transposed view)."""
    by_phase = profile.unflatten(-1, (plan.length, len(plan.phases)))
    for k, (shift, fraction) in enumerate(plan.phases):
        _add_phase_adjoint(by_phase[..., k], shift, fraction, total)


def _add_phase_adjoint(profile: torch.Tensor, shift: torch.Tensor, fraction: torch.Tensor, total: torch.Tensor):
    """Adds the transpose of :func:`_phase_row_sums` of ``profile (P, angles, length)`` into ``total``."""
    width = total.shape[1]
    margin = width + 2
    windows = F.pad(profile, (margin, margin)).unfold(-1, width + 1, 1)  # [..., s, m] = profile[s + m - margin]
    angles = torch.arange(len(shift), device=profile.device)
    together = rows_per_call(profile.device, width, profile.shape[0] * len(shift) * (width + 1))
    if together > 1:
        for first in range(0, width, together):  # rows first:last at once (all of them for small images)
            last = min(width, first + together)
            read = windows[:, angles[:, None], margin - shift[:, first:last] - 1]  # (P, A, rows, W + 1)
            taps = torch.stack([read[..., 1:], read[..., :-1]], -1)  # (P, angles, rows, W, 2)
            weights = torch.stack([1 - fraction[:, first:last], fraction[:, first:last]], -1)
            total[:, first:last] += torch.einsum("parmi,ari->prm", taps, weights)
        return
    weights = torch.stack([1 - fraction, fraction], 1)  # (angles, 2, W)
    for r in range(width):
        # image column m reads profile[m - shift] (weight 1 - fraction) and profile[m - shift - 1] (fraction)
        read = windows[:, angles, margin - shift[:, r] - 1]  # (P, angles, W + 1): profile[m - shift - 1]
        summed = weights[:, :, r].T @ read  # (P, 2, W + 1): the angles summed, one weighting per tap
        total[:, r, :] += summed[:, 0, 1:] + summed[:, 1, :-1]


def _resample(profile: torch.Tensor, plan: _Shear) -> torch.Tensor:
    """``(P, angles, length)`` profiles read at the detectors: ``(P, angles, detectors)``."""
    planes = profile.shape[0]

    def tap(index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.gather(profile, 2, index.expand(planes, -1, -1)) * weight

    return tap(plan.index0, plan.weight0) + tap(plan.index1, plan.weight1)


def _resample_adjoint(sinogram: torch.Tensor, plan: _Shear) -> torch.Tensor:
    """The transpose of :func:`_resample`: ``(P, angles, detectors)`` to profiles ``(P, angles, length)``."""
    planes, angles = sinogram.shape[:2]
    profile = sinogram.new_zeros((planes, angles, plan.length * len(plan.phases)))
    profile.scatter_add_(2, plan.index0.expand(planes, -1, -1), sinogram * plan.weight0)
    profile.scatter_add_(2, plan.index1.expand(planes, -1, -1), sinogram * plan.weight1)
    return profile


def ramp_filter(y: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """``y`` filtered along ``dim`` (the detectors) by the band-limited ramp |f| (Kak and Slaney's discrete
    filter: the spatial kernel ``1/4`` at 0, ``-1 / (pi n)^2`` at odd ``n``, 0 at even ``n``), zero-padded to a power
    of two at least twice the length so that the convolution does not wrap."""
    length = y.shape[dim]
    size = max(64, 1 << math.ceil(math.log2(2 * length)))
    offsets = torch.arange(size, dtype=torch.float64)
    distance = torch.minimum(offsets, size - offsets)  # circular distance to 0
    kernel = torch.where(distance % 2 == 1, -1.0 / (math.pi * distance) ** 2, torch.zeros_like(distance))
    kernel[0] = 0.25
    response = (2 * torch.fft.fft(kernel).real).to(y.dtype).to(y.device)
    moved = y.movedim(dim, -1)
    spectrum = torch.fft.fft(moved, n=size, dim=-1) * response
    return torch.fft.ifft(spectrum, dim=-1).real[..., :length].to(y.dtype).movedim(-1, dim)


class MatchedPair(torch.autograd.Function):
    """``operator.project`` (``adjoint=False``) or ``operator.back_project``, for any operator with that matched
    pair; the backward of each is the other, so both differentiate to any order."""

    @staticmethod
    def forward(ctx, t, operator, adjoint):
        ctx.operator, ctx.adjoint = operator, adjoint
        return operator.back_project(t) if adjoint else operator.project(t)

    @staticmethod
    def backward(ctx, grad):
        return MatchedPair.apply(grad, ctx.operator, not ctx.adjoint), None, None
