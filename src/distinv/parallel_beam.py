"""A lean parallel-beam projector pair: deepinv's Radon geometry, computed angle chunk by angle chunk.

deepinv's ``Tomography`` stores one sampling grid per angle for its forward and another for its adjoint (about
67 MB per angle at 2048²). Here the grids of a chunk of angles are made when needed (``affine_grid`` is cheap) and
dropped after it, the chunk sized by a workspace budget, so an operator stores only its angles. The geometry is
deepinv's exactly: the image zero-padded to the square of its diagonal (``ceil(sqrt(2) W)``, centred as deepinv
centres it), rotated by bilinear ``grid_sample`` (``align_corners=True``) and summed along its rows; the
sinogram is ``(B, C, detectors, angles)``, so the forward equals deepinv's to float rounding. The adjoint is the
exact transpose of that forward (the scatter of ``grid_sample``'s backward, chunk by chunk), not an approximate
back-projection; each is the other's autograd backward, so both differentiate to any order.

Volumes ``(B, C, D, H, W)`` rotating about z are projected slice by slice (the slices folded into channels) to
``(B, C, D, detectors, angles)``, as tomography_3d lays them out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from deepinv.physics import LinearPhysics

WORKSPACE_BYTES = 256 * 2**20


def padded_width(width: int) -> int:
    """The detector count: the image's diagonal, as deepinv computes it (float32 sqrt(2))."""
    return int((torch.tensor(2.0).sqrt() * width).ceil())


class ParallelBeam(LinearPhysics):
    """Parallel-beam projections of ``(B, C, W, W)`` images (or ``(B, C, D, W, W)`` volumes about z).

    :param angles: projection angles in degrees, ``(A,)``.
    :param img_width: ``W``, the image's side.
    :param scale: a factor on ``A`` (and so on ``A^T``), e.g. ``1 / ||R||`` for a unit-norm operator.
    :param workspace_bytes: the most one chunk of angles may hold (rotated copies and grids); default 256 MiB.
    :param device: where the angles live (inputs may be on any device of the same kind).
    """

    def __init__(
        self,
        angles: torch.Tensor,
        img_width: int,
        scale: float = 1.0,
        workspace_bytes: int = WORKSPACE_BYTES,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        angles = torch.as_tensor(angles, dtype=torch.float32)
        if angles.ndim != 1 or angles.numel() == 0:
            raise ValueError(f"angles of shape {tuple(angles.shape)}: give a 1D tensor of at least one angle (deg).")
        if img_width < 2:
            raise ValueError(f"img_width={img_width}: give the image's side, at least 2 pixels.")
        if workspace_bytes < 1:
            raise ValueError(f"workspace_bytes={workspace_bytes}: give a positive budget.")
        self.register_buffer("angles", angles.to(device), persistent=False)
        self.img_width, self.scale, self.workspace_bytes = int(img_width), float(scale), int(workspace_bytes)
        self.detectors = padded_width(self.img_width)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802 - deepinv's name
        """Sinograms ``(B, C, detectors, angles)`` (volumes: ``(B, C, D, detectors, angles)``)."""
        images, unfold = self._fold(x, "x", self.img_width)
        return unfold(_Apply.apply(images, self, False) * self.scale)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: N802
        """The exact transpose of :meth:`A`: images ``(B, C, W, W)`` (volumes ``(B, C, D, W, W)``)."""
        sinograms, unfold = self._fold(y, "y", self.detectors, len(self.angles))
        return unfold(_Apply.apply(sinograms, self, True) * self.scale)

    def A_dagger(self, y: torch.Tensor, fbp: bool = False, **kwargs) -> torch.Tensor:  # noqa: N802
        """With ``fbp=True`` the filtered back-projection (a ramp filter along the detectors, then the adjoint,
        scaled by ``pi / (2 angles)`` as deepinv's FBP with its exact adjoint); else deepinv's least squares."""
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

    # ------------------------------------------------------------------ the pair, chunk by chunk
    def _chunks(self, per_angle_values: int) -> list[slice]:
        grid_values = 2 * self.detectors**2
        per_angle = (per_angle_values + grid_values) * 4
        step = max(1, self.workspace_bytes // per_angle)
        return [slice(i, min(i + step, len(self.angles))) for i in range(0, len(self.angles), step)]

    def _grids(self, chunk: slice, like: torch.Tensor) -> torch.Tensor:
        """The chunk's sampling grids ``(n, detectors, detectors, 2)``: ``affine_grid`` of deepinv's rotation
        ``[[cos, sin], [-sin, cos]]`` (align_corners=True), by broadcasting (the same values, in half the time)."""
        theta = self.angles[chunk].to(device=like.device, dtype=like.dtype) * (math.pi / 180)
        cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
        base = torch.linspace(-1, 1, self.detectors, dtype=like.dtype, device=like.device)
        column, row = base[None, None, :], base[None, :, None]
        return torch.stack([cos * column + sin * row, cos * row - sin * column], -1)

    def _pad(self) -> tuple[int, int]:
        """deepinv's padding before and after the image, per spatial dim."""
        w = self.img_width
        pad = self.detectors - w
        before = (w + pad) // 2 - w // 2
        return before, pad - before

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, W, W)`` to ``(B, C, detectors, angles)``, unscaled, no graph."""
        before, after = self._pad()
        padded = F.pad(x, (before, after, before, after))
        b, c, n = x.shape[0], x.shape[1], self.detectors
        planes = padded.reshape(1, b * c, n, n)
        out = torch.empty((b * c, n, len(self.angles)), dtype=x.dtype, device=x.device)
        for chunk in self._chunks(b * c * n * n):
            grids = self._grids(chunk, x)
            rotated = F.grid_sample(planes.expand(len(grids), -1, -1, -1), grids, align_corners=True)
            out[:, :, chunk] = rotated.sum(2).permute(1, 2, 0)
        return out.reshape(b, c, n, len(self.angles))

    def back_project(self, y: torch.Tensor) -> torch.Tensor:
        """The exact transpose of :meth:`project`: ``(B, C, detectors, angles)`` to ``(B, C, W, W)``, no graph."""
        b, c, n = y.shape[0], y.shape[1], self.detectors
        columns = y.reshape(b * c, n, len(self.angles))
        total = torch.zeros((b * c, n, n), dtype=y.dtype, device=y.device)
        like = torch.zeros((), dtype=y.dtype, device=y.device).expand(1, b * c, n, n)
        for chunk in self._chunks(b * c * n * n):
            grids = self._grids(chunk, y)
            spread = columns[:, :, chunk].permute(2, 0, 1)[:, :, None, :].expand(-1, -1, n, -1).contiguous()
            grad_input, _ = torch.ops.aten.grid_sampler_2d_backward(
                spread, like.expand(len(grids), -1, -1, -1), grids, 0, 0, True, [True, False]
            )
            total += grad_input.sum(0)
        before, _ = self._pad()
        w = self.img_width
        return total[:, before : before + w, before : before + w].reshape(b, c, w, w)


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


class _Apply(torch.autograd.Function):
    """``operator.project`` (``adjoint=False``) or ``operator.back_project``; the backward of each is the other."""

    @staticmethod
    def forward(ctx, t, operator, adjoint):
        ctx.operator, ctx.adjoint = operator, adjoint
        return operator.back_project(t) if adjoint else operator.project(t)

    @staticmethod
    def backward(ctx, grad):
        return _Apply.apply(grad, ctx.operator, not ctx.adjoint), None, None
