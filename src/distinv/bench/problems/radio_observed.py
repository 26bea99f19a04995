"""Radio interferometric imaging of an observation: the visibilities of a Measurement Set (``radio`` with ``ms:
path``), Stokes I, imaged on the set's own geometry, written out as FITS.

- **Plan**: built with the ranks' context (``ctx``, as the runner's worker does), the ranks plan the selection
  together, each reading the scalar columns of its stripe of the main table's rows
  (:func:`~distinv.bench.radio.measurement_set.open_measurement_set`); without it, this process reads them all.
- **Operators**: the selected visibilities split into K blocks by time (contiguous ranges of integrations) or by
  channel (contiguous channel ranges); operator ``i`` is the NUFFT of block ``i``'s unflagged visibilities times
  the square root of their imaging weights. The rank owning it reads its rows and channels of the set alone
  (:func:`~distinv.bench.radio.measurement_set.read_block`) when it builds it, and holds its visibilities beside
  it until :meth:`ObservedRadioProblem.measure` takes them.
- **Geometry** (:mod:`~distinv.bench.radio.geometry`: the small-field 2D approximation, no w-term; the field radius
  where its error stays under 1%, ``sqrt(0.01 / (pi w_max))``, is ``info["w_term_radius_arcsec"]``): the phase
  centre is the field's; the cell ``cell_arcsec`` or, by default, the longest baseline's finest fringe at the
  highest frequency over ``2 / uv_extent`` pixels; the size ``size`` or, by default, the primary beam's width
  (``1.13 lambda / D`` at the lowest frequency) in cells, rounded up to a multiple of 16 (16 to 4096; 512 for a set
  without dish diameters).
- **Weighting** (:mod:`~distinv.bench.radio.weighting`): natural, uniform or Briggs ``robust``, against the
  gridded weight sums of every rank's visibilities (one all-reduce), normalised to mean 1 over all visibilities
  (as the synthetic problem's: a PGD step of ``None`` takes ``1 / ||A||^2`` from a power iteration).
- **Units**: the image is in units of ``flux_unit_jy`` Jy per pixel: the reference's peak when a ``reference``
  FITS is given, else the dirty image's peak in Jy/beam (a point source's flux; above the peak brightness per
  pixel of extended emission), so the denoiser sees skies of peak about 1 or below. ``noise_sigma`` (for DPIR's
  coupled steps) is, unless given, the noise the data weights imply, in the
  operators' units.
- **Scores**: with a reference FITS (same grid: its shape, cell and centre are the image's), PSNR against it;
  without, the data residual ``||A x - y|| / ||y||``.
- **Results**: ``reconstruction.fits`` (Jy/pixel), ``dirty.fits`` (Jy/beam) and ``psf.fits`` (peak 1) with the
  image's celestial WCS (:mod:`~distinv.bench.radio.fits_images`), each rank writing its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distinv.bench.nufft import radio_operator
from distinv.bench.problems.base import Problem, check_number
from distinv.bench.radio.geometry import ARCSEC, ImageGeometry, cell_from_baseline, w_term_radius_rad
from distinv.bench.radio.measurement_set import (
    MeasurementSet,
    block_rows,
    open_measurement_set,
    primary_beam_rad,
    read_block,
    w_max_wavelengths,
)
from distinv.bench.radio.weighting import check_weighting, imaging_weights, weight_grid
from distinv.comm.gather import sum_over_ranks
from distinv.placements.measurements import LocalMeasurements

if TYPE_CHECKING:
    from distinv.comm.collectives import Collectives

MIN_SIZE = 16
MAX_DEFAULT_SIZE = 4096
SIZE_STEP = 16
SIZE_WITHOUT_DISHES = 512


def image_geometry(ms: MeasurementSet, size: int | None, cell_arcsec: float | None, uv_extent: float) -> ImageGeometry:
    """The image's grid on the sky (see the module's docstring).

    :raises ValueError: for cells too coarse for the longest baseline (its fringes would alias).
    """
    nyquist = cell_from_baseline(ms.longest_baseline_m, ms.highest_frequency_hz, 1.0)
    if cell_arcsec is None:
        cell = nyquist * uv_extent
    else:
        check_number("cell_arcsec", cell_arcsec, 0, above=True)
        cell = cell_arcsec * ARCSEC
        if cell >= nyquist:
            raise ValueError(
                f"cell_arcsec={cell_arcsec}: the longest baseline ({ms.longest_baseline_m:.0f} m at "
                f"{ms.highest_frequency_hz / 1e9:.4g} GHz) needs cells below {nyquist / ARCSEC:.4g} arcsec (its "
                "Nyquist limit); give a smaller cell or leave cell_arcsec out."
            )
    if size is None:
        beam = primary_beam_rad(ms)
        size = SIZE_WITHOUT_DISHES if math.isnan(beam) else math.ceil(beam / cell / SIZE_STEP) * SIZE_STEP
        size = min(max(size, MIN_SIZE), MAX_DEFAULT_SIZE)
    frequencies = ms.frequencies_hz
    return ImageGeometry(
        (size, size), cell, *ms.phase_centre_rad, float(frequencies.mean()),
        float(frequencies.max() - frequencies.min()),
    )  # fmt: skip


@dataclass
class ObservedRadioProblem(Problem):
    """A :class:`Problem` whose visibilities are read from a Measurement Set (see the module's docstring)."""

    geometry: ImageGeometry | None = None
    weighting: str = "natural"
    robust: float = 0.0
    flux_unit_jy: float | None = None  # None until measure() fits it (no reference)
    estimate_noise: bool = True
    dirty: torch.Tensor | None = None  # A^T y, kept by measure()
    measured: tuple[Any, LocalMeasurements] | None = None  # (the operators, their measurements), kept by measure()

    def measure(self, physics) -> LocalMeasurements:
        """This rank's weighted visibilities ``sqrt(w_k) V_k``, in the operators' units, from the blocks its
        operators read. Completes the operators first, in the same steps on every rank: their imaging weights (the
        gridded weight sums all-reduced once, then three sums for the normalisation and the noise), the flux unit
        (a reference's peak, else the dirty image's in Jy/beam: one all-reduce of the image) and,
        unless given, the noise level. The dirty image is kept (:meth:`sky_images`). Measuring the same operators
        again returns the same measurements (on every rank alike: no communication)."""
        if self.measured is not None and self.measured[0] is physics:
            return self.measured[1]
        ctx = physics.ctx
        device = ctx.device
        ops = list(physics.local_physics)
        n = self.geometry.shape[0]
        grid = torch.zeros(n * n, dtype=torch.float64, device=device)
        for op in ops:
            grid += weight_grid(op.samples_loc.to(device), op.data_weights.to(device), n)
        ctx.all_reduce(grid)
        raw = [imaging_weights(self.weighting, op.samples_loc.to(device), op.data_weights.to(device), grid,
                               self.robust) for op in ops]  # fmt: skip
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # sum of weights, count, sum of w / w_data
        for w, op in zip(raw, ops, strict=True):
            data = op.data_weights.to(device)
            counted = data > 0
            totals += torch.stack([w.sum(), counted.sum().double(), (w[counted] / data[counted]).sum()])
        ctx.all_reduce(totals)
        if not totals[1] > 0 or not totals[0] > 0:  # agreed: every rank holds the same sums
            raise ValueError(
                f"ms={str(self.shared['ms'].path)!r}: every selected visibility is flagged or has weight 0; choose "
                "other rows (field, spw, channels, time_range_s) or weights."
            )
        mean = float(totals[0] / totals[1])
        unit = self.operator_unit(ctx, ops)
        count = float(totals[1])
        y = []
        for w, op in zip(raw, ops, strict=True):
            root = (w / mean).sqrt().float()
            op.setWeight(root)
            op.noise_scale = root
            y.append((op.visibilities.to(device) * root * unit)[None, None])
            op.visibilities = None  # held once: in y from here on
        dirty = self._adjoint_sum(physics, y)
        if self.flux_unit_jy is None:  # the dirty image's peak in Jy/beam: A^T y over unit times the PSF's peak
            peak = float(dirty.max()) / (unit * unit * count)
            self.flux_unit_jy = peak if peak > 0 and math.isfinite(peak) else 1.0
        y = [v / self.flux_unit_jy for v in y]
        self.dirty = dirty / self.flux_unit_jy
        if self.estimate_noise:
            # |noise|^2 of a Stokes I visibility averages 2 / w_k; the operators' noise is sigma (n_r + i n_i) / sqrt 2
            self.noise_sigma = math.sqrt(2 * float(totals[2]) / mean / count) * unit / self.flux_unit_jy
        self.measured = (physics, LocalMeasurements(y, physics.local_indexes, self.num_operators))
        return self.measured[1]

    def _adjoint_sum(self, view, terms: list[torch.Tensor]) -> torch.Tensor:
        """``sum_i A_i^T terms_i`` over every rank's operators (one all-reduce), ``(1, 1, H, W)``."""
        shape = (1, 1, *self.geometry.shape)
        parts = [op.A_adjoint(t) for op, t in zip(view.local_physics, terms, strict=True)]
        return sum_over_ranks(view.ctx, parts, shape, torch.float32, view.ctx.device)

    def sky_images(self, view) -> dict[str, tuple[torch.Tensor, str]]:
        """After :meth:`measure`: the dirty image (Jy/beam: the weighted visibilities' Fourier sum over the sum of
        their weights) and the PSF (the dirty image of a 1 Jy source at the phase centre: peak 1 there), each
        ``(1, 1, H, W)`` on every rank, with their ``BUNIT`` (one all-reduce, for the PSF)."""
        ops = list(view.local_physics)
        psf = self._adjoint_sum(view, [op.dataWeight.to(torch.complex64)[None, None] for op in ops])
        peak = psf[0, 0, self.geometry.shape[0] // 2, self.geometry.shape[1] // 2].clone()
        unit = self.operator_unit(view.ctx, ops)
        return {"dirty": (self.dirty / peak * (self.flux_unit_jy / unit), "JY/BEAM"), "psf": (psf / peak, "JY/BEAM")}

    def operator_unit(self, ctx, ops) -> float:
        """The operators' scale (``|A delta|`` of a unit impulse at the centre under weight 1), the same on every
        rank (one all-reduce: a rank without operators learns it from the others)."""
        mine = torch.tensor([float(ops[0].unit) if ops else 0.0, float(bool(ops))], dtype=torch.float64,
                            device=ctx.device)  # fmt: skip
        ctx.all_reduce(mine)
        return float(mine[0] / mine[1])

    def write_results(self, folder: Path, x: Any, view) -> None:
        """``reconstruction.fits`` (``x`` times the flux unit: Jy/pixel), ``dirty.fits`` and ``psf.fits`` in
        ``folder``; every rank writes its rows of each."""
        from distinv.bench.radio.fits_images import write_fits_image

        ctx = view.ctx
        extra = {"FLUXUNIT": (self.flux_unit_jy, "Jy/pixel per image unit"), "WEIGHTNG": self.weighting}
        write_fits_image(folder / "reconstruction.fits", x, self.geometry, "JY/PIXEL", ctx, extra,
                         scale=self.flux_unit_jy)  # fmt: skip
        for name, (image, bunit) in self.sky_images(view).items():
            write_fits_image(folder / f"{name}.fits", image, self.geometry, bunit, ctx, extra)


def _impulse_unit(op, shape: tuple[int, int]) -> float:
    """``|A delta|`` of a unit impulse at the image's centre under weight 1: the NUFFT's normalisation."""
    delta = torch.zeros((1, 1, *shape), device=op.samples_loc.device)
    delta[0, 0, shape[0] // 2, shape[1] // 2] = 1
    return float(op.A(delta).abs().reshape(-1)[0])


def _operator(index: int, device: torch.device, shared: dict):
    """Operator ``index``: the NUFFT of its block's unflagged visibilities (read from the set here), weight 1 until
    :meth:`ObservedRadioProblem.measure` gives it its imaging weights."""
    ms: MeasurementSet = shared["ms"]
    geometry: ImageGeometry = shared["geometry"]
    rows, channels = block_rows(ms, shared["split"], index, shared["bounds"])
    block = read_block(ms, rows, channels)
    u, v = block.uv_wavelengths()
    keep = block.weights > 0
    omega = geometry.omega(u[keep], v[keep])
    data_weights, visibilities = block.weights[keep], block.visibilities[keep]
    if omega.shape[1] == 0:  # every visibility flagged: one sample of weight 0 keeps the NUFFT's shapes
        omega = torch.zeros(2, 1)
        data_weights, visibilities = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.complex64)
    op = radio_operator(geometry.shape, omega, None, backend=shared["backend"], device=device)
    op.unit = _impulse_unit(op, geometry.shape)
    op.data_weights = data_weights.to(device)
    op.visibilities = visibilities.to(device)
    return op


def block_counts(ms: MeasurementSet, split: str, bounds: list[tuple[int, int]]) -> list[float]:
    """The visibilities (rows x channels) of each block, for balancing the operators over ranks."""
    counts = []
    for k in range(len(bounds)):
        rows, (first, stop) = block_rows(ms, split, k, bounds)
        counts.append(float(len(rows) * (stop - first)))
    return counts


def build_observed(
    ms: str,
    size: int | None,
    num_operators: int,
    split: str,
    weighting: str,
    robust: float,
    backend: str,
    noise_sigma: float | None,
    seed: int,
    uv_extent: float,
    selection: dict,
    cell_arcsec: float | None = None,
    reference: str | None = None,
    check_only: bool = False,
    ctx: Collectives | None = None,
) -> Problem | None:
    """The radio problem of the Measurement Set ``ms`` (see the module's docstring; ``selection``: the keys of
    :func:`~distinv.bench.radio.measurement_set.open_measurement_set`).

    :raises ValueError: naming the parameter: a bad selection, cell or reference, or more operators than blocks.
    """
    from distinv.bench.problems.radio import block_bounds

    check_weighting(weighting, robust)
    if noise_sigma is not None:
        check_number("noise_sigma", noise_sigma, 0, above=True)
    observed = open_measurement_set(ms, **selection, ctx=ctx)
    num_blocks = len(observed.time_steps) if split == "time" else observed.num_channels
    if num_operators > num_blocks:
        raise ValueError(
            f"num_operators={num_operators}: the selection has {num_blocks} {split} step(s) to split by {split}; "
            f"lower num_operators or choose split={'channel' if split == 'time' else 'time'}."
        )
    truth, geometry, unit = _reference(reference, size, cell_arcsec, observed, uv_extent)
    if check_only:
        return None
    bounds = [tuple(b) for b in block_bounds(num_blocks, num_operators)]
    beam = primary_beam_rad(observed)
    info = {
        "visibilities": int(len(observed.rows) * observed.num_channels),
        "rows": int(len(observed.rows)),
        "measurement_set": str(observed.path),
        "cell_arcsec": geometry.cell_rad / ARCSEC,
        "w_term_radius_arcsec": w_term_radius_rad(w_max_wavelengths(observed)) / ARCSEC,
        "primary_beam_arcsec": beam / ARCSEC if not math.isnan(beam) else None,
        "weighting": weighting if weighting != "briggs" else f"briggs {robust}",
    }
    return ObservedRadioProblem(
        name="radio",
        ground_truth=truth,
        num_operators=num_operators,
        factory=_operator,
        shared={"ms": observed, "geometry": geometry, "split": split, "bounds": bounds, "backend": backend},
        noise_sigma=noise_sigma if noise_sigma is not None else 0.0,
        seed=seed,
        init_name="dirty image, scaled to fit the data",
        init=_dirty_start,
        operator_costs=block_counts(observed, split, bounds),
        data_range=float(truth.max() - truth.min()) or 1.0 if reference is not None else 1.0,
        info=info,
        has_reference=reference is not None,
        geometry=geometry,
        weighting=weighting,
        robust=float(robust),
        flux_unit_jy=unit,
        estimate_noise=noise_sigma is None,
    )


def _dirty_start(problem: Problem, physics, y_local) -> torch.Tensor:
    from distinv.bench.problems.radio import dirty_image

    return dirty_image(problem, physics, y_local)


def _reference(reference, size, cell_arcsec, observed: MeasurementSet, uv_extent: float):
    """The ground truth ``(1, 1, N, N)`` (the reference over its peak, else zeros: the shape alone), the image
    geometry and the flux unit (the reference's peak, Jy/pixel; None without a reference)."""
    if reference is None:
        geometry = image_geometry(observed, size, cell_arcsec, uv_extent)
        return torch.zeros((1, 1, *geometry.shape)), geometry, None
    from distinv.bench.radio.fits_images import read_fits_image

    image, ref_geometry, _ = read_fits_image(reference, "reference")
    height, width = ref_geometry.shape
    if height != width or size is not None and size != height:
        raise ValueError(
            f"reference={reference!r}: a {height}x{width} image; give a square reference, and size={height} or no "
            "size (the reference sets it)."
        )
    cell_ref = ref_geometry.cell_rad / ARCSEC
    if cell_arcsec is not None and not math.isclose(cell_arcsec, cell_ref, rel_tol=1e-6):
        raise ValueError(f"cell_arcsec={cell_arcsec}: the reference's cells are {cell_ref:.6g} arcsec; leave it out.")
    geometry = image_geometry(observed, height, cell_ref, uv_extent)
    d_ra = (ref_geometry.ra_rad - geometry.ra_rad + math.pi) % (2 * math.pi) - math.pi  # RA wraps at 0 = 2 pi
    offset = math.hypot(d_ra * math.cos(geometry.dec_rad), ref_geometry.dec_rad - geometry.dec_rad)
    if offset > 0.5 * geometry.cell_rad:
        raise ValueError(
            f"reference={reference!r}: its centre is {offset / ARCSEC:.3g} arcsec from the field's phase centre; give "
            "a reference centred on the phase centre (pixel (N // 2, N // 2))."
        )
    peak = float(image.max())
    if not peak > 0:
        raise ValueError(f"reference={reference!r}: its peak is {peak}; give a sky with positive flux.")
    return image / peak, geometry, peak


def signal_shape(size: int | None, ms: str, cell_arcsec: float | None, uv_extent: float, reference: str | None,
                 selection: dict) -> tuple[int, ...]:  # fmt: skip
    """``(1, 1, N, N)`` of the set's image (reads the plan: the header and scalar columns)."""
    observed = open_measurement_set(ms, **selection)
    truth, _, _ = _reference(reference, size, cell_arcsec, observed, uv_extent)
    return tuple(truth.shape)


__all__ = ["ObservedRadioProblem", "build_observed", "image_geometry", "signal_shape"]
