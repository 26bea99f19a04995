"""A stack of physics operators spread over ranks: each rank owns some operators and applies only those.

The image ``x`` is replicated; measurements are sharded by operator (``A(x, gather=False)``: this rank's, a
:class:`~distinv.placements.measurements.LocalMeasurements`) or replicated (``A(x)``: all ``K`` on every rank);
adjoint-type results are sums over operators, all-reduced (replicated). The linear algebra of the stack is
:class:`~distinv.physics.linear.DistributedStackedLinearPhysics`; where data lives at each step, and how ranks
stay in step (one small agreement before each collective), is ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from deepinv.physics import Physics
from deepinv.utils.tensorlist import TensorList

from distinv.comm.autograd import GatherOverRanks, SumOverRanks, replicate_inputs, wanted_gradients
from distinv.comm.collectives import attempt, stable_hash
from distinv.comm.context import DistributedContext
from distinv.comm.gather import GATHER_STRATEGIES, Layout, exchange_layout, gather_items, sum_over_ranks
from distinv.numerics.least_squares import is_circulant
from distinv.numerics.linalg import SolveInfo
from distinv.placements.measurements import LocalMeasurements, LocalRun, call_signature, select_local
from distinv.placements.partial import Partial
from distinv.runtime.balance import assign_by_cost

PhysicsFactory = Callable[[int, torch.device, Any], Physics]


# What a call returns: one (reduced) tensor, all K measurements (replicated), or this rank's (sharded).
Measurements = torch.Tensor | TensorList | LocalMeasurements
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

    image_placement = "replicated"  # what A takes and A_adjoint returns (see distinv.numerics.operator)

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
            factory_kwargs = ctx.broadcast_shared(factory_kwargs, src=0)
        self.factory_kwargs = factory_kwargs

        def build() -> tuple[list[Physics], list[int]]:
            local = []
            for i in self.local_indexes:
                local.append(factory(i, ctx.device, factory_kwargs))
                self._check_operator(i, local[-1])
            return local, [int(all(is_circulant(p) for p in local))]

        local, agreed = ctx.run_agreeing("building the operators (factory)", build, width=1)
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
    def A(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Measurements:
        """Measurements ``[A_1 x, ..., A_K x]``.

        :param x: replicated image ``(B, C, ...)``.
        :param gather: all ``K`` measurements on every rank (``TensorList``), else this rank's, as a
            :class:`~distinv.placements.measurements.LocalMeasurements` in ``self.local_indexes`` order.
        :param reduce_op: ``"sum"``/``"mean"`` return the sum/mean of the measurements instead (they must
            share a shape).
        """
        run = self.run_local(
            "A",
            lambda x: [p.A(x, **kwargs) for p in self.local_physics],
            x=x,
            collective=self._communicates(gather, reduce_op),
        )
        return self._combine(run, ("A", call_signature(x)), gather, reduce_op)

    def forward(self, x: torch.Tensor, gather: bool = True, reduce_op: str | None = None, **kwargs) -> Measurements:
        """Noisy measurements ``[N_1(A_1 x), ..., N_K(A_K x)]`` with each operator's own noise and sensor.

        Operator ``i`` draws its noise from a generator seeded with :func:`operator_seed` ``(base, i)``, where
        ``base`` is one draw from the global generator, taken identically on every rank: the noise of each
        operator is independent of the others and does not depend on the world size (a noise model with its own
        ``rng`` keeps it).
        """
        base = int(torch.randint(0, 2**62, (1,)).item())

        def work(x: torch.Tensor) -> list[torch.Tensor]:
            local = []
            for i, p in zip(self.local_indexes, self.local_physics, strict=True):
                with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                    torch.manual_seed(operator_seed(base, i))
                    local.append(p(x, **kwargs))
            return local

        run = self.run_local("forward", work, x=x, collective=self._communicates(gather, reduce_op))
        return self._combine(run, ("forward", call_signature(x)), gather, reduce_op)

    def A_vjp(
        self,
        x: torch.Tensor,
        v: Sequence[torch.Tensor],
        gather: bool = True,
        reduce_op: str | None = "sum",
        **kwargs,
    ) -> Measurements:
        """``sum_i J_{A_i}(x)^T v_i``: the gradient of ``sum_i <A_i(x), v_i>``; ``v``: all K entries, or this
        rank's as a :class:`~distinv.placements.measurements.LocalMeasurements`."""

        def work(x: torch.Tensor, v_local: list[torch.Tensor]) -> list[torch.Tensor]:
            return [p.A_vjp(x, vi, **kwargs) for p, vi in zip(self.local_physics, v_local, strict=True)]

        run = self.run_local("A_vjp", work, x=x, y=v, name="v", collective=gather)
        return self._reduce_image(run, x, gather, reduce_op)

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
    ) -> LocalRun:
        """``work(x)`` (or ``work(x, y_local)`` when ``y`` is given) on this rank, with one small agreement over
        ranks: whether any rank failed, and the call's signature (``x``'s shape and dtype; ``y``'s placement,
        shapes and dtypes). Under autograd the ranks also agree, before any graph is built, whether some rank
        needs a gradient (of ``x``, of a replicated ``y``, of a local ``y`` or of an operator's parameters); if so,
        ``work`` receives the replicated inputs through :class:`~distinv.comm.autograd.ReplicatedInputs` and the
        :class:`LocalRun` carries the anchor the differentiable combination needs (a second agreement then covers
        ``work``'s own failures).

        ``collective=False`` (a purely local call, e.g. ``gather=False``, which communicates nothing): no
        agreement, so the call may be made on some ranks only; an error then stays on its rank.

        :raises ValueError: on every rank, when the ranks passed differently shaped or placed inputs.
        """

        def inputs() -> tuple[Any, tuple | None, int, tuple[bool, bool, bool]]:
            y_local, key, signature = None, None, 0
            if x is not None:
                self._check_x_type(x)
                signature = stable_hash(call_signature(x))
            if y is not None:
                y_local, key = select_local(y, self.local_indexes, self.num_operators, name)
                signature = stable_hash(signature, "local" if key is None else key)
            return y_local, key, signature, wanted_gradients(x, y, y_local, key, self.local_physics.parameters())

        checked, error = attempt(inputs)
        y_local, key, signature, wants = checked if error is None else (None, None, 0, (False, False, False))
        if not collective:
            if error is not None:
                raise error
            return LocalRun(work(x) if y is None else work(x, y_local), key, None)
        grad_mode, anchor = torch.is_grad_enabled(), None
        if grad_mode:  # agree before building the graph: every rank builds the same collectives into it
            wanted = self._agree_on_inputs(step, error, signature, wants)
            # without a process group nothing is communicated: autograd follows the operators alone, and each
            # output keeps a graph of its own (a backward pass from each output in turn, as deepinv's allows)
            if any(wanted) and self.ctx.is_distributed:
                x, y, replicated_local, anchor = replicate_inputs(self.ctx, x, y, self.local_indexes, wanted)
                y_local = y_local if replicated_local is None else replicated_local
        if error is None:
            result, error = attempt(lambda: work(x) if y is None else work(x, y_local))
        else:
            result = None
        if grad_mode:
            self.ctx.agree(f"{type(self).__name__}.{step}", error)
        else:
            self._agree_on_inputs(step, error, signature, wants)
        if x is not None and self.check_replicated:
            self.ctx.assert_replicated(x, "x")
        return LocalRun(result, key, anchor)

    def _agree_on_inputs(
        self, step: str, error: BaseException | None, signature: int, wants: tuple[bool, bool, bool]
    ) -> tuple[bool, bool, bool]:
        """One agreement: any failure, the same signature on every rank, and which gradients some rank wants."""
        agreed = self.ctx.agree(f"{type(self).__name__}.{step}", error, [signature, *map(int, wants)])
        if len({row[0] for row in agreed}) > 1:
            raise ValueError(
                f"{step}: the ranks passed inputs of different shapes, dtypes or placements (signatures by rank: "
                f"{[row[0] for row in agreed]}). Pass the same replicated x on every rank, and measurements either "
                "all K on every rank or every rank its own LocalMeasurements (as A(x, gather=False) returns)."
            )
        return tuple(any(row[1 + i] for row in agreed) for i in range(3))

    def _communicates(self, gather: bool, reduce_op: str | None) -> bool:
        """Whether combining results communicates: a gather, or a reduction whose shape an operator-less rank
        must learn from the others."""
        return gather or (reduce_op is not None and self._empty_rank_somewhere)

    def local_measurements(self, items: Sequence[torch.Tensor]) -> LocalMeasurements:
        """Mark ``items`` (one per operator this rank owns, in ``local_indexes`` order) as this rank's part; its
        ``gather()`` returns all K (replicated)."""
        return LocalMeasurements(items, self.local_indexes, self.num_operators, gatherer=self._gather_measurements)

    def _gather_measurements(self, local: LocalMeasurements) -> TensorList:
        """All K measurements on every rank from each rank's part (one shape exchange, one all-gather)."""
        select_local(local, self.local_indexes, self.num_operators, "measurements")
        return self._combine(LocalRun(list(local), None, None), None, True, None)

    # ------------------------------------------------------------------ combining results
    def _combine(self, run: LocalRun, key: tuple | None, gather: bool, reduce_op: str | None) -> Measurements:
        """Reduce (sum/mean) or gather this rank's results. ``key``: a call signature shared by all ranks
        under which shapes learnt from the other ranks may be cached (``None``: learn them every time)."""
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op={reduce_op!r}: use one of {REDUCE_OPS}.")
        local = run.terms
        if reduce_op is not None:
            shape, dtype = self._agreed_shape(local, key)
            total = self.sum_terms(run, shape, dtype, gather)
            return total / self.num_operators if reduce_op == "mean" and gather else total
        if not gather:
            return self.local_measurements(local)
        layout = None
        if self.gather_strategy != "naive" and self.ctx.is_distributed:
            layout = self._layout(local, key)

        def collective(items: list[torch.Tensor]) -> list[torch.Tensor]:
            return gather_items(self.ctx, self.local_indexes, items, self.num_operators, self.gather_strategy, layout)

        if run.anchor is None:
            return TensorList(collective(local))
        return TensorList(list(GatherOverRanks.apply(collective, self.local_indexes, run.anchor, *local)))

    def _reduce_image(self, run: LocalRun, x: torch.Tensor, gather: bool, reduce_op: str | None):
        """Sum of image-sized local terms: the output has ``x``'s shape, so no shape exchange is needed."""
        if reduce_op is None:
            return self._combine(run, ("image", call_signature(x)), gather, None)
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op={reduce_op!r}: use one of {REDUCE_OPS}.")
        total = self.sum_terms(run, x.shape, x.dtype, gather)
        return total / self.num_operators if reduce_op == "mean" and gather else total

    def sum_terms(self, run: LocalRun, shape: Sequence[int], dtype: torch.dtype, gather: bool) -> torch.Tensor:
        """This rank's terms summed, then over ranks if ``gather`` (one all-reduce, replicated; differentiable when
        the run is); else this rank's sum, a :class:`~distinv.placements.partial.Partial` (``.reduce()`` sums it
        over ranks)."""
        if not gather:
            return Partial(sum_over_ranks(self.ctx, run.terms, shape, dtype, self.ctx.device, globally=False), self.ctx)
        if run.anchor is None:
            return sum_over_ranks(self.ctx, run.terms, shape, dtype, self.ctx.device)
        return SumOverRanks.apply(self.ctx, tuple(shape), dtype, run.anchor, *run.terms)

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


def operator_seed(base: int, index: int) -> int:
    """The seed of operator ``index``'s noise, from a ``base`` seed: independent of the other operators and of
    the world size (the benchmark problems seed their measurements the same way)."""
    return (base * 1_000_003 + index) % 2**63
