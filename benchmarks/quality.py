"""Reconstruction quality on every benchmark problem at its quick size: the problem's initialisation, the PnP
iterations with no prior (the identity as denoiser: what the data steps alone reach), PnP with deepinv's TV
denoiser, and the same PnP with the shipped (trained) denoiser.

All PnP runs use the same algorithm, step, sigma schedule and iterations, through the distributed physics and
the tiled denoiser (one rank, one core). TV gets an oracle: its threshold ``scale * sigma`` takes the best
``scale`` of ``--tv-scales`` against the ground truth; the trained denoiser gets no tuning per problem.

    python benchmarks/quality.py                          # about 30 minutes on one core
    python benchmarks/quality.py --problems radio --radio results/training/radio-v1.ckpt
    python benchmarks/quality.py --problems radio radio_observation   # the same sky through a Measurement Set
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from deepinv.models import Denoiser


@dataclass
class Setting:
    """One problem at its quick size and the PnP that reconstructs it."""

    params: dict
    algorithm: str
    step: float | None
    sigma_start: float
    sigma_end: float
    iterations: int
    cg_iterations: int = 10
    coupling: float | None = None  # if set, DPIR steps sigma_k^2 / (coupling * noise^2) instead of ``step``
    denoiser_kwargs: dict = field(default_factory=dict)
    problem: str | None = None  # the benchmark problem, when the setting's name is not one
    observed: bool = False  # a simulated Measurement Set of a FITS sky model (synthetic_observation.py) instead


# DPIR's HQS: the denoiser's level decreases geometrically to (about) the noise level, and each data prox weighs
# the data by sigma_k^2 / (0.23 noise^2) (strongly first, less later). Radio's noise is 1e-3 in the visibilities'
# units, so its coupled steps are ~1e4 and each data prox is, in effect, 20 conjugate-gradient steps on the normal
# equations from the current iterate; its levels start lower (0.03), at the size of that iterate's error. At that
# noise the data alone come close to any prior; "radio_noisy" (10x the noise, DPIR's levels) is where one matters.
SETTINGS = {
    "highres_blur": Setting({"size": 512}, "hqs", None, 0.19, 0.01, 8, coupling=0.23),
    "tomography_2d": Setting({"size": 512}, "hqs", None, 0.19, 0.01, 8, cg_iterations=5, coupling=0.23),
    "tomography_3d": Setting({"size": 64}, "hqs", None, 0.19, 0.01, 8, cg_iterations=5, coupling=0.23),  # cone
    "tomography_3d_parallel": Setting(
        {"size": 64, "geometry": "parallel"},
        "hqs",
        None,
        0.19,
        0.01,
        8,
        cg_iterations=5,
        coupling=0.23,
        problem="tomography_3d",
    ),  # fmt: skip
    # the cone-beam case at 128^3: 90 views of a turn, noise 0.01, a 14-degree cone, magnification 2 (defaults)
    # (the volume denoised whole: windows of the CPU's default size would recompute their 3D halos many times)
    "tomography_3d_cone_128": Setting(
        {"size": 128},
        "hqs",
        None,
        0.19,
        0.01,
        6,
        cg_iterations=3,
        coupling=0.23,
        problem="tomography_3d",
        denoiser_kwargs={"max_window_pixels": None},
    ),  # fmt: skip
    "radio": Setting({"size": 256}, "hqs", None, 0.03, 0.001, 8, cg_iterations=20, coupling=0.23),
    # the synthetic radio problem's array, sky and noise written as a Measurement Set and a FITS sky model, and read
    # back through the observation path (ms: and reference:), with the same PnP
    "radio_observation": Setting(
        {}, "hqs", None, 0.03, 0.001, 8, cg_iterations=20, coupling=0.23, problem="radio", observed=True
    ),
    "radio_noisy": Setting(
        {"size": 256, "noise_sigma": 0.01}, "hqs", None, 0.19, 0.01, 8, cg_iterations=20, coupling=0.23, problem="radio"
    ),
}


class Identity(Denoiser):
    """No prior: the same iterations with ``D(x) = x``, i.e. what the data steps alone reach."""

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x


class ThresholdedTV(Denoiser):
    """deepinv's TV denoiser with threshold ``scale * sigma`` (TV has no noise level of its own)."""

    def __init__(self, scale: float, n_it_max: int = 100):
        super().__init__()
        from deepinv.models import TVDenoiser

        self.tv, self.scale = TVDenoiser(n_it_max=n_it_max), scale

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if x.ndim == 5:  # TVDenoiser is 2D: the z-slices as a batch
            b, c, d, h, w = x.shape
            flat = x.transpose(1, 2).reshape(b * d, c, h, w)
            return self.tv(flat, self.scale * sigma).reshape(b, d, c, h, w).transpose(1, 2)
        return self.tv(x, self.scale * sigma)


def shipped_denoiser(problem_name: str, channels: int, colour: str, grey: str, radio: str) -> torch.nn.Module:
    from distinv.denoisers import load_denoiser
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D

    model = load_denoiser(radio if problem_name == "radio" else colour if channels == 3 else grey)
    return SlicewiseDenoiser3D(model) if problem_name == "tomography_3d" else model


def simulated_observation(folder: Path) -> dict:
    """``ms`` and ``reference`` of the synthetic radio problem's observation at 256^2 (written into ``folder``)."""
    from synthetic_observation import write_observation

    sky, ms, _ = write_observation(folder, 256, 32, 32, 4, 4000.0, 1e-3, None, 0)
    return {"ms": str(ms), "reference": str(sky)}


def reconstruct(ctx, problem, setting: Setting, model: torch.nn.Module) -> list:
    from distinv import distribute
    from distinv.pnp import coupled_steps, pnp, sigma_schedule

    physics = problem.distribute(ctx)
    y = problem.measure(physics)
    x0 = problem.initial(physics, y)
    denoiser = distribute(model, ctx, **setting.denoiser_kwargs)
    sigmas = sigma_schedule(setting.sigma_start, setting.sigma_end, setting.iterations)
    steps = setting.step if setting.coupling is None else coupled_steps(sigmas, problem.noise_sigma, setting.coupling)
    with torch.no_grad():
        x, records = pnp(
            setting.algorithm,
            physics,
            denoiser,
            y,
            x0,
            sigmas,
            iterations=setting.iterations,
            step=steps,
            cg_iterations=setting.cg_iterations,
            ground_truth=problem.ground_truth,
        )
    return x, x0, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--colour", default="shipped:drunet-small-colour")
    parser.add_argument("--grey", default="shipped:drunet-small-grey")
    parser.add_argument("--radio", default="shipped:drunet-small-radio", help="the radio problem's denoiser")
    parser.add_argument("--tv-scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--iterations", type=int, help="override every problem's iterations")
    parser.add_argument(
        "--ours-only", action="store_true", help="skip the no-prior and TV baselines (their columns left empty)"
    )
    parser.add_argument("--out", default="results/benchmarks/quality.json")
    parser.add_argument(
        "--observations", default="results/observations/quality256", help="where radio_observation's files go"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from distinv import DistributedContext
    from distinv.bench.problems import build

    rows = []
    with DistributedContext(env={}) as ctx:
        for name in args.problems:
            setting = SETTINGS[name]
            if args.iterations:
                setting.iterations = args.iterations
            params = dict(setting.params)
            if setting.observed:
                params.update(simulated_observation(Path(args.observations)))
            problem = build(setting.problem or name, **params)
            channels = problem.ground_truth.shape[1]
            model = shipped_denoiser(problem.name, channels, args.colour, args.grey, args.radio)
            start = time.perf_counter()
            _, x0, ours = reconstruct(ctx, problem, setting, model)
            ours_s = time.perf_counter() - start
            if args.ours_only:
                data_only, tv_runs, tv_scale = None, None, None
            else:
                data_only = reconstruct(ctx, problem, setting, Identity())[2]
                tv_runs = {s: reconstruct(ctx, problem, setting, ThresholdedTV(s))[2] for s in args.tv_scales}
                tv_scale = max(tv_runs, key=lambda s: tv_runs[s][-1].psnr)
            row = {
                "problem": name,
                "shape": list(problem.ground_truth.shape),
                "init": problem.init_name,
                "init_psnr": problem.psnr(x0),
                "data_only_psnr": data_only[-1].psnr if data_only else None,
                "tv_pnp_psnr": tv_runs[tv_scale][-1].psnr if tv_runs else None,
                "tv_scale": tv_scale,
                "ours_psnr": ours[-1].psnr,
                "ours_ssim": ours[-1].ssim,
                "ours_psnr_per_iteration": [r.psnr for r in ours],
                "ours_seconds": ours_s,
                "iterations": len(ours),
                "setting": asdict(setting),
            }
            rows.append(row)
            print(
                f"{name:<14} init {row['init_psnr']:6.2f}  data only {_db(row['data_only_psnr'])}"
                f"  TV-PnP {_db(row['tv_pnp_psnr'])} (scale {tv_scale})"
                f"  ours {row['ours_psnr']:6.2f} dB  {row['iterations']} it  {ours_s:.0f} s",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    merged = {r["problem"]: r for r in previous} | {r["problem"]: r for r in rows}
    tmp = out.with_suffix(".tmp")
    models = {"colour": args.colour, "grey": args.grey, "radio": args.radio}
    tmp.write_text(json.dumps({**models, "rows": list(merged.values())}, indent=1))
    tmp.replace(out)
    print("\n| problem | shape | init (PSNR) | data only | TV-PnP | ours | iterations |\n|---|---|---|---|---|---|---|")
    for r in merged.values():
        shape = "x".join(map(str, r["shape"][1:]))
        print(
            f"| {r['problem']} | {shape} | {r['init']} {r['init_psnr']:.2f} |"
            f" {_db(r.get('data_only_psnr'))} | {_db(r['tv_pnp_psnr'])} |"
            f" {r['ours_psnr']:.2f} | {r['iterations']} |"
        )
    print(f"wrote {out}")


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
