"""What a benchmark problem gives a run: built the same on every rank, at every world size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from distinv.bench.config import TORCH_SEED_RANGE, in_range, number_hint, range_text
from distinv.comm.context import DistributedContext
from distinv.comm.gather import sum_over_ranks
from distinv.distribute import distribute
from distinv.numerics.metrics import psnr
from distinv.physics.linear import DistributedStackedLinearPhysics
from distinv.physics.stack import operator_seed
from distinv.placements.measurements import LocalMeasurements
from distinv.placements.row_bands import RowBands, randn_rows

OperatorFactory = Callable[[int, torch.device, Any], LinearPhysics]
# sharded(problem, ctx) -> the K operators applied to RowBands (ShardedBlur, SlabStack): how they decompose in space.
ShardedPhysics = Callable[["Problem", DistributedContext], Any]
# init(problem, physics, y_local) -> first iterate: each rank's terms, summed over ranks inside.
InitRecipe = Callable[["Problem", DistributedStackedLinearPhysics, list[torch.Tensor]], torch.Tensor]


@dataclass
class Problem:
    """A ground truth, K operators given as a factory (a rank builds only those it owns), their noisy
    measurements and how to start a reconstruction.

    Operator ``i``'s noise comes from a generator seeded with ``(seed, i)``, so every measurement is the same
    whichever rank computes it, at any world size. An operator with a ``noise_scale`` attribute (a tensor
    broadcasting against its measurements) gets its noise multiplied by it.
    """

    name: str
    ground_truth: torch.Tensor
    num_operators: int
    factory: OperatorFactory
    shared: Any
    noise_sigma: float
    seed: int
    init_name: str
    init: InitRecipe
    operator_costs: list[float] | None = None
    data_range: float = 1.0
    info: dict = field(default_factory=dict)
    sharded: ShardedPhysics | None = None  # None: the operators do not decompose in space
    # False: ground_truth only gives the shape (a measured scan without a reference): runs are scored by the data
    # residual ||A x - y|| / ||y||, not PSNR
    has_reference: bool = True

    def distribute(self, ctx: DistributedContext, **kwargs: Any) -> DistributedStackedLinearPhysics:
        return distribute(
            self.factory,
            ctx,
            num_operators=self.num_operators,
            type_object="linear_physics",
            shared=self.shared,
            operator_costs=self.operator_costs,
            broadcast_shared=False,
            **kwargs,
        )

    def measure(self, physics: DistributedStackedLinearPhysics) -> LocalMeasurements:
        """This rank's measurements ``y_i = A_i x + noise_i``, in ``physics.local_indexes`` order (sharded by
        operator, marked as such)."""
        x = self.ground_truth.to(physics.ctx.device)
        out = []
        for i, op in zip(physics.local_indexes, physics.local_physics, strict=True):
            clean = op.A(x)
            g = torch.Generator(device="cpu").manual_seed(operator_seed(self.seed, i))
            noise = torch.randn(clean.shape, generator=g, dtype=clean.real.dtype)
            if clean.is_complex():
                noise = torch.complex(noise, torch.randn(clean.shape, generator=g, dtype=clean.real.dtype)) / 2**0.5
            scale = getattr(op, "noise_scale", None)  # per-measurement noise factor, e.g. radio data weights
            noise = noise.to(clean.device) if scale is None else noise.to(clean.device) * scale
            out.append(clean + self.noise_sigma * noise)
        return LocalMeasurements(out, physics.local_indexes, self.num_operators)

    def measure_sharded(self, physics: Any, x: RowBands) -> list[RowBands]:
        """The K measurements in ``x``'s bands, from spatially distributed physics (``self.sharded``): each equal
        to the band of the replicated measurement (the same per-operator noise, generated whole and cut)."""
        measurements = physics.A(x)
        for i, y in enumerate(measurements):  # noise added in place: K bands held, not 2K
            g = torch.Generator(device="cpu").manual_seed(operator_seed(self.seed, i))
            noise = randn_rows(y.shape, g, *y.rows, y.dtype)  # the measurement's rows (cone beam: detector rows)
            y.local.add_(noise.to(y.device), alpha=self.noise_sigma)
        return measurements

    def initial(self, physics: DistributedStackedLinearPhysics, y_local: list[torch.Tensor]) -> torch.Tensor:
        return self.init(self, physics, y_local)

    def write_results(self, folder: Path, x: Any, view: Any) -> None:
        """Write the reconstruction ``x`` (and what goes with it) in the field's formats to ``folder``, each rank its
        part; every rank calls it after the iterations, ``view`` holding its operators (``ctx``,
        ``local_physics``). Problems of measured data do (a scan's TIFF slices, an observation's FITS images);
        synthetic ones write nothing."""

    def psnr(self, estimate: torch.Tensor) -> float:
        return psnr(estimate.detach().cpu(), self.ground_truth, self.data_range)


def weighted_sum_of_terms(
    physics: DistributedStackedLinearPhysics, terms: list[torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """Sum per-operator image terms over ranks (one all-reduce); ``like`` gives shape and dtype."""
    return sum_over_ranks(physics.ctx, terms, like.shape, like.dtype, like.device)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    whole: bool = False,
) -> None:
    """Refuse a parameter that is not a finite number in range: the rule of every number in a config
    (:func:`~distinv.bench.config.in_range`, whose arguments these are).

    :raises ValueError: naming the parameter, its value and what to give.
    """
    if not in_range(value, low, high, above=above, below=below, whole=whole):
        fix = range_text(low, high, above=above, below=below, whole=whole)
        raise ValueError(f"{name}={value!r}: give {fix}{number_hint(value)}.")


def check_seed(seed: Any) -> None:
    """Refuse a seed torch's generators cannot take (a config's seeds are held to a narrower range:
    :data:`~distinv.bench.config.SEED_RANGE`).

    :raises ValueError: naming the seed and what to give.
    """
    check_number("seed", seed, *TORCH_SEED_RANGE, whole=True)


def check_size(name: str, size: Any, min_size: int) -> None:
    """Refuse a problem size that is not a whole number of at least ``min_size`` pixels per side.

    :raises ValueError: naming the size and what to give.
    """
    if not in_range(size, whole=True):
        raise ValueError(
            f"size={size!r}: give a whole number of pixels per side (at least {min_size}){number_hint(size)}."
        )
    if size < min_size:
        raise ValueError(f"size={size}: {name} needs at least {min_size} pixels per side.")
