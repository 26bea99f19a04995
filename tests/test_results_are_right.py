"""Results are what they say: the tiled output in the network's dtype, automatic tiling per image size and dtype,
small images on many ranks, one network on every rank, NaN-safe replication checks, inference without a graph,
and least squares that is exact (or says it is not)."""

from __future__ import annotations

import warnings

import pytest
import torch
from deepinv.models import DRUNet
from deepinv.physics import Blur, StackedLinearPhysics
from deepinv.physics.functional.blur import gaussian_blur

from distinv import distribute
from distinv.pnp import pnp
from distinv.tiling.geometry import TilePlan
from operators import anisotropic_blur, make_operator, operator_list, relative_error

IMG = (1, 16, 16)


class SmallNet(torch.nn.Module):
    """Three 3x3 convolutions (receptive-field radius 3) and a noise-level input."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, channels, 3, padding=1),
        )

    def forward(self, x, sigma):
        return x - self.body(x) * (1 + 0 * sigma if isinstance(sigma, float) else 1)


class BFloat16Net(SmallNet):
    """Returns bfloat16, as a network under ``torch.autocast`` does."""

    def forward(self, x, sigma):
        return super().forward(x, sigma).to(torch.bfloat16)


# ---------------------------------------------------------------- checks (every rank)
def check_tiled_output_keeps_the_networks_dtype(ctx):
    torch.manual_seed(0)
    net = BFloat16Net()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        tiled = distribute(net, ctx, type_object="denoiser", overlap=8)(x, 0.1)
        untiled = net(x, 0.1)
    return tiled.dtype, (tiled.float() - untiled.float()).abs().max().item()


def check_auto_tiling_per_image_size_and_dtype(ctx, order, dtype):
    torch.manual_seed(0)
    net = SmallNet().to(dtype)
    errors = []
    for size in order:
        x = torch.rand(1, 1, size, size, dtype=dtype)
        with torch.no_grad():
            tiled = distribute(net, ctx, type_object="denoiser", patch_size="auto", overlap=8, memory_budget="256MiB")(
                x, 0.1
            )
            errors.append((tiled - net(x, 0.1)).abs().max().item())
    return errors


def check_small_image_on_many_ranks(ctx, shape):
    torch.manual_seed(0)
    net = SmallNet() if len(shape) == 4 else (lambda x, sigma: x * 2)
    x = torch.rand(*shape)
    with torch.no_grad():
        tiled = distribute(net, ctx, type_object="denoiser", overlap=8, size_multiple=8)(x, 0.1)
        return (tiled - net(x, 0.1)).abs().max().item()


def check_network_is_made_the_same_on_every_rank(ctx):
    torch.manual_seed(1234 + ctx.rank)  # a different random network on each rank, as without a seed
    net = DRUNet(in_channels=1, out_channels=1, nc=[8, 16, 32, 64], pretrained=None)
    denoiser = distribute(net, ctx, overlap=16)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        tiled = denoiser(x, 0.05)
        untiled = net(x, 0.05)  # every rank's net is rank 0's now
    return relative_error(tiled, untiled), sum(p.sum().item() for p in net.parameters())


def check_nan_is_replicated_when_bits_agree(ctx):
    x = torch.tensor([1.0, float("nan"), 3.0])
    ctx.assert_replicated(x, "x")
    y = torch.tensor([1.0, 2.0, 3.0 + ctx.rank])
    try:
        ctx.assert_replicated(y, "y")
    except ValueError:
        return "differ"
    return "same"


def check_inference_needs_no_no_grad(ctx):
    torch.manual_seed(0)
    net = DRUNet(in_channels=1, out_channels=1, nc=[8, 16, 32, 64], pretrained=None)
    assert all(p.requires_grad for p in net.parameters())
    denoiser = distribute(net, ctx, overlap=16)
    x = torch.rand(1, *IMG)
    local = denoiser(x, 0.05, gather=False)
    dphys, _ = blurs(ctx, 2)
    y = dphys.A(x)
    x_hat, records = pnp("hqs", dphys, denoiser, y, dphys.A_adjoint(y), 0.05, iterations=3)
    return local.shape == x.shape, x_hat.requires_grad, x_hat.grad_fn is None, records[-1].data_solver


def blurs(ctx, k):
    factory = lambda i, device, shared: make_operator("blur", i, IMG).to(device)  # noqa: E731
    return distribute(factory, ctx, num_operators=k, type_object="linear_physics"), StackedLinearPhysics(
        operator_list("blur", k, IMG)
    )


def check_fft_least_squares_is_exact(ctx):
    torch.manual_seed(0)
    dphys, ref = blurs(ctx, 4)
    x_true = torch.rand(2, *IMG)
    y = ref.A(x_true)
    y = type(y)([t + 0.01 * torch.randn_like(t) for t in y])
    x_fft = dphys.A_dagger(y)
    fft_info = dphys.last_solve
    x_cg = dphys.A_dagger(y, solver="CG", max_iter=2000, tol=1e-7)
    # The least-squares optimality condition A^T A x = A^T y, checked with deepinv's own stacked operators.
    aty = ref.A_adjoint(y)
    residual = relative_error(ref.A_adjoint_A(x_fft), aty)
    return fft_info.method, residual, relative_error(x_fft, x_cg)


def check_circular_blur_and_prox_are_exact(ctx):
    torch.manual_seed(0)
    kernels = [gaussian_blur(sigma=(1.0, 0.4), angle=a) for a in (0, 60, 120)]
    factory = lambda i, device, shared: Blur(filter=kernels[i], padding="circular").to(device)  # noqa: E731
    dphys = distribute(factory, ctx, num_operators=3, type_object="linear_physics")
    ref = StackedLinearPhysics([Blur(filter=k, padding="circular") for k in kernels])
    z = torch.rand(1, *IMG)
    y = ref.A(torch.rand(1, *IMG))
    gamma = 0.5
    x, info = dphys.solve_normal(ref.A_adjoint(y) + z / gamma, 1 / gamma)
    # The prox's optimality condition: (A^T A + I / gamma) x = A^T y + z / gamma.
    return info.method, relative_error(ref.A_adjoint_A(x) + x / gamma, ref.A_adjoint(y) + z / gamma)


def check_short_cg_warns_and_reports_its_residual(ctx):
    torch.manual_seed(0)
    dphys, ref = blurs(ctx, 3)
    y = ref.A(torch.rand(1, *IMG))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dphys.A_dagger(y, solver="CG", max_iter=2, tol=1e-9)
    info = dphys.last_solve
    return info.method, info.iterations, info.converged, info.relative_residual, [str(w.message) for w in caught]


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("world_size", [1, 2])
def test_tiled_output_is_gathered_in_the_dtype_the_network_returned(ranks, world_size):
    for dtype, error in ranks(world_size).run(check_tiled_output_keeps_the_networks_dtype):
        assert dtype == torch.bfloat16
        assert error == 0.0


@pytest.mark.parametrize("order", [(128, 32), (32, 128)])
def test_automatic_tiling_plans_each_image_size_on_its_own(ranks, order):
    for errors in ranks(2).run(check_auto_tiling_per_image_size_and_dtype, order, torch.float32):
        assert max(errors) < 1e-5


def test_automatic_tiling_probes_in_the_networks_dtype(ranks):
    for errors in ranks(1).run(check_auto_tiling_per_image_size_and_dtype, (64,), torch.float64):
        assert max(errors) < 1e-12


@pytest.mark.parametrize(("shape", "world_size"), [((32, 32), 5), ((16, 16), 3), ((16, 16, 16), 3), ((48, 48), 7)])
def test_a_small_image_on_many_ranks_is_planned_not_refused(shape, world_size):
    plan = TilePlan.build(shape, world_size, None, 32, 8, 393216)
    assert sum(w.owned_pixels for w in plan.windows) == torch.Size(shape).numel()


@pytest.mark.parametrize(("shape", "world_size"), [((1, 1, 32, 32), 3), ((1, 1, 16, 16, 16), 3)])
def test_a_small_image_on_many_ranks_equals_the_untiled_output(ranks, shape, world_size):
    assert max(ranks(world_size).run(check_small_image_on_many_ranks, shape)) < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_a_distributed_network_is_rank_0s_on_every_rank(ranks, world_size):
    results = ranks(world_size).run(check_network_is_made_the_same_on_every_rank)
    assert all(error < 1e-5 for error, _ in results)
    assert len({checksum for _, checksum in results}) == 1


@pytest.mark.parametrize("world_size", [2])
def test_replication_check_compares_bits_so_nan_equals_itself(ranks, world_size):
    assert ranks(world_size).run(check_nan_is_replicated_when_bits_agree) == ["differ"] * world_size


@pytest.mark.parametrize("world_size", [1, 2])
def test_inference_builds_no_graph_and_needs_no_no_grad(ranks, world_size):
    for local_shape_ok, requires_grad, no_graph, solver in ranks(world_size).run(check_inference_needs_no_no_grad):
        assert local_shape_ok and not requires_grad and no_graph
        assert solver == "fft"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_dagger_of_circulant_operators_is_the_exact_least_squares_solution(ranks, world_size):
    for method, residual, against_cg in ranks(world_size).run(check_fft_least_squares_is_exact):
        assert method == "fft"
        assert residual < 1e-4
        assert against_cg < 1e-3


@pytest.mark.parametrize("world_size", [1, 2])
def test_circular_blur_prox_is_solved_in_closed_form(ranks, world_size):
    for method, residual in ranks(world_size).run(check_circular_blur_and_prox_are_exact):
        assert method == "fft"
        assert residual < 1e-5


@pytest.mark.parametrize("world_size", [2])
def test_cg_that_stops_short_says_so_and_reports_its_residual(ranks, world_size):
    results = ranks(world_size).run(check_short_cg_warns_and_reports_its_residual)
    for rank, (method, iterations, converged, residual, messages) in enumerate(results):
        assert (method, iterations, converged) == ("cg", 2, False)
        assert residual > 1e-9
        assert any("CG stopped after 2 iterations" in m for m in messages) == (rank == 0)


def check_circulant_detection(ctx):
    kinds = {
        "BlurFFT": lambda: anisotropic_blur(0, IMG),
        "circular Blur": lambda: Blur(filter=gaussian_blur(sigma=(1.0, 0.4), angle=0), padding="circular"),
        "valid Blur": lambda: Blur(filter=gaussian_blur(sigma=(1.0, 0.4), angle=0), padding="valid"),
    }
    return {name: distribute([make()], ctx).circulant for name, make in kinds.items()}


def test_only_circular_convolutions_take_the_closed_form(ranks):
    assert ranks(1).run(check_circulant_detection)[0] == {"BlurFFT": True, "circular Blur": True, "valid Blur": False}
