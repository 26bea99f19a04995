"""deepinv 0.5's training API, switched by the import: unrolled optimisers distributed in place, replicated
parameters, factories read by their objects, deepinv's strategy interface and framework names."""

from __future__ import annotations

import pytest
import torch
from deepinv.models import DnCNN
from deepinv.optim import DRS, PGD
from deepinv.optim.data_fidelity import L2
from deepinv.optim.prior import PnP
from deepinv.physics import StackedLinearPhysics

from distinv import DistributedDataFidelity, DistributedProcessing, distribute
from distinv.strategies import TilingStrategy, create_strategy
from operators import make_operator, operator_list

IMG = (1, 16, 16)


def unrolled_pgd(algorithm=PGD) -> PGD:
    torch.manual_seed(0)
    denoiser = DnCNN(in_channels=1, out_channels=1, depth=3, nf=8, pretrained=None)
    return algorithm(
        prior=PnP(denoiser),
        data_fidelity=L2(),
        stepsize=0.5,
        sigma_denoiser=0.05,
        max_iter=2,
        unfold=True,
        trainable_params=["stepsize"],
    )


def gradients_of(model, physics, y) -> dict[str, torch.Tensor]:
    model.zero_grad()
    x_hat = model(y, physics)
    ((x_hat - 0.5) ** 2).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- checks (every rank)
def check_unrolled_gradients(ctx, k, checkpoint_iterations=False, checkpoint_batches="always", algorithm=PGD):
    factory = lambda i, device, shared: make_operator("blur", i, IMG).to(device)  # noqa: E731
    physics = distribute(factory, ctx, num_operators=k)  # no type_object: read from the operators
    reference = StackedLinearPhysics(operator_list("blur", k, IMG))
    reference.tol, reference.max_iter = 1e-12, 500  # its prox (DRS) by CG, run to convergence
    torch.manual_seed(1)
    y = reference.A(torch.rand(1, *IMG))
    expected = gradients_of(unrolled_pgd(algorithm), reference, y)
    options = {} if checkpoint_batches is None else {"checkpoint_batches": checkpoint_batches}
    model = distribute(unrolled_pgd(algorithm), ctx, overlap=8, checkpoint_iterations=checkpoint_iterations, **options)
    kinds = (type(model.data_fidelity[0]).__name__, type(model.prior[0].denoiser).__name__)
    ours = gradients_of(model, physics, y)
    names = sorted(n.removeprefix("prior.0.denoiser.processor.").removeprefix("prior.0.denoiser.") for n in ours)
    errors = {}
    for name, grad in ours.items():
        key = name.replace("denoiser.processor.", "denoiser.")
        errors[key] = ((grad - expected[key]).norm() / expected[key].norm().clamp_min(1e-12)).item()
    return kinds, sorted(expected) == sorted(errors), errors, names


def check_replicated_parameters(ctx):
    weight = torch.nn.Parameter(torch.ones(3))
    weight = distribute(weight, ctx)
    (weight * (ctx.rank + 1.0)).sum().backward()  # a rank-dependent gradient, on purpose
    averaged = weight.grad.clone()
    weight.replicated.remove_hooks()
    weight.grad = None
    (weight * (ctx.rank + 1.0)).sum().backward()
    return averaged.tolist(), weight.grad.tolist()


def check_factory_kinds(ctx):
    linear = distribute(lambda i, d, s: make_operator("blur", i, IMG), ctx, num_operators=1)
    fidelity = distribute(lambda i, d, s: L2(), ctx, num_operators=1)
    return type(linear).__name__, type(fidelity).__name__


def check_factory_of_the_wrong_kind(ctx):
    try:
        distribute(lambda i, d, s: "not an operator", ctx, num_operators=2)
    except TypeError as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_an_unrolled_pgd_trains_with_the_single_process_gradients(ranks, world_size):
    for kinds, same_parameters, errors, _ in ranks(world_size).run(check_unrolled_gradients, 2):
        assert kinds == (DistributedDataFidelity.__name__, DistributedProcessing.__name__)
        assert same_parameters and any("stepsize" in n for n in errors)
        assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_an_unrolled_drs_trains_through_the_exact_data_prox_with_the_single_process_gradients(ranks, world_size):
    for _, same_parameters, errors, _ in ranks(world_size).run(check_unrolled_gradients, 3, False, "always", DRS):
        assert same_parameters and any("stepsize" in n for n in errors)
        assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("world_size", [2, 3])
def test_an_unrolled_pgd_keeping_the_denoisers_activations_has_the_same_gradients(ranks, world_size):
    for _, same_parameters, errors, _ in ranks(world_size).run(check_unrolled_gradients, 2, False, "never"):
        assert same_parameters and max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("checkpoint_batches", [None, "never"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_iteration_checkpointing_keeps_the_single_process_gradients(ranks, world_size, checkpoint_batches):
    for _, same_parameters, errors, _ in ranks(world_size).run(check_unrolled_gradients, 2, True, checkpoint_batches):
        assert same_parameters and max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_default_settings_keep_the_single_process_gradients(ranks, world_size):
    for _, same_parameters, errors, _ in ranks(world_size).run(check_unrolled_gradients, 3, False, None):
        assert same_parameters and max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("world_size", [2, 3])
def test_replicated_parameters_get_the_average_gradient_until_their_hooks_are_removed(ranks, world_size):
    mean = sum(r + 1.0 for r in range(world_size)) / world_size
    for rank, (averaged, raw) in enumerate(ranks(world_size).run(check_replicated_parameters)):
        assert averaged == [mean] * 3
        assert raw == [rank + 1.0] * 3


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_factory_is_read_from_its_objects_even_on_a_rank_that_owns_none(ranks, world_size):
    assert (
        ranks(world_size).run(check_factory_kinds)
        == [("DistributedStackedLinearPhysics", "DistributedDataFidelity")] * world_size
    )


def test_a_factory_of_something_else_is_named_on_every_rank(ranks):
    assert all("type_object" in message for message in ranks(2).run(check_factory_of_the_wrong_kind))


def check_unsupported_objects(ctx):
    errors = []
    for obj in (torch.nn.Linear(2, 2), PGD(prior=PnP(DnCNN(pretrained=None)), data_fidelity=L2(), unfold=False)):
        try:
            distribute(obj, ctx)
        except (TypeError, ValueError) as exc:  # deepinv's types: ValueError for a generic module
            errors.append((type(exc).__name__, str(exc)))
    return errors


def test_a_generic_module_or_a_model_that_is_not_unfolded_is_a_clear_error(ranks):
    (errors,) = ranks(1).run(check_unsupported_objects)
    assert errors[0][0] == "ValueError" and "generic torch.nn.Module (Linear)" in errors[0][1]
    assert errors[1][0] == "TypeError" and "unfold=False" in errors[1][1] and "unfold=True" in errors[1][1]


def test_deepinvs_strategy_interface_batches_and_unbatches_in_order():
    strategy = create_strategy((2, 1, 40, 30), patch_size=16, overlap=4)
    assert isinstance(strategy, TilingStrategy)
    x = torch.rand(2, 1, 40, 30)
    pairs = strategy.get_local_patches(x, list(range(strategy.get_num_patches())))
    batches = strategy.apply_batching([p for _, p in pairs], max_batch_size=2)
    assert all(b.shape[0] <= 4 for b in batches)
    patches = strategy.unpack_batched_results(batches, len(pairs))
    out = torch.zeros_like(x)
    strategy.reduce_patches(out, [(i, p) for (i, _), p in zip(pairs, patches, strict=True)])
    assert torch.equal(out, x)
    with pytest.raises(ValueError, match="stride"):
        create_strategy((1, 1, 8, 8), stride=4)


def test_code_importing_deepinvs_framework_names_switches_by_the_import():
    from distinv.framework import (  # noqa: F401
        DistributedContext,
        DistributedDataFidelity,
        DistributedProcessing,
        DistributedReplicatedParameters,
        DistributedStackedLinearPhysics,
        DistributedStackedPhysics,
    )
