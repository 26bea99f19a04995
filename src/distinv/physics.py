"""A stack of physics operators spread over ranks: each rank owns some operators and applies only those.

Where data lives (as in DTensor's vocabulary):

- the image ``x`` is **replicated**: every rank passes the same ``x``;
- measurements are **sharded by operator**: ``A(x, gather=False)`` returns this rank's ``y_i`` only;
  ``A(x)`` gathers all ``K`` of them onto every rank (replicated ``TensorList``);
- image-sized results of adjoint-type operations (``A_adjoint``, ``A_adjoint_A``, ``A_vjp``) are the sum over
  operators, reduced over ranks with one all-reduce, so they are replicated again.

``A_dagger`` and ``compute_norm`` are exact: conjugate gradient and power iteration on the global normal
operator (one all-reduce per iteration), not averages or bounds from local operators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from deepinv.physics import LinearPhysics, Physics
from deepinv.utils.tensorlist import TensorList

from .balance import assign_by_cost
from .comm import GATHER_STRATEGIES, Layout, exchange_layout, gather_items, sum_over_ranks
from .context import DistributedContext
from .linalg import conjugate_gradient, power_iteration

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
        local = [factory(i, ctx.device, factory_kwargs) for i in self.local_indexes]
        for i, p in zip(self.local_indexes, local, strict=True):
            self._check_operator(i, p)
        self.local_physics = torch.nn.ModuleList(local)
        self._layouts: dict[tuple, Layout] = {}
        self._empty_rank_somewhere = any(len(items) == 0 for items in self.assignment)

    def _check_operator(self, index: int, p: Any) -> None:
        if not isinstance(p, Physics):
            raise TypeError(f"factory({index}, ...) returned {type(p).__name__}, expected a deepinv Physics.")

    def __len__(self) -> int:
        return self.num_operators

    # ------------------------------------------------------------------ forward model
    def A(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Any:
        """Measurements ``[A_1 x, ..., A_K x]``.

        :param x: replicated image ``(B, C, ...)``.
        :param gather: all ``K`` measurements on every rank (``TensorList``), else this rank's (in
            ``self.local_indexes`` order).
        :param reduce_op: ``"sum"``/``"mean"`` return the sum/mean of the measurements instead (they must
            share a shape).
        """
        self._check_x(x)
        local = [p.A(x, **kwargs) for p in self.local_physics]
        return self._combine(local, ("A", _signature(x)), gather, reduce_op)

    def forward(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Any:
        """Noisy measurements ``[N_1(A_1 x), ..., N_K(A_K x)]`` with each operator's own noise and sensor.

        Operator ``i`` draws its noise from a generator seeded with ``(base + i)``, where ``base`` is one draw
        from the global generator, taken identically on every rank: the noise of each operator is independent
        of the others and does not depend on the world size (a noise model with its own ``rng`` keeps it).
        """
        self._check_x(x)
        base = int(torch.randint(0, 2**62, (1,)).item())
        local = []
        for i, p in zip(self.local_indexes, self.local_physics, strict=True):
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(base + i)
                local.append(p(x, **kwargs))
        return self._combine(local, ("forward", _signature(x)), gather, reduce_op)

    def A_vjp(
        self,
        x: torch.Tensor,
        v: Sequence[torch.Tensor],
        gather: bool = True,
        reduce_op: str | None = "sum",
        **kwargs,
    ) -> Any:
        """``sum_i J_{A_i}(x)^T v_i``: the gradient of ``sum_i <A_i(x), v_i>``; ``v`` has all K entries."""
        self._check_x(x)
        v_local, _ = self._select_local(v, "v")
        local = [p.A_vjp(x, vi, **kwargs) for p, vi in zip(self.local_physics, v_local, strict=True)]
        return self._reduce_image(local, x, gather, reduce_op)

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
            return TensorList(local) if local else []
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
    def _check_x(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (the replicated image), got {type(x).__name__}.")
        if self.check_replicated:
            self.ctx.assert_replicated(x, "x")

    def _select_local(self, y: Any, name: str) -> tuple[list[torch.Tensor], tuple | None]:
        """This rank's entries of ``y`` (a list of all K entries, or of this rank's entries as ``A`` returns
        them with ``gather=False``), and a signature of ``y`` that every rank shares (``None`` for a local
        list: its shapes differ between ranks, so nothing derived from them may be cached)."""
        if isinstance(y, torch.Tensor) and not isinstance(y, TensorList):
            raise TypeError(
                f"{name} must be a TensorList or list with one tensor per operator ({self.num_operators}), "
                "got a single tensor."
            )
        n = len(y)
        if n == self.num_operators:
            return [y[i] for i in self.local_indexes], _list_signature(y)
        if n == len(self.local_indexes):
            return list(y), None
        raise ValueError(
            f"{name} has {n} entries but there are {self.num_operators} operators: pass all of them (as A(x) "
            f"returns), or this rank's {len(self.local_indexes)} (as A(x, gather=False) returns)."
        )


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
        y_local, key = self._select_local(y, "y")
        local = [p.A_adjoint(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]
        return self._combine(local, key and ("A_adjoint", key), gather, reduce_op)

    def A_adjoint_A(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = "sum", **kwargs) -> Any:
        """``sum_i A_i^T A_i x``: the normal operator, one image-sized all-reduce."""
        self._check_x(x)
        local = [p.A_adjoint_A(x, **kwargs) for p in self.local_physics]
        return self._reduce_image(local, x, gather, reduce_op)

    def A_A_adjoint(self, y: Sequence[torch.Tensor], gather: bool = True, **kwargs) -> Any:
        """``[A_1 (A^T y), ..., A_K (A^T y)]``; the adjoint is always global."""
        return self.A(self.A_adjoint(y, **kwargs), gather=gather, **kwargs)

    def A_dagger(
        self,
        y: Sequence[torch.Tensor],
        solver: str = "CG",
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
        norm when not unique), by conjugate gradient on ``A^T A x = A^T y`` across ranks.

        :param max_iter: CG iterations (default 100); each costs one ``A_adjoint_A``.
        :param tol: relative residual of the normal equations at which to stop (default 1e-6).
        :param local_only: deepinv's approximation, kept for compatibility: the mean of the operators' own
            pseudo-inverses ``(1/K) sum_i A_i^+ y_i``. Not a least-squares solution of the stack.
        """
        if solver.upper() != "CG":
            raise ValueError(f"solver={solver!r}: distinv solves the stacked system with 'CG'.")
        if local_only:
            y_local, key = self._select_local(y, "y")
            local = [p.A_dagger(yi, **kwargs) for p, yi in zip(self.local_physics, y_local, strict=True)]
            return self._combine(local, key and ("A_dagger", key), gather, "mean")
        b = self.A_adjoint(y, **kwargs)
        x = conjugate_gradient(
            lambda v: self.A_adjoint_A(v, **kwargs),
            b,
            x0=x_init,
            max_iter=100 if max_iter is None else max_iter,
            tol=1e-6 if tol is None else tol,
        )
        if verbose and self.ctx.rank == 0:
            residual = torch.linalg.vector_norm(self.A_adjoint_A(x, **kwargs) - b) / torch.linalg.vector_norm(b)
            print(f"A_dagger: relative residual of the normal equations {residual.item():.2e}")
        return x

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
        self._check_x(x0)
        if local_only:
            local = [
                p.compute_sqnorm(x0, max_iter=max_iter, tol=tol, verbose=False, **kwargs) for p in self.local_physics
            ]
            local = [torch.as_tensor(v, device=self.ctx.device).reshape(()) for v in local]
            return sum_over_ranks(self.ctx, local, (), x0.real.dtype, self.ctx.device)
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


def _signature(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.dtype)


def _list_signature(ys: Sequence[torch.Tensor]) -> tuple:
    return tuple(_signature(y) for y in ys)
