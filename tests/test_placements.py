"""Every sharded result says where it lives and comes back whole with one verb: partial sums are typed
(``Partial.reduce()``), and measurements, tiles and row bands each ``gather()`` to what the replicated call returns."""

from __future__ import annotations

import pytest
import torch
from deepinv.models import DnCNN
from deepinv.optim.data_fidelity import L2

from distinv import distribute
from distinv.placements.measurements import LocalMeasurements
from distinv.placements.partial import Partial
from distinv.placements.row_bands import shard_rows
from operators import operator_list, relative_error

IMG = (3, 16, 12)


def check_partial_sums_reduce_to_the_replicated_results(ctx):
    torch.manual_seed(0)
    physics = distribute(operator_list("mixed", 5, IMG), ctx)
    fidelity = distribute(L2(), ctx)
    x = torch.rand(2, *IMG)
    y = physics.A(x)
    partials = {
        "A_adjoint": (physics.A_adjoint(y, gather=False), physics.A_adjoint(y)),
        "A_adjoint_A": (physics.A_adjoint_A(x, gather=False), physics.A_adjoint_A(x)),
        "A_vjp": (physics.A_vjp(x, y, gather=False), physics.A_vjp(x, y)),
        "fn": (fidelity.fn(x, y, physics, gather=False), fidelity.fn(x, y, physics)),
        "grad": (fidelity.grad(x, y, physics, gather=False), fidelity.grad(x, y, physics)),
    }
    return {
        name: (type(part) is Partial and torch.is_tensor(part), relative_error(part.reduce(), whole))
        for name, (part, whole) in partials.items()
    }


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_gather_false_sums_are_partial_and_reduce_to_the_replicated_result(ranks, world_size):
    for per_call in ranks(world_size).run(check_partial_sums_reduce_to_the_replicated_results):
        for name, (typed, error) in per_call.items():
            assert typed, f"{name}(gather=False) is not a Partial tensor"
            assert error < 1e-5, (name, error)


def check_every_sharded_type_gathers_to_the_replicated_value(ctx):
    torch.manual_seed(0)
    physics = distribute(operator_list("mixed", 5, IMG), ctx)
    torch.manual_seed(0)
    denoiser = distribute(DnCNN(3, 3, depth=3, nf=8, pretrained=None), ctx, patch_size=8, overlap=4)
    x = torch.rand(1, *IMG)
    local = physics.A(x, gather=False)
    with torch.no_grad():
        tiles, whole = denoiser.tiles(x, 0.1), denoiser(x, 0.1)
        zeros_elsewhere = denoiser(x, 0.1, gather=False)
    bands = shard_rows(ctx, x)
    return {
        "measurements": (isinstance(local, LocalMeasurements), relative_error(local.gather(), physics.A(x))),
        "tiles": (True, relative_error(tiles.gather(), whole)),
        "denoiser partial": (type(zeros_elsewhere) is Partial, relative_error(zeros_elsewhere.reduce(), whole)),
        "row bands": (True, relative_error(bands.gather(), x)),
    }


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_measurements_tiles_and_bands_gather_with_one_verb(ranks, world_size):
    for per_type in ranks(world_size).run(check_every_sharded_type_gathers_to_the_replicated_value):
        for name, (typed, error) in per_type.items():
            assert typed, name
            assert error < 1e-6, (name, error)


def test_measurements_marked_by_hand_say_how_to_gather_them():
    with pytest.raises(ValueError, match="physics.local_measurements"):
        LocalMeasurements([torch.zeros(1)], [0], 2).gather()


def test_arithmetic_on_a_partial_sum_gives_a_plain_tensor():
    part = Partial(torch.ones(2, 3), ctx=None)
    assert type(part * 2) is torch.Tensor and type(part.local()) is torch.Tensor
    assert torch.equal(part + 1, torch.full((2, 3), 2.0))
