"""Load a denoiser: one the project trained and ships, a weights file, or deepinv's published weights.

``load_denoiser("shipped:drunet-small-colour")``, ``load_denoiser("path/to/weights.pt")`` or
``load_denoiser("download:DRUNet")``. Shipped models are listed in ``weights/manifest.json`` with how each was
trained (command, data, steps, validation PSNR).

Weights files are read with :func:`load_weights`, which accepts tensors, numbers, strings and containers only
(``torch.load(..., weights_only=True)``): a file that would build other Python objects, and so could run code
when loaded, is refused.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch

from distinv.denoisers.networks import build_network

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
DOWNLOAD_TIMEOUT_S = 30.0


def shipped_models() -> dict[str, dict]:
    """The manifest: model name to its file, architecture and training record."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def load_weights(path: str | Path, map_location: torch.device | str = "cpu", what: str = "source") -> Any:
    """The tensors, numbers and strings saved in ``path`` (a state dict or a training checkpoint).

    :param what: the argument that named the file, for the error messages.
    :raises ValueError: the file holds other Python objects (which could run code when loaded: refused) or is
        not a file ``torch.save`` wrote.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{what}={str(path)!r}: refused: the file holds Python objects other than tensors, numbers and strings, "
            f"which could run code when loaded ({_refusal_reason(exc)}). Give weights saved from a state dict "
            "(torch.save(model.state_dict(), path)) or written by distinv train-denoiser."
        ) from None
    except Exception as exc:  # torch raises many kinds on a file that is not its format
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{what}={str(path)!r} is not a weights file torch.save wrote ({reason}).") from None


def _refusal_reason(exc: Exception) -> str:
    """The line of torch's message that names what was refused (it also suggests weights_only=False: not us)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines[-1:] or ["not a weights-only file"])[0]


def _to_float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_denoiser(
    source: str | Path,
    device: torch.device | str = "cpu",
    arch: str = "DRUNet",
    arch_kwargs: dict | None = None,
    channels: int = 3,
    residual: bool | None = None,
) -> torch.nn.Module:
    """A denoiser ``model(x, sigma)`` in eval mode.

    :param source: ``"shipped:NAME"`` (or a bare shipped NAME); a file written by ``distinv train-denoiser``
        (a checkpoint, which knows its architecture, or exported weights, described by ``arch``,
        ``arch_kwargs``, ``channels`` and ``residual``, which by default is read from the weights' names); or
        ``"download:ARCH"`` for deepinv's published weights of ``ARCH`` (online only; offline this fails within
        30 s with a clear error); or ``"untrained:ARCH"``: ``ARCH`` with random weights (seed 0), for measuring
        cost, never quality.
    """
    source = str(source)
    models = shipped_models()
    name = source.removeprefix("shipped:")
    if source.startswith("shipped:") or name in models:
        if name not in models:
            raise ValueError(f"source={source!r}: no shipped model {name!r}; shipped: {sorted(models)}.")
        entry = models[name]
        model = build_network(entry["arch"], entry["channels"], entry["arch_kwargs"], entry.get("residual", False))
        model.load_state_dict(_to_float32(load_weights(WEIGHTS_DIR / entry["file"])))
    elif source.startswith("download:"):
        model = _download(source.removeprefix("download:"), channels, arch_kwargs or {})
    elif source.startswith("untrained:"):
        torch.manual_seed(0)
        model = build_network(source.removeprefix("untrained:"), channels, arch_kwargs or {})
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"source={source!r} is neither a shipped model ({sorted(models)}), 'download:ARCH', "
                "'untrained:ARCH', nor a file."
            )
        state = load_weights(path)
        if not isinstance(state, dict):
            raise ValueError(f"source={source!r} holds a {type(state).__name__}, not a state dict or a checkpoint.")
        if "config" in state and "model" in state:  # a training checkpoint
            config = state["config"]
            model = build_network(
                config["arch"], config["channels"], config["arch_kwargs"], config.get("residual", False)
            )
            state = state["model"]
        else:
            if residual is None:  # a ResidualDenoiser's weights are its network's, under "network."
                residual = all(k.startswith("network.") for k in state)
            model = build_network(arch, channels, arch_kwargs if arch_kwargs is not None else {}, residual)
        try:
            model.load_state_dict(_to_float32(state))
        except RuntimeError:
            raise ValueError(
                f"source={source!r} does not fit arch={arch!r}, arch_kwargs={arch_kwargs}, channels={channels}: "
                "pass the arch, arch_kwargs and channels it was trained with (a manifest records them), or load "
                "its training checkpoint, which knows its architecture."
            ) from None
    return model.to(device).eval()


def _download(arch: str, channels: int, arch_kwargs: dict) -> torch.nn.Module:
    """deepinv's published weights (its ``pretrained="download"``), with a socket timeout so that an offline
    machine gets an error instead of a hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return build_network(arch, channels, {**arch_kwargs, "pretrained": "download"})
    except (URLError, OSError, TimeoutError) as exc:
        raise RuntimeError(
            f"source='download:{arch}': deepinv's weights could not be downloaded ({exc}). Offline, use a "
            f"shipped model ({sorted(shipped_models())}) or a weights file."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
