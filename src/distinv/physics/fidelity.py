"""Data fidelity ``f(x) = sum_i d_i(A_i x, y_i)`` over distributed operators.

Each rank evaluates the terms of the operators it owns with the measurements it owns; ``fn`` then costs one
all-reduce of ``B`` numbers and ``grad`` one all-reduce of one image, whatever ``K``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from deepinv.optim.data_fidelity import L2, DataFidelity, StackedPhysicsDataFidelity

from distinv.comm.context import DistributedContext
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.physics.stack import DistributedStackedPhysics
from distinv.placements.partial import Partial

FidelityFactory = Callable[[int, torch.device, Any], DataFidelity]


class DistributedDataFidelity(torch.nn.Module):
    """A deepinv data fidelity for :class:`~distinv.DistributedStackedLinearPhysics` (or non-linear stacks).

    :param ctx: the entered context.
    :param data_fidelity: one ``DataFidelity`` for every operator (e.g. ``L2()``); or one per operator, as a
        list or ``StackedPhysicsDataFidelity``; or a factory ``factory(index, device, shared)`` that is called
        only for the operators this rank owns, the first time they are needed.
    :param num_operators: required with a factory, checked against the physics.
    :param factory_kwargs: the ``shared`` object passed to the factory.
    :param reduction: ``"sum"`` over operators (the stacked fidelity) or ``"mean"``.
    """

    def __init__(
        self,
        ctx: DistributedContext,
        data_fidelity: DataFidelity | Sequence[DataFidelity] | StackedPhysicsDataFidelity | FidelityFactory,
        num_operators: int | None = None,
        *,
        factory_kwargs: Any = None,
        reduction: str = "sum",
    ):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction={reduction!r}: use 'sum' or 'mean'.")
        self.ctx = ctx
        self.reduction = reduction
        self.num_operators = num_operators
        self.factory_kwargs = factory_kwargs
        self.single: DataFidelity | None = None
        self.per_operator: list[DataFidelity] | None = None
        self.factory: FidelityFactory | None = None
        if isinstance(data_fidelity, StackedPhysicsDataFidelity):
            data_fidelity = list(data_fidelity.data_fidelity_list)
        if isinstance(data_fidelity, DataFidelity):
            self.single = copy.deepcopy(data_fidelity).to(ctx.device)
        elif isinstance(data_fidelity, (list, tuple)):
            if not data_fidelity or not all(isinstance(d, DataFidelity) for d in data_fidelity):
                raise TypeError("data_fidelity list must hold one deepinv DataFidelity per operator.")
            if num_operators is not None and num_operators != len(data_fidelity):
                raise ValueError(f"num_operators={num_operators} but {len(data_fidelity)} data fidelities were given.")
            self.per_operator = list(data_fidelity)
            self.num_operators = len(data_fidelity)
        elif callable(data_fidelity):
            if num_operators is None:
                raise ValueError("num_operators is required when data_fidelity is a factory.")
            self.factory = data_fidelity
        else:
            raise TypeError(
                f"data_fidelity must be a DataFidelity, a list of them or a factory, got "
                f"{type(data_fidelity).__name__}."
            )
        self._built: dict[int, DataFidelity] = {}

    def fidelity(self, index: int) -> DataFidelity:
        """The data fidelity of operator ``index`` (built on first use when given as a factory)."""
        if self.single is not None:
            return self.single
        if self.per_operator is not None:
            return self.per_operator[index]
        if index not in self._built:
            self._built[index] = self.factory(index, self.ctx.device, self.factory_kwargs)
        return self._built[index]

    def fn(
        self,
        x: torch.Tensor,
        y: Sequence[torch.Tensor],
        physics: DistributedStackedPhysics,
        gather: bool = True,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``sum_i d_i(A_i x, y_i)`` per sample, shape ``(B,)``, on every rank (this rank's part if not
        ``gather``)."""
        self._check(physics)

        def work(x: torch.Tensor, y_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [
                self.fidelity(i).d.fn(op.A(x, **kwargs), y_i, *args)
                for i, op, y_i in zip(physics.local_indexes, physics.local_physics, y_local, strict=True)
            ]

        run = physics.run_local("data fidelity fn", work, x=x, y=y, collective=gather)
        return self._reduced(physics, physics.sum_terms(run, (x.shape[0],), x.real.dtype, gather))

    def grad(
        self,
        x: torch.Tensor,
        y: Sequence[torch.Tensor],
        physics: DistributedStackedPhysics,
        gather: bool = True,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``sum_i J_{A_i}(x)^T grad d_i(A_i x, y_i)``, shaped like ``x``: one image-sized all-reduce."""
        self._check(physics)

        def work(x: torch.Tensor, y_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [
                op.A_vjp(x, self.fidelity(i).d.grad(op.A(x, **kwargs), y_i, *args), **kwargs)
                for i, op, y_i in zip(physics.local_indexes, physics.local_physics, y_local, strict=True)
            ]

        run = physics.run_local("data fidelity grad", work, x=x, y=y, collective=gather)
        return self._reduced(physics, physics.sum_terms(run, x.shape, x.dtype, gather))

    def _reduced(self, physics: DistributedStackedPhysics, total: torch.Tensor) -> torch.Tensor:
        """The sum over operators, or their mean (``reduction="mean"``); a partial sum stays one."""
        if self.reduction != "mean":
            return total
        mean = total / physics.num_operators
        return Partial(mean, total.ctx) if isinstance(total, Partial) else mean

    def prox(
        self,
        x: torch.Tensor,
        y: Sequence[torch.Tensor],
        physics: DistributedStackedPhysics,
        *args,
        gamma: float | torch.Tensor = 1.0,
        solver: str = "auto",
        max_iter: int = 100,
        tol: float | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """``argmin_u gamma f(u) + 1/2 ||u - x||^2`` for an ``L2`` fidelity (``f = 1/(2 sigma^2) sum_i
        ||A_i u - y_i||^2``): the normal equations ``(A^T A + I / g) u = A^T y + x / g`` with ``g = gamma /
        sigma^2`` (over ``K`` for ``reduction="mean"``), solved exactly (closed form for circulant operators, else
        CG; see :meth:`~distinv.DistributedStackedLinearPhysics.solve_normal`), differentiable in ``x``, ``y``
        and ``gamma``. Replicated result, shaped like ``x``.

        :raises NotImplementedError: for a fidelity other than one ``L2`` shared by all operators.
        :raises TypeError: for non-linear physics. :raises ValueError: for a ``gamma`` that is not one number > 0.
        """
        self._check(physics)
        if not isinstance(physics, DistributedStackedLinearPhysics):
            raise TypeError(
                "prox needs linear physics (distribute(..., type_object='linear_physics')): its normal equations are "
                f"solved exactly; got {type(physics).__name__}. Use a gradient step (PGD) for non-linear physics."
            )
        gamma_value = torch.as_tensor(gamma).detach()
        if gamma_value.numel() != 1 or not bool(gamma_value.real.reshape(()) > 0):
            raise ValueError(f"gamma={gamma!r}: give one step size > 0 (a number or a one-element tensor).")
        norm = self._shared_l2_norm()
        if self.reduction == "mean":
            norm = norm / physics.num_operators
        g = norm * (gamma.reshape(()) if isinstance(gamma, torch.Tensor) else gamma)
        rhs = physics.A_adjoint(y, **kwargs) + x / g
        u, _ = physics.solve_normal(rhs, 1.0 / g, solver=solver, x0=x, max_iter=max_iter, tol=tol, warn=False, **kwargs)
        return u

    def _shared_l2_norm(self) -> float | torch.Tensor:
        """``1 / sigma^2`` of the one ``L2`` every operator shares (exactly deepinv's ``L2``, not a subclass such as
        ``ItohFidelity`` whose prox differs)."""
        fidelities = [self.single] if self.single is not None else list(self.per_operator or [])
        if not fidelities or any(type(d) is not L2 for d in fidelities):
            raise NotImplementedError(
                "prox is exact for deepinv's L2 data fidelity given directly (distribute(L2(), ctx), or one L2 per "
                "operator with the same sigma; not a factory); for another fidelity, use a gradient step (PGD)."
            )
        norms = {float(d.norm) for d in fidelities}
        if len(norms) != 1:
            raise NotImplementedError(
                f"prox needs the same L2 sigma for every operator, got norms {sorted(norms)}: use one L2(sigma)."
            )
        return fidelities[0].norm

    def forward(self, x: torch.Tensor, y: Sequence[torch.Tensor], physics: DistributedStackedPhysics, **kwargs):
        return self.fn(x, y, physics, **kwargs)

    def _check(self, physics: Any) -> None:
        """Checks that are the same on every rank (the physics object is built identically everywhere)."""
        if not isinstance(physics, DistributedStackedPhysics):
            raise TypeError(
                f"physics must be the distributed physics from distribute(...), got {type(physics).__name__}."
            )
        if self.num_operators is not None and self.num_operators != physics.num_operators:
            raise ValueError(
                f"This data fidelity was built for {self.num_operators} operators but the physics has "
                f"{physics.num_operators}."
            )
