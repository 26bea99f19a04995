"""Radio interferometry parts: the finufft operator equals deepinv's, the sky and the uv coverage are sane."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from deepinv.physics import RadioInterferometry

from distinv.bench.nufft import FinufftRadio, choose_backend
from distinv.bench.uv_coverage import antenna_layout, baselines, earth_rotation_uv
from distinv.images import radio_sky
from distinv.testing import dot_test
from operators import relative_error


def _samples(count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, count, generator=g) * 2 - 1) * math.pi


@pytest.mark.parametrize("shape", [(32, 32), (33, 20)])
def test_finufft_operator_equals_deepinvs_radio_interferometry(shape):
    warnings.simplefilter("ignore")
    omega, weight = _samples(2000), torch.rand(2000) + 0.5
    x = torch.rand(2, 1, *shape)
    ours, theirs = FinufftRadio(shape, omega, weight), RadioInterferometry(shape, omega, dataWeight=weight)
    y = theirs.A(x)
    # torchkbnufft's table interpolation is accurate to about 1e-3; finufft is asked for 1e-5.
    assert relative_error(ours.A(x), y) < 3e-3
    assert relative_error(ours.A_adjoint(y), theirs.A_adjoint(y)) < 3e-3


def test_finufft_operator_passes_the_dot_test_and_its_gradients_are_its_adjoint():
    op = FinufftRadio((24, 24), _samples(500, seed=1))
    x = torch.rand(1, 1, 24, 24, requires_grad=True)
    y = op.A(x)
    v = torch.randn_like(y)
    dot_test(op, x, v, rtol=1e-5, normal=False)
    torch.real(y * v.conj()).sum().backward()
    assert torch.allclose(x.grad, op.A_adjoint(v), atol=1e-6)
    v = v.detach().requires_grad_()
    g = torch.rand(1, 1, 24, 24)
    (op.A_adjoint(v) * g).sum().backward()
    assert torch.allclose(v.grad, op.A(g), atol=1e-6)


def test_auto_backend_is_finufft_on_cpu_and_torchkbnufft_on_gpu():
    assert choose_backend("auto", "cpu") == "finufft"
    assert choose_backend("auto", "cuda") == "torchkbnufft"
    with pytest.raises(ValueError, match="backend='finufft'"):
        choose_backend("finufft", "cuda")


def test_radio_sky_is_positive_with_the_chosen_dynamic_range():
    sky = radio_sky(128, dynamic_range=1e3, seed=2)
    assert sky.shape == (1, 1, 128, 128) and sky.min() >= 0 and sky.max() == 1
    for low in (1e-3, 1e-2, 1e-1):  # brightness spread over the decades down to 1 / dynamic_range
        assert ((sky >= low) & (sky < 10 * low)).any(), low
    assert (radio_sky(128, dynamic_range=10, seed=2) > 0.01).float().mean() > (sky > 0.01).float().mean()
    assert torch.equal(sky, radio_sky(128, dynamic_range=1e3, seed=2))
    assert (sky > 1e-3).float().mean() > 0.05  # extended emission, not only points


def test_array_has_a_dense_core_and_long_arms():
    layout = antenna_layout(64, max_radius_m=4000, core_radius_m=400)
    radius = layout[:, :2].norm(dim=1)
    assert layout.shape == (64, 3) and radius.max() <= 4000 * 1.01
    assert 0.3 < (radius <= 400).float().mean() < 0.5
    lengths = baselines(layout)[:, :2].norm(dim=1)
    assert len(lengths) == 64 * 63 // 2 and lengths.max() / lengths.min() > 100


def test_earth_rotation_draws_ellipses_and_frequency_scales_them():
    b = torch.tensor([[1000.0, 0.0, 0.0]], dtype=torch.float64)  # an east-west baseline
    h = torch.linspace(-math.pi, math.pi, 73, dtype=torch.float64)[:-1]
    uv = earth_rotation_uv(b, h, torch.tensor([0.2, 0.1], dtype=torch.float64), latitude_deg=-30, declination_deg=-60)
    u, v = uv[0, :, 0, 0], uv[1, :, 0, 0]
    # an east-west baseline traces u^2 + (v / sin dec)^2 = (L / lambda)^2 over a full turn
    assert torch.allclose(u**2 + (v / math.sin(math.radians(-60))) ** 2, torch.full_like(u, 5000.0**2))
    assert torch.allclose(uv[:, :, 1], 2 * uv[:, :, 0])  # half the wavelength, twice the frequency
