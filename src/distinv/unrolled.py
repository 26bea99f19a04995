"""An unrolled deepinv optimiser (``BaseOptim(unfold=True)``) distributed in place, as deepinv 0.5 does it.

- each data fidelity of ``model.data_fidelity`` becomes a :class:`~distinv.DistributedDataFidelity` (the physics
  passed to the model is distributed by the caller, as in deepinv);
- each prior's ``denoiser`` becomes a tiled :class:`~distinv.DistributedProcessing`;
- the trainable ``params_algo`` (step sizes, weights) are kept identical on every rank by
  :class:`~distinv.comm.replicated.DistributedReplicatedParameters` (``model.replicated_parameters``);
- beyond deepinv, ``checkpoint_iterations=True`` recomputes each unrolled iteration in the backward pass instead of
  keeping its activations (``torch.utils.checkpoint``, non-reentrant), so the activations held grow with one
  iteration, not with all of them. The recomputation replays the iteration's collectives in the same order on
  every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from deepinv.models import Denoiser
from deepinv.optim.optimizers import BaseOptim

from distinv.comm.context import DistributedContext
from distinv.comm.replicated import DistributedReplicatedParameters
from distinv.domain.denoiser import DomainParallelDenoiser
from distinv.physics.fidelity import DistributedDataFidelity
from distinv.tiling.processing import DistributedProcessing


def distribute_unrolled(
    model: BaseOptim,
    ctx: DistributedContext,
    *,
    average: bool = True,
    checkpoint_iterations: bool = False,
    parallel: str = "windows",
    **denoiser_options: Any,
) -> BaseOptim:
    """Distribute ``model``'s parts in place and return it.

    :param average: average the replicated parameters' gradients over ranks (default), else sum them.
    :param checkpoint_iterations: recompute each iteration in the backward pass (less memory, one more forward);
        the tiled denoiser then also recomputes its windows (``checkpoint_batches="always"``) unless
        ``checkpoint_batches`` is given, so that the backward pass holds one network call's activations at a time.
    :param parallel: how every prior's denoiser is distributed: ``"windows"`` (default: the tiled denoiser, with
        ``denoiser_options``) or ``"domain"`` (:class:`~distinv.domain.denoiser.DomainParallelDenoiser`: each rank
        its band of rows, exact; ``denoiser_options`` unused).
    :param denoiser_options: for every prior's tiled denoiser (``patch_size``, ``overlap``, ``max_batch_size``,
        ``checkpoint_batches``, ...).
    :raises TypeError: for a model that is no ``BaseOptim``, or one not built with ``unfold=True``.
    """
    if not isinstance(model, BaseOptim):
        raise TypeError(
            f"type_object='module' only supports deepinv BaseOptim models built with unfold=True, not a "
            f"{type(model).__name__}: for another network, use type_object='denoiser' (a network f(x, sigma))."
        )
    if parallel not in ("windows", "domain"):
        raise ValueError(f"parallel={parallel!r}: use 'windows' (overlapping windows) or 'domain'.")
    if not getattr(model, "unfold", False):
        raise TypeError(
            "distribute() received a BaseOptim built with unfold=False: build it with unfold=True (e.g. "
            "PGD(..., unfold=True)), or distribute its physics, data fidelity and denoiser separately."
        )
    if checkpoint_iterations:
        denoiser_options.setdefault("checkpoint_batches", "always")
    model = model.to(ctx.device)
    if model.data_fidelity is not None:
        model.data_fidelity = torch.nn.ModuleList(
            [
                d if isinstance(d, DistributedDataFidelity) else DistributedDataFidelity(ctx, d)
                for d in model.data_fidelity
            ]
        )
    for prior in model.prior or []:
        denoiser = getattr(prior, "denoiser", None)
        if isinstance(denoiser, Denoiser) and parallel == "domain":
            prior.denoiser = DomainParallelDenoiser(ctx, denoiser)
        elif isinstance(denoiser, Denoiser) and not isinstance(denoiser, DistributedProcessing):
            prior.denoiser = DistributedProcessing(ctx, denoiser, **denoiser_options)
    trainable = []
    if isinstance(getattr(model, "params_algo", None), torch.nn.ParameterDict):
        for value in model.params_algo.values():
            trainable.extend(value if isinstance(value, torch.nn.ParameterList) else [])
    model.replicated_parameters = DistributedReplicatedParameters(ctx, trainable, average=average)
    model._deepinv_dist_sync = model.replicated_parameters  # deepinv 0.5's name for it
    if checkpoint_iterations:
        _checkpoint_each_iteration(model.fixed_point.iterator)
    return model


def _checkpoint_each_iteration(iterator: torch.nn.Module) -> None:
    """Make ``iterator``'s forward (one unrolled iteration) a checkpointed one, in place."""
    step = iterator.forward

    def checkpointed(*args: Any, **kwargs: Any):
        if not torch.is_grad_enabled():
            return step(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(step, *args, use_reentrant=False, **kwargs)

    iterator.forward = checkpointed
