"""Where an interferometer samples the sky's Fourier plane: an antenna layout, and the baselines' tracks as
the earth turns (earth-rotation synthesis), over time steps and frequency channels.

Units: antenna positions and baselines in metres, local (east, north, up); angles in degrees unless named
``_rad``; uv coordinates in wavelengths.
"""

from __future__ import annotations

import math

import torch

SPEED_OF_LIGHT = 299_792_458.0  # m/s


def antenna_layout(
    num_antennas: int,
    max_radius_m: float = 4000.0,
    core_fraction: float = 0.4,
    core_radius_m: float = 400.0,
    num_arms: int = 3,
    seed: int = 0,
) -> torch.Tensor:
    """A dense core plus logarithmic spiral arms (like MeerKAT, the VLA or SKA-Mid): short baselines for
    extended emission, long ones for resolution. Shape ``(num_antennas, 3)``, float64, metres (east, north, up),
    up = 0 (a flat site)."""
    g = torch.Generator().manual_seed(seed)
    num_core = max(1, round(core_fraction * num_antennas))
    num_arm = num_antennas - num_core
    # Core: uniform over a disk (sqrt of a uniform radius).
    r = core_radius_m * torch.sqrt(torch.rand(num_core, generator=g, dtype=torch.float64))
    phi = 2 * math.pi * torch.rand(num_core, generator=g, dtype=torch.float64)
    core = torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=1)
    # Arms: radii log-spaced from the core's edge outwards, angle winding with log radius, a little scatter.
    index = torch.arange(num_arm, dtype=torch.float64)
    arm = index % num_arms
    step = torch.div(index, num_arms, rounding_mode="floor")
    per_arm = max(1, math.ceil(num_arm / num_arms))
    radius = core_radius_m * (max_radius_m / core_radius_m) ** ((step + 1) / per_arm)
    angle = 2 * math.pi * arm / num_arms + 1.2 * torch.log(radius / core_radius_m)
    angle = angle + 0.05 * torch.randn(num_arm, generator=g, dtype=torch.float64)
    arms = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    east_north = torch.cat([core, arms])
    return torch.cat([east_north, torch.zeros(num_antennas, 1, dtype=torch.float64)], dim=1)


def baselines(positions: torch.Tensor) -> torch.Tensor:
    """Every antenna pair ``i < j``: ``positions[j] - positions[i]``, shape ``(A (A - 1) / 2, 3)``."""
    i, j = torch.triu_indices(len(positions), len(positions), offset=1)
    return positions[j] - positions[i]


def earth_rotation_uvw(
    baselines_enu: torch.Tensor, hour_angles_rad: torch.Tensor, latitude_deg: float, declination_deg: float
) -> torch.Tensor:
    """The ``(u, v, w)`` of every baseline at every hour angle, shape ``(3, T, B)`` for T hour angles and B
    baselines, in metres (u east-west, v north-south, w towards the source).

    Local (east, north, up) baselines turn into equatorial ``(X, Y, Z)`` at the site's latitude, then project
    onto the frame facing the source at the given declination and hour angle (Thompson, Moran & Swenson, 4.1).
    """
    lat, dec = math.radians(latitude_deg), math.radians(declination_deg)
    east, north, up = baselines_enu.unbind(dim=1)
    bx = -north * math.sin(lat) + up * math.cos(lat)
    by = east
    bz = north * math.cos(lat) + up * math.sin(lat)
    h = hour_angles_rad.to(torch.float64).view(-1, 1)
    u = torch.sin(h) * bx + torch.cos(h) * by
    v = -math.sin(dec) * torch.cos(h) * bx + math.sin(dec) * torch.sin(h) * by + math.cos(dec) * bz
    w = math.cos(dec) * torch.cos(h) * bx - math.cos(dec) * torch.sin(h) * by + math.sin(dec) * bz
    return torch.stack([u, v, w])


def earth_rotation_uv(
    baselines_enu: torch.Tensor,
    hour_angles_rad: torch.Tensor,
    wavelengths_m: torch.Tensor,
    latitude_deg: float,
    declination_deg: float,
) -> torch.Tensor:
    """The uv coordinates of every baseline at every hour angle and wavelength, shape ``(2, T, C, B)`` for T hour
    angles, C wavelengths and B baselines, in wavelengths (rows: u east-west, v north-south): the ``(u, v)`` of
    :func:`earth_rotation_uvw` over each wavelength."""
    uvw = earth_rotation_uvw(baselines_enu, hour_angles_rad, latitude_deg, declination_deg)
    inv_lambda = 1.0 / wavelengths_m.to(torch.float64).view(1, -1, 1)
    return uvw[:2, :, None, :] * inv_lambda


def enu_to_itrf(positions_enu: torch.Tensor, latitude_deg: float, longitude_deg: float, height_m: float = 0.0):
    """Local (east, north, up) antenna positions ``(A, 3)`` around a site at ``latitude_deg``, ``longitude_deg``
    (on a spherical earth of radius 6371 km, ``height_m`` above it) as geocentric ITRF ``(X, Y, Z)`` metres, the
    Measurement Set's ANTENNA ``POSITION``; differences keep the baselines' lengths."""
    lat, lon = math.radians(latitude_deg), math.radians(longitude_deg)
    east = torch.tensor([-math.sin(lon), math.cos(lon), 0.0], dtype=torch.float64)
    north = torch.tensor([-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)])
    up = torch.tensor([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
    centre = (6_371_000.0 + height_m) * up.to(torch.float64)
    frame = torch.stack([east, north.to(torch.float64), up.to(torch.float64)])  # rows: the local axes in ITRF
    return centre + positions_enu.to(torch.float64) @ frame
