"""A colour image under K anisotropic Gaussian blurs at different angles, with Gaussian noise."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from deepinv.physics import BlurFFT
from deepinv.physics.functional.blur import gaussian_blur

from distinv.bench.config import in_range, number_hint
from distinv.bench.problems.base import Problem, check_number, check_seed, check_size
from distinv.comm.context import DistributedContext
from distinv.images import dead_leaves, load_image
from distinv.sharded.blur import ShardedBlur

MIN_SIZE = 32
CHANNELS = 3  # dead leaves and a user's image alike are read in colour


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


def image_size(size: Any) -> tuple[int, int]:
    """``(height, width)`` of a ``size``: an int (square) or ``[height, width]``, each a whole number of at least
    ``MIN_SIZE`` pixels.

    :raises ValueError: naming the size and what to give.
    """
    if isinstance(size, list | tuple):
        if len(size) != 2 or not all(in_range(side, MIN_SIZE, whole=True) for side in size):
            raise ValueError(
                f"size={size!r}: give [height, width], each a whole number of at least {MIN_SIZE} pixels, or one "
                f"side for a square{number_hint(size)}."
            )
        return size[0], size[1]
    check_size("highres_blur", size, MIN_SIZE)
    return size, size


def signal_shape(size: Any, **params: Any) -> tuple[int, ...]:
    """The ground truth's shape ``(1, 3, height, width)`` at ``size``, without building it (``params``: the
    problem's other parameters, which do not change it)."""
    return (1, CHANNELS, *image_size(size))


def sharded_halo(
    size: Any, num_operators: int = 8, sigma_major: float = 3.0, sigma_minor: float = 0.5, **params: Any
) -> tuple[int, int]:
    """Rows above and below its band that the sharded physics (:class:`~distinv.sharded.blur.ShardedBlur` of the K
    kernels, periodic) reads: its ``A^T A``'s (the largest of the solver's calls), from the kernels alone.

    :raises ValueError: when a kernel is wider than the image (the sharded blur refuses it).
    """
    kernels = [blur_kernel(i, num_operators, sigma_major, sigma_minor) for i in range(num_operators)]
    # ShardedBlur reads only its context's device (to place the kernels): no process group is needed for its reach
    blur = ShardedBlur(SimpleNamespace(device=torch.device("cpu")), kernels)
    width = image_size(size)[1]
    widest = max(k.shape[-1] for k in blur.kernels)
    if widest > width:
        raise ValueError(
            f"the sharded blur's kernels are {widest} pixels wide, wider than the image ({width}): give a larger "
            "size or smaller sigma_major and sigma_minor."
        )
    return blur.normal_halo()


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
    height, width = image_size(size)
    check_number("num_operators", num_operators, 1, whole=True)
    check_number("noise_sigma", noise_sigma, 0)
    check_number("sigma_major", sigma_major, 0, above=True)
    check_number("sigma_minor", sigma_minor, 0, above=True)
    check_seed(seed)
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
