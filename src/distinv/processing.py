"""DistributedProcessing: a denoiser (or any ``f(x, sigma)``) run over a tile plan spread across ranks.

The data path, top to bottom:

1. **plan**: a :class:`~distinv.tiling.TilePlan` for the input's shape (cached per shape);
2. **run**: each rank cuts only its own windows out of the replicated input, runs them in batches of at
   most ``max_batch_size`` windows, and keeps the owned region of each output;
3. **gather**: one all-gather of owned regions (only the rank's owned pixels travel, never a full-size
   tensor of zeros) assembles the full output on every rank; or, with ``gather=False``, the rank keeps its
   :class:`Shard`.

Accuracy: a network whose receptive-field radius is ``r`` gives the untiled output exactly when
``overlap >= r`` (e.g. DnCNN with 17 layers: r = 17). DRUNet's receptive field spans the whole image, so a
halo only bounds its error. Measured with random weights (channels 16..128, a 3x1024x1024 image, the default
plan at 2 ranks: 4 windows; relative L2 error against the untiled network): 5.7e-2 with no halo, 3.9e-7 at
``overlap=8``, 3.7e-8 at 16, **1.1e-8 at the default 32**, 7.3e-9 at 64 (``python
benchmarks/denoiser_tiling.py --halo-sweep``). Trained weights reach further than random ones: measure before
trusting a small halo.

Ranks stay in step: the network is made the same on every rank when it is distributed (rank 0's parameters
and buffers are broadcast, as ``DistributedDataParallel`` does), and a rank's windows run before one small
agreement (did any rank fail; which dtype did the network return) that precedes the gather, so a rank that fails
(an exception, a GPU out of memory) fails every rank. The output has the dtype the network returned (e.g.
bfloat16 under ``torch.autocast``), not necessarily the input's.

Under autograd the output is differentiable: gradients reach the input and the network's parameters, equal
to those of the same tiled computation in one process. The backward pass recomputes each rank's windows
(nothing is stored in forward) and sums the input and parameter gradients over ranks with one all-reduce;
it assumes, as a replicated loss does, that every rank back-propagates the same output gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .autotune import (
    CPU_MEMORY_HEADROOM,
    MEMORY_HEADROOM,
    AutoPlan,
    NetworkProfile,
    cached_profile,
    choose_plan,
    default_probe_shapes,
    profile_network,
)
from .balance import assign_balanced_counts
from .comm import Layout, gather_items
from .context import DistributedContext
from .halo import exchange_windows
from .memory import default_memory_budget, parse_bytes
from .strategies import TilingStrategy, check_strategy
from .tiling import Window, validate_tiling

BUILTIN_STRATEGIES = ("overlap_tiling", "basic")
DEFAULT_OVERLAP = 32
# On a CPU core, DRUNet (16..128) runs fastest per pixel on windows of a few hundred thousand pixels (measured,
# one core: 4.4 us/px at 288x1024 and 4.9 at 544x544, against 5.7 at 544x1024 and 6.8 at 1024x1024: caches),
# and smaller windows hold less memory; on a GPU the largest windows that fit are fastest.
CPU_MAX_WINDOW_PIXELS = 384 * 1024


@dataclass
class Shard:
    """This rank's part of a tiled signal: for each of its windows (``windows``, indices into the plan), the
    owned region's index into the full tensor and its values. Passing a Shard back to the same
    :class:`DistributedProcessing` runs the next call from it with a halo exchange."""

    shape: torch.Size
    pieces: list[tuple[tuple[slice, ...], torch.Tensor]]
    windows: list[int]


def network_dtype(processor: Any) -> torch.dtype:
    """The dtype a network computes in: its first floating-point parameter's, else torch's default."""
    if isinstance(processor, torch.nn.Module):
        for p in processor.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def size_multiple_of(processor: Any) -> int:
    """The spatial size multiple a network needs: its ``size_multiple`` attribute if it has one (wrappers pass
    on their network's), 8 for DRUNet's three stride-2 stages, else 1."""
    from deepinv.models import DRUNet

    declared = getattr(processor, "size_multiple", None)
    if isinstance(declared, int):
        return declared
    return 8 if isinstance(processor, DRUNet) else 1


class DistributedProcessing(torch.nn.Module):
    """Run ``processor(x, sigma, ...)`` tiled over the ranks of ``ctx``.

    :param ctx: the entered context.
    :param processor: a deepinv denoiser/prior or any callable ``f(x, sigma, *args, **kwargs)`` (``x`` of shape
        ``(B, C, *spatial)``) that keeps the input's shape.
    :param tiling_strategy: ``"overlap_tiling"`` (halos of ``overlap`` where windows meet), ``"basic"`` (no
        halo), or a :class:`~distinv.strategies.DistributedSignalStrategy` instance.
    :param patch_size: owned size per window and dim; ``None`` (default): the fewest, largest windows, a
        multiple of the world size, within ``max_window_pixels``; ``"auto"``: the windows that minimise the
        predicted time within ``memory_budget``, from the network's measured cost (see :mod:`distinv.autotune`).
    :param overlap: halo in pixels on each side where windows meet (rounded up to the size multiple).
    :param tiling_dims: dims to cut (an int or a tuple, dims >= 2); default all spatial dims.
    :param max_batch_size: most windows per network call. ``None``: one at a time on CPU (a batch adds memory,
        not speed, on a core), all of a rank's same-size windows at once on GPU; ``"auto"``: the batch that
        minimises the predicted time within ``memory_budget`` (for the given or the automatic windows).
    :param size_multiple: the network's size multiple (default: 8 for DRUNet, else 1).
    :param max_window_pixels: the largest window, in pixels of the tiled dims, for the automatic plan
        (``patch_size=None``). ``"auto"``: ``CPU_MAX_WINDOW_PIXELS`` on CPU (faster per pixel, and per-rank
        memory falls), no limit on GPU; ``None``: no limit (one window per rank).
    :param memory_budget: for ``"auto"``: bytes (or ``"2GB"``) one call may add per rank; default half the
        free GPU memory, or half the host's available memory shared by its ranks. The same on every rank
        (the smallest), as are the measured costs (the largest): every rank picks the same plan.
    """

    def __init__(
        self,
        ctx: DistributedContext,
        processor: Callable[..., torch.Tensor],
        *,
        tiling_strategy: str | Any = "overlap_tiling",
        patch_size: int | Sequence[int] | None | str = None,
        overlap: int | Sequence[int] = DEFAULT_OVERLAP,
        tiling_dims: int | Sequence[int] | None = None,
        max_batch_size: int | None | str = None,
        size_multiple: int | None = None,
        max_window_pixels: int | str | None = "auto",
        memory_budget: int | str | None = None,
        **deepinv_options: Any,
    ):
        super().__init__()
        if not callable(processor):
            raise TypeError(f"processor must be callable as processor(x, sigma), got {type(processor).__name__}.")
        if isinstance(tiling_strategy, str):
            if tiling_strategy not in BUILTIN_STRATEGIES:
                raise ValueError(
                    f"tiling_strategy={tiling_strategy!r}: use one of {BUILTIN_STRATEGIES} or a "
                    "DistributedSignalStrategy instance."
                )
        elif tiling_strategy is not None:
            check_strategy(tiling_strategy)
        if (
            max_batch_size is not None
            and max_batch_size != "auto"
            and (isinstance(max_batch_size, str) or max_batch_size < 1)
        ):
            raise ValueError(f"max_batch_size={max_batch_size!r}: it must be at least 1, None (no limit) or 'auto'.")
        if isinstance(patch_size, str) and patch_size != "auto":
            raise ValueError(f"patch_size={patch_size!r}: give pixels per window and dim, None or 'auto'.")
        unknown = set(deepinv_options) - {
            "dtype",
            "checkpoint_batches",
            "checkpoint_use_reentrant",
            "checkpoint_preserve_rng_state",
            "strategy_kwargs",
        }
        if unknown:
            raise TypeError(f"DistributedProcessing got unexpected arguments {sorted(unknown)}.")
        self.ctx = ctx
        self.processor = processor.to(ctx.device) if isinstance(processor, torch.nn.Module) else processor
        self.tiling_strategy = tiling_strategy or "overlap_tiling"
        self.patch_size = patch_size
        self.overlap = 0 if self.tiling_strategy == "basic" else overlap
        self.tiling_dims = tiling_dims
        on_cpu = ctx.device.type == "cpu"
        self.max_batch_size = max_batch_size if max_batch_size is not None else (1 if on_cpu else None)
        self.memory_budget = parse_bytes(memory_budget) if memory_budget is not None else None
        self.size_multiple = size_multiple or size_multiple_of(processor)
        if max_window_pixels == "auto":
            max_window_pixels = CPU_MAX_WINDOW_PIXELS if on_cpu else None
        self.max_window_pixels = max_window_pixels
        self._strategies: dict[tuple, TilingStrategy] = {}
        validate_tiling(None if patch_size == "auto" else patch_size, self.overlap, self.size_multiple)
        if isinstance(self.processor, torch.nn.Module):  # after every check: the first collective
            broadcast_module_state(ctx, self.processor)

    # ------------------------------------------------------------------ public
    def forward(
        self, x: torch.Tensor | Shard, sigma: Any = None, *args: Any, gather: bool = True, **kwargs: Any
    ) -> Any:
        """Denoise ``x``: a tensor ``(B, C, H, W)`` or ``(B, C, D, H, W)``, the same on every rank, or the
        :class:`Shard` a previous call returned (each rank then receives only its windows' halos; no autograd).

        :param sigma: noise level: a number, a ``(B,)`` tensor (one per sample) or a noise map shaped like ``x``
            with one channel; ``None`` calls ``processor(x, *args)``.
        :param gather: the full output on every rank (default), else this rank's :class:`Shard`.
        """
        if isinstance(x, Shard):
            with torch.no_grad():
                return self._from_shard(x, sigma, args, kwargs, gather)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or a Shard, got {type(x).__name__}.")
        strategy = self.strategy_for(x.shape, self._prober(sigma, args, kwargs))
        call = self._caller(sigma, x.shape, args, kwargs)
        if not isinstance(strategy, TilingStrategy):
            return self._run_custom(strategy, x, call)
        params = self._trainable_parameters()
        if not gather and x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "gather=False returns a Shard, which autograd cannot follow, but x requires grad: use gather=True "
                "under autograd, or wrap the call in torch.no_grad()."
            )
        if gather and torch.is_grad_enabled() and (x.requires_grad or params):
            return _TiledApply.apply(self, strategy, call, x, *params)
        with torch.no_grad():  # a Shard carries no graph: the network's parameters get no gradient from it
            pieces, dtype = self._run_agreed(strategy, _cut_from(x, strategy), call, x.dtype)
            return self._finish(strategy, pieces, dtype, gather)

    def gather(self, shard: Shard) -> torch.Tensor:
        """The full signal on every rank, from each rank's :class:`Shard` (one all-gather)."""
        strategy = self.strategy_for(shard.shape)
        pieces = dict(zip(shard.windows, [p for _, p in shard.pieces], strict=True))
        dtype = self._agreed_dtype("gathering a Shard", None, pieces, torch.get_default_dtype())
        return self._assemble(strategy, pieces, dtype)

    def _from_shard(self, shard: Shard, sigma: Any, args: tuple, kwargs: dict, gather: bool) -> Any:
        strategy = self.strategy_for(shard.shape)
        error = None
        if not isinstance(strategy, TilingStrategy) or [w.index for w in strategy.plan.windows_of(self.ctx.rank)] != (
            shard.windows
        ):
            error = ValueError(
                "This Shard was not cut by this denoiser's plan for its shape: pass the Shard to the same "
                "distributed denoiser that returned it, or gather it first."
            )
        self.ctx.agree("checking the Shard", error)  # before the halo exchange, on every rank
        owned = dict(zip(shard.windows, [p for _, p in shard.pieces], strict=True))
        like = next(iter(owned.values()), None)
        windows = exchange_windows(self.ctx, strategy, owned, like)  # a rank without windows has nothing to trade
        call = self._caller(sigma, shard.shape, args, kwargs)
        fallback = like.dtype if like is not None else torch.get_default_dtype()
        pieces, dtype = self._run_agreed(strategy, lambda w: windows[w.index], call, fallback)
        return self._finish(strategy, pieces, dtype, gather)

    def _finish(self, strategy: TilingStrategy, pieces: dict[int, torch.Tensor], dtype, gather: bool) -> Any:
        if gather:
            return self._assemble(strategy, pieces, dtype)
        windows = strategy.plan.windows
        return Shard(
            torch.Size(strategy.img_size),
            [(strategy.index(windows[i].owned_slices), p) for i, p in pieces.items()],
            list(pieces),
        )

    # ------------------------------------------------------------------ plan
    def strategy_for(self, shape: Sequence[int], probe: Callable | None = None) -> Any:
        """The strategy for inputs of ``shape``; a built-in one carries its :class:`TilePlan` as ``.plan``
        (and, planned automatically, its :class:`~distinv.autotune.AutoPlan` as ``.auto``). An automatic plan
        is made on the first call for a shape, on every rank together: ``probe(x)`` runs the network on the
        probe windows (default: ``processor(x, 0.05)``)."""
        shape = tuple(shape)
        if len(shape) < 3:
            raise ValueError(f"x has shape {shape}: expected (B, C, *spatial), e.g. (B, C, H, W).")
        if not isinstance(self.tiling_strategy, str):
            return self.tiling_strategy
        dims = self._tiling_dims(len(shape))
        key = (shape, dims)
        if key not in self._strategies and self._is_auto:
            auto = self._auto_plan(shape, dims, probe or self._prober(0.05, (), {}))
            strategy = TilingStrategy(
                shape,
                dims,
                self.ctx.world_size,
                auto.patch_size,
                self.overlap,
                self.size_multiple,
                auto.max_window_pixels,
            )
            strategy.auto = auto
            self._strategies[key] = strategy
        if key not in self._strategies:
            self._strategies[key] = TilingStrategy(
                shape,
                dims,
                self.ctx.world_size,
                self.patch_size,
                self.overlap,
                self.size_multiple,
                self.max_window_pixels,
            )
        return self._strategies[key]

    @property
    def _is_auto(self) -> bool:
        return self.patch_size == "auto" or self.max_batch_size == "auto"

    def _auto_plan(self, shape: tuple[int, ...], dims: tuple[int, ...], probe: Callable) -> AutoPlan:
        """Measure the network (once per network, device, dtype and signal layout), agree over ranks on the
        costs (largest) and the budget (smallest), and choose the plan."""
        device, dtype = self.ctx.device, network_dtype(self.processor)
        spatial = [shape[d] for d in dims]
        budget = self.memory_budget or default_memory_budget(device)
        shapes = default_probe_shapes(spatial, self.size_multiple, shape[0], device)
        # A profile is a property of the network on these probe windows, on this device and dtype.
        key = (str(device), dtype, shape[0], shape[1], tuple(tuple(s) for s in shapes))

        def measure():
            return profile_network(
                probe, shape[1], shapes, samples=shape[0], device=device, dtype=dtype, budget_bytes=budget
            )

        profile = self.ctx.run_agreed(
            "profiling the network (automatic tiling)", lambda: cached_profile(self.processor, key, measure)
        )
        # Every rank probes the same windows; those a rank could not run (memory) count as infinitely costly.
        count = len(shapes)
        values = torch.full((count + 1, 2), math.inf, dtype=torch.float64)
        values[: len(profile.probes)] = profile.as_tensor()
        values[count] = -float(budget)
        values = self.ctx.all_reduce(values.to(device), op=dist.ReduceOp.MAX).cpu()
        kept = [i for i in range(count) if math.isfinite(values[i, 0])]
        agreed = NetworkProfile(tuple(profile.probes[i] for i in kept)).with_values(values[kept])
        return choose_plan(
            agreed,
            shape,
            dims,
            self.ctx.world_size,
            int(-values[count, 1]),
            halo=self.overlap,
            multiple=self.size_multiple,
            patch_size=self.patch_size,
            batch=self.max_batch_size,
            max_window_pixels=self.max_window_pixels,
            headroom=CPU_MEMORY_HEADROOM if device.type == "cpu" else MEMORY_HEADROOM,
            itemsize=torch.finfo(dtype).bits // 8,
        )

    def _prober(self, sigma: Any, args: tuple, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network on a probe window with a level like ``sigma`` (a map's mean; a per-sample level as is)."""
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 1:
            sigma = float(sigma.mean())
        if sigma is None:
            return lambda x: self.processor(x, *args, **kwargs)
        return lambda x: self.processor(x, sigma, *args, **kwargs)

    def _tiling_dims(self, ndim: int) -> tuple[int, ...]:
        if self.tiling_dims is None:
            return tuple(range(2, ndim))
        dims = (self.tiling_dims,) if isinstance(self.tiling_dims, int) else tuple(self.tiling_dims)
        normalised = tuple(d + ndim if d < 0 else d for d in dims)
        if not dims or any(not 2 <= d < ndim for d in normalised) or len(set(normalised)) != len(normalised):
            raise ValueError(
                f"tiling_dims={self.tiling_dims} does not name distinct spatial dims of a {ndim}-dim input: use "
                f"dims among {tuple(range(2, ndim))} (batch and channel dims cannot be tiled)."
            )
        return tuple(sorted(normalised))

    # ------------------------------------------------------------------ run
    def _caller(self, sigma: Any, shape: Sequence[int], args: tuple, kwargs: dict) -> Callable:
        """``call(windows, slices_list)``: the processor on a batch of windows with the matching sigma."""
        shape = tuple(shape)
        batch = shape[0]
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
            if sigma.ndim == len(shape) and sigma.shape[0] == batch and tuple(sigma.shape[2:]) == shape[2:]:
                kind = "map"
            elif sigma.numel() == batch:
                kind, sigma = "per_sample", sigma.reshape(batch)
            elif sigma.numel() == 1:
                kind = "scalar"
            else:
                raise ValueError(
                    f"sigma of shape {tuple(sigma.shape)} does not fit x of shape {shape}: give a number, "
                    f"a ({batch},) tensor or a noise map of shape ({batch}, 1, *spatial)."
                )
        else:
            kind = "none" if sigma is None else "scalar"

        def call(windows: torch.Tensor, indices: list[tuple[slice, ...]]) -> torch.Tensor:
            if kind == "none":
                return self.processor(windows, *args, **kwargs)
            if kind == "map":
                s = torch.cat([sigma[index] for index in indices], dim=0)
            elif kind == "per_sample":
                s = sigma.repeat(len(indices))
            else:
                s = sigma
            return self.processor(windows, s, *args, **kwargs)

        call.sigma_kind = kind
        return call

    def _run_agreed(
        self,
        strategy: TilingStrategy,
        window_input: Callable[[Window], torch.Tensor],
        call: Callable,
        fallback: torch.dtype,
    ) -> tuple[dict[int, torch.Tensor], torch.dtype]:
        """:meth:`_run_local`, then one agreement over ranks: an error on any rank is an error on every rank,
        and every rank learns the dtype the network returned (a rank with no window included)."""
        pieces: dict[int, torch.Tensor] = {}
        error = None
        try:
            pieces = self._run_local(strategy, window_input, call)
        except Exception as exc:  # noqa: BLE001 - a failure on one rank must fail every rank
            error = exc
        return pieces, self._agreed_dtype("the tiled denoiser's windows", error, pieces, fallback)

    def _agreed_dtype(
        self, step: str, error: BaseException | None, pieces: dict[int, torch.Tensor], fallback: torch.dtype
    ) -> torch.dtype:
        """The one dtype of every rank's pieces (``fallback`` if no rank has any), agreed with any error."""
        dtypes = {p.dtype for p in pieces.values()}
        code = -1 if not dtypes else (_dtype_code(dtypes.pop()) if len(dtypes) == 1 else -2)
        codes = {row[0] for row in self.ctx.agree(step, error, [code])} - {-1}
        if not codes:
            return fallback
        if len(codes) > 1 or -2 in codes:
            raise TypeError(
                f"{step}: the network returned different dtypes on different windows or ranks "
                f"({sorted(codes)}): make it return one dtype (e.g. the same autocast on every rank)."
            )
        return _DTYPES[codes.pop()]

    def _run_local(
        self, strategy: TilingStrategy, window_input: Callable[[Window], torch.Tensor], call: Callable
    ) -> dict[int, torch.Tensor]:
        """Run this rank's windows (``window_input(w)`` gives window ``w``'s input); return each window's owned
        output region, by window index."""
        batch_size, channels = strategy.img_size[0], strategy.img_size[1]
        windows = strategy.plan.windows_of(self.ctx.rank)
        by_size: dict[tuple[int, ...], list] = {}
        for w in windows:
            by_size.setdefault(w.size, []).append(w)
        pieces: dict[int, torch.Tensor] = {}
        for group in by_size.values():
            auto = getattr(strategy, "auto", None)
            step = auto.batch if auto is not None else self.max_batch_size or len(group)
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                indices = [strategy.index(w.slices) for w in chunk]
                inputs = [window_input(w) for w in chunk]
                batch = inputs[0] if len(chunk) == 1 else torch.cat(inputs, dim=0)
                out = call(batch, indices)
                expected = (batch.shape[0], channels, *batch.shape[2:])
                if tuple(out.shape) != expected:
                    raise ValueError(
                        f"The processor returned shape {tuple(out.shape)} for windows of shape "
                        f"{tuple(batch.shape)}: a tiled processor must keep the input's shape."
                    )
                for j, w in enumerate(chunk):
                    piece = out[j * batch_size : (j + 1) * batch_size]
                    pieces[w.index] = piece[strategy.index(w.owned_in_window)]
        return dict(sorted(pieces.items()))

    def _assemble(self, strategy: TilingStrategy, pieces: dict[int, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """All-gather the owned regions; every rank writes them into one full-size output."""
        windows = strategy.plan.windows
        shapes = []
        for w in windows:
            shape = list(strategy.img_size)
            for d, s in zip(strategy.tiling_dims, w.owned_size, strict=True):
                shape[d] = s
            shapes.append(tuple(shape))
        layout = Layout(tuple(w.rank for w in windows), tuple(shapes), (dtype,) * len(windows))
        everything = gather_items(self.ctx, list(pieces), list(pieces.values()), len(windows), "concatenated", layout)
        out = torch.empty(strategy.img_size, dtype=dtype, device=self.ctx.device)
        for w, piece in zip(windows, everything, strict=True):
            out[strategy.index(w.owned_slices)] = piece
        return out

    def _run_custom(self, strategy: Any, x: torch.Tensor, call: Callable) -> torch.Tensor:
        """A user strategy: its patches, balanced by count, written by it into zeros and summed over ranks."""
        n = strategy.get_num_patches()
        owners = assign_balanced_counts([1.0] * n, self.ctx.world_size)
        local = [i for i in range(n) if owners[i] == self.ctx.rank]
        if isinstance(getattr(call, "sigma_kind", None), str) and call.sigma_kind == "map":
            raise ValueError("A noise map sigma needs the built-in tiling: give a number or one sigma per sample.")

        def work() -> torch.Tensor:
            processed = [
                (i, call(patch, [(slice(None),) * x.ndim])) for i, patch in strategy.get_local_patches(x, local)
            ]
            out = torch.zeros_like(x)
            strategy.reduce_patches(out, processed)
            return out

        return self.ctx.all_reduce(self.ctx.run_agreed(f"tiling strategy {type(strategy).__name__}", work))

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        if not isinstance(self.processor, torch.nn.Module):
            return []
        return [p for p in self.processor.parameters() if p.requires_grad]


_DTYPES = (
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


def _dtype_code(dtype: torch.dtype) -> int:
    if dtype not in _DTYPES:
        raise TypeError(f"The network returned dtype {dtype}, which the tiled gather does not carry.")
    return _DTYPES.index(dtype)


def broadcast_module_state(ctx: DistributedContext, module: torch.nn.Module) -> None:
    """Make ``module`` the same on every rank: rank 0's parameters and buffers, broadcast in place (one
    broadcast per dtype), as ``DistributedDataParallel`` does at construction."""
    if not ctx.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in [*module.parameters(), *module.buffers()]:
        by_dtype.setdefault(t.dtype, []).append(t)
    with torch.no_grad():
        for tensors in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(ctx.device) for t in tensors])
            ctx.broadcast(flat, src=0)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _cut_from(x: torch.Tensor, strategy: TilingStrategy) -> Callable[[Window], torch.Tensor]:
    """Window inputs cut out of a replicated signal (views, no copy)."""
    return lambda w: x[strategy.index(w.slices)]


class _TiledApply(torch.autograd.Function):
    """The tiled forward without storing activations; a backward that recomputes this rank's windows and
    sums gradients over ranks (one all-reduce for the input and all parameters together)."""

    @staticmethod
    def forward(fctx, engine, strategy, call, x, *params):
        with torch.no_grad():
            pieces, dtype = engine._run_agreed(strategy, _cut_from(x, strategy), call, x.dtype)
            out = engine._assemble(strategy, pieces, dtype)
        fctx.engine, fctx.strategy, fctx.call, fctx.params = engine, strategy, call, params
        fctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(fctx, grad_out):
        (x,) = fctx.saved_tensors
        engine, strategy = fctx.engine, fctx.strategy
        inputs = [x.detach().requires_grad_(True), *fctx.params]

        def local_gradients() -> Sequence[torch.Tensor | None]:
            with torch.enable_grad():
                pieces = engine._run_local(strategy, _cut_from(inputs[0], strategy), fctx.call)
                if not pieces:
                    return [None] * len(inputs)
                windows = strategy.plan.windows
                wanted = [grad_out[strategy.index(windows[i].owned_slices)].to(p.dtype) for i, p in pieces.items()]
                return torch.autograd.grad(list(pieces.values()), inputs, wanted, allow_unused=True)

        grads = engine.ctx.run_agreed("the tiled denoiser's backward", local_gradients)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]
        flat = torch.cat([g.reshape(-1) for g in grads])
        engine.ctx.all_reduce(flat)
        summed, offset = [], 0
        for t in inputs:
            summed.append(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        return (None, None, None, summed[0] if fctx.needs_input_grad[3] else None, *summed[1:])
