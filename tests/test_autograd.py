"""Back-propagation through distributed physics and data fidelity: gradients with respect to the input, the
measurements and every trainable operator parameter equal the single-process ones, at 1, 2 and 3 ranks, with
K smaller and larger than the world size and ranks that own no operator."""

from __future__ import annotations

import pytest
import torch
from deepinv.optim.data_fidelity import L2
from deepinv.physics import LinearPhysics, StackedLinearPhysics

from distinv import distribute
from operators import make_operator, operator_list

IMG = (1, 8, 8)


class LearnedGain(LinearPhysics):
    """``A x = g_i * m_i * x`` with a trainable gain ``g_i`` and a fixed mask ``m_i``."""

    def __init__(self, index: int):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.0 + 0.1 * index))
        generator = torch.Generator().manual_seed(index)
        self.register_buffer("mask", (torch.rand(IMG, generator=generator) > 0.3).float())

    def A(self, x, **kwargs):
        return self.gain * self.mask * x

    def A_adjoint(self, y, **kwargs):
        return self.gain * self.mask * y


def real_sum(t: torch.Tensor, weight_seed: int) -> torch.Tensor:
    """A fixed, random linear functional of ``t`` (its real and imaginary parts for complex ``t``)."""
    t = torch.view_as_real(t) if t.is_complex() else t
    w = torch.rand(t.shape, generator=torch.Generator().manual_seed(weight_seed), dtype=t.dtype)
    return (w * t).sum()


def loss_of(outputs) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return real_sum(outputs, 1)
    return sum(real_sum(t, 10 + i) for i, t in enumerate(outputs))


def operations(dphys, fidelity):
    """name -> (function of the distributed physics, of the reference, which inputs need a gradient)."""
    return {
        "A": (lambda p, x, y: p.A(x), "x"),
        "A_adjoint": (lambda p, x, y: p.A_adjoint(y), "y"),
        "A_adjoint_A": (lambda p, x, y: p.A_adjoint_A(x), "x"),
        "A_A_adjoint": (lambda p, x, y: p.A_A_adjoint(y), "y"),
        "A_vjp": (lambda p, x, y: p.A_vjp(x, y), "xy"),
        "fidelity_fn": (lambda p, x, y: fidelity.fn(x, y, p) if p is dphys else per_operator(L2().fn, p, x, y), "xy"),
        "fidelity_grad": (
            lambda p, x, y: fidelity.grad(x, y, p) if p is dphys else per_operator(L2().grad, p, x, y),
            "xy",
        ),
    }


def per_operator(term, stacked, x, y):
    """The single-process stacked data fidelity: the sum of each operator's term."""
    return sum(term(x, y_i, op) for op, y_i in zip(stacked.physics_list, y, strict=True))


def gradients(fn, physics, x, y, wanted: str) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_("x" in wanted)
    y = [t.clone().requires_grad_("y" in wanted) for t in y]
    loss_of(fn(physics, x, type(y)(y) if not isinstance(y, list) else y)).backward()
    out = {}
    if "x" in wanted:
        out["x"] = x.grad
    if "y" in wanted:
        out.update({f"y{i}": t.grad for i, t in enumerate(y)})
    return out


def relative(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Relative distance; a missing gradient is zero (deepinv's linear A_vjp does not depend on x)."""
    if a is None or b is None:
        a, b = (torch.zeros_like(a if b is None else b) if t is None else t for t in (a, b))
        if not b.any():
            return torch.linalg.vector_norm(torch.view_as_real(a) if a.is_complex() else a).item()
    a, b = (torch.view_as_real(t) if t.is_complex() else t for t in (a, b))
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12)).item()


def check_gradients_equal_single_process(ctx, kind, k, strategy):
    torch.manual_seed(0)
    factory = lambda i, device, shared: make_operator(kind, i, IMG).to(device)  # noqa: E731
    dphys = distribute(factory, ctx, num_operators=k, type_object="linear_physics", gather_strategy=strategy)
    ref = StackedLinearPhysics(operator_list(kind, k, IMG))
    fidelity = distribute(L2(), ctx)
    x = torch.rand(2, *IMG)
    y = list(ref.A(torch.rand(2, *IMG)))
    worst = {}
    for name, (fn, wanted) in operations(dphys, fidelity).items():
        ours = gradients(fn, dphys, x, y, wanted)
        theirs = gradients(fn, ref, x, ref.A(x).__class__(y), wanted)
        worst[name] = max(relative(ours[key], theirs[key]) for key in theirs)
    return worst


def check_parameter_gradients(ctx, k):
    torch.manual_seed(0)
    dphys = distribute(lambda i, device, shared: LearnedGain(i), ctx, num_operators=k, type_object="linear_physics")
    ref = StackedLinearPhysics([LearnedGain(i) for i in range(k)])
    x = torch.rand(2, *IMG)
    loss_of(dphys.A_adjoint_A(x)).backward()  # every rank: the same replicated loss
    loss_of(ref.A_adjoint_A(x)).backward()
    return {
        i: relative(p.gain.grad, ref.physics_list[i].gain.grad)
        for i, p in zip(dphys.local_indexes, dphys.local_physics, strict=True)
    }


def check_no_graph_without_gradients(ctx):
    torch.manual_seed(0)
    factory = lambda i, device, shared: make_operator("blur", i, IMG).to(device)  # noqa: E731
    dphys = distribute(factory, ctx, num_operators=2, type_object="linear_physics")
    out = dphys.A_adjoint_A(torch.rand(1, *IMG))
    return out.requires_grad


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(("kind", "k"), [("blur", 2), ("mixed", 5)])
def test_gradients_through_every_distributed_operation_equal_the_single_process_ones(ranks, world_size, kind, k):
    for worst in ranks(world_size).run(check_gradients_equal_single_process, kind, k, "concatenated"):
        assert max(worst.values()) < 1e-5, worst


@pytest.mark.parametrize("strategy", ["broadcast", "naive"])
def test_gradients_through_every_gather_strategy(ranks, strategy):
    for worst in ranks(2).run(check_gradients_equal_single_process, "mixed", 3, strategy):
        assert max(worst.values()) < 1e-5, worst


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_owned_operators_parameters_get_the_single_process_gradient(ranks, world_size):
    per_rank = ranks(world_size).run(check_parameter_gradients, 2)
    owned = {i: error for errors in per_rank for i, error in errors.items()}
    assert sorted(owned) == [0, 1]
    assert max(owned.values()) < 1e-5


def test_a_call_nobody_differentiates_builds_no_graph(ranks):
    assert ranks(2).run(check_no_graph_without_gradients) == [False, False]


def squared(outputs) -> torch.Tensor:
    """A fixed weighted sum of squares of the outputs (so their second derivative is not zero)."""
    items = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    total = 0.0
    for i, t in enumerate(items):
        t = torch.view_as_real(t) if t.is_complex() else t
        total = total + (torch.rand(t.shape, generator=torch.Generator().manual_seed(20 + i)) * t * t).sum()
    return total


def second_order(fn, physics, x, y, wrt: str) -> list[torch.Tensor]:
    """The gradient of a gradient penalty ``<v, d loss/d input>`` with respect to the input (``x`` or the
    measurements ``y``, as ``wrt`` says); the operators' parameters get theirs in ``.grad``."""
    x = x.detach().clone().requires_grad_(wrt == "x")
    y = [t.detach().clone().requires_grad_(wrt == "y") for t in y]
    inputs = [x] if wrt == "x" else y
    grads = torch.autograd.grad(squared(fn(physics, x, y)), inputs, create_graph=True)
    sum(real_sum(g, 3 + i) for i, g in enumerate(grads)).backward()
    return [t.grad for t in inputs]


def check_double_backward(ctx, k):
    torch.manual_seed(0)
    dphys = distribute(lambda i, device, shared: LearnedGain(i), ctx, num_operators=k, type_object="linear_physics")
    ref = StackedLinearPhysics([LearnedGain(i) for i in range(k)])
    fidelity = distribute(L2(), ctx)
    x = torch.rand(2, *IMG)
    y = list(ref.A(torch.rand(2, *IMG)))
    worst = {}
    # not fidelity_grad: deepinv's own stacked data fidelity cannot be differentiated twice through ``A_vjp``
    for name in ("A", "A_adjoint", "A_adjoint_A", "A_A_adjoint", "fidelity_fn"):
        fn, wrt = operations(dphys, fidelity)[name]
        for p in [*dphys.parameters(), *(op.gain for op in ref.physics_list)]:
            p.grad = None
        ours = second_order(fn, dphys, x, y, wrt[0])
        theirs = second_order(fn, ref, x, y, wrt[0])
        errors = [relative(a, b) for a, b in zip(ours, theirs, strict=True)]
        errors += [
            relative(op.gain.grad, ref.physics_list[i].gain.grad)
            for i, op in zip(dphys.local_indexes, dphys.local_physics, strict=True)
        ]
        worst[name] = max(errors)
    return worst


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_double_backward_through_physics_and_fidelity_equals_the_single_process_one(ranks, world_size):
    for worst in ranks(world_size).run(check_double_backward, 2):
        assert max(worst.values()) < 1e-5, worst


def test_double_backward_with_more_operators_than_ranks_and_a_gathered_output(ranks):
    for worst in ranks(2).run(check_double_backward, 5):
        assert max(worst.values()) < 1e-5, worst


def check_constant_cotangent_with_an_empty_rank(ctx):
    """A Jacobian-vector penalty ``||J^T v||^2`` with a constant ``v``: the penalty's gradient reaches the
    operators' parameters through the second backward pass on every rank, one owning no operator included."""
    dphys = distribute(lambda i, device, shared: LearnedGain(i), ctx, num_operators=2, type_object="linear_physics")
    ref = StackedLinearPhysics([LearnedGain(i) for i in range(2)])
    x = torch.rand(2, *IMG, requires_grad=True)
    v = torch.rand(2, *IMG, generator=torch.Generator().manual_seed(7))
    requires = []
    for physics in (dphys, ref):
        (g,) = torch.autograd.grad(physics.A_adjoint_A(x), x, grad_outputs=v, create_graph=True)
        requires.append(g.requires_grad)
        (g**2).sum().backward()
    errors = [
        relative(op.gain.grad, ref.physics_list[i].gain.grad)
        for i, op in zip(dphys.local_indexes, dphys.local_physics, strict=True)
    ]
    return requires[0], errors


def test_a_constant_cotangent_penalty_reaches_every_rank_in_the_second_backward(ranks):
    per_rank = ranks(3).run(check_constant_cotangent_with_an_empty_rank)
    assert [requires for requires, _ in per_rank] == [True, True, True]
    assert [len(errors) for _, errors in per_rank] == [1, 1, 0]  # rank 2 owns no operator
    assert max(e for _, errors in per_rank for e in errors) < 1e-5
