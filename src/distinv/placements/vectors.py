"""One vector interface for every placement of an iterate: replicated tensors and sharded row bands.

PyLops-MPI's ``DistributedArray`` carries its partition and answers ``dot``, ``norm`` and ``zeros_like`` itself, so
that a solver never asks what it holds. distinv's iterates are plain ``torch.Tensor`` (replicated: the same on
every rank) or :class:`~distinv.placements.row_bands.RowBands` (sharded by rows); the functions below are the one
place that tells them apart (by type dispatch), and CG, power iteration, the PnP loop and the metrics call only
these. Every reduction returns a replicated value: the same on every rank, so decisions taken from it agree.

Shapes: a vector is ``(B, ...)``, its first dim indexing independent samples (systems of a batched solve).
"""

from __future__ import annotations

import math
from functools import singledispatch

import torch

from distinv.placements.row_bands import ROWS, RowBands, randn_rows, row_halos

Vector = torch.Tensor | RowBands


@singledispatch
def batch_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Real part of ``<u, v>`` per sample (over all but the first dim), shaped ``(B, 1, ..., 1)`` to broadcast
    against ``u`` (replicated; for row bands one all-reduce of ``B`` numbers)."""
    dims = tuple(range(1, u.ndim))
    product = (u.conj() * v).real if u.is_complex() else u * v
    return product.sum(dim=dims, keepdim=True) if dims else product


@batch_dot.register
def _(u: RowBands, v: RowBands) -> torch.Tensor:
    return u.batch_dot(v)


def dot(u: Vector, v: Vector) -> torch.Tensor:
    """Real part of ``<u, v>`` over everything, samples included (a replicated 0-dim tensor)."""
    return batch_dot(u, v).sum()


@singledispatch
def norm(x: torch.Tensor) -> torch.Tensor:
    """The 2-norm of the whole vector (a replicated 0-dim real tensor)."""
    return torch.linalg.vector_norm(x)


@norm.register
def _(x: RowBands) -> torch.Tensor:
    return x.norm()


@singledispatch
def zeros_like(x: torch.Tensor) -> torch.Tensor:
    """Zeros placed as ``x`` is."""
    return torch.zeros_like(x)


@zeros_like.register
def _(x: RowBands) -> RowBands:
    return x.zeros_like()


def axpy(alpha: torch.Tensor | float, x: Vector, y: Vector) -> Vector:
    """``alpha * x + y`` (``alpha`` a number or per-sample ``(B, 1, ..., 1)``), placed as ``x`` and ``y`` are (which
    must share their placement)."""
    return alpha * x + y


@singledispatch
def randn_like(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``torch.randn`` of ``like``'s global shape and dtype from ``generator`` (a CPU generator), placed as ``like``
    is: a sharded vector gets its band of the same global draw, so it equals the replicated draw's band."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


@randn_like.register
def _(like: RowBands, generator: torch.Generator) -> RowBands:
    return like.like(randn_rows(like.shape, generator, *like.rows, like.dtype).to(like.device))


@singledispatch
def mean_square(x: torch.Tensor) -> float:
    """The mean of ``|x|^2`` over the whole vector (a replicated number; row bands sum in float64)."""
    return torch.mean(x.abs() ** 2 if x.is_complex() else x**2).item()


@mean_square.register
def _(x: RowBands) -> float:
    local = x.local.abs() if x.local.is_complex() else x.local
    total = (local**2).sum(dtype=torch.float64).reshape(1)
    return float(x.ctx.all_reduce(total)[0]) / math.prod(x.shape)


@singledispatch
def local_part(x: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: the whole of a replicated vector, a sharded vector's own band."""
    return x


@local_part.register
def _(x: RowBands) -> torch.Tensor:
    return x.local


@singledispatch
def with_local(x: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """A vector placed as ``x`` is, holding ``local`` as this rank's part (e.g. ``x``'s part transformed)."""
    return local


@with_local.register
def _(x: RowBands, local: torch.Tensor) -> RowBands:
    return x.like(local)


@singledispatch
def sum_over_parts(like: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """Sum ``partial`` (a rank's contribution to a quantity over the whole vector ``like``) over the parts the
    vector is cut in: unchanged for a replicated vector, one all-reduce for row bands (replicated result)."""
    return partial


@sum_over_parts.register
def _(like: RowBands, partial: torch.Tensor) -> torch.Tensor:
    return like.ctx.all_reduce(partial.contiguous())


@singledispatch
def rows_beyond(signals: torch.Tensor, *others: torch.Tensor, reach: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``reach`` rows (dim 2) just before and just after this rank's part of each of ``signals, *others`` (of one
    placement), stacked on channels: nothing for a replicated vector (its part is the whole signal, whose border
    is its own), the neighbours' edge rows for row bands (one exchange; not periodic: none beyond the border).

    :return: ``(top, bottom)``, each ``(B, sum of channels, rows, ...)``; rows may be 0.
    """
    everything = torch.cat([signals, *others], dim=1)
    empty = everything.narrow(ROWS, 0, 0)
    return empty, empty


@rows_beyond.register
def _(signals: RowBands, *others: RowBands, reach: int) -> tuple[torch.Tensor, torch.Tensor]:
    return row_halos([signals, *others], reach, reach, periodic=False)


def placement_of(x: object) -> str:
    """``"row bands"`` or ``"replicated"`` (a tensor), by the vector's type; anything else by its type's name."""
    if isinstance(x, RowBands):
        return "row bands"
    return "replicated" if isinstance(x, torch.Tensor) else type(x).__name__


def check_placement(x: object, expected: str | None, name: str) -> None:
    """Refuse ``x`` unless it is placed as ``expected`` (``"replicated"`` or ``"row bands"``, an operator's
    ``image_placement``; ``None``: anything), on every rank alike.

    :raises TypeError: naming the placements and the fix.
    """
    if expected is not None and placement_of(x) != expected:
        fix = (
            "cut it with denoiser.shard(x) or shard_rows(ctx, x, bounds)"
            if expected == "row bands"
            else ("gather it with .gather()")
        )
        raise TypeError(f"{name} is {placement_of(x)}, but the operator works on {expected} images: {fix}.")


def check_placed_alike(x: object, like: Vector, name: str, like_name: str) -> None:
    """Refuse ``x`` placed otherwise than ``like`` (replicated against row bands, or bands of another partition),
    with a clear error on every rank (placements are the same on every rank).

    :raises TypeError: for another placement; :raises ValueError: for another partition.
    """
    if placement_of(x) != placement_of(like):
        fix = (
            "cut it with denoiser.shard(x) or shard_rows(ctx, x, bounds)"
            if isinstance(like, RowBands)
            else ("gather it with .gather()")
        )
        raise TypeError(f"{name} is {placement_of(x)} but {like_name} is {placement_of(like)}: {fix}.")
    if isinstance(like, RowBands) and x.bounds != like.bounds:
        raise ValueError(f"{name} is cut at rows {x.bounds} but {like_name} at {like.bounds}: use one partition.")


def global_rows(x: Vector) -> int:
    """The number of rows (dim 2) of the whole signal, whatever part of it this rank holds."""
    return x.shape[ROWS]
