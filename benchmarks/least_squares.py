"""A_dagger on the README's kind of stack: the closed form against CG, side by side in one process.

K anisotropic Gaussian blurs (``BlurFFT``, circular boundary, std 3 and 0.8 pixels by default) of a colour
image, noisy measurements. For each solver: seconds, the relative residual of the normal equations
``||A^T A x - A^T y|| / ||A^T y||`` (computed with deepinv's own stacked operator, not with the solver's
bookkeeping), and the distance to the closed-form solution. The closed form is the exact minimum-norm
least-squares solution (to float precision); CG with its default 100 iterations stops far from it on such a
stack, and now says so with a warning.

    python benchmarks/least_squares.py                  # K=8, 3x256x256, CG 100 and 1000 iterations
    python benchmarks/least_squares.py --size 512 --k 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch


def build(k: int, size: int, noise: float, sigma: tuple[float, float]):
    from deepinv.physics import BlurFFT, StackedLinearPhysics
    from deepinv.physics.functional.blur import gaussian_blur

    from distinv import DistributedContext, distribute

    operators = [
        BlurFFT(img_size=(3, size, size), filter=gaussian_blur(sigma=sigma, angle=180.0 * i / k)) for i in range(k)
    ]
    ctx = DistributedContext(seed=0, device_mode="cpu", num_threads=1).__enter__()
    x = torch.rand(1, 3, size, size)
    reference = StackedLinearPhysics(operators)
    y = reference.A(x)
    y = type(y)([t + noise * torch.randn_like(t) for t in y])
    return distribute(operators, ctx), reference, y


def solve(physics, y, **kwargs) -> tuple[torch.Tensor, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        x = physics.A_dagger(y, **kwargs)
        return x, time.perf_counter() - start


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--sigma", type=float, nargs=2, default=[3.0, 0.8], help="the blurs' std along and across")
    parser.add_argument("--cg", type=int, nargs="+", default=[100, 1000], help="CG iteration budgets")
    parser.add_argument("--out", default="results/benchmarks/least_squares.json")
    args = parser.parse_args()

    physics, reference, y = build(args.k, args.size, args.noise, tuple(args.sigma))
    aty = reference.A_adjoint(y)
    x_fft, seconds = solve(physics, y, solver="fft")
    rows = [
        {"solver": "fft (closed form)", "seconds": seconds, "residual": relative(reference.A_adjoint_A(x_fft), aty)}
    ]
    rows[0]["from_closed_form"] = 0.0
    for budget in args.cg:
        x_cg, seconds = solve(physics, y, solver="CG", max_iter=budget, tol=1e-7)
        info = physics.last_solve
        rows.append(
            {
                "solver": f"CG, {budget} iterations",
                "seconds": seconds,
                "residual": relative(reference.A_adjoint_A(x_cg), aty),
                "from_closed_form": relative(x_cg, x_fft),
                "converged": info.converged,
            }
        )
    result = {"sigma": args.sigma, "k": args.k, "image": [3, args.size, args.size], "noise": args.noise, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"K={args.k} blurs (sigma {args.sigma}) of 3x{args.size}x{args.size}, noise {args.noise}, one process")
    print(f"{'solver':<22} {'seconds':>8} {'normal-eq. residual':>20} {'from closed form':>17}")
    for row in rows:
        print(f"{row['solver']:<22} {row['seconds']:8.3f} {row['residual']:20.2e} {row['from_closed_form']:17.2%}")


if __name__ == "__main__":
    main()
