"""Plug-and-play solvers on distributed physics and a (tiled) denoiser: PGD, HQS and ADMM.

The iterates are replicated tensors (the data step ends in an all-reduce and the tiled denoiser in an all-gather,
so all ranks hold the same ``x``), or :class:`~distinv.placements.row_bands.RowBands` (sharded by rows: spatially
distributed physics such as :class:`~distinv.sharded.blur.ShardedBlur` and a
:class:`~distinv.sharded.denoiser.ShardedDenoiser`, so no image-sized collective runs; the conjugate gradient's
inner products, the relative change and PSNR/SSIM are all-reduces of a few numbers). Either way every rank takes
the same decisions (stopping included).

Per iteration a :class:`IterationRecord` gives PSNR and SSIM against the ground truth (if given), the seconds
spent in the data-fidelity step and in the denoiser (each including its own communication), and the seconds
spent in collectives (``ctx.comm_seconds``, waiting for slower ranks included) and the bytes this rank sent and
received in them (``ctx.bytes_sent``, ``ctx.bytes_received``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from distinv.comm.context import DistributedContext
from distinv.numerics.linalg import solve_cg
from distinv.numerics.metrics import psnr, ssim
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.placements.row_bands import RowBands
from distinv.runtime.timing import DeviceTimer

ALGORITHMS = ("pgd", "hqs", "admm")
Denoiser = Callable[..., torch.Tensor]


@dataclass
class IterationRecord:
    iteration: int
    sigma: float
    psnr: float | None
    ssim: float | None
    data_s: float
    denoiser_s: float
    comm_s: float
    data_comm_s: float
    denoiser_comm_s: float
    total_s: float  # the whole iteration, its PSNR and SSIM (evaluation) left out
    relative_change: float
    bytes_sent: int = 0  # by this rank in the iteration's collectives (see distinv.comm.collectives)
    bytes_received: int = 0
    data_peak_bytes: int | None = None
    denoiser_peak_bytes: int | None = None
    data_solver: str = "gradient"  # how the data step ran: "gradient" (PGD), "fft" (closed form) or "cg"


def sigma_schedule(sigma_start: float, sigma_end: float, iterations: int) -> list[float]:
    """Noise levels for the denoiser decreasing geometrically from ``sigma_start`` to ``sigma_end`` (as in DPIR)."""
    if iterations == 1:
        return [sigma_end]
    ratio = (sigma_end / sigma_start) ** (1 / (iterations - 1))
    return [sigma_start * ratio**k for k in range(iterations)]


def coupled_steps(sigmas: Sequence[float], noise_sigma: float, coupling: float = 0.23) -> list[float]:
    """HQS/ADMM steps tied to the denoiser's levels as in DPIR: ``step_k = sigma_k^2 / (coupling * noise^2)``.

    The data prox ``argmin 1/2 ||A x - y||^2 + 1/(2 step) ||x - z||^2`` then weighs the data against the
    denoiser's prior at the level it is asked to remove: strongly while ``sigma_k`` is large, less as it decreases.
    ``noise_sigma`` is the measurement noise's standard deviation, in the measurements' units; DPIR uses
    ``coupling = 0.23``.
    """
    if noise_sigma <= 0 or coupling <= 0:
        raise ValueError(f"noise_sigma={noise_sigma}, coupling={coupling}: both must be > 0.")
    return [s**2 / (coupling * noise_sigma**2) for s in sigmas]


def _peak(device: torch.device, enabled: bool):
    from distinv.runtime.memory import PeakMemory

    return PeakMemory(device) if enabled else nullcontext()


def data_prox(
    physics: DistributedStackedLinearPhysics,
    aty: torch.Tensor,
    z: torch.Tensor,
    gamma: float,
    x0: torch.Tensor,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, str]:
    """``argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2``, i.e. ``(A^T A + I / gamma) x = A^T y + z / gamma``.

    On distinv's physics with circulant operators (``BlurFFT``, circular ``Blur``) this is solved exactly in the
    Fourier domain, ``F^-1[(F(A^T y) + F(z) / gamma) / (sum_i |H_i|^2 + 1 / gamma)]``; otherwise by conjugate
    gradient from ``x0`` (``max_iter`` steps, one all-reduce each, stopping at relative residual ``tol``).

    :return: the solution (``z``'s shape) and the path that ran, ``"fft"`` or ``"cg"``.
    """
    rhs = aty + z / gamma
    if isinstance(physics, DistributedStackedLinearPhysics):
        x, info = physics.solve_normal(rhs, 1.0 / gamma, x0=x0, max_iter=max_iter, tol=tol, warn=False)
        return x, info.method
    x, _ = solve_cg(lambda v: physics.A_adjoint_A(v) + v / gamma, rhs, x0=x0, max_iter=max_iter, tol=tol)
    return x, "cg"


def pnp(
    algorithm: str,
    physics: DistributedStackedLinearPhysics,
    denoiser: Denoiser,
    y: Sequence[torch.Tensor],
    x0: torch.Tensor,
    sigma: float | Sequence[float],
    iterations: int = 30,
    step: float | Sequence[float] | None = None,
    relaxation: float = 1.0,
    tol: float | None = None,
    cg_iterations: int = 10,
    ground_truth: torch.Tensor | None = None,
    data_range: float = 1.0,
    callback: Callable[[IterationRecord, torch.Tensor], None] | None = None,
    ctx: DistributedContext | None = None,
    measure_memory: bool = False,
    differentiable: bool = False,
) -> tuple[torch.Tensor, list[IterationRecord]]:
    """Run a plug-and-play algorithm; returns the last iterate and one record per iteration.

    - ``pgd``: ``x <- D(x - step * A^T (A x - y), sigma)``; ``step`` defaults to ``1 / ||A||^2`` (the exact
      global norm, power iteration).
    - ``hqs``: ``z <- prox_{step f}(x)`` (conjugate gradient, ``cg_iterations``), ``x <- D(z, sigma)``; ``step``
      defaults to ``1 / ||A||^2`` as well.
    - ``admm``: ``v <- prox_{step f}(x - u)``, ``x <- D(v + u, sigma)``, ``u <- u + v - x``.

    ``step`` may also be one value per iteration (e.g. :func:`coupled_steps`).

    :param denoiser: ``denoiser(x, sigma)``, e.g. ``distribute(model, ctx)`` (tiled) or a model.
    :param y: this rank's measurements (``physics.local_indexes`` order) or all K of them; for sharded physics,
        the K measurements as ``RowBands``.
    :param x0: the start, e.g. the problem's initial reconstruction: replicated, or ``RowBands`` (then the
        physics, the denoiser and ``ground_truth`` work on the same bands, and the iterates stay sharded).
    :param sigma: the denoiser's noise level, or one per iteration (see :func:`sigma_schedule`).
    :param relaxation: ``x <- (1 - r) x + r T(x)``, in (0, 2).
    :param tol: stop once ``||x_k+1 - x_k|| / ||x_k|| < tol`` (the same decision on every rank).
    :param physics: distinv's distributed physics, or any linear physics with ``A_adjoint``, ``A_adjoint_A``
        and ``compute_sqnorm`` (deepinv's stacked or distributed physics, for comparisons).
    :param ctx: the context whose ``comm_seconds`` count communication (default ``physics.ctx`` if it has
        them, else none is counted).
    :param measure_memory: record each step's peak memory (process resident set on CPU, CUDA peak allocated on
        GPU) in ``data_peak_bytes`` and ``denoiser_peak_bytes``.
    :param differentiable: build an autograd graph through the iterations (for training an unrolled scheme).
        Default ``False``: inference, no graph, each iterate freed as the next is made.
    """
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        _check(algorithm, iterations, relaxation)
        aty = physics.A_adjoint(y)
        del y  # every data step reads A^T y only: measurements handed over without a reference kept are freed here
        return _pnp(
            algorithm, physics, denoiser, aty, x0, sigma, iterations, step, relaxation, tol, cg_iterations,
            ground_truth, data_range, callback, ctx, measure_memory,
        )  # fmt: skip


def _check(algorithm: str, iterations: int, relaxation: float) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: choose one of {ALGORITHMS}.")
    if iterations < 1:
        raise ValueError(f"iterations={iterations}: it must be at least 1.")
    if not 0 < relaxation < 2:
        raise ValueError(f"relaxation={relaxation}: it must be in (0, 2).")


def _pnp(
    algorithm, physics, denoiser, aty, x0, sigma, iterations, step, relaxation, tol, cg_iterations, ground_truth,
    data_range, callback, ctx, measure_memory,
) -> tuple[torch.Tensor, list[IterationRecord]]:  # fmt: skip
    sigmas = [float(sigma)] * iterations if isinstance(sigma, int | float) else [float(s) for s in sigma]
    if len(sigmas) != iterations:
        raise ValueError(f"sigma has {len(sigmas)} levels for iterations={iterations}: give one per iteration.")
    ctx = ctx if ctx is not None else getattr(physics, "ctx", None)
    comm_seconds = (lambda: ctx.comm_seconds) if hasattr(ctx, "comm_seconds") else (lambda: 0.0)
    traffic = (lambda: (ctx.bytes_sent, ctx.bytes_received)) if hasattr(ctx, "bytes_sent") else (lambda: (0, 0))
    device = x0.device
    if step is None:
        step = 1.0 / float(physics.compute_sqnorm(x0, verbose=False))
    steps = [float(step)] * iterations if isinstance(step, int | float) else [float(s) for s in step]
    if len(steps) != iterations or min(steps) <= 0:
        raise ValueError(f"step={step!r}: give a step > 0, or one per iteration (iterations={iterations}).")
    reference = ground_truth.to(x0.device) if ground_truth is not None else None
    x = x0.clone()
    u = (x.zeros_like() if isinstance(x, RowBands) else torch.zeros_like(x)) if algorithm == "admm" else None
    records: list[IterationRecord] = []
    for k in range(iterations):
        comm_before, traffic_before, start = comm_seconds(), traffic(), time.perf_counter()
        with _peak(device, measure_memory) as data_memory, DeviceTimer(device) as data_clock:
            if algorithm == "pgd":
                z, solver = x - steps[k] * (physics.A_adjoint_A(x) - aty), "gradient"
            elif algorithm == "hqs":
                z, solver = data_prox(physics, aty, x, steps[k], x, cg_iterations, 1e-6)
            else:
                v, solver = data_prox(physics, aty, x - u, steps[k], x, cg_iterations, 1e-6)
                z = v + u
        comm_middle = comm_seconds()
        with _peak(device, measure_memory) as denoiser_memory, DeviceTimer(device) as denoiser_clock:
            denoised = denoiser(z, sigmas[k])
        new = denoised if relaxation == 1.0 else (1 - relaxation) * x + relaxation * denoised
        if algorithm == "admm":
            u = u + v - new
        change = float((new - x).norm() / x.norm().clamp_min(1e-12))
        x = new
        sent, received = (after - before for after, before in zip(traffic(), traffic_before, strict=True))
        elapsed = time.perf_counter() - start  # the metrics below are evaluation, not the solver's time
        comm_after = comm_seconds()  # before the metrics, whose own reductions are evaluation too
        record = IterationRecord(
            iteration=k + 1,
            sigma=sigmas[k],
            psnr=psnr(x, reference, data_range) if reference is not None else None,
            ssim=ssim(x, reference, data_range) if reference is not None else None,
            data_s=data_clock.seconds,
            denoiser_s=denoiser_clock.seconds,
            comm_s=comm_after - comm_before,
            data_comm_s=comm_middle - comm_before,
            denoiser_comm_s=comm_after - comm_middle,
            total_s=elapsed,
            relative_change=change,
            bytes_sent=sent,
            bytes_received=received,
            data_peak_bytes=data_memory.peak_total_bytes if measure_memory else None,
            denoiser_peak_bytes=denoiser_memory.peak_total_bytes if measure_memory else None,
            data_solver=solver,
        )
        records.append(record)
        if callback is not None:
            callback(record, x)
        if tol is not None and change < tol:
            break
    return x, records
