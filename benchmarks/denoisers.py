"""Denoising PSNR on held-out natural images: the shipped models against TV and BM3D.

The images are the samples bundled in scikit-image's wheel (never used for training): colour astronaut,
chelsea, coffee, rocket, motorcycle_left; grey camera, brick, grass, gravel, moon; each centre-cropped to
``--crop`` pixels. Gaussian noise at 15, 25 and 50 /255 with a fixed seed. TV's weight is chosen per noise
level on the synthetic validation images (not on these), from a grid. BM3D runs if the ``bm3d`` package is
installed. One CPU core.

    python benchmarks/denoisers.py                    # about 10 minutes with BM3D
    python benchmarks/denoisers.py --no-bm3d --crop 128
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

COLOUR = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]
GREY = ["camera.png", "brick.png", "grass.png", "gravel.png", "moon.png"]
SIGMAS = (15, 25, 50)
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24)


def held_out(name: str, grey: bool, crop: int) -> torch.Tensor:
    """A sample file of scikit-image's wheel (read from disk, no download), centre crop, ``(1, C, crop, crop)``
    in [0, 1]."""
    import skimage
    from PIL import Image

    with Image.open(Path(skimage.__file__).parent / "data" / name) as img:
        image = torch.from_numpy(np.asarray(img.convert("RGB" if not grey else "L"))).float() / 255
    image = image.unsqueeze(-1) if image.ndim == 2 else image
    h, w = image.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    return image[top : top + crop, left : left + crop].permute(2, 0, 1).unsqueeze(0).contiguous()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(1 / torch.mean((x.clamp(0, 1) - ref) ** 2).item())


def tv_weights(channels: int) -> dict[int, float]:
    """The TV weight per noise level that is best on the synthetic validation images."""
    from deepinv.models import TVDenoiser

    from distinv.denoisers.training import TrainConfig, validation_set

    images = validation_set(TrainConfig(channels=channels))[:4]
    g = torch.Generator().manual_seed(1)
    best = {}
    for s in SIGMAS:
        noisy = images + s / 255 * torch.randn(images.shape, generator=g)
        scores = {w: psnr(TVDenoiser(n_it_max=200)(noisy, w), images) for w in TV_WEIGHTS}
        best[s] = max(scores, key=scores.get)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--no-bm3d", action="store_true")
    parser.add_argument("--out", default="results/benchmarks/denoisers.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from deepinv.models import TVDenoiser

    from distinv.denoisers import load_denoiser, shipped_models

    try:
        import bm3d
    except ImportError:
        bm3d = None
    rows = []
    for channels, names in ((3, COLOUR), (1, GREY)):
        models = {n: load_denoiser(f"shipped:{n}") for n, e in shipped_models().items() if e["channels"] == channels}
        weights = tv_weights(channels)
        images = [held_out(n, channels == 1, args.crop) for n in names]
        for s in SIGMAS:
            g = torch.Generator().manual_seed(s)
            noisy = [x + s / 255 * torch.randn(x.shape, generator=g) for x in images]
            scores = {"noisy": [psnr(n, x) for n, x in zip(noisy, images, strict=True)]}
            scores[f"TV (weight {weights[s]})"] = [
                psnr(TVDenoiser(n_it_max=200)(n, weights[s]), x) for n, x in zip(noisy, images, strict=True)
            ]
            with torch.no_grad():
                for name, model in models.items():
                    scores[name] = [psnr(model(n, s / 255), x) for n, x in zip(noisy, images, strict=True)]
            if bm3d is not None and not args.no_bm3d:
                out = []
                for n, x in zip(noisy, images, strict=True):
                    z = n[0].permute(1, 2, 0).double().numpy()
                    if channels == 3:
                        est = bm3d.bm3d_rgb(z, s / 255)
                    else:
                        est = bm3d.bm3d(z[..., 0], s / 255)[..., None]
                    out.append(psnr(torch.from_numpy(np.asarray(est)).float().permute(2, 0, 1)[None], x))
                scores["BM3D"] = out
            for method, values in scores.items():
                rows.append({"channels": channels, "sigma": s, "method": method, "psnr": float(np.mean(values))})
                print(f"{'colour' if channels == 3 else 'grey':<6} {s:>3}/255  {method:<28} {np.mean(values):6.2f} dB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"crop": args.crop, "images": {"colour": COLOUR, "grey": GREY}, "rows": rows}, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
