"""Code written for deepinv's ``deepinv.distributed`` runs with distinv after changing only the import."""

from __future__ import annotations

import importlib

import pytest
import torch
from deepinv.models import DnCNN
from deepinv.optim.data_fidelity import L2
from deepinv.physics import StackedLinearPhysics

from operators import make_operator, operator_list, relative_error

IMG = (3, 16, 16)
K = 5


def user_code(module_name: str) -> dict:
    """The calls of deepinv's documented API, written once; ``module_name`` is the only thing that changes."""
    module = importlib.import_module(module_name)
    DistributedContext, distribute = module.DistributedContext, module.distribute  # noqa: N806

    torch.manual_seed(0)
    out = {}
    with DistributedContext(seed=0, seed_offset=False, device_mode="cpu") as ctx:
        physics = StackedLinearPhysics(operator_list("blur", K, IMG))
        dphys = distribute(physics, ctx, gather_strategy="concatenated")
        x = torch.rand(1, *IMG, device=ctx.device)
        y = dphys.A(x)
        out["A"] = [t.clone() for t in y]
        out["A_local"] = len(dphys.A(x, gather=False))
        out["A_adjoint"] = dphys.A_adjoint(y)
        out["A_adjoint_A"] = dphys.A_adjoint_A(x)
        out["A_vjp"] = dphys.A_vjp(x, y)
        out["A_adjoint_local"] = dphys.A_adjoint(y, reduce_op=None, gather=False)
        out["A_dagger_shape"] = tuple(dphys.A_dagger(y).shape)
        out["norm"] = float(dphys.compute_norm(x, verbose=False))
        factory = lambda i, device, kw: make_operator(kw["kind"], i, IMG).to(device)  # noqa: E731
        dfac = distribute(factory, ctx, num_operators=K, type_object="linear_physics", factory_kwargs={"kind": "blur"})
        out["factory_A_adjoint_A"] = dfac.A_adjoint_A(x)
        dfid = distribute(L2(), ctx)
        out["fn"] = dfid.fn(x, y, dphys)
        out["grad"] = dfid.grad(torch.zeros_like(x), y, dphys)
        torch.manual_seed(0)
        denoiser = DnCNN(in_channels=3, out_channels=3, depth=5, nf=8, pretrained=None)
        image = torch.rand(1, 3, 40, 40, device=ctx.device)
        dden = distribute(denoiser, ctx, patch_size=16, overlap=8, max_batch_size=None, tiling_strategy=None)
        with torch.no_grad():
            out["denoised"] = dden(image, sigma=0.05)
            out["untiled"] = denoiser(image, 0.05)
    return out


def check_same_code_both_modules(ctx):
    ours, theirs = user_code("distinv"), user_code("deepinv.distributed")
    exact = ["A", "A_adjoint", "A_adjoint_A", "A_vjp", "factory_A_adjoint_A", "fn", "grad"]
    errors = {name: relative_error(ours[name], theirs[name]) for name in exact}
    return {
        "errors": errors,
        "local_counts": (ours["A_local"], theirs["A_local"]),
        "shapes": (ours["A_dagger_shape"], theirs["A_dagger_shape"]),
        "norms": (ours["norm"], theirs["norm"]),
        # DnCNN with 5 layers has a receptive-field radius of 5 < overlap 8: ours is the untiled output exactly;
        # deepinv's reflect-padding at the image border is not what the network does untiled.
        "denoised_vs_untiled": (
            relative_error(ours["denoised"], ours["untiled"]),
            relative_error(theirs["denoised"], theirs["untiled"]),
        ),
    }


@pytest.mark.parametrize("world_size", [1, 2])
def test_deepinv_distributed_code_runs_unchanged_after_the_import(ranks, world_size):
    for rank, r in enumerate(ranks(world_size).run(check_same_code_both_modules)):
        assert max(r["errors"].values()) <= 1e-5, f"rank {rank}: {r['errors']}"
        assert r["shapes"][0] == r["shapes"][1] == (1, *IMG)
        assert r["local_counts"][0] == r["local_counts"][1]
        # Normalised blurs all pass the mean unchanged, so ||A||^2 = K exactly; power iteration at the default
        # tolerance (1e-3 on the relative change) gets within 1%.
        assert abs(r["norms"][0] - K) <= 0.01 * K
        assert r["denoised_vs_untiled"][0] <= 1e-6


ALIAS_CHECK = """
import distinv, distinv.deepinv_alias
distinv.deepinv_alias.install()
distinv.deepinv_alias.install()  # twice: nothing more
import deepinv
import deepinv.distributed
from deepinv.distributed import DistributedContext, distribute
from deepinv.distributed.framework import DistributedProcessing
from deepinv.distributed.framework.distributed_context import DistributedContext as Deep
from deepinv.distributed.distribute import _distribute_base_optim
from deepinv.distributed.strategies import create_strategy
assert DistributedContext is distinv.DistributedContext is Deep and distribute is distinv.distribute
assert DistributedProcessing is distinv.DistributedProcessing
assert deepinv.distributed.framework.__name__ == "deepinv.distributed.framework"
try:
    import deepinv.distributed.strategies.utils
except ModuleNotFoundError as error:
    print("refused:", error)
"""

LATE_ALIAS = """
import deepinv.distributed, distinv.deepinv_alias
try:
    distinv.deepinv_alias.install()
except RuntimeError as error:
    print("refused:", error)
"""


def test_the_alias_makes_deepinvs_module_names_distinvs_and_refuses_the_rest():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", ALIAS_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: deepinv.distributed.strategies.utils is deepinv's, not part of distinv's alias" in done.stdout
    late = subprocess.run([sys.executable, "-c", LATE_ALIAS], capture_output=True, text=True, timeout=120)
    assert "refused: deepinv.distributed (deepinv's own) is imported already" in late.stdout, late.stderr
