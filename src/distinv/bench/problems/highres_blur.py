"""A colour image under K anisotropic Gaussian blurs at different angles, with Gaussian noise."""

from __future__ import annotations

from pathlib import Path

import torch
from deepinv.physics import BlurFFT
from deepinv.physics.functional.blur import gaussian_blur

from distinv.bench.problems.base import Problem, check_positive
from distinv.comm.context import DistributedContext
from distinv.images import dead_leaves, load_image
from distinv.sharded.blur import ShardedBlur

MIN_SIZE = 32


def blur_kernel(index: int, num_operators: int, sigma_major: float, sigma_minor: float) -> torch.Tensor:
    """Operator ``index``'s kernel: elongated along the angle ``180 * index / K`` degrees."""
    return gaussian_blur(sigma=(sigma_major, sigma_minor), angle=180.0 * index / num_operators)


def _blur(index: int, device: torch.device, shared: dict) -> BlurFFT:
    kernel = blur_kernel(index, shared["k"], shared["sigma_major"], shared["sigma_minor"])
    return BlurFFT(img_size=shared["img_size"], filter=kernel, device=device)


def _sharded_blurs(problem: Problem, ctx: DistributedContext) -> ShardedBlur:
    """The same K kernels, applied band by band (every rank all K on its rows)."""
    shared = problem.shared
    kernels = [blur_kernel(i, shared["k"], shared["sigma_major"], shared["sigma_minor"]) for i in range(shared["k"])]
    return ShardedBlur(ctx, kernels)


def _scaled_adjoint(problem: Problem, physics, y_local) -> torch.Tensor:
    """``A^T y / K``: normalised kernels pass the mean unchanged, so this is a (blurred) image in range."""
    return physics.A_adjoint(y_local) / problem.num_operators


def build(
    size: int | tuple[int, int] = 512,
    num_operators: int = 8,
    noise_sigma: float = 0.01,
    sigma_major: float = 3.0,
    sigma_minor: float = 0.5,
    image: str | Path | None = None,
    seed: int = 0,
    check_only: bool = False,
) -> Problem | None:
    """``size``: an int (square) or ``(height, width)``; ``image``: a user file, else a dead-leaves image.
    ``check_only``: validate the parameters and return None (nothing is built)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"size={size}: highres_blur needs at least {MIN_SIZE} pixels per side.")
    check_positive("num_operators", num_operators, 1)
    check_positive("noise_sigma", noise_sigma)
    check_positive("sigma_major", sigma_major, strict=True)
    check_positive("sigma_minor", sigma_minor, strict=True)
    if image is not None and not Path(image).is_file():
        raise ValueError(f"image={str(image)!r} is not a file: give a PNG/JPEG/TIFF path, or none for dead leaves.")
    if check_only:
        return None
    x = load_image(image, height, width) if image is not None else dead_leaves(height, width, seed=seed)
    shared = {
        "k": num_operators,
        "img_size": (3, height, width),
        "sigma_major": sigma_major,
        "sigma_minor": sigma_minor,
    }
    return Problem(
        name="highres_blur",
        ground_truth=x,
        num_operators=num_operators,
        factory=_blur,
        shared=shared,
        noise_sigma=noise_sigma,
        seed=seed,
        init_name="adjoint / K",
        init=_scaled_adjoint,
        info={"image": str(image) if image else "dead_leaves"},
        sharded=_sharded_blurs,
    )
