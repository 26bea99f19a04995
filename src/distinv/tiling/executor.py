"""The executor: run a rank's windows of a :class:`~distinv.tiling.planner.TiledLayout` and assemble the output.

Pure functions over a frozen layout, in data-path order:

1. **cut** (:func:`cut_from`): window inputs as views of the replicated input (or, from :class:`LocalTiles`,
   received with a halo exchange: :func:`~distinv.tiling.halo.exchange_windows`);
2. **run** (:func:`run_windows`): the network on the rank's windows, same-size windows batched, keeping each
   window's owned region; :func:`run_agreed` adds one small agreement (did a rank fail; which dtype came back);
3. **gather** (:func:`assemble`): one all-gather of owned regions, written into one full-size output on every
   rank (replicated); or :func:`local_tiles` keeps the rank's regions (sharded).

:mod:`distinv.tiling.autograd` makes the same path differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from distinv.comm.collectives import attempt
from distinv.comm.context import DistributedContext
from distinv.comm.gather import Layout, gather_items
from distinv.placements.partial import Partial
from distinv.placements.tiles import LocalTiles
from distinv.tiling.geometry import Window
from distinv.tiling.halo import exchange_windows
from distinv.tiling.planner import TiledLayout

SigmaKind = Literal["none", "scalar", "per_sample", "map"]
WindowInput = Callable[[Window], torch.Tensor]
# The dtypes a gathered output may have (the agreement carries an index into this tuple).
GATHERED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)


@dataclass(frozen=True)
class WindowCall:
    """``processor(windows, sigma, *args, **kwargs)`` on a batch of windows, with each window's noise level:
    ``kind`` says how ``sigma`` maps to windows (none; one number; one per sample, repeated per window; a
    noise map, cut like the signal)."""

    processor: Callable[..., torch.Tensor]
    sigma: Any
    kind: SigmaKind
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self, windows: torch.Tensor, indices: Sequence[tuple[slice, ...]]) -> torch.Tensor:
        if self.kind == "none":
            return self.processor(windows, *self.args, **self.kwargs)
        if self.kind == "map":
            sigma = torch.cat([self.sigma[index] for index in indices], dim=0)
        elif self.kind == "per_sample":
            sigma = self.sigma.repeat(len(indices))
        else:
            sigma = self.sigma
        return self.processor(windows, sigma, *self.args, **self.kwargs)


def window_call(
    processor: Callable[..., torch.Tensor], sigma: Any, img_size: Sequence[int], args: tuple, kwargs: dict
) -> WindowCall:
    """The :class:`WindowCall` for ``sigma`` and a signal of ``img_size``.

    :raises ValueError: when a tensor ``sigma`` is neither one number, one per sample, nor a ``(B, 1, *spatial)``
        noise map.
    """
    shape = tuple(img_size)
    batch = shape[0]
    if not isinstance(sigma, torch.Tensor) or sigma.ndim == 0:
        return WindowCall(processor, sigma, "none" if sigma is None else "scalar", args, kwargs)
    if sigma.ndim == len(shape) and sigma.shape[0] == batch and tuple(sigma.shape[2:]) == shape[2:]:
        return WindowCall(processor, sigma, "map", args, kwargs)
    if sigma.numel() == batch:
        return WindowCall(processor, sigma.reshape(batch), "per_sample", args, kwargs)
    if sigma.numel() == 1:
        return WindowCall(processor, sigma, "scalar", args, kwargs)
    raise ValueError(
        f"sigma of shape {tuple(sigma.shape)} does not fit x of shape {shape}: give a number, "
        f"a ({batch},) tensor or a noise map of shape ({batch}, 1, *spatial)."
    )


def cut_from(x: torch.Tensor, layout: TiledLayout, first: int = 0) -> WindowInput:
    """Window inputs cut out of ``x`` (views, no copy): the whole signal (replicated), or a part of it whose first
    tiled dim starts at the signal's index ``first`` (e.g. a row band extended by its halo rows)."""
    return lambda w: x[layout.index(shifted(w.slices, first))]


def write_owned(
    out: torch.Tensor, layout: TiledLayout, pieces: dict[int, torch.Tensor], first: int = 0
) -> torch.Tensor:
    """Write each window's owned piece (by window index) into ``out``, the whole signal or a part of it starting at
    index ``first`` along the first tiled dim; returns ``out``."""
    windows = layout.plan.windows
    for i, piece in pieces.items():
        out[layout.index(shifted(windows[i].owned_slices, first))] = piece
    return out


def shifted(slices: tuple[slice, ...], first: int) -> tuple[slice, ...]:
    """``slices`` (one per tiled dim) with the first moved back by ``first``: the same region in a part of the
    signal that starts there."""
    if not first:
        return slices
    head = slices[0]
    return (slice(head.start - first, head.stop - first), *slices[1:])


def run_windows(rank: int, layout: TiledLayout, window_input: WindowInput, call: WindowCall) -> dict[int, torch.Tensor]:
    """Run ``rank``'s windows, at most ``layout.batch`` of one size per call; return each window's owned output
    region by window index (local: no communication).

    :raises ValueError: when the processor does not keep its input's shape.
    """
    pieces: dict[int, torch.Tensor] = {}
    for batch in window_batches(rank, layout, window_input, call):
        pieces.update(batch)
    return dict(sorted(pieces.items()))


def window_batches(
    rank: int, layout: TiledLayout, window_input: WindowInput, call: WindowCall
) -> Iterator[dict[int, torch.Tensor]]:
    """:func:`run_windows` one network call at a time: each call's owned output regions by window index (so a
    caller can use one batch's results, and free them, before the next batch runs)."""
    samples, channels = layout.img_size[0], layout.img_size[1]
    for group in layout.plan.windows_by_size(rank).values():
        step = layout.batch or len(group)
        for start in range(0, len(group), step):
            chunk = group[start : start + step]
            inputs = [window_input(w) for w in chunk]
            batch = inputs[0] if len(chunk) == 1 else torch.cat(inputs, dim=0)
            out = call(batch, [layout.index(w.slices) for w in chunk])
            if tuple(out.shape) != (batch.shape[0], channels, *batch.shape[2:]):
                raise ValueError(
                    f"The processor returned shape {tuple(out.shape)} for windows of shape "
                    f"{tuple(batch.shape)}: a tiled processor must keep the input's shape."
                )
            yield {
                w.index: out[j * samples : (j + 1) * samples][layout.index(w.owned_in_window)]
                for j, w in enumerate(chunk)
            }


def run_agreed(
    ctx: DistributedContext, layout: TiledLayout, window_input: WindowInput, call: WindowCall, fallback: torch.dtype
) -> tuple[dict[int, torch.Tensor], torch.dtype]:
    """:func:`run_windows` on this rank, then one agreement over ranks: an error on any rank is an error on
    every rank, and every rank (one without windows included) learns the dtype the network returned."""
    pieces, error = attempt(lambda: run_windows(ctx.rank, layout, window_input, call))
    pieces = {} if pieces is None else pieces
    return pieces, agreed_dtype(ctx, "the tiled denoiser's windows", error, pieces, fallback)


def agreed_dtype(
    ctx: DistributedContext,
    step: str,
    error: BaseException | None,
    pieces: dict[int, torch.Tensor],
    fallback: torch.dtype,
) -> torch.dtype:
    """The one dtype of every rank's pieces (``fallback`` if no rank has any), agreed together with ``error``.

    :raises TypeError: on every rank, when ranks or windows returned different dtypes.
    """
    dtypes = {p.dtype for p in pieces.values()}
    if len(dtypes) > 1:
        code = -2
    elif dtypes:
        dtype = dtypes.pop()
        if dtype not in GATHERED_DTYPES:
            error = error or TypeError(f"The network returned dtype {dtype}, which the tiled gather does not carry.")
        code = GATHERED_DTYPES.index(dtype) if dtype in GATHERED_DTYPES else -2
    else:
        code = -1
    codes = {row[0] for row in ctx.agree(step, error, [code])} - {-1}
    if not codes:
        return fallback
    if len(codes) > 1 or -2 in codes:
        raise TypeError(
            f"{step}: the network returned different dtypes on different windows or ranks: make it return one "
            "dtype (e.g. the same autocast on every rank)."
        )
    return GATHERED_DTYPES[codes.pop()]


def assemble(
    ctx: DistributedContext, layout: TiledLayout, pieces: dict[int, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """All-gather the owned regions (one collective; only owned pixels travel) and write them into one full-size
    output of ``dtype`` on every rank (replicated)."""
    windows = layout.plan.windows
    items = Layout(
        tuple(w.rank for w in windows), tuple(layout.owned_shape(w) for w in windows), (dtype,) * len(windows)
    )
    everything = gather_items(ctx, list(pieces), list(pieces.values()), len(windows), "concatenated", items)
    out = torch.empty(layout.img_size, dtype=dtype, device=ctx.device)
    return write_owned(out, layout, dict(enumerate(everything)))


def local_tiles(
    layout: TiledLayout, pieces: dict[int, torch.Tensor], gatherer: Callable[[LocalTiles], torch.Tensor] | None = None
) -> LocalTiles:
    """This rank's owned regions as :class:`LocalTiles` (sharded; no communication); ``gatherer`` assembles them
    (their ``gather()``)."""
    windows = layout.plan.windows
    return LocalTiles(
        torch.Size(layout.img_size),
        [(layout.index(windows[i].owned_slices), p) for i, p in pieces.items()],
        list(pieces),
        gatherer,
    )


def local_output(
    ctx: DistributedContext, layout: TiledLayout, pieces: dict[int, torch.Tensor], dtype: torch.dtype
) -> Partial:
    """deepinv's local output: the signal's shape, this rank's owned regions and zeros elsewhere, a
    :class:`~distinv.placements.partial.Partial` (its ``reduce()`` over ranks gives the output; no communication
    here)."""
    out = torch.zeros(layout.img_size, dtype=dtype, device=ctx.device)
    return Partial(write_owned(out, layout, pieces), ctx)


def from_local_tiles(
    ctx: DistributedContext, layout: TiledLayout, tiles: LocalTiles
) -> tuple[WindowInput, torch.dtype]:
    """Window inputs for the next call from this rank's :class:`LocalTiles` (one halo exchange, point to point),
    and the tiles' dtype.

    :raises ValueError: on every rank, when any rank's tiles were not cut by ``layout``.
    """
    error = None
    if [w.index for w in layout.plan.windows_of(ctx.rank)] != tiles.windows:
        error = ValueError(
            "These LocalTiles were not cut by this denoiser's plan for their shape: pass them to the same "
            "distributed denoiser that returned them, or gather them first."
        )
    ctx.agree("checking the LocalTiles", error)  # before the halo exchange, on every rank
    owned = dict(zip(tiles.windows, [p for _, p in tiles.pieces], strict=True))
    like = next(iter(owned.values()), None)
    windows = exchange_windows(ctx, layout, owned, like)  # a rank without windows has nothing to trade
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    return (lambda w: windows[w.index]), dtype
