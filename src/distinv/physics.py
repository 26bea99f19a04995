"""A stack of physics operators spread over ranks: each rank owns some operators and applies only those.

Where data lives (as in DTensor's vocabulary):

- the image ``x`` is **replicated**: every rank passes the same ``x``;
- measurements are **sharded by operator**: ``A(x, gather=False)`` returns this rank's ``y_i`` only, as a
  :class:`~distinv.placement.LocalMeasurements` (a list marked with its partition); ``A(x)`` gathers all ``K``
  of them onto every rank (replicated ``TensorList``). Methods taking measurements accept either, and never
  guess the placement from a list's length;
- image-sized results of adjoint-type operations (``A_adjoint``, ``A_adjoint_A``, ``A_vjp``) are the sum over
  operators, reduced over ranks with one all-reduce, so they are replicated again.

``A_dagger`` and ``compute_norm`` are exact: power iteration on the global normal operator, and least squares
solved in closed form in the Fourier domain when every operator is circulant (``BlurFFT``, ``Blur`` with circular
padding), else by conjugate gradient (one all-reduce per iteration), which says when it stopped short.

Ranks stay in step: each method runs its local work, then one small agreement (:meth:`DistributedContext.agree`:
did any rank fail, and do the ranks agree on the call's placement and shapes) before its collective, so an error
on one rank is an error on every rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from deepinv.physics import Blur, BlurFFT, LinearPhysics, Physics
from deepinv.utils.tensorlist import TensorList

from .balance import assign_by_cost
from .comm import GATHER_STRATEGIES, Layout, exchange_layout, gather_items, sum_over_ranks
from .context import DistributedContext, stable_hash
from .linalg import SolveInfo, power_iteration, solve_cg
from .placement import LocalMeasurements

PhysicsFactory = Callable[[int, torch.device, Any], Physics]
REDUCE_OPS = ("sum", "mean", None)


class DistributedStackedPhysics(Physics):
    """``K`` operators ``A_1..A_K`` applied to one replicated image, each operator on one rank.

    :param ctx: the entered :class:`~distinv.DistributedContext`.
    :param num_operators: ``K``.
    :param factory: ``factory(index, device, shared) -> Physics``; a rank calls it only for the indices it owns.
    :param factory_kwargs: the ``shared`` object handed to every factory call (deepinv's name).
    :param broadcast_shared: send rank 0's ``factory_kwargs`` to all ranks first (deepinv does); turn off
        when every rank builds the same object already (saves pickling large tensors).
    :param gather_strategy: how ``A``/``forward`` gather measurements: ``"concatenated"`` (one all-gather),
        ``"broadcast"`` (one broadcast per operator) or ``"naive"`` (pickled objects).
    :param operator_costs: relative cost of each operator (e.g. number of angles of a tomography block); the
        operators are then assigned so that the most loaded rank is as light as possible. ``None``:
        round-robin.
    :param check_replicated: check (one small all-gather per call) that ``x`` is the same on every rank.
    """

    def __init__(
        self,
        ctx: DistributedContext,
        num_operators: int,
        factory: PhysicsFactory,
        *,
        factory_kwargs: Any = None,
        broadcast_shared: bool = True,
        dtype: torch.dtype | None = None,
        gather_strategy: str = "concatenated",
        operator_costs: Sequence[float] | None = None,
        check_replicated: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(ctx, DistributedContext):
            raise TypeError(f"ctx must be a distinv.DistributedContext, got {type(ctx).__name__}.")
        if not isinstance(num_operators, int) or isinstance(num_operators, bool) or num_operators < 1:
            raise ValueError(f"num_operators={num_operators!r}: it must be a positive int.")
        if not callable(factory):
            raise TypeError("factory must be callable as factory(index, device, shared) -> Physics.")
        if gather_strategy not in GATHER_STRATEGIES:
            raise ValueError(f"gather_strategy={gather_strategy!r}: use one of {GATHER_STRATEGIES}.")
        self.ctx = ctx
        self.num_operators = num_operators
        self.dtype = dtype or torch.float32
        self.gather_strategy = gather_strategy
        self.check_replicated = check_replicated
        self.assignment = assign_by_cost(operator_costs, num_operators, ctx.world_size)
        owner_of = {i: rank for rank, items in enumerate(self.assignment) for i in items}
        self.owners = tuple(owner_of[i] for i in range(num_operators))
        self.local_indexes: list[int] = self.assignment[ctx.rank]
        if broadcast_shared and factory_kwargs is not None and ctx.is_distributed:
            factory_kwargs = ctx.broadcast_object_list([factory_kwargs], src=0)[0]
        self.factory_kwargs = factory_kwargs
        local, error = [], None
        try:
            for i in self.local_indexes:
                local.append(factory(i, ctx.device, factory_kwargs))
                self._check_operator(i, local[-1])
        except Exception as exc:  # noqa: BLE001 - a factory failing on its owner must fail every rank
            error = exc
        circulant = error is None and all(_is_circulant(p) for p in local)
        agreed = ctx.agree("building the operators (factory)", error, [int(circulant)])
        self.circulant = all(bool(row[0]) for row in agreed)  # every operator, on every rank
        self.local_physics = torch.nn.ModuleList(local)
        self._layouts: dict[tuple, Layout] = {}
        self._spectra: dict[tuple, torch.Tensor] = {}
        self._empty_rank_somewhere = any(len(items) == 0 for items in self.assignment)
        self.last_solve: SolveInfo | None = None

    def _check_operator(self, index: int, p: Any) -> None:
        if not isinstance(p, Physics):
            raise TypeError(f"factory({index}, ...) returned {type(p).__name__}, expected a deepinv Physics.")

    def __len__(self) -> int:
        return self.num_operators

    # ------------------------------------------------------------------ forward model
    def A(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Any:
        """Measurements ``[A_1 x, ..., A_K x]``.

        :param x: replicated image ``(B, C, ...)``.
        :param gather: all ``K`` measurements on every rank (``TensorList``), else this rank's, as a
            :class:`~distinv.placement.LocalMeasurements` in ``self.local_indexes`` order.
        :param reduce_op: ``"sum"``/``"mean"`` return the sum/mean of the measurements instead (they must
            share a shape).
        """
        local = self.run_local(
            "A",
            lambda: [p.A(x, **kwargs) for p in self.local_physics],
            x=x,
            collective=self._communicates(gather, reduce_op),
        )
        return self._combine(local, ("A", _signature(x)), gather, reduce_op)

    def forward(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Any:
        """Noisy measurements ``[N_1(A_1 x), ..., N_K(A_K x)]`` with each operator's own noise and sensor.

        Operator ``i`` draws its noise from a generator seeded with ``(base + i)``, where ``base`` is one draw
        from the global generator, taken identically on every rank: the noise of each operator is independent
        of the others and does not depend on the world size (a noise model with its own ``rng`` keeps it).
        """
        base = int(torch.randint(0, 2**62, (1,)).item())

        def work() -> list[torch.Tensor]:
            local = []
            for i, p in zip(self.local_indexes, self.local_physics, strict=True):
                with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                    torch.manual_seed(base + i)
                    local.append(p(x, **kwargs))
            return local

        local = self.run_local("forward", work, x=x, collective=self._communicates(gather, reduce_op))
        return self._combine(local, ("forward", _signature(x)), gather, reduce_op)

    def A_vjp(
        self,
        x: torch.Tensor,
        v: Sequence[torch.Tensor],
        gather: bool = True,
        reduce_op: str | None = "sum",
        **kwargs,
    ) -> Any:
        """``sum_i J_{A_i}(x)^T v_i``: the gradient of ``sum_i <A_i(x), v_i>``; ``v``: all K entries, or this
        rank's as a :class:`~distinv.placement.LocalMeasurements`."""

        def work(v_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [p.A_vjp(x, vi, **kwargs) for p, vi in zip(self.local_physics, v_local, strict=True)]

        local, _ = self.run_local("A_vjp", work, x=x, y=v, name="v", collective=gather)
        return self._reduce_image(local, x, gather, reduce_op)

    # ------------------------------------------------------------------ local work, agreed over ranks
    def run_local(
        self,
        step: str,
        work: Callable[..., list[torch.Tensor]],
        *,
        x: Any = None,
        y: Any = None,
        name: str = "y",
        collective: bool = True,
    ) -> Any:
        """``work()`` (or ``work(y_local)`` when ``y`` is given) on this rank, then one small agreement over
        ranks: whether any rank failed, and the call's signature (``x``'s shape and dtype; ``y``'s placement,
        shapes and dtypes). Returns ``work``'s result, or ``(result, key)`` when ``y`` is given, where ``key``
        identifies a replicated ``y`` (``None`` for a :class:`~distinv.placement.LocalMeasurements`).
        ``collective=False`` (a purely local call, e.g. ``gather=False``, which communicates nothing): no
        agreement, so the call may be made on some ranks only; an error then stays on its rank.

        :raises ValueError: on every rank, when the ranks passed differently shaped or placed inputs.
        """
        error, result, key, signature = None, None, None, 0
        try:
            if x is not None:
                self._check_x_type(x)
                signature = stable_hash(_signature(x))
            if y is None:
                result = work()
            else:
                y_local, key = self._select_local(y, name)
                signature = stable_hash(signature, "local" if key is None else key)
                result = work(y_local)
        except Exception as exc:  # noqa: BLE001 - a failure on one rank must fail every rank
            error = exc
        if not collective:
            if error is not None:
                raise error
            return result if y is None else (result, key)
        agreed = self.ctx.agree(f"{type(self).__name__}.{step}", error, [signature])
        if len(set(agreed)) > 1:
            raise ValueError(
                f"{step}: the ranks passed inputs of different shapes, dtypes or placements (signatures by rank: "
                f"{[row[0] for row in agreed]}). Pass the same replicated x on every rank, and measurements either "
                "all K on every rank or every rank its own LocalMeasurements (as A(x, gather=False) returns)."
            )
        if x is not None and self.check_replicated:
            self.ctx.assert_replicated(x, "x")
        return result if y is None else (result, key)

    def _communicates(self, gather: bool, reduce_op: str | None) -> bool:
        """Whether combining results communicates: a gather, or a reduction whose shape an operator-less rank
        must learn from the others."""
        return gather or (reduce_op is not None and self._empty_rank_somewhere)

    def local_measurements(self, items: Sequence[torch.Tensor]) -> LocalMeasurements:
        """Mark ``items`` (one per operator this rank owns, in ``local_indexes`` order) as this rank's part."""
        return LocalMeasurements(items, self.local_indexes, self.num_operators)

    # ------------------------------------------------------------------ combining results
    def _combine(self, local: list[torch.Tensor], key: tuple | None, gather: bool, reduce_op: str | None) -> Any:
        """Reduce (sum/mean) or gather this rank's results. ``key``: a call signature shared by all ranks
        under which shapes learnt from the other ranks may be cached (``None``: learn them every time)."""
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op={reduce_op!r}: use one of {REDUCE_OPS}.")
        if reduce_op is not None:
            shape, dtype = self._agreed_shape(local, key)
            total = sum_over_ranks(self.ctx, local, shape, dtype, self.ctx.device, globally=gather)
            return total / self.num_operators if reduce_op == "mean" and gather else total
        if not gather:
            return self.local_measurements(local)
        layout = None
        if self.gather_strategy != "naive" and self.ctx.is_distributed:
            layout = self._layout(local, key)
        return TensorList(
            gather_items(self.ctx, self.local_indexes, local, self.num_operators, self.gather_strategy, layout)
        )

    def _reduce_image(self, local: list[torch.Tensor], x: torch.Tensor, gather: bool, reduce_op: str | None):
        """Sum of image-sized local terms: the output has ``x``'s shape, so no shape exchange is needed."""
        if reduce_op is None:
            return self._combine(local, ("image", _signature(x)), gather, None)
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op={reduce_op!r}: use one of {REDUCE_OPS}.")
        total = sum_over_ranks(self.ctx, local, x.shape, x.dtype, x.device, globally=gather)
        return total / self.num_operators if reduce_op == "mean" and gather else total

    def _layout(self, local: list[torch.Tensor], key: tuple | None) -> Layout:
        """Shapes/dtypes of all K results for this call signature: exchanged once, then cached."""
        if key is None:
            return exchange_layout(self.ctx, self.owners, self.local_indexes, local)
        if key not in self._layouts:
            self._layouts[key] = exchange_layout(self.ctx, self.owners, self.local_indexes, local)
        return self._layouts[key]

    def _agreed_shape(self, local: list[torch.Tensor], key: tuple | None) -> tuple[torch.Size, torch.dtype]:
        """Shape and dtype of a reduced result; ranks that own nothing learn it from the others (cached)."""
        if local and not self._empty_rank_somewhere:
            return local[0].shape, local[0].dtype
        layout = self._layout(local, key) if self.ctx.is_distributed else None
        if layout is None:
            return local[0].shape, local[0].dtype
        first = next(i for i, s in enumerate(layout.shapes) if s is not None)
        return torch.Size(layout.shapes[first]), layout.dtypes[first]

    # ------------------------------------------------------------------ input checks (before collectives)
    def _check_x_type(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (the replicated image), got {type(x).__name__}.")

    def _check_x(self, x: Any) -> None:
        self._check_x_type(x)
        if self.check_replicated:
            self.ctx.assert_replicated(x, "x")

    def _select_local(self, y: Any, name: str) -> tuple[list[torch.Tensor], tuple | None]:
        """This rank's entries of ``y`` and a signature of ``y`` that every rank shares (``None`` for this rank's
        :class:`~distinv.placement.LocalMeasurements`: its shapes differ between ranks, so nothing derived from
        them may be cached). A plain list or ``TensorList`` must hold all K entries."""
        if isinstance(y, LocalMeasurements):
            if y.num_operators != self.num_operators or list(y.indexes) != list(self.local_indexes):
                raise ValueError(
                    f"{name} holds this rank's measurements of operators {list(y.indexes)} of {y.num_operators}, "
                    f"but this rank owns operators {self.local_indexes} of {self.num_operators}: pass the "
                    "LocalMeasurements that this physics' A(x, gather=False) returned."
                )
            return list(y), None
        if isinstance(y, torch.Tensor) and not isinstance(y, TensorList):
            raise TypeError(
                f"{name} must be a TensorList or list with one tensor per operator ({self.num_operators}), "
                "got a single tensor."
            )
        if not isinstance(y, (list, tuple, TensorList)):
            raise TypeError(f"{name} must be a list or TensorList of measurements, got {type(y).__name__}.")
        if len(y) != self.num_operators:
            raise ValueError(
                f"{name} has {len(y)} entries but there are {self.num_operators} operators: pass all of them (as "
                "A(x) returns), or this rank's part as A(x, gather=False) returns it (a LocalMeasurements; mark a "
                "list of your own with physics.local_measurements(list))."
            )
        return [y[i] for i in self.local_indexes], _list_signature(y)


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

    def A_adjoint(self, y: Sequence[torch.Tensor], gather: bool = True, reduce_op: str | None = "sum", **kwargs) -> Any:
        """``sum_i A_i^T y_i``, replicated. ``gather=False``: this rank's partial sum; ``reduce_op=None``:
        the individual ``A_i^T y_i``."""

        def work(y_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [p.A_adjoint(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]

        local, key = self.run_local("A_adjoint", work, y=y, collective=self._communicates(gather, reduce_op))
        return self._combine(local, key and ("A_adjoint", key), gather, reduce_op)

    def A_adjoint_A(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = "sum", **kwargs) -> Any:
        """``sum_i A_i^T A_i x``: the normal operator, one image-sized all-reduce."""
        local = self.run_local(
            "A_adjoint_A", lambda: [p.A_adjoint_A(x, **kwargs) for p in self.local_physics], x=x, collective=gather
        )
        return self._reduce_image(local, x, gather, reduce_op)

    def A_A_adjoint(self, y: Sequence[torch.Tensor], gather: bool = True, **kwargs) -> Any:
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
        :class:`~distinv.linalg.SolveInfo`: method, iterations, reached relative residual, converged).

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

            def work(y_local: list[torch.Tensor]) -> list[torch.Tensor]:
                return [p.A_dagger(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]

            local, key = self.run_local("A_dagger", work, y=y, collective=self._communicates(gather, "mean"))
            return self._combine(local, key and ("A_dagger", key), gather, "mean")
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
        method = check_solver(solver, self.circulant)
        if method == "fft" or (method == "auto" and self.circulant and not rhs.is_complex()):
            x, info = self._solve_fft(rhs, shift), SolveInfo("fft", 0, 0.0, True)
        else:
            tol = 1e-6 if tol is None else tol
            x, info = solve_cg(lambda v: self.A_adjoint_A(v, **kwargs) + shift * v, rhs, x0, max_iter, tol)
            if warn and not info.converged and self.ctx.rank == 0:
                warnings.warn(
                    f"CG stopped after {info.iterations} iterations at relative residual "
                    f"{info.relative_residual:.2e}, above tol={tol:g}: the result is not the exact solution. "
                    "Raise max_iter (or tol).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.last_solve = info
        return x, info

    def normal_spectrum(self, like: torch.Tensor) -> torch.Tensor:
        """The eigenvalues ``sum_i |H_i|^2`` of the (circulant) normal operator, as a real ``rfftn`` spectrum of
        shape ``(1, C, ..., W // 2 + 1)``, replicated: the Fourier transform of its impulse response (one
        ``A_adjoint_A``, so one all-reduce), cached per image shape, dtype and device."""
        key = (tuple(like.shape[1:]), like.dtype, str(like.device))
        if key not in self._spectra:
            delta = torch.zeros((1, *like.shape[1:]), dtype=like.dtype, device=like.device)
            delta[(slice(None), slice(None)) + (0,) * (like.ndim - 2)] = 1
            response = self.A_adjoint_A(delta)
            spectrum = torch.fft.rfftn(response, dim=tuple(range(2, like.ndim))).real
            self._spectra[key] = spectrum.clamp_min(0)
        return self._spectra[key]

    def _solve_fft(self, rhs: torch.Tensor, shift: float) -> torch.Tensor:
        dims = tuple(range(2, rhs.ndim))
        spectrum = self.normal_spectrum(rhs)
        if shift > 0:
            inverse = 1.0 / (spectrum + shift)
        else:
            rtol = torch.finfo(spectrum.dtype).eps * max(rhs.shape[2:])
            keep = spectrum > (rtol**2) * spectrum.max()
            inverse = torch.where(keep, 1.0 / spectrum.where(keep, torch.ones_like(spectrum)), 0.0)
        solution = torch.fft.irfftn(torch.fft.rfftn(rhs, dim=dims) * inverse, s=rhs.shape[2:], dim=dims)
        return solution.to(rhs.dtype)

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

            def work() -> list[torch.Tensor]:
                return [
                    torch.as_tensor(p.compute_sqnorm(x0, max_iter=max_iter, tol=tol, verbose=False, **kwargs))
                    .to(self.ctx.device)
                    .reshape(())
                    for p in self.local_physics
                ]

            local = self.run_local("compute_sqnorm", work, x=x0)
            return sum_over_ranks(self.ctx, local, (), x0.real.dtype, self.ctx.device)
        self.run_local("compute_sqnorm", list, x=x0)  # every rank checks x0 before the first collective
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


def _is_circulant(p: Physics) -> bool:
    """Whether ``p``'s normal operator is a circular convolution (diagonal in the Fourier domain)."""
    if isinstance(p, BlurFFT):
        return True
    return isinstance(p, Blur) and getattr(p, "padding", None) == "circular"


def _signature(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.dtype)


def _list_signature(ys: Sequence[torch.Tensor]) -> tuple:
    return tuple(_signature(y) for y in ys)


def check_solver(solver: str, circulant: bool) -> str:
    """The solver's lower-case name.

    :raises ValueError: naming ``solver`` when it is unknown, or ``"fft"`` for operators that are not all circulant.
    """
    method = solver.lower() if isinstance(solver, str) else solver
    if method not in ("auto", "cg", "fft"):
        raise ValueError(f"solver={solver!r}: use 'auto', 'CG' or 'fft'.")
    if method == "fft" and not circulant:
        raise ValueError(
            "solver='fft' needs circulant operators on every rank (BlurFFT, or Blur with padding='circular'): "
            "use solver='CG' or 'auto'."
        )
    return method
