"""The linear stack over ranks: ``A = [A_1; ...; A_K]`` with ``A^T y = sum_i A_i^T y_i`` (replicated).

Adjoint-type results (``A_adjoint``, ``A_adjoint_A``) are sums over operators, reduced over ranks with one
image-sized all-reduce. ``A_dagger`` and ``compute_norm`` are exact: least squares in closed form for circulant
stacks, else conjugate gradient (:mod:`distinv.numerics.least_squares`), and power iteration on the global normal
operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from distinv.comm.gather import sum_over_ranks
from distinv.numerics.least_squares import check_solver, normal_spectrum, solve_normal
from distinv.numerics.linalg import SolveInfo, power_iteration
from distinv.physics.stack import DistributedStackedPhysics, Measurements


class DistributedStackedLinearPhysics(DistributedStackedPhysics, LinearPhysics):
    """Linear operators ``A = [A_1; ...; A_K]`` over ranks, with ``A^T y = sum_i A_i^T y_i``.

    Same parameters as :class:`DistributedStackedPhysics`; the factory must return ``LinearPhysics``.
    """

    def _check_operator(self, index: int, p: Any) -> None:
        if not isinstance(p, LinearPhysics):
            raise TypeError(
                f"factory({index}, ...) returned {type(p).__name__}, expected a deepinv LinearPhysics "
                "(use type_object='physics' for non-linear operators)."
            )

    def A_adjoint(
        self, y: Sequence[torch.Tensor], gather: bool = True, reduce_op: str | None = "sum", **kwargs
    ) -> Measurements:
        """``sum_i A_i^T y_i``, replicated. ``gather=False``: this rank's partial sum; ``reduce_op=None``:
        the individual ``A_i^T y_i``."""

        def work(_, y_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [p.A_adjoint(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]

        run = self.run_local("A_adjoint", work, y=y, collective=self._communicates(gather, reduce_op))
        return self._combine(run, run.key and ("A_adjoint", run.key), gather, reduce_op)

    def A_adjoint_A(
        self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = "sum", **kwargs
    ) -> Measurements:
        """``sum_i A_i^T A_i x``: the normal operator, one image-sized all-reduce."""
        run = self.run_local(
            "A_adjoint_A", lambda x: [p.A_adjoint_A(x, **kwargs) for p in self.local_physics], x=x, collective=gather
        )
        return self._reduce_image(run, x, gather, reduce_op)

    def A_A_adjoint(self, y: Sequence[torch.Tensor], gather: bool = True, **kwargs) -> Measurements:
        """``[A_1 (A^T y), ..., A_K (A^T y)]``; the adjoint is always global."""
        return self.A(self.A_adjoint(y, **kwargs), gather=gather, **kwargs)

    def A_dagger(
        self,
        y: Sequence[torch.Tensor],
        solver: str = "auto",
        max_iter: int | None = None,
        tol: float | None = None,
        verbose: bool = False,
        *,
        local_only: bool = False,
        gather: bool = True,
        x_init: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The least-squares solution of the stacked system, ``argmin_x sum_i ||A_i x - y_i||^2`` (minimum
        norm when not unique), replicated. How the solve ended is in :attr:`last_solve` (a
        :class:`~distinv.numerics.linalg.SolveInfo`: method, iterations, reached relative residual, converged).

        :param solver: ``"auto"`` (default): ``"fft"`` when every operator is circulant (``BlurFFT``, ``Blur``
            with circular padding), else ``"CG"``. ``"fft"``: ``x = F^-1[(sum_i |H_i|^2)^+ F(A^T y)]``, exact to
            float precision (spectral values below ``(eps * max(H, W))^2`` of the largest are treated as zero,
            as ``torch.linalg.pinv`` does for singular values); one image all-reduce. ``"CG"``: conjugate
            gradient on ``A^T A x = A^T y`` (one all-reduce per iteration); warns when it stops before ``tol``.
        :param max_iter: CG iterations (default 100); each costs one ``A_adjoint_A``.
        :param tol: relative residual of the normal equations at which CG stops (default 1e-6).
        :param verbose: print (rank 0) how the solve ended.
        :param local_only: deepinv's approximation, kept for compatibility: the mean of the operators' own
            pseudo-inverses ``(1/K) sum_i A_i^+ y_i``. Not a least-squares solution of the stack.
        :raises ValueError: ``solver="fft"`` on operators that are not all circulant.
        """
        if local_only:

            def work(_, y_local: list[torch.Tensor]) -> list[torch.Tensor]:
                return [p.A_dagger(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]

            run = self.run_local("A_dagger", work, y=y, collective=self._communicates(gather, "mean"))
            return self._combine(run, run.key and ("A_dagger", run.key), gather, "mean")
        check_solver(solver, self.circulant)  # before the first collective
        b = self.A_adjoint(y, **kwargs)
        x, info = self.solve_normal(
            b, 0.0, solver=solver, x0=x_init, max_iter=100 if max_iter is None else max_iter, tol=tol, **kwargs
        )
        if verbose and self.ctx.rank == 0:
            print(
                f"A_dagger: {info.method} solve, {info.iterations} iterations, relative residual of the normal "
                f"equations {info.relative_residual:.2e}"
            )
        return x

    def solve_normal(
        self,
        rhs: torch.Tensor,
        shift: float = 0.0,
        *,
        solver: str = "auto",
        x0: torch.Tensor | None = None,
        max_iter: int = 100,
        tol: float | None = None,
        warn: bool = True,
        **kwargs,
    ) -> tuple[torch.Tensor, SolveInfo]:
        """Solve ``(A^T A + shift I) x = rhs`` for a replicated ``rhs`` shaped like the image.

        ``shift = 0`` gives the minimum-norm least-squares solution; ``shift = 1 / gamma`` with
        ``rhs = A^T y + z / gamma`` is the data prox of HQS/ADMM. The solver is chosen as in :meth:`A_dagger`;
        the result is also stored in :attr:`last_solve`. ``warn``: a RuntimeWarning (rank 0) when CG stops
        before ``tol`` (a fixed inner CG budget, as in HQS, turns it off).

        :return: ``x`` (replicated, ``rhs``'s shape) and how the solve ended.
        :raises ValueError: for an unknown ``solver``, or ``"fft"`` on operators that are not all circulant.
        """
        x, info = solve_normal(
            lambda v: self.A_adjoint_A(v, **kwargs),
            rhs,
            shift,
            circulant=self.circulant,
            spectrum=self.normal_spectrum,
            solver=solver,
            x0=x0,
            max_iter=max_iter,
            tol=tol,
            warn=warn and self.ctx.rank == 0,
        )
        self.last_solve = info
        return x, info

    def normal_spectrum(self, like: torch.Tensor) -> torch.Tensor:
        """The eigenvalues ``sum_i |H_i|^2`` of the (circulant) normal operator, replicated (see
        :func:`~distinv.numerics.least_squares.normal_spectrum`; one ``A_adjoint_A``), cached per image shape, dtype and
        device."""
        key = (tuple(like.shape[1:]), like.dtype, str(like.device))
        if key not in self._spectra:
            self._spectra[key] = normal_spectrum(self.A_adjoint_A, like)
        return self._spectra[key]

    def compute_sqnorm(
        self,
        x0: torch.Tensor,
        *,
        max_iter: int = 100,
        tol: float = 1e-3,
        verbose: bool = True,
        local_only: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """``||A||_2^2 = ||sum_i A_i^T A_i||_2`` by power iteration on the global normal operator.

        :param x0: a tensor shaped like the images the operator acts on (values ignored).
        :param local_only: deepinv's bound, kept for compatibility: ``sum_i ||A_i||^2`` (an upper bound).
        """
        if local_only:

            def work(_) -> list[torch.Tensor]:
                return [
                    torch.as_tensor(p.compute_sqnorm(x0, max_iter=max_iter, tol=tol, verbose=False, **kwargs))
                    .to(self.ctx.device)
                    .reshape(())
                    for p in self.local_physics
                ]

            run = self.run_local("compute_sqnorm", work, x=x0)
            return sum_over_ranks(self.ctx, run.terms, (), x0.real.dtype, self.ctx.device)
        self.run_local("compute_sqnorm", lambda x: [], x=x0)  # every rank checks x0 before the first collective
        with torch.no_grad():  # an operator norm, not a function to differentiate
            value, iterations = power_iteration(lambda v: self.A_adjoint_A(v, **kwargs), x0, max_iter, tol)
        if verbose and self.ctx.rank == 0:
            print(f"Power iteration: ||A||^2 = {value.item():.6g} after {iterations} iterations")
        return value

    def compute_norm(
        self,
        x0: torch.Tensor,
        max_iter: int = 100,
        tol: float = 1e-3,
        verbose: bool = True,
        squared: bool = True,
        *,
        local_only: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """The operator norm ``||A||_2``, squared by default as deepinv's ``compute_norm`` returns it."""
        value = self.compute_sqnorm(x0, max_iter=max_iter, tol=tol, verbose=verbose, local_only=local_only, **kwargs)
        return value if squared else value.sqrt()
