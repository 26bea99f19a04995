"""Partial sums: a rank's term of a quantity that is the sum over ranks (DTensor's ``Partial`` placement).

What a distributed call returns with ``gather=False`` when the whole result is a sum over ranks: ``A_adjoint``,
``A_adjoint_A``, ``A_vjp`` and the data fidelity's ``fn`` and ``grad`` (this rank's operators' terms), and the
tiled denoiser's output (this rank's owned regions, zeros elsewhere). A :class:`Partial` is a ``torch.Tensor``
(deepinv's ``gather=False`` returns a tensor, and code written for it keeps working) whose values are this rank's
term; :meth:`Partial.reduce` sums the terms over ranks into the replicated whole. Arithmetic on it returns plain
tensors: a partial sum stays one only while nothing but its owner touches it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class Partial(torch.Tensor):
    """This rank's term of a sum over ranks; ``ctx`` is the context whose ranks hold the other terms.

    :param data: the term, any shape; it is not copied (the :class:`Partial` shares its storage and its autograd
        history).
    :param ctx: the entered context.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl  # results of operations are plain tensors

    @staticmethod
    def __new__(cls, data: torch.Tensor, ctx: Any) -> Partial:
        out = data.as_subclass(cls)
        out.ctx = ctx
        return out

    def __init__(self, data: torch.Tensor, ctx: Any):
        super().__init__()

    def reduce(self) -> torch.Tensor:
        """The sum of every rank's term (replicated; one all-reduce of this tensor's size). Call it on every
        rank."""
        return self.ctx.all_reduce(self.local().clone())

    def local(self) -> torch.Tensor:
        """This rank's term as a plain tensor (no copy)."""
        return self.as_subclass(torch.Tensor)

    def __deepcopy__(self, memo: dict) -> Partial:
        return Partial(copy.deepcopy(self.local(), memo), self.ctx)

    def __reduce_ex__(self, protocol: int):  # pickled as the plain term: a context does not travel
        return self.local().__reduce_ex__(protocol)

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"Partial(rank={getattr(self.ctx, 'rank', '?')}, term={self.local()!r})"
