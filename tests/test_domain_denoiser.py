"""The domain-parallel denoiser: each rank runs the network on its band of rows, exchanging before every layer the
rows that layer reads, and the result is the whole-image network's to float rounding, forward and backward, for any
receptive field (including one wider than a band), 2D and 3D, odd sizes, 1-4 ranks; layers that cannot be split
are refused by name."""

from __future__ import annotations

import pytest
import torch
from deepinv.models import DnCNN, DRUNet, UNet

from distinv import distribute
from distinv.domain.denoiser import DomainParallelDenoiser, band_bounds
from distinv.domain.layers import UnsplittableLayer
from distinv.placements.row_bands import RowBands


def small_drunet(channels: int = 3, dim: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return DRUNet(channels, channels, nc=(8, 12, 16, 20), nb=1, pretrained=None, dim=dim).eval()


def deep_dncnn() -> torch.nn.Module:
    """17 layers of 3x3: a receptive field of 35 rows, wider than the bands below."""
    torch.manual_seed(1)
    return DnCNN(1, 1, depth=17, nf=8, pretrained=None).eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run_domain(ctx, build, shape, sigma, grad):
    """The domain-parallel output (and gradients of a fixed loss) against the whole network's on this rank."""
    network = build()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g)
    weights = torch.rand(shape, generator=g)
    domain = DomainParallelDenoiser(ctx, network)

    def loss_and_grads(f):
        xi = x.clone().requires_grad_(grad)
        out = f(xi)
        if not grad:
            return out.detach(), None, None
        network.zero_grad()
        (out * weights).sum().backward()
        first = next(p for p in network.parameters())
        return out.detach(), xi.grad.clone(), first.grad.clone()

    with torch.set_grad_enabled(grad):
        mine = loss_and_grads(lambda xi: domain(xi, sigma))
        whole = loss_and_grads(lambda xi: network(xi, sigma))
    errors = [relative(mine[0], whole[0])]
    if grad:
        errors += [relative(mine[1], whole[1]), relative(mine[2], whole[2])]
    return errors, domain.bounds_for(shape)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_drunet_on_bands_equals_the_whole_image_network_forward_and_backward(ranks, world_size):
    results = ranks(world_size).run(run_domain, small_drunet, (1, 3, 72, 40), 0.1, True)
    for errors, bounds in results:
        assert all(b % 8 == 0 for b in bounds[:-1])
        assert max(errors) < 1e-5, errors


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_receptive_field_wider_than_a_band_is_still_exact(ranks, world_size):
    results = ranks(world_size).run(run_domain, deep_dncnn, (2, 1, 30, 17), None, True)
    for errors, bounds in results:
        assert max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) < 35
        assert max(errors) < 1e-5, errors


def run_odd_size(ctx):
    from deepinv.models.utils import test_pad

    network = small_drunet()
    x = torch.rand((1, 3, 53, 29), generator=torch.Generator().manual_seed(2))
    domain = DomainParallelDenoiser(ctx, network)
    with torch.no_grad():
        noisy = torch.cat([x, torch.full_like(x[:, :1], 0.1)], 1)
        return relative(domain(x, 0.1), test_pad(network.forward_unet, noisy, 8))


def test_odd_sizes_equal_the_network_on_the_replicate_padded_image(ranks):
    """DRUNet pads sizes that are not multiples of 8 (its own test_pad); the bands do the same at the border."""
    for error in ranks(3).run(run_odd_size):
        assert error < 1e-5


def run_unet_volume(ctx):
    torch.manual_seed(4)
    network = UNet(1, 1, scales=2, batch_norm=False, dim=3).eval()
    x = torch.rand((1, 1, 20, 12, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return relative(DomainParallelDenoiser(ctx, network)(x), network(x))


def test_a_volume_in_slabs_equals_the_whole_volume(ranks):
    for error in ranks(2).run(run_unet_volume):
        assert error < 1e-5


def run_slicewise_volume(ctx):
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    network = SlicewiseDenoiser3D(small_drunet(1), pixels_per_call=4096)  # several calls per pass
    x = torch.rand((1, 1, 40, 32, 32), generator=torch.Generator().manual_seed(7))
    domain = DomainParallelDenoiser(ctx, network)
    bands = domain.shard(x)
    with torch.no_grad():
        replicated = relative(domain(x, 0.05), network(x, 0.05))
        first, last = bands.rows
        sharded = relative(domain(bands, 0.05).local, network(x, 0.05)[:, :, first:last])
    return replicated, sharded


def slicewise_drunet() -> torch.nn.Module:
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    return SlicewiseDenoiser3D(small_drunet(1), pixels_per_call=4096)


def test_a_2d_network_slice_by_slice_over_slabs_equals_the_whole_volume(ranks):
    """The shipped volumes' denoiser: slices across z each rank's own, slices across y and x banded in z; the
    gradients too (the parameters' summed over both kinds of pass and over ranks)."""
    for errors in ranks(3).run(run_slicewise_volume):
        assert max(errors) < 1e-5, errors
    for errors, _ in ranks(2).run(run_domain, slicewise_drunet, (1, 1, 32, 32, 32), 0.05, True):
        assert max(errors) < 1e-5, errors


def run_counted(ctx):
    torch.manual_seed(1)
    network = DnCNN(1, 1, depth=4, nf=8, pretrained=None).eval()
    domain = DomainParallelDenoiser(ctx, network)
    bands = domain.shard(torch.rand((2, 1, 30, 17), generator=torch.Generator().manual_seed(8)))
    before = ctx.bytes_received
    with torch.no_grad():
        domain(bands)
    return ctx.bytes_received - before


def test_a_call_moves_only_the_rows_each_convolution_reads(ranks):
    """DnCNN of four 3x3 layers (1, 8, 8, 8 channels in) on 2 ranks: one row of each layer's input from the one
    neighbour, 2 samples of 17 columns in float32."""
    rows = (1 + 8 + 8 + 8) * 2 * 17 * 4
    assert ranks(2).run(run_counted) == [rows, rows]


def run_sharded(ctx):
    network = small_drunet(1)
    x = torch.rand((1, 1, 48, 32), generator=torch.Generator().manual_seed(6))  # DRUNet pads below 32
    domain = distribute(network, ctx, parallel="domain")
    bands = domain.shard(x)
    with torch.no_grad():
        out = domain(bands, 0.05)
        whole = network(x, 0.05)
    first, last = bands.rows
    return isinstance(out, RowBands), out.bounds == bands.bounds, relative(out.local, whole[:, :, first:last])


def test_bands_in_give_bands_out(ranks):
    for is_bands, same_bounds, error in ranks(3).run(run_sharded):
        assert is_bands and same_bounds and error < 1e-5


def test_bands_start_at_the_alignment_and_are_as_equal_as_it_allows():
    assert band_bounds(1000, 8, 8) == (0, 120, 248, 368, 496, 624, 744, 872, 1000)
    assert band_bounds(53, 3, 8) == (0, 16, 32, 53)
    with pytest.raises(ValueError, match="fewer ranks"):
        band_bounds(40, 8, 8, rows_needed=8)


class GlobalPool(torch.nn.Module):
    """A network distinv does not know."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)


def test_layers_that_cannot_be_split_are_refused_by_name():
    from distinv.denoisers.networks import ResidualDenoiser

    network = DnCNN(1, 1, depth=3, nf=4, pretrained=None)
    network.nl_list[0] = torch.nn.AdaptiveAvgPool2d(1)
    with pytest.raises(UnsplittableLayer, match=r"network\.nl_list\.0 \(AdaptiveAvgPool2d\).*parallel='windows'"):
        DomainParallelDenoiser(_single(), ResidualDenoiser(network))
    trained = UNet(1, 1, scales=2, batch_norm=True).train()
    with pytest.raises(UnsplittableLayer, match="train mode"):
        DomainParallelDenoiser(_single(), trained)
    with pytest.raises(ValueError, match="GlobalPool is not one of them"):
        DomainParallelDenoiser(_single(), GlobalPool())


def _single():
    from distinv.comm.context import DistributedContext

    ctx = DistributedContext(device_mode="cpu", env={})
    return ctx.__enter__()


def test_each_rank_computes_its_own_pixels_only_padded_as_the_network_pads():
    import json
    import subprocess
    import sys

    from distinv.domain.denoiser import band_work

    work = band_work((4096, 4096), 64, 8)
    assert work["pixels_processed_per_rank"] == work["pixels_owned_per_rank"]  # 1.00x at 64 ranks: no halo
    odd = band_work((53, 29), 3, 8)  # bands of 16, 16, 21 rows; the width padded to 32, the last band's rows to 24
    assert odd["pixels_processed_per_rank"] == [16 * 32, 16 * 32, 24 * 32]
    assert odd["pixels_owned_per_rank"] == [16 * 29, 16 * 29, 21 * 29]
    out = subprocess.run(
        [sys.executable, "-m", "distinv", "plan", "--shape", "3", "1000", "600", "--world", "8", "--parallel",
         "domain", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["overhead"] == 1.0
