"""Train a Gaussian denoiser on synthetic images (and the user's folder), on CPU or GPU, resumable.

The network sees ``x + sigma * n`` and ``sigma`` (blind over a range of levels, sigma as input as in DRUNet) and
learns ``x`` with an L1 loss; by default it predicts the noise (:class:`ResidualDenoiser`) and starts as the
identity. Training images are dead-leaves images (:func:`synthetic_image`): half with hard pixel edges, half
drawn larger and downscaled (antialiased, edges between pixels as in photographs), or synthetic radio skies
(:func:`radio_sky_image`, for radio interferometry); a pool of them is renewed as training goes. A user folder of
images adds its crops to the pool.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from distinv.denoisers.networks import build_network
from distinv.images import dead_leaves, radio_sky

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in the checkpoint and the manifest.

    :param arch: a deepinv denoiser class name (``DRUNet``, ``DnCNN``, ``UNet``, ...).
    :param arch_kwargs: its constructor's arguments besides ``in_channels``/``out_channels``.
    :param channels: 3 (colour) or 1 (grey).
    :param sigma_max: noise levels drawn uniformly in ``[0, sigma_max]`` (images in [0, 1]).
    :param patch: crop size (pixels); ``batch``: crops per step.
    :param pool: synthetic images kept at a time; one is replaced every ``renew_every`` steps.
    :param image_dir: optional folder of the user's images, added to the pool.
    :param residual: wrap the network in :class:`ResidualDenoiser` (it predicts the noise).
    :param loss: ``l1``: the mean absolute error over the batch; ``l1_per_sigma``: each crop's mean absolute
        error divided by ``sigma + 1/255``, so that every noise level counts alike (with plain L1 the error, and so
        the gradient, grows with sigma: a network trained that way leaves a clean image at 41.6 dB instead of
        identical, which caps a plug-and-play reconstruction whose last iterations use a small sigma).
    :param init: start from these weights (``shipped:NAME`` or an exported ``.pt``; fine-tuning) instead of the
        identity; a fresh optimiser either way.
    :param synthetic: the synthetic images: ``dead-leaves`` (natural-image-like, grey or colour) or ``radio-sky``
        (grey; point and Gaussian sources on a dark sky over decades of brightness, as a radio image).
    """

    arch: str = "DRUNet"
    arch_kwargs: dict = field(default_factory=lambda: {"nc": [16, 32, 64, 128], "nb": 2})
    channels: int = 3
    steps: int = 10_000
    batch: int = 8
    patch: int = 64
    lr: float = 1e-3
    lr_final: float = 1e-5
    sigma_max: float = 60 / 255
    pool: int = 48
    source_size: int = 256
    min_radius: float = 2.0
    renew_every: int = 50
    image_dir: str | None = None
    validation_sigmas: tuple[float, ...] = (15 / 255, 25 / 255, 50 / 255)
    residual: bool = True
    validate_every: int = 500
    checkpoint_every: int = 250
    seed: int = 0
    loss: str = "l1"
    init: str | None = None
    synthetic: str = "dead-leaves"


LOSSES = ("l1", "l1_per_sigma")
SYNTHETIC = ("dead-leaves", "radio-sky")
FIRST_TRAINING_SEED = 1000  # radio skies draw seeds from here on: the benchmarks' ground truths use 0, 1, ...
SIGMA_FLOOR = 1 / 255  # l1_per_sigma's weight at sigma 0 is 255, at 60/255 about 4


def denoising_loss(kind: str, estimate: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The training loss of a batch ``(B, C, H, W)`` denoised at levels ``sigma`` ``(B,)`` (see TrainConfig.loss)."""
    error = (estimate - clean).abs().flatten(1).mean(1)
    if kind == "l1_per_sigma":
        error = error / (sigma + SIGMA_FLOOR)
    return error.mean()


def synthetic_image(
    channels: int, size: int, rng: random.Random, min_radius: float = 2.0, kind: str = "dead-leaves"
) -> torch.Tensor:
    """A training image ``(C, size, size)`` in [0, 1] of the ``kind`` in :data:`SYNTHETIC`.

    ``dead-leaves``: half of them drawn at ``size`` with hard pixel edges and leaves of at least ``min_radius / 2``
    to ``min_radius`` pixels (like the benchmark's ground truths), half drawn at up to 3x ``size`` and downscaled
    with antialiasing (soft edges, like a camera's), leaves of at least ``min_radius`` pixels once downscaled.
    Sub-pixel leaves are left out: they look like noise and teach the network to keep it; soft edges alone teach
    it that every hard edge is noise. ``radio-sky``: see :func:`radio_sky_image`."""
    if kind == "radio-sky":
        return radio_sky_image(size, rng)
    seed, colour = rng.randrange(2**31), channels == 3
    if rng.random() < 0.5:
        return dead_leaves(size, size, seed=seed, colour=colour, min_radius=min_radius * rng.uniform(0.5, 1.0))[0]
    big = round(size * rng.uniform(1.0, 3.0))
    image = dead_leaves(big, big, seed=seed, colour=colour, min_radius=min_radius * big / size)
    if big != size:
        image = F.interpolate(image, size=[size, size], mode="bilinear", antialias=True, align_corners=False)
    return image[0].clamp(0, 1)


def radio_sky_image(size: int, rng: random.Random) -> torch.Tensor:
    """A grey synthetic radio sky ``(1, size, size)``, peak 1 (the benchmark's generator, never its seeds): 4 to
    24 Gaussian sources and ``size / 16`` to ``size / 4`` point sources, dynamic range 1e2 to 1e4. A denoiser
    trained on dead leaves has never seen an isolated bright pixel on a flat dark background, and smooths it."""
    return radio_sky(
        size,
        dynamic_range=10 ** rng.uniform(2.0, 4.0),
        num_extended=rng.randint(4, 24),
        num_points=rng.randint(max(1, size // 16), max(1, size // 4)),
        seed=rng.randrange(FIRST_TRAINING_SEED, 2**31),
    )[0]


def folder_images(image_dir: str | Path, channels: int, min_size: int) -> list[torch.Tensor]:
    """Every readable image in the folder (recursively), ``(C, H, W)`` in [0, 1]; too small ones are skipped."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir={str(image_dir)!r} is not a folder.")
    images = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as img:
            tensor = pil_to_tensor(img.convert("RGB" if channels == 3 else "L")).float() / 255
        if min(tensor.shape[-2:]) >= min_size:
            images.append(tensor)
    if not images:
        raise ValueError(f"image_dir={str(image_dir)!r} has no PNG/JPEG/TIFF image of at least {min_size} px.")
    return images


def random_crops(pool: list[torch.Tensor], count: int, size: int, rng: random.Random) -> torch.Tensor:
    """``count`` crops ``(count, C, size, size)``, each randomly flipped and turned by a multiple of 90 degrees."""
    crops = []
    for _ in range(count):
        image = pool[rng.randrange(len(pool))]
        top, left = rng.randrange(image.shape[-2] - size + 1), rng.randrange(image.shape[-1] - size + 1)
        crop = image[:, top : top + size, left : left + size]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        crops.append(torch.rot90(crop, rng.randrange(4), dims=(-2, -1)))
    return torch.stack(crops)


def validation_set(config: TrainConfig) -> torch.Tensor:
    """Eight synthetic images, seeds apart from training's, ``(8, C, 128, 128)``."""
    rng = random.Random(10_000 + config.seed)
    return torch.stack(
        [synthetic_image(config.channels, 128, rng, config.min_radius, config.synthetic) for _ in range(8)]
    )


@torch.no_grad()
def validation_psnr(model: torch.nn.Module, images: torch.Tensor, sigmas, seed: int = 0) -> dict[str, float]:
    """Mean PSNR (dB) of the denoised images per noise level, with fixed noise."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = {}
    for sigma in sigmas:
        noisy = images + sigma * torch.randn(images.shape, generator=g)
        denoised = model(noisy.to(device), sigma).cpu().clamp(0, 1)
        mse = ((denoised - images) ** 2).mean(dim=(1, 2, 3))
        out[f"{round(sigma * 255)}/255"] = float((10 * torch.log10(1 / mse)).mean())
    return out


def _save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(
    config: TrainConfig,
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, dict]:
    """Train, or resume from ``checkpoint`` if it exists (same settings; ``steps`` may grow to extend a run,
    the learning-rate decay then stretching to the new length); returns the model and the history
    ``{"steps": ..., "seconds": ..., "validation": [{"step", "psnr": {...}}, ...]}``."""
    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_network(config.arch, config.channels, config.arch_kwargs, config.residual).to(device)
    if config.loss not in LOSSES:
        raise ValueError(f"loss={config.loss!r}: choose one of {LOSSES}.")
    if config.synthetic not in SYNTHETIC:
        raise ValueError(f"synthetic={config.synthetic!r}: choose one of {SYNTHETIC}.")
    if config.synthetic == "radio-sky" and config.channels != 1:
        raise ValueError(f"synthetic='radio-sky' is grey: give channels=1 (got {config.channels}).")
    if config.residual:
        model.zero_last_convolution()
    if config.init:
        try:
            model.load_state_dict(_init_weights(config.init))
        except RuntimeError as exc:
            raise ValueError(
                f"init={config.init!r} does not fit arch={config.arch!r} {config.arch_kwargs}: {exc}"
            ) from None
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    decay = math.log(config.lr_final / config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: math.exp(decay * min(s / config.steps, 1)))
    rng = random.Random(config.seed)
    history = {"steps": 0, "seconds": 0.0, "validation": []}
    if checkpoint.exists():
        from distinv.denoisers.zoo import load_weights

        state = load_weights(checkpoint, map_location=device, what="checkpoint")
        if not isinstance(state, dict) or not {"config", "model", "optimiser"} <= set(state):
            raise ValueError(
                f"checkpoint={str(checkpoint)!r} is not a training checkpoint: remove it or give another checkpoint "
                "path."
            )
        saved, wanted = {**asdict(TrainConfig()), **state["config"]}, asdict(config)  # keys added since: defaults
        saved.pop("steps"), wanted.pop("steps")  # a run may be extended; everything else must match
        if saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise ValueError(
                f"checkpoint={str(checkpoint)!r} was made with other settings ({', '.join(changed)}): remove it "
                "or give another checkpoint path."
            )
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        log(f"resumed at step {history['steps']} from {checkpoint}")

    user = folder_images(config.image_dir, config.channels, config.patch) if config.image_dir else []

    def new_image() -> torch.Tensor:
        return synthetic_image(config.channels, config.source_size, rng, config.min_radius, config.synthetic)

    pool = [new_image() for _ in range(config.pool)]
    validation = validation_set(config)
    model.train()
    started, step_time = time.perf_counter(), 0.0
    while history["steps"] < config.steps:
        step = history["steps"]
        if step % config.renew_every == 0 and step > 0:
            pool[rng.randrange(len(pool))] = new_image()
        tic = time.perf_counter()
        clean = random_crops(pool + user, config.batch, config.patch, rng).to(device)
        sigma = torch.rand(config.batch, 1, 1, 1, device=device) * config.sigma_max
        noisy = clean + sigma * torch.randn_like(clean)
        loss = denoising_loss(config.loss, model(noisy, sigma.view(-1)), clean, sigma.view(-1))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step_time = 0.9 * step_time + 0.1 * (time.perf_counter() - tic) if step_time else time.perf_counter() - tic
        history["steps"] = step = step + 1
        if step % 50 == 0 or step == config.steps:
            eta = step_time * (config.steps - step) / 60
            log(f"step {step}/{config.steps} loss {loss.item():.4f} {step_time:.2f} s/step, about {eta:.0f} min left")
        if step % config.validate_every == 0 or step == config.steps:
            model.eval()
            psnr = validation_psnr(model, validation, config.validation_sigmas)
            model.train()
            history["validation"].append({"step": step, "psnr": psnr})
            log(f"step {step} validation PSNR " + ", ".join(f"{k}: {v:.2f} dB" for k, v in psnr.items()))
        if step % config.checkpoint_every == 0 or step == config.steps:
            history["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            _save_atomically(
                {
                    "config": asdict(config),
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                },
                checkpoint,
            )
    model.eval()
    return model, history


def _init_weights(source: str) -> dict:
    """The float32 state of ``shipped:NAME``, an exported ``.pt`` or a training checkpoint."""
    if source.startswith("shipped:"):
        from distinv.denoisers.zoo import load_denoiser

        state = load_denoiser(source).state_dict()
    elif Path(source).is_file():
        from distinv.denoisers.zoo import load_weights

        state = load_weights(source, what="init")
        if not isinstance(state, dict):
            raise ValueError(f"init={source!r} holds a {type(state).__name__}, not a state dict or a checkpoint.")
        state = state["model"] if "model" in state and "config" in state else state
    else:
        raise ValueError(f"init={source!r}: give shipped:NAME, an exported weights file (.pt) or a checkpoint.")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def export_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Save the weights in float16 (half the size; the network runs in float32 after loading). Returns bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save_atomically(state, path)
    return path.stat().st_size


def manifest_entry(config: TrainConfig, history: dict, command: str, weights: Path) -> dict:
    return {
        "file": weights.name,
        "arch": config.arch,
        "arch_kwargs": config.arch_kwargs,
        "channels": config.channels,
        "residual": config.residual,
        "trained": {
            "command": command,
            "data": f"{config.synthetic.replace('-', ' ')} (synthetic)"
            + (f" + {config.image_dir}" if config.image_dir else ""),
            "steps": history["steps"],
            "batch": config.batch,
            "patch": config.patch,
            "sigma_range": [0.0, config.sigma_max],
            "loss": config.loss,
            "init": config.init,
            "seconds": round(history["seconds"]),
            "validation_psnr": history["validation"][-1]["psnr"] if history["validation"] else None,
        },
    }


def update_manifest(manifest: Path, name: str, entry: dict) -> None:
    data = json.loads(manifest.read_text()) if manifest.exists() else {}
    data[name] = entry
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(manifest)
