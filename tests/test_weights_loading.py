"""Weights files are loaded safely: a file that would run code when unpickled is refused with a clear error
(and runs nothing) by every route that reads one; the shipped weights, exported weights and training
checkpoints still load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from distinv.cli import main
from distinv.denoisers import load_denoiser
from distinv.denoisers.training import TrainConfig, export_weights, train

TINY = {"nc": [8, 8, 8, 8], "nb": 1}


class _RunsCode:
    """Unpickling this calls ``os.system``: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(params=["torch.save", "pickle.dump"])
def crafted(request, tmp_path) -> tuple[Path, Path]:
    """A weights file that runs code when loaded unsafely, and the marker file that code would create."""
    marker, path = tmp_path / "code-ran", tmp_path / "crafted.pt"
    payload = {"head.weight": torch.zeros(2), "trap": _RunsCode(marker)}
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path, marker


def _config(steps: int, **changes) -> TrainConfig:
    settings = {"arch_kwargs": TINY, "channels": 1, "steps": steps, "batch": 2, "patch": 32, "pool": 2}
    settings |= {"source_size": 64, "validate_every": 2, "checkpoint_every": 2}
    return TrainConfig(**settings | changes)


def test_a_weights_file_that_would_run_code_is_refused_and_runs_nothing(crafted):
    path, marker = crafted
    with pytest.raises(ValueError, match=r"source='.*crafted.pt': refused: the file holds Python objects"):
        load_denoiser(path, channels=1)
    assert not marker.exists()


def test_plan_refuses_such_a_denoiser_file_with_a_message(crafted, capsys):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--shape", "1", "64", "64", "--world", "2", "--patch", "auto", "--denoiser", str(path)])
    assert "distinv plan: source=" in str(exit_.value) and "refused" in str(exit_.value)
    assert not marker.exists()


def test_fine_tuning_from_such_a_file_is_refused(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(ValueError, match="init=.*refused"):
        train(_config(1, init=str(path)), tmp_path / "run.pt", log=lambda _: None)
    assert not marker.exists()


def test_resuming_from_such_a_checkpoint_is_refused(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(ValueError, match="checkpoint=.*refused"):
        train(_config(1), path, log=lambda _: None)
    assert not marker.exists()


def test_the_cli_says_why_it_will_not_fine_tune_from_such_a_file(crafted, tmp_path):
    path, marker = crafted
    args = ["train-denoiser", "--channels", "1", "--steps", "1", "--arch-kwargs", '{"nc": [8, 8, 8, 8], "nb": 1}']
    with pytest.raises(SystemExit, match="distinv train-denoiser: init=.*refused"):
        main([*args, "--init", str(path), "-o", str(tmp_path / "out.pt")])
    assert not marker.exists()


def test_a_file_that_is_not_torch_weights_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="source='.*notes.pt' is not a weights file torch.save wrote"):
        load_denoiser(path)


def test_every_load_is_weights_only(tmp_path, monkeypatch):
    real, seen = torch.load, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_denoiser("shipped:drunet-small-grey")
    model, _ = train(_config(2), tmp_path / "run.pt", log=lambda _: None)
    export_weights(model, tmp_path / "tiny.pt")
    load_denoiser(tmp_path / "tiny.pt", arch_kwargs=TINY, channels=1)
    assert seen and all(flag is True for flag in seen)


def test_shipped_weights_exported_weights_and_a_training_checkpoint_still_load(tmp_path):
    for name in ("drunet-small-grey", "drunet-small-colour", "drunet-small-radio"):
        load_denoiser(f"shipped:{name}")
    checkpoint = tmp_path / "run.pt"
    model, _ = train(_config(2), checkpoint, log=lambda _: None)
    lines: list[str] = []
    _, history = train(_config(4), checkpoint, log=lines.append)  # resumes: optimiser, schedule, RNG states
    assert "resumed at step 2" in lines[0] and history["steps"] == 4
    from_checkpoint = load_denoiser(checkpoint)  # a checkpoint knows its architecture
    export_weights(from_checkpoint, tmp_path / "tiny.pt")
    tuned, _ = train(_config(1, init=str(tmp_path / "tiny.pt"), lr=1e-12), tmp_path / "tuned.pt", log=lambda _: None)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(from_checkpoint(x, 0.1), tuned(x, 0.1), atol=1e-2)  # float16 export
    assert isinstance(torch.load(checkpoint, weights_only=True)["rng"], tuple)
