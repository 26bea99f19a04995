"""The engine on a small multi-blur deconvolution, on N CPU ranks, checked against one process.

Rank r builds only the blur operators it owns (a factory), measures a synthetic colour image through all K
of them with noise, then reconstructs it three ways: the adjoint, the exact pseudo-inverse (distributed CG),
and gradient descent on the distributed L2 data fidelity with the step from the exact operator norm. Rank 0
checks the distributed operators against deepinv's single-process ``StackedLinearPhysics`` and writes a
report (Markdown and JSON) to ``--out``.

    python examples/engine_demo.py --nproc 2          # launches itself with torch.distributed.run
    torchrun --nproc-per-node 2 examples/engine_demo.py --worker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from distinv.bench.launch import torchrun_command


def synthetic_image(size: int, seed: int = 0) -> torch.Tensor:
    """A colour image of overlapping soft disks on a smooth background, shape (1, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = 0.3 + 0.2 * torch.stack([xx, yy, 1 - xx]) * torch.ones(3, 1, 1)
    for _ in range(40):
        cy, cx, radius = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.12]) + torch.tensor([0, 0, 0.02])
        colour = torch.rand(3, 1, 1, generator=g)
        inside = torch.sigmoid((radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()) * size / 2)
        image = image * (1 - inside) + colour * inside
    return image.clamp(0, 1).unsqueeze(0)


def blur(index: int, device: torch.device, shared: dict):
    from deepinv.physics import BlurFFT, GaussianNoise
    from deepinv.physics.functional.blur import gaussian_blur

    angle = 180.0 * index / shared["k"]  # K different directions
    kernel = gaussian_blur(sigma=(2.5, 0.6), angle=angle)
    return BlurFFT(
        img_size=shared["img_size"], filter=kernel, noise_model=GaussianNoise(shared["noise"]), device=device
    )


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / torch.mean((estimate.clamp(0, 1) - truth) ** 2).item())


def worker(args: argparse.Namespace) -> None:
    from deepinv.optim.data_fidelity import L2
    from deepinv.physics import StackedLinearPhysics

    from distinv import DistributedContext, distribute

    with DistributedContext(seed=0, device_mode="cpu") as ctx:
        shared = {"k": args.k, "img_size": (3, args.size, args.size), "noise": args.noise}
        x = synthetic_image(args.size).to(ctx.device)
        physics = distribute(blur, ctx, num_operators=args.k, type_object="linear_physics", shared=shared)
        fidelity = distribute(L2(), ctx)
        y = physics(x)  # noisy measurements of all K operators, on every rank

        timings = {}
        start = time.perf_counter()
        x_adjoint = physics.A_adjoint(y) / args.k
        timings["adjoint"] = time.perf_counter() - start
        start = time.perf_counter()
        sqnorm = physics.compute_sqnorm(x, max_iter=100, tol=1e-5, verbose=False)
        timings["operator_norm"] = time.perf_counter() - start
        start = time.perf_counter()
        x_dagger = physics.A_dagger(y, max_iter=args.cg_iters)
        timings["pseudo_inverse"] = time.perf_counter() - start
        start = time.perf_counter()
        estimate = x_adjoint.clone()
        for _ in range(args.iters):
            estimate = estimate - (1.0 / sqnorm) * fidelity.grad(estimate, y, physics)
        timings["gradient_descent"] = time.perf_counter() - start

        # Collectives run on every rank; only the single-process reference and the report are rank 0's.
        distributed = {"A_adjoint_A": physics.A_adjoint_A(x), "A_adjoint": physics.A_adjoint(y)}
        if ctx.rank == 0:
            reference = StackedLinearPhysics([blur(i, ctx.device, shared) for i in range(args.k)])
            agreement = {
                "A_adjoint_A": rel(distributed["A_adjoint_A"], reference.A_adjoint_A(x)),
                "A_adjoint": rel(distributed["A_adjoint"], reference.A_adjoint(y)),
            }
            report = {
                "world_size": ctx.world_size,
                "operators_per_rank": [len(a) for a in physics.assignment],
                "k": args.k,
                "image": [3, args.size, args.size],
                "noise_sigma": args.noise,
                "squared_operator_norm": sqnorm.item(),
                "psnr_db": {
                    "adjoint": psnr(x_adjoint, x),
                    f"pseudo_inverse_cg{args.cg_iters}": psnr(x_dagger, x),
                    f"gradient_descent_{args.iters}": psnr(estimate, x),
                },
                "relative_difference_to_single_process": agreement,
                "seconds": timings,
            }
            write_report(Path(args.out), report)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def write_report(folder: Path, report: dict) -> None:
    """Atomically write report.json and report.md (a crash never leaves half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# distinv engine demo: {report['k']} blurs of a {report['image'][1]}x{report['image'][2]} colour image "
        f"on {report['world_size']} ranks",
        "",
        f"Operators per rank: {report['operators_per_rank']}; ||A||^2 = {report['squared_operator_norm']:.4f}",
        "",
        "| reconstruction | PSNR (dB) |",
        "|---|---|",
        *[f"| {name} | {value:.2f} |" for name, value in report["psnr_db"].items()],
        "",
        "| distributed vs single process | relative difference |",
        "|---|---|",
        *[f"| {name} | {value:.1e} |" for name, value in report["relative_difference_to_single_process"].items()],
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {name} | {value:.3f} |" for name, value in report["seconds"].items()],
    ]
    for name, text in (("report.json", json.dumps(report, indent=2)), ("report.md", "\n".join(lines) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)
    print("\n".join(lines))
    print(f"\nReport written to {folder / 'report.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="CPU ranks to launch (one core each)")
    parser.add_argument("--k", type=int, default=4, help="number of blur operators")
    parser.add_argument("--size", type=int, default=256, help="image height and width (pixels)")
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise level of each measurement")
    parser.add_argument("--iters", type=int, default=30, help="gradient-descent iterations")
    parser.add_argument("--cg-iters", type=int, default=20, help="conjugate-gradient iterations for A_dagger")
    parser.add_argument("--out", default="results/demo", help="folder for report.md and report.json")
    parser.add_argument("--worker", action="store_true", help="run as one rank (under torchrun or srun)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    # "--name=value" so that torchrun's own parser does not take our options for abbreviations of its own.
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("nproc", "worker")]
    command = torchrun_command(__file__, args.nproc, ["--worker", *forwarded])
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
