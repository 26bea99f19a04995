"""DistributedProcessing: the façade of the tiled denoiser (validation, the layout cache, dispatch).

``distribute(denoiser, ctx)(x, sigma)`` reads top to bottom:

1. **plan** (:mod:`distinv.tiling.planner`): the :class:`~distinv.tiling.planner.TiledLayout` for ``x``'s shape, cached
   per shape (automatic plans measure the network once, on every rank together);
2. **run** (:mod:`distinv.tiling.executor`): each rank cuts its own windows out of the replicated ``x`` (or receives
   their halos when ``x`` is :class:`~distinv.placements.tiles.LocalTiles`), runs them and keeps their owned regions;
3. **gather** (:mod:`distinv.tiling.executor`): one all-gather of owned regions gives the full output on every rank
   (replicated), or with ``gather=False`` each rank keeps its :class:`~distinv.placements.tiles.LocalTiles` (sharded).

A user's :class:`~distinv.tiling.strategies.DistributedSignalStrategy` runs through
:func:`~distinv.tiling.strategies.run_user_strategy` instead. Accuracy: a network whose receptive-field radius is ``r``
gives the untiled output exactly when ``overlap >= r``; for DRUNet (whose receptive field spans the image) the
overlap bounds the error: measured errors per overlap are in ``benchmarks/README.md``.

Ranks stay in step: the network is made the same on every rank when it is distributed (rank 0's parameters and
buffers are broadcast, as ``DistributedDataParallel`` does), and a rank's windows run before one small agreement
(did any rank fail; which dtype did the network return) that precedes the gather. The output has the dtype the
network returned (e.g. bfloat16 under ``torch.autocast``), not necessarily the input's. Under autograd the output
is differentiable (:mod:`distinv.tiling.autograd`); inference builds no graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from distinv.comm.context import DistributedContext
from distinv.comm.gather import broadcast_module_state
from distinv.runtime.memory import parse_bytes
from distinv.tiling.autograd import TiledApply, tiled_with_activations
from distinv.tiling.executor import (
    LocalTiles,
    agreed_dtype,
    assemble,
    cut_from,
    from_local_tiles,
    local_output,
    local_tiles,
    run_agreed,
    window_call,
)
from distinv.tiling.planner import (
    CPU_MAX_WINDOW_PIXELS,
    DEFAULT_OVERLAP,
    TiledLayout,
    TilingKnobs,
    check_knobs,
    network_dtype,
    plan_automatic,
    plan_fixed,
    size_multiple_of,
    tiling_dims_of,
)
from distinv.tiling.strategies import DistributedSignalStrategy, check_strategy, run_user_strategy

BUILTIN_STRATEGIES = ("overlap_tiling", "basic")
DEEPINV_OPTIONS = ("dtype", "checkpoint_batches", "checkpoint_use_reentrant", "checkpoint_preserve_rng_state")
CHECKPOINT_MODES = ("always", "auto", "never")


class DistributedProcessing(torch.nn.Module):
    """Run ``processor(x, sigma, ...)`` tiled over the ranks of ``ctx``.

    :param ctx: the entered context.
    :param processor: a deepinv denoiser/prior or any callable ``f(x, sigma, *args, **kwargs)`` (``x`` of shape
        ``(B, C, *spatial)``) that keeps the input's shape.
    :param tiling_strategy: ``"overlap_tiling"`` (default: halos of ``overlap`` where windows meet), ``"basic"``
        (no halo), or a :class:`~distinv.tiling.strategies.DistributedSignalStrategy` instance.
    :param patch_size: owned pixels per window and tiled dim; ``None`` (default): the fewest, largest windows, a
        multiple of the world size, within ``max_window_pixels``; ``"auto"``: the windows that minimise the
        predicted time within ``memory_budget``, from the network's measured cost (see :mod:`distinv.tiling.autotune`).
    :param overlap: halo width in pixels on each side where windows meet (default 32; rounded up to the size
        multiple).
    :param tiling_dims: dims to cut (an int or a tuple, dims >= 2); default ``None``: all spatial dims.
    :param max_batch_size: most windows per network call. ``None`` (default): one at a time on CPU (a batch adds
        memory, not speed, on a core), all of a rank's same-size windows at once on GPU; ``"auto"``: the batch
        that minimises the predicted time within ``memory_budget``.
    :param size_multiple: the network's size multiple; ``None`` (default): 8 for DRUNet, else 1.
    :param max_window_pixels: the largest window, in pixels of the tiled dims, for ``patch_size=None``.
        ``"auto"`` (default): ``CPU_MAX_WINDOW_PIXELS`` on CPU, no limit on GPU; ``None``: no limit.
    :param memory_budget: for ``"auto"``: bytes (or ``"2GB"``) one call may add per rank; default ``None``: half
        the free GPU memory, or half the host's available memory shared by its ranks. The same on every rank (the
        smallest), as are the measured costs (the largest): every rank picks the same plan.
    :param deepinv_options: deepinv's ``dtype``, ``checkpoint_batches``, ``checkpoint_use_reentrant`` and
        ``checkpoint_preserve_rng_state`` are accepted so that its calls run unchanged. ``checkpoint_batches``:
        ``"always"`` recomputes a rank's windows in the backward pass, one network call at a time, and stores no
        activations; ``"never"`` keeps them (no recomputation, more memory); ``"auto"`` (default, as deepinv's)
        keeps them when every rank's windows take one network call, else recomputes (decided from the plan,
        which every rank shares, so every rank takes the same path).
    :raises TypeError, ValueError: naming the argument, for values no plan can take (the same on every rank).
    """

    def __init__(
        self,
        ctx: DistributedContext,
        processor: Callable[..., torch.Tensor],
        *,
        tiling_strategy: Literal["overlap_tiling", "basic"] | DistributedSignalStrategy = "overlap_tiling",
        patch_size: int | Sequence[int] | Literal["auto"] | None = None,
        overlap: int | Sequence[int] = DEFAULT_OVERLAP,
        tiling_dims: int | Sequence[int] | None = None,
        max_batch_size: int | Literal["auto"] | None = None,
        size_multiple: int | None = None,
        max_window_pixels: int | Literal["auto"] | None = "auto",
        memory_budget: int | str | None = None,
        **deepinv_options: Any,
    ):
        super().__init__()
        if not callable(processor):
            raise TypeError(f"processor must be callable as processor(x, sigma), got {type(processor).__name__}.")
        if isinstance(tiling_strategy, str) and tiling_strategy not in BUILTIN_STRATEGIES:
            raise ValueError(
                f"tiling_strategy={tiling_strategy!r}: use one of {BUILTIN_STRATEGIES} or a "
                "DistributedSignalStrategy instance."
            )
        if tiling_strategy is not None and not isinstance(tiling_strategy, str):
            check_strategy(tiling_strategy)
        unknown = set(deepinv_options) - {*DEEPINV_OPTIONS, "strategy_kwargs"}
        if unknown:
            raise TypeError(f"DistributedProcessing got unexpected arguments {sorted(unknown)}.")
        self.checkpoint_batches = deepinv_options.get("checkpoint_batches", "auto")
        if self.checkpoint_batches not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint_batches={self.checkpoint_batches!r}: use one of {CHECKPOINT_MODES}.")
        on_cpu = ctx.device.type == "cpu"
        self.ctx = ctx
        self.tiling_strategy = tiling_strategy or "overlap_tiling"
        self.tiling_dims = tiling_dims
        self.knobs = TilingKnobs(
            patch_size=patch_size,
            overlap=0 if self.tiling_strategy == "basic" else overlap,
            size_multiple=size_multiple or size_multiple_of(processor),
            max_batch_size=max_batch_size if max_batch_size is not None else (1 if on_cpu else None),
            max_window_pixels=(CPU_MAX_WINDOW_PIXELS if on_cpu else None)
            if max_window_pixels == "auto"
            else max_window_pixels,
            memory_budget=parse_bytes(memory_budget) if memory_budget is not None else None,
        )
        check_knobs(self.knobs)
        self.processor = processor.to(ctx.device) if isinstance(processor, torch.nn.Module) else processor
        if isinstance(self.processor, torch.nn.Module):
            broadcast_module_state(ctx, self.processor)
        self._layouts: dict[tuple, TiledLayout] = {}

    # ------------------------------------------------------------------ public
    def forward(
        self, x: torch.Tensor | LocalTiles, sigma: Any = None, *args: Any, gather: bool = True, **kwargs: Any
    ) -> torch.Tensor:
        """Denoise ``x``: a tensor ``(B, C, H, W)`` or ``(B, C, D, H, W)``, the same on every rank (replicated), or
        the :class:`~distinv.placements.tiles.LocalTiles` that :meth:`tiles` returned (sharded; each rank then receives
        only its windows' halos; no autograd).

        :param sigma: noise level: a number, a ``(B,)`` tensor (one per sample) or a noise map shaped like ``x``
            with one channel; ``None`` calls ``processor(x, *args)``.
        :param gather: the full output on every rank (default, replicated); ``False``: deepinv's local output, a
            tensor of ``x``'s shape holding this rank's owned regions and zeros elsewhere (summing it over ranks
            gives the output; no graph). :meth:`tiles` returns the rank's regions alone.
        :return: the output in the dtype the network returned.
        :raises ValueError: for a ``sigma`` that fits neither ``x`` nor its batch, or ``gather=False`` on an input
            that requires grad.
        """
        if not gather and isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "gather=False returns a rank's local output, which autograd does not follow, but x requires grad: "
                "use gather=True under autograd, or wrap the call in torch.no_grad()."
            )
        if isinstance(x, LocalTiles) or not gather:
            layout, pieces, dtype = self._local_pieces(x, sigma, args, kwargs)
            if gather:
                return assemble(self.ctx, layout, pieces, dtype)
            return local_output(self.ctx, layout, pieces, dtype)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or LocalTiles, got {type(x).__name__}.")
        call = window_call(self.processor, sigma, x.shape, args, kwargs)
        if not isinstance(self.tiling_strategy, str):
            if call.kind == "map":
                raise ValueError("A noise map sigma needs the built-in tiling: give a number or one sigma per sample.")
            batch = self.knobs.max_batch_size if self.knobs.max_batch_size != "auto" else None
            return run_user_strategy(self.ctx, self.tiling_strategy, x, call, batch)
        layout = self.layout_for(x.shape, self._prober(sigma, args, kwargs))
        params = self._trainable_parameters()
        if torch.is_grad_enabled() and (x.requires_grad or params):
            network = self.processor if isinstance(self.processor, torch.nn.Module) else None
            if self._keeps_activations(layout):
                return tiled_with_activations(self.ctx, layout, call, x, network)
            return TiledApply.apply(self.ctx, layout, call, network, x, *params)
        with torch.no_grad():
            pieces, dtype = run_agreed(self.ctx, layout, cut_from(x, layout), call, x.dtype)
            return assemble(self.ctx, layout, pieces, dtype)

    @property
    def max_batch_size(self) -> int | str | None:
        """The most windows per network call (deepinv's attribute): a number, ``None`` (all of a rank's windows
        at once) or ``"auto"`` (measured at the first call)."""
        return self.knobs.max_batch_size

    def _keeps_activations(self, layout: TiledLayout) -> bool:
        """Whether the backward pass uses kept activations (``checkpoint_batches``; ``"auto"``: when every rank
        runs its windows in one network call)."""
        if self.checkpoint_batches != "auto":
            return self.checkpoint_batches == "never"
        return all(layout.network_calls(rank) <= 1 for rank in range(self.ctx.world_size))

    def tiles(self, x: torch.Tensor | LocalTiles, sigma: Any = None, *args: Any, **kwargs: Any) -> LocalTiles:
        """Denoise ``x`` and keep it sharded: this rank's owned regions as :class:`~distinv.placements.tiles.LocalTiles`
        (no gather, no graph). Passing them back to :meth:`tiles` or :meth:`forward` runs the next call from them
        with a halo exchange; :meth:`gather` assembles them.

        :raises TypeError: for a ``tiling_strategy`` of the user's (their patches are not owned regions).
        """
        layout, pieces, _ = self._local_pieces(x, sigma, args, kwargs)
        return local_tiles(layout, pieces, gatherer=self.gather)

    def gather(self, tiles: LocalTiles) -> torch.Tensor:
        """The full signal on every rank (replicated), from each rank's ``LocalTiles`` (one all-gather)."""
        layout = self.layout_for(tiles.shape)
        pieces = dict(zip(tiles.windows, [p for _, p in tiles.pieces], strict=True))
        dtype = agreed_dtype(self.ctx, "gathering LocalTiles", None, pieces, torch.get_default_dtype())
        return assemble(self.ctx, layout, pieces, dtype)

    def layout_for(
        self, shape: Sequence[int], probe: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> TiledLayout:
        """The layout for inputs of ``shape`` (cached per shape). An automatic one is planned on the first call for
        a shape, on every rank together: ``probe(x)`` runs the network on the probe windows (default:
        ``processor(x, 0.05)``).

        :raises ValueError: for a shape with fewer than 3 dims or ``tiling_dims`` that do not fit it.
        """
        shape = tuple(shape)
        if len(shape) < 3:
            raise ValueError(f"x has shape {shape}: expected (B, C, *spatial), e.g. (B, C, H, W).")
        dims = tiling_dims_of(len(shape), self.tiling_dims)
        if (shape, dims) not in self._layouts:
            if self.knobs.automatic:
                probe = probe or self._prober(0.05, (), {})
                dtype = network_dtype(self.processor)
                layout = plan_automatic(self.ctx, self.processor, probe, shape, dims, self.knobs, dtype)
            else:
                layout = plan_fixed(shape, dims, self.ctx.world_size, self.knobs)
            self._layouts[(shape, dims)] = layout
        return self._layouts[(shape, dims)]

    # ------------------------------------------------------------------ helpers
    def _local_pieces(self, x: torch.Tensor | LocalTiles, sigma: Any, args: tuple, kwargs: dict):
        """This rank's owned output regions (no gather, no graph), with the layout and the agreed dtype."""
        if not isinstance(self.tiling_strategy, str):
            raise TypeError("Local outputs need the built-in tiling: a user strategy's patches are not owned regions.")
        if not isinstance(x, torch.Tensor | LocalTiles):
            raise TypeError(f"x must be a torch.Tensor or LocalTiles, got {type(x).__name__}.")
        call = window_call(self.processor, sigma, x.shape, args, kwargs)  # checked before any collective
        with torch.no_grad():
            if isinstance(x, LocalTiles):
                layout = self.layout_for(x.shape)
                window_input, fallback = from_local_tiles(self.ctx, layout, x)
            else:
                layout = self.layout_for(x.shape, self._prober(sigma, args, kwargs))
                window_input, fallback = cut_from(x, layout), x.dtype
            pieces, dtype = run_agreed(self.ctx, layout, window_input, call, fallback)
        return layout, pieces, dtype

    def _prober(self, sigma: Any, args: tuple, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network on a probe window with a level like ``sigma`` (a map's mean; a per-sample level as is)."""
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 1:
            sigma = float(sigma.mean())
        if sigma is None:
            return lambda x: self.processor(x, *args, **kwargs)
        return lambda x: self.processor(x, sigma, *args, **kwargs)

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        if not isinstance(self.processor, torch.nn.Module):
            return []
        return [p for p in self.processor.parameters() if p.requires_grad]
