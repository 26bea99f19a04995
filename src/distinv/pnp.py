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

import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from distinv.comm.context import DistributedContext
from distinv.numerics.linalg import SolveInfo
from distinv.numerics.metrics import psnr, ssim
from distinv.numerics.operator import LinearOperator, solve_shifted_normal
from distinv.placements.vectors import Vector, check_placed_alike, check_placement, norm, zeros_like
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
    data_iterations: int = 0  # CG iterations of the data prox (0: a gradient step, or the closed form)
    data_residual: float = 0.0  # the prox's relative residual (NaN: it met a NaN or an infinity)
    measurement_residual: float | None = None  # ||A x - y|| / ||y|| after the iteration, when asked (pnp(residual=))


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
    physics: LinearOperator,
    aty: Vector,
    z: Vector,
    gamma: float,
    x0: Vector,
    max_iter: int,
    tol: float,
) -> tuple[Vector, SolveInfo]:
    """``argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2``, i.e. ``(A^T A + I / gamma) x = A^T y + z / gamma``.

    On distinv's physics with circulant operators (``BlurFFT``, circular ``Blur``) this is solved exactly in the
    Fourier domain, ``F^-1[(F(A^T y) + F(z) / gamma) / (sum_i |H_i|^2 + 1 / gamma)]``; otherwise by conjugate
    gradient from ``x0`` (``max_iter`` steps, one all-reduce each, stopping at relative residual ``tol``).

    :return: the solution (placed and shaped as ``z``) and how the solve ended (its ``method``: ``"fft"`` or
        ``"cg"``; non-finite data shows in ``finite`` and comes back as NaN).
    """
    return solve_shifted_normal(physics, aty + z / gamma, 1.0 / gamma, x0, max_iter, tol)


@dataclass(frozen=True)
class DataTerm:
    """What every data step reads: the physics, ``A^T y`` (placed as the iterates) and HQS/ADMM's inner CG
    budget (``cg_iterations`` steps, relative residual 1e-6)."""

    physics: LinearOperator
    aty: Vector
    cg_iterations: int

    def prox(self, z: Vector, gamma: float, x0: Vector) -> tuple[Vector, SolveInfo]:
        return data_prox(self.physics, self.aty, z, gamma, x0, self.cg_iterations, 1e-6)


GRADIENT_STEP = SolveInfo("gradient", 0, 0.0, True)  # what a gradient step reports in place of a solve


# One data step per algorithm: ``(x, dual, step, data) -> (z, info, prox)`` where ``z`` is the denoiser's input,
# ``info`` how the data step ran and ``prox`` what ADMM's dual update reads (``None`` elsewhere).
def pgd_data_step(x: Vector, dual: None, step: float, data: DataTerm) -> tuple[Vector, SolveInfo, None]:
    """A gradient step on ``1/2 ||A x - y||^2``: ``x - step * (A^T A x - A^T y)``."""
    return x - step * (data.physics.A_adjoint_A(x) - data.aty), GRADIENT_STEP, None


def hqs_data_step(x: Vector, dual: None, step: float, data: DataTerm) -> tuple[Vector, SolveInfo, None]:
    """The data prox at ``x`` (half-quadratic splitting)."""
    z, info = data.prox(x, step, x0=x)
    return z, info, None


def admm_data_step(x: Vector, dual: Vector, step: float, data: DataTerm) -> tuple[Vector, SolveInfo, Vector]:
    """The data prox at ``x - u``; the denoiser then reads ``v + u``."""
    v, info = data.prox(x - dual, step, x0=x)
    return v + dual, info, v


def admm_dual_step(dual: Vector, prox: Vector, x: Vector) -> Vector:
    """ADMM's scaled dual ``u <- u + v - x`` (``x`` the new iterate)."""
    return dual + prox - x


DATA_STEPS = {"pgd": pgd_data_step, "hqs": hqs_data_step, "admm": admm_data_step}
DUAL_STEPS = {"admm": admm_dual_step}  # algorithms that carry a dual variable


def pnp(
    algorithm: str,
    physics: LinearOperator,
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
    residual: bool = False,
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
    :param residual: record the data residual ``||A x - y|| / ||y||`` after each iteration
        (``measurement_residual``: the score of a run without a ground truth; one ``A`` and an all-reduce of two
        numbers per iteration, outside the timed part). ``y`` is then kept for the whole run.
    """
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        sigmas, steps = _check(algorithm, iterations, relaxation, sigma, step, tol, cg_iterations)  # before collectives
        check_placement(x0, getattr(physics, "image_placement", None), "x0")  # deepinv's physics: not declared
        aty = physics.A_adjoint(y)
        check_placed_alike(x0, aty, "x0", "A^T y (the physics' placement)")
        kept = y if residual else None
        del y  # every data step reads A^T y only: measurements handed over without a reference kept are freed here
        return _pnp(
            algorithm, physics, denoiser, aty, x0, sigmas, iterations, steps, relaxation, tol, cg_iterations,
            ground_truth, data_range, callback, ctx, measure_memory, kept,
        )  # fmt: skip


def _per_iteration(value: float | Sequence[float], iterations: int) -> list[float]:
    return [float(value)] * iterations if isinstance(value, int | float) else [float(v) for v in value]


def _check(
    algorithm: str,
    iterations: int,
    relaxation: float,
    sigma: float | Sequence[float],
    step: Any,
    tol: float | None,
    cg_iterations: int,
) -> tuple[list[float], list[float] | None]:
    """The arguments every rank is given alike, checked before any collective: the noise levels and the steps
    per iteration (``None``: ``1 / ||A||^2``, computed later)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: choose one of {ALGORITHMS}.")
    if iterations < 1:
        raise ValueError(f"iterations={iterations}: it must be at least 1.")
    if not 0 < relaxation < 2:
        raise ValueError(f"relaxation={relaxation}: it must be in (0, 2).")
    sigmas = _per_iteration(sigma, iterations)
    if len(sigmas) != iterations:
        raise ValueError(f"sigma has {len(sigmas)} levels for iterations={iterations}: give one per iteration.")
    if not all(math.isfinite(s) and s >= 0 for s in sigmas):
        raise ValueError(f"sigma={sigma!r}: give finite noise levels >= 0.")
    steps = None if step is None else _per_iteration(step, iterations)
    if steps is not None and (len(steps) != iterations or not all(math.isfinite(s) and s > 0 for s in steps)):
        raise ValueError(f"step={step!r}: give a step > 0, or one per iteration (iterations={iterations}); finite.")
    if tol is not None and not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol={tol!r}: give a relative change > 0 to stop at, or None to run every iteration.")
    whole = isinstance(cg_iterations, int) and not isinstance(cg_iterations, bool)
    if algorithm in ("hqs", "admm") and not (whole and cg_iterations >= 1):
        raise ValueError(
            f"cg_iterations={cg_iterations!r}: {algorithm}'s data prox needs a whole number >= 1 of CG steps."
        )
    return sigmas, steps


def _pnp(
    algorithm, physics, denoiser, aty, x0, sigmas, iterations, steps, relaxation, tol, cg_iterations, ground_truth,
    data_range, callback, ctx, measure_memory, measured=None,
) -> tuple[torch.Tensor, list[IterationRecord]]:  # fmt: skip
    ctx = ctx if ctx is not None else getattr(physics, "ctx", None)
    comm_seconds = (lambda: ctx.comm_seconds) if hasattr(ctx, "comm_seconds") else (lambda: 0.0)
    traffic = (lambda: (ctx.bytes_sent, ctx.bytes_received)) if hasattr(ctx, "bytes_sent") else (lambda: (0, 0))
    device = x0.device
    if steps is None:
        steps = [1.0 / float(physics.compute_sqnorm(x0, verbose=False))] * iterations
    reference = ground_truth.to(x0.device) if ground_truth is not None else None
    data = DataTerm(physics, aty, cg_iterations)
    data_step, dual_step = DATA_STEPS[algorithm], DUAL_STEPS.get(algorithm)
    x = x0.clone()
    u = zeros_like(x) if dual_step is not None else None
    records: list[IterationRecord] = []
    for k in range(iterations):
        comm_before, traffic_before, start = comm_seconds(), traffic(), time.perf_counter()
        with _peak(device, measure_memory) as data_memory, DeviceTimer(device) as data_clock:
            z, solve, prox = data_step(x, u, step=steps[k], data=data)
        if not solve.finite and (ctx is None or getattr(ctx, "rank", 0) == 0):
            warnings.warn(
                f"PnP iteration {k + 1}: the data step met a NaN or an infinity (check y and x0); the iterate is NaN "
                "from here on.",
                RuntimeWarning,
                stacklevel=3,
            )
        comm_middle = comm_seconds()
        with _peak(device, measure_memory) as denoiser_memory, DeviceTimer(device) as denoiser_clock:
            denoised = denoiser(z, sigmas[k])
        new = denoised if relaxation == 1.0 else (1 - relaxation) * x + relaxation * denoised
        if dual_step is not None:
            u = dual_step(u, prox, new)
        change = float(norm(new - x) / norm(x).clamp_min(1e-12))
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
            data_solver=solve.method,
            data_iterations=solve.iterations,
            data_residual=solve.relative_residual,
            measurement_residual=measurement_residual(physics, x, measured) if measured is not None else None,
        )
        records.append(record)
        if callback is not None:
            callback(record, x)
        if tol is not None and change < tol:
            break
    return x, records


def measurement_residual(physics: Any, x: Vector, y: Sequence[Any]) -> float:
    """``||A x - y|| / ||y||`` over every operator's measurement, a replicated float: ``y`` as ``pnp`` takes it
    (this rank's operators' measurements, the K as row bands, or all K replicated); this rank's sums of squares,
    then one all-reduce of two numbers where the measurements are spread over ranks."""
    from distinv.placements.measurements import LocalMeasurements
    from distinv.placements.row_bands import RowBands

    if isinstance(y, LocalMeasurements):
        forward = physics.A(x, gather=False)
    else:
        forward = physics.A(x)
    pairs = list(zip(forward, y, strict=True))
    spread = isinstance(y, LocalMeasurements) or any(isinstance(b, RowBands) for _, b in pairs)
    local = [(a.local, b.local) if isinstance(b, RowBands) else (a, b) for a, b in pairs]
    device = x.local.device if isinstance(x, RowBands) else x.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for a, b in local:
        sums[0] += (a - b).abs().pow(2).sum(dtype=torch.float64)
        sums[1] += b.abs().pow(2).sum(dtype=torch.float64)
    if spread:
        ctx = getattr(physics, "ctx", None) or x.ctx
        sums = ctx.all_reduce(sums)
    return float(sums[0].sqrt() / sums[1].sqrt().clamp_min(1e-300))
