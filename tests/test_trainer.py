"""deepinv's ``Trainer``, unchanged, on an unrolled model distributed by distinv: every rank draws the same
batches and noise, trains the same parameters (equal to one process's), and only rank 0 writes checkpoints."""

from __future__ import annotations

import pytest
import torch
from deepinv.loss import SupLoss
from deepinv.physics import StackedLinearPhysics
from deepinv.training import Trainer

from distinv import distribute
from operators import make_operator, operator_list
from test_training_dropin import IMG, unrolled_pgd


class Shapes(torch.utils.data.Dataset):
    """Eight fixed synthetic images (a bright square on a ramp), the same on every rank."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.linspace(0, 0.5, IMG[-1]).expand(IMG).clone()
        x[:, 2 + i : 8 + i, 3 : 3 + i + 4] = 0.9
        return x


def train(model, physics, save_path, own_shuffle: bool) -> tuple[Trainer, list[int]]:
    """Two epochs of deepinv's Trainer (shuffled batches of 2, Adam), recording the batches drawn. The shuffle
    draws from the global generator, or from its own (``own_shuffle``: the same order whatever else draws)."""
    torch.manual_seed(0)
    drawn: list[int] = []
    generator = torch.Generator().manual_seed(5) if own_shuffle else None
    loader = torch.utils.data.DataLoader(Shapes(), batch_size=2, shuffle=True, generator=generator)
    trainer = Trainer(
        model=model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        train_dataloader=loader,
        losses=SupLoss(),
        epochs=2,
        online_measurements=True,
        save_path=save_path,
        device="cpu",
        verbose=False,
        show_progress_bar=False,
        plot_images=False,
    )
    original = trainer.compute_loss

    def recording(physics, x, y, *args, **kwargs):
        drawn.append(int(x.sum().item() * 1000))
        return original(physics, x, y, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    return trainer, drawn


def noisy_operator(i, device, shared):
    return make_operator("blur", i, IMG, noise=0.02).to(device)


def check_trainer(ctx, tmp, k: int, noise: bool):
    factory = noisy_operator if noise else (lambda i, device, shared: make_operator("blur", i, IMG).to(device))
    physics = distribute(factory, ctx, num_operators=k)
    model = distribute(unrolled_pgd(), ctx, overlap=8)
    path = tmp / f"rank{ctx.rank}"
    _, drawn = train(model, physics, path if ctx.rank == 0 else None, own_shuffle=not noise)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference_error = None
    if not noise:
        reference = unrolled_pgd()
        train(reference, StackedLinearPhysics(operator_list("blur", k, IMG)), None, own_shuffle=True)
        expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
        start = torch.cat([p.detach().reshape(-1) for p in unrolled_pgd().parameters()])
        reference_error = ((params - expected).norm() / (expected - start).norm()).item()
    written = sorted(p.name for p in path.glob("**/*.pth.tar")) if path.exists() else []
    return drawn, params.tolist(), written, reference_error


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_trainer_trains_the_distributed_model_like_one_process(ranks, world_size, tmp_path):
    results = ranks(world_size).run(check_trainer, tmp_path, 2, False)
    drawn, params, written, error = zip(*results, strict=True)
    assert all(d == drawn[0] for d in drawn) and len(drawn[0]) == 8
    assert all(p == params[0] for p in params)
    assert error[0] < 1e-4, error
    assert written[0] and not any(written[1:])


def test_noisy_measurements_keep_every_rank_on_the_same_batches(ranks, tmp_path):
    drawn, params, _, _ = zip(*ranks(2).run(check_trainer, tmp_path, 3, True), strict=True)
    assert drawn[0] == drawn[1] and len(set(drawn[0])) > 1
    assert params[0] == params[1]
