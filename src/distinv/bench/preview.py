"""PNG previews of a problem: its ground truth, one measurement and the initial reconstruction (and, for a radio
observation, its dirty image and PSF, also as FITS).

Volumes show their middle z-slice; radio images use an asinh stretch (the usual display for skies spanning
decades of brightness), north up and east left as viewers show FITS skies, and the radio measurement is shown
where it lies, on the uv plane (v up).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from distinv.bench.problems import Problem
from distinv.comm.context import DistributedContext


def _middle_slice(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` to its middle ``(B, C, H, W)`` z-slice; 2D tensors pass through."""
    return t[:, :, t.shape[2] // 2] if t.ndim == 5 else t


def _stretch(picture: torch.Tensor, low: float, high: float, asinh: float | None = None) -> torch.Tensor:
    """Map ``[low, high]`` to ``[0, 1]``; with ``asinh``, through ``asinh(v / a) / asinh(1 / a)``."""
    v = ((picture - low) / max(high - low, 1e-12)).clamp(0, 1)
    return torch.asinh(v / asinh) / math.asinh(1 / asinh) if asinh else v


def _save(picture: torch.Tensor, path: Path) -> Path:
    """``(C, H, W)`` in [0, 1], C = 1 or 3, as an 8-bit PNG."""
    from PIL import Image

    array = (picture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def uv_plane_amplitudes(visibilities: torch.Tensor, samples_loc: torch.Tensor, size: int) -> torch.Tensor:
    """Mean log-amplitude of the visibilities in each cell of a ``size x size`` uv grid, ``(1, size, size)``
    in [0, 1]; each visibility also marks its Hermitian twin at ``-uv`` (the sky is real). Empty cells are 0."""
    omega = torch.cat([samples_loc, -samples_loc], dim=1).double()
    amplitude = torch.log10(visibilities.reshape(-1).abs().double() + 1e-12).repeat(2)
    cells = ((omega + math.pi) / (2 * math.pi) * size).floor().long().clamp(0, size - 1)
    flat = cells[0] * size + cells[1]
    total = torch.zeros(size * size, dtype=torch.float64).index_add_(0, flat, amplitude)
    count = torch.bincount(flat, minlength=size * size).double()
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
    seen = mean[count > 0]
    low, high = seen.min().item(), seen.max().item()
    picture = torch.nan_to_num(0.1 + 0.9 * (mean - low) / max(high - low, 1e-12), nan=0.0)
    return picture.float().view(1, size, size)


def image_picture(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """An image or volume of the problem (ground truth, start, reconstruction) as ``(C, H, W)`` in [0, 1]: a
    volume's middle z-slice; radio skies through an asinh stretch."""
    if problem.name == "radio":
        return north_up(_stretch(x.detach().float().cpu()[0], 0.0, problem.data_range, 0.02))
    return _stretch(_middle_slice(x.detach().float().cpu())[0], 0.0, problem.data_range)


def north_up(picture: torch.Tensor) -> torch.Tensor:
    """A sky picture ``(C, H, W)`` (row 0 south, as its FITS image) turned for a PNG, whose first row is the top."""
    return picture.flip(-2)


def measurement_picture(problem: Problem, operator, y: torch.Tensor) -> torch.Tensor:
    """One measurement as ``(C, H, W)`` in [0, 1]: radio visibilities on the uv plane, others min-max scaled."""
    y = y.detach().cpu()
    if problem.name == "radio":
        return north_up(uv_plane_amplitudes(y, operator.samples_loc.cpu(), problem.ground_truth.shape[-1]))
    y = _middle_slice(y)[0].float()
    return _stretch(y, y.min().item(), y.max().item())


def save_pictures(pictures: dict[str, torch.Tensor], out_dir: str | Path) -> dict[str, Path]:
    """``name.png`` for each picture, each written atomically (a reader never sees half a file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, picture in pictures.items():
        tmp = _save(picture, out / f".{name}.tmp.png")
        paths[name] = tmp.replace(out / f"{name}.png")
    return paths


def write_previews(problem: Problem, out_dir: str | Path) -> tuple[dict[str, Path], float | None]:
    """Build the problem in this process, measure, start a reconstruction and write ``ground_truth.png`` (when the
    problem has one), ``measurement.png`` (operator 0) and ``initial.png``; for an observation (``radio`` with
    ``ms:``), also ``dirty.png`` and ``psf.png``, and the same images as ``dirty.fits`` and ``psf.fits`` with their
    sky coordinates. Returns the paths and the start's PSNR (dB; None without a ground truth)."""
    from distinv.bench.problems.radio_observed import ObservedRadioProblem

    out = Path(out_dir)
    with DistributedContext(env={}) as ctx:
        physics = problem.distribute(ctx)
        y_local = problem.measure(physics)
        x0 = problem.initial(physics, y_local).cpu()
        pictures = {"ground_truth": image_picture(problem, problem.ground_truth)} if problem.has_reference else {}
        pictures["measurement"] = measurement_picture(problem, physics.local_physics[0], y_local[0])
        pictures["initial"] = image_picture(problem, x0)
        fits = {}
        if isinstance(problem, ObservedRadioProblem):
            from distinv.bench.radio.fits_images import write_fits_image

            for name, (image, bunit) in problem.sky_images(physics).items():
                pictures[name] = north_up(_stretch(image[0].cpu(), 0.0, float(image.max()), asinh=0.02))
                fits[f"{name}_fits"] = write_fits_image(out / f"{name}.fits", image, problem.geometry, bunit, ctx)
    return {**save_pictures(pictures, out), **fits}, problem.psnr(x0) if problem.has_reference else None


def describe(problem: Problem, x0_psnr: float | None) -> str:
    """One line: the problem, its shape, operators, start and the start's PSNR (when it has a ground truth)."""
    shape = "x".join(map(str, problem.ground_truth.shape[1:]))
    kind = "ground truth" if problem.has_reference else "image"
    score = f" (PSNR {x0_psnr:.2f} dB)" if x0_psnr is not None else " (no ground truth: no PSNR)"
    return f"{problem.name}: {kind} {shape}, {problem.num_operators} operators, start: {problem.init_name}{score}"
