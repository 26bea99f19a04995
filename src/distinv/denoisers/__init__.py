"""Denoisers the project trains and ships, and how to load them."""

from distinv.denoisers.zoo import load_denoiser, shipped_models

__all__ = ["load_denoiser", "shipped_models"]
