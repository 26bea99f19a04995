"""The radio-interferometry measurement operator, weighted NUFFT, with a choice of NUFFT backend.

``backend="finufft"`` runs the Flatiron NUFFT on CPU: at 1024x1024 pixels and 10^6 visibilities one forward or
adjoint takes about 0.2 s on one core against about 2.7 s for torchkbnufft (deepinv's
:class:`~deepinv.physics.RadioInterferometry`), with the same conventions (``benchmarks/problems.py``).
``backend="torchkbnufft"`` is deepinv's operator itself, which also runs on GPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from deepinv.physics import LinearPhysics, RadioInterferometry

BACKENDS = ("auto", "finufft", "torchkbnufft")


def choose_backend(backend: str, device: torch.device | str) -> str:
    """``auto``: finufft on CPU when it is installed, torchkbnufft otherwise (GPU, or no finufft)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}.")
    if backend == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return "finufft" if on_cpu and importlib.util.find_spec("finufft") else "torchkbnufft"
    if importlib.util.find_spec(backend) is None:  # the backend is named after its package
        raise ImportError(f"backend={backend!r} needs the {backend} package: pip install {backend}")
    if backend == "finufft" and torch.device(device).type != "cpu":
        raise ValueError("backend='finufft' runs on CPU only: use backend='torchkbnufft' on GPU.")
    return backend


def radio_operator(
    img_size: tuple[int, int],
    samples_loc: torch.Tensor,
    data_weight: torch.Tensor | None = None,
    backend: str = "auto",
    device: torch.device | str = "cpu",
) -> LinearPhysics:
    """``A x = w * NUFFT(x)``: ``x`` of shape ``(B, C, H, W)`` to visibilities ``(B, C, M)`` (complex64) at
    ``samples_loc`` of shape ``(2, M)`` in radians per pixel, in ``[-pi, pi)``, ordered (rows, columns).
    The adjoint returns the real part (the sky is real)."""
    if choose_backend(backend, device) == "finufft":
        return FinufftRadio(img_size, samples_loc, data_weight, device=device)
    return RadioInterferometry(img_size, samples_loc, dataWeight=data_weight, device=device)


class FinufftRadio(LinearPhysics):
    """deepinv's :class:`~deepinv.physics.RadioInterferometry` computed by finufft (CPU).

    Same conventions: phases ``exp(-i omega . (n - size // 2))``, scaled by ``1 / sqrt(prod(k_oversampling *
    img_size))`` like torchkbnufft's ``norm="ortho"``, data weights applied after the forward and before the
    adjoint, real projection after the adjoint. The two agree to the accuracy of torchkbnufft's table
    interpolation (about 5e-4, relative). ``eps`` is finufft's requested relative accuracy.

    :param img_size: ``(H, W)``.
    :param samples_loc: ``(2, M)`` sampling locations in radians per pixel.
    :param dataWeight: ``(M,)`` or a scalar tensor: weights multiplying the visibilities.
    """

    def __init__(
        self,
        img_size: Sequence[int],
        samples_loc: torch.Tensor,
        dataWeight: torch.Tensor | None = None,  # noqa: N803  (deepinv's name)
        k_oversampling: float = 2.0,
        eps: float = 1e-5,
        device: torch.device | str = "cpu",
        **kwargs,
    ):
        super().__init__(device=device, **kwargs)
        if len(img_size) != 2:
            raise ValueError(f"img_size={tuple(img_size)}: radio images are 2D, give (H, W).")
        if samples_loc.ndim != 2 or samples_loc.shape[0] != 2:
            raise ValueError(f"samples_loc has shape {tuple(samples_loc.shape)}: it must be (2, M).")
        self.img_size = tuple(int(s) for s in img_size)
        self.eps = eps
        self.scale = float(np.prod([int(s * k_oversampling) for s in self.img_size])) ** -0.5
        self.register_buffer("samples_loc", samples_loc.to(device=device, dtype=torch.float32))
        weight = torch.tensor([1.0]) if dataWeight is None else dataWeight
        self.register_buffer("dataWeight", weight.to(device=device, dtype=torch.float32))
        # finufft shifts frequencies by N // 2 for the N modes ordered -N/2..N/2-1; torchkbnufft's image
        # centre is at N // 2 too, so the two agree without a phase ramp.
        self._points = [np.ascontiguousarray(p) for p in self.samples_loc.cpu().numpy()]

    def setWeight(self, w: torch.Tensor) -> None:  # noqa: N802  (deepinv's name)
        self.dataWeight = w.to(self.dataWeight)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return _Forward.apply(x, self) * self.dataWeight

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return _Adjoint.apply(y * self.dataWeight, self)

    def _type2(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to unweighted visibilities ``(B, C, M)``."""
        import finufft

        lead = x.shape[:-2]
        f = x.detach().reshape(-1, *self.img_size).to(torch.complex64).cpu().numpy()
        c = finufft.nufft2d2(*self._points, f, eps=self.eps, isign=-1, nthreads=torch.get_num_threads())
        return torch.from_numpy(c * np.float32(self.scale)).reshape(*lead, -1).to(x.device)

    def _type1(self, y: torch.Tensor) -> torch.Tensor:
        """Visibilities ``(B, C, M)`` to the complex image ``(B, C, H, W)``."""
        import finufft

        lead = y.shape[:-1]
        c = y.detach().reshape(-1, y.shape[-1]).to(torch.complex64).cpu().numpy()
        f = finufft.nufft2d1(*self._points, c, self.img_size, eps=self.eps, isign=1, nthreads=torch.get_num_threads())
        return torch.from_numpy(f * np.float32(self.scale)).reshape(*lead, *self.img_size).to(y.device)


class _Forward(torch.autograd.Function):
    """Real (or complex) image to visibilities; the gradient is the adjoint NUFFT (real part for a real image)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, op: FinufftRadio) -> torch.Tensor:
        ctx.op, ctx.real_input = op, not x.is_complex()
        return op._type2(x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        grad = ctx.op._type1(grad_y)
        return (grad.real if ctx.real_input else grad), None


class _Adjoint(torch.autograd.Function):
    """Visibilities to the real image ``Re(A^H y)``; the gradient is the forward NUFFT."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, op: FinufftRadio) -> torch.Tensor:
        ctx.op = op
        return op._type1(y).real.contiguous()

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        return ctx.op._type2(grad_x), None
