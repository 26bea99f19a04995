"""Denoisers: training resumes, weights load by every route, a download fails clearly offline."""

from __future__ import annotations

import email.message
import io
import urllib.error

import pytest
import torch

from distinv.cli import main
from distinv.denoisers import load_denoiser, shipped_models
from distinv.denoisers.networks import ResidualDenoiser, build_network
from distinv.denoisers.training import TrainConfig, denoising_loss, radio_sky_image, train

TINY = {"nc": [8, 8, 8, 8], "nb": 1}


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        arch_kwargs=TINY,
        channels=1,
        steps=steps,
        batch=2,
        patch=32,
        pool=2,
        source_size=64,
        validate_every=4,
        checkpoint_every=2,
    )


def test_training_resumes_from_its_checkpoint_where_it_stopped(tmp_path):
    checkpoint = tmp_path / "run.pt"
    _, first = train(_config(4), checkpoint, log=lambda _: None)
    assert first["steps"] == 4 and first["validation"][-1]["step"] == 4
    lines = []
    model, history = train(_config(6), checkpoint, log=lines.append)
    assert "resumed at step 4" in lines[0]
    assert history["steps"] == 6 and [v["step"] for v in history["validation"]] == [4, 6]


def test_train_cli_exports_weights_and_records_the_manifest(tmp_path, capsys):
    weights = tmp_path / "grey.pt"
    args = ["train-denoiser", "--channels", "1", "--steps", "3", "--batch", "2", "--patch", "32", "--pool", "2"]
    args += ["--source-size", "64"]
    args += ["--arch-kwargs", '{"nc": [8, 8, 8, 8], "nb": 1}', "-o", str(weights), "--name", "tiny-grey"]
    assert main(args) == 0
    manifest = (tmp_path / "manifest.json").read_text()
    assert '"tiny-grey"' in manifest and "distinv train-denoiser --channels 1" in manifest
    model = load_denoiser(weights, arch="DRUNet", arch_kwargs=TINY, channels=1)
    with pytest.raises(ValueError, match="does not fit arch='DRUNet', arch_kwargs=None"):
        load_denoiser(weights, channels=1)  # deepinv's default DRUNet is wider than the one trained
    checkpoint = load_denoiser(tmp_path / "grey.checkpoint.pt")  # knows its architecture
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # float16 export: equal to about 1e-3
        assert torch.allclose(model(x, 0.1), checkpoint(x, 0.1), atol=1e-2)


def test_per_sigma_loss_counts_every_noise_level_alike():
    clean = torch.zeros(2, 1, 4, 4)
    sigma = torch.tensor([0.02, 0.2])
    estimate = clean + sigma.view(-1, 1, 1, 1) / 2  # each crop off by half its sigma
    assert torch.isclose(denoising_loss("l1", estimate, clean, sigma), torch.tensor(0.055))
    weighted = (estimate - clean).abs().flatten(1).mean(1) / (sigma + 1 / 255)
    assert torch.isclose(denoising_loss("l1_per_sigma", estimate, clean, sigma), weighted.mean())
    assert weighted[0] / weighted[1] > 0.7  # plain L1: 0.1


def test_fine_tuning_starts_from_the_given_weights_and_a_mismatch_is_named(tmp_path):
    train(_config(2), tmp_path / "base.pt", log=lambda _: None)
    base = load_denoiser(tmp_path / "base.pt")
    tuned = TrainConfig(**{**_config(1).__dict__, "init": str(tmp_path / "base.pt"), "lr": 1e-12})
    model, _ = train(tuned, tmp_path / "tuned.pt", log=lambda _: None)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # one step at a negligible learning rate: still the base weights
        assert torch.allclose(model(x, 0.1), base(x, 0.1), atol=1e-6)
    other = TrainConfig(**{**tuned.__dict__, "arch_kwargs": {"nc": [4, 4, 4, 4], "nb": 1}})
    with pytest.raises(ValueError, match="does not fit arch='DRUNet'"):
        train(other, tmp_path / "other.pt", log=lambda _: None)
    with pytest.raises(ValueError, match="loss='l2'"):
        train(TrainConfig(**{**_config(1).__dict__, "loss": "l2"}), tmp_path / "l2.pt", log=lambda _: None)


def test_radio_sky_training_draws_dark_skies_never_the_benchmarks_and_is_grey_only(tmp_path):
    import random

    from distinv.images import radio_sky

    sky = radio_sky_image(64, random.Random(0))
    assert sky.shape == (1, 64, 64) and sky.max() == 1 and sky.min() >= 0
    assert (sky < 1e-3).float().mean() > 0.3  # mostly dark background
    rng = random.Random(0)
    for _ in range(20):  # the benchmark's sky (seed 0, default sources) is not drawn
        assert not torch.equal(radio_sky_image(64, rng)[None], radio_sky(64))
    _, history = train(TrainConfig(**{**_config(2).__dict__, "synthetic": "radio-sky"}), tmp_path / "r.pt", log=print)
    assert history["steps"] == 2
    with pytest.raises(ValueError, match="synthetic='radio-sky' is grey: give channels=1"):
        train(TrainConfig(**{**_config(1).__dict__, "synthetic": "radio-sky", "channels": 3}), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="synthetic='leaves'"):
        train(TrainConfig(**{**_config(1).__dict__, "synthetic": "leaves"}), tmp_path / "l.pt")


def test_residual_denoiser_starts_as_the_identity_and_subtracts_the_predicted_noise():
    model = build_network("DRUNet", 1, TINY, residual=True)
    assert isinstance(model, ResidualDenoiser) and model.size_multiple == 8
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        model.zero_last_convolution()  # as training does
        assert torch.equal(model(x, torch.tensor([0.1, 0.2])), x)
        torch.nn.init.normal_(model.network.m_tail.weight)
        noise = model.network(x, 0.1)
        assert noise.abs().max() > 0
        assert torch.allclose(model(x, 0.1), x - noise)


def test_shipped_models_load_by_name_and_run():
    models = shipped_models()
    for name, entry in models.items():
        model = load_denoiser(f"shipped:{name}")
        x = torch.rand(1, entry["channels"], 32, 32)
        with torch.no_grad():
            assert model(x, 0.1).shape == x.shape
        assert entry["trained"]["command"].startswith("distinv train-denoiser")
    with pytest.raises(ValueError, match="no shipped model 'nonexistent'"):
        load_denoiser("shipped:nonexistent")


class _FakeResponse:
    def __init__(self, payload: bytes):
        self._body = io.BytesIO(payload)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def info(self):
        return email.message.Message()  # no Content-Length header

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)


def test_download_route_loads_published_weights_served_over_http(tmp_path, monkeypatch):
    reference = build_network("DnCNN", 3, {})
    payload = io.BytesIO()
    torch.save(reference.state_dict(), payload)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: _FakeResponse(payload.getvalue()))
    model = load_denoiser("download:DnCNN", channels=3)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_download_offline_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(RuntimeError, match="could not be downloaded.*Offline, use a shipped model"):
        load_denoiser("download:DnCNN", channels=3)


def test_unknown_sources_are_named():
    with pytest.raises(ValueError, match="neither a shipped model"):
        load_denoiser("/no/such/weights.pt")
    with pytest.raises(ValueError, match="arch='Nope'"):
        build_network("Nope", 3, {})
