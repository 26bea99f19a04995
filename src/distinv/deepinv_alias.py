"""distinv under deepinv 0.5's module names, for code that imports ``deepinv.distributed`` and cannot be edited
(a third-party script, deepinv's own test suite)::

    import distinv.deepinv_alias

    distinv.deepinv_alias.install()
    from deepinv.distributed import DistributedContext, distribute  # distinv's

After :func:`install`, every module name of deepinv 0.5's ``deepinv.distributed`` package resolves to the distinv
module holding the same public names (:data:`MODULES`); deepinv's private ``_distribute_base_optim`` is
``distribute(model, ctx, type_object="module", ...)``. Any other ``deepinv.distributed.*`` name fails to import
with a message saying what the alias provides. Code that imports ``distinv`` directly needs none of this.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

# deepinv 0.5's module -> the distinv module with the same public names.
MODULES: dict[str, str] = {
    "deepinv.distributed": "distinv",
    "deepinv.distributed.framework": "distinv.framework",
    "deepinv.distributed.framework.distributed_context": "distinv.comm.context",
    "deepinv.distributed.framework.distributed_physics": "distinv.framework",
    "deepinv.distributed.framework.distributed_processing": "distinv.tiling.processing",
    "deepinv.distributed.framework.distributed_data_fidelity": "distinv.physics.fidelity",
    "deepinv.distributed.framework.distributed_utils": "distinv.comm.replicated",
    "deepinv.distributed.strategies": "distinv.strategies",
    "deepinv.distributed.strategies.distributed_strategies": "distinv.strategies",
    "deepinv.distributed.distribute": "distinv.distribute",
}
PACKAGE = "deepinv.distributed"


def install() -> None:
    """Make ``deepinv.distributed`` and its submodules distinv's, in this process (idempotent).

    :raises RuntimeError: if deepinv's own ``deepinv.distributed`` was imported already in this process (its
        objects are in use; install the alias before anything imports it).
    """
    present = sys.modules.get(PACKAGE)
    if present is not None and not getattr(present, "__distinv_alias__", False):
        raise RuntimeError(
            "deepinv.distributed (deepinv's own) is imported already: call distinv.deepinv_alias.install() "
            "before anything imports deepinv.distributed."
        )
    if present is not None:
        return
    import deepinv

    for name in sorted(MODULES, key=len):
        sys.modules[name] = _aliased(name)
        parent, _, child = name.rpartition(".")
        holder = deepinv if parent == "deepinv" else sys.modules[parent]
        if isinstance(getattr(holder, child, None), (types.ModuleType, type(None))):
            setattr(holder, child, sys.modules[name])  # not over a function of that name (`distribute`)
    sys.meta_path.insert(0, _Refuse())


def _aliased(name: str) -> types.ModuleType:
    """A module named ``name`` holding the public names of its distinv module (a view: distinv's classes and
    functions themselves, so ``isinstance`` checks hold across both names)."""
    source = importlib.import_module(MODULES[name])
    module = types.ModuleType(name, source.__doc__)
    module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("__")})
    module.__distinv_alias__ = True
    module.__file__ = getattr(source, "__file__", None)
    prefix = name + "."
    if any(other.startswith(prefix) for other in MODULES):
        module.__path__ = []  # a package, so its submodules import
    if name == "deepinv.distributed.distribute":
        module._distribute_base_optim = _distribute_base_optim
    return module


def _distribute_base_optim(model: Any, ctx: Any, **options: Any) -> Any:
    """deepinv's private helper behind ``distribute(model, ctx, type_object="module")``: that call."""
    from distinv.distribute import distribute

    return distribute(model, ctx, type_object="module", **options)


class _Refuse(importlib.abc.MetaPathFinder):
    """Any ``deepinv.distributed.*`` name the alias does not map fails with what it does map."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(PACKAGE + ".") and fullname not in MODULES:
            raise ModuleNotFoundError(
                f"{fullname} is deepinv's, not part of distinv's alias of deepinv.distributed (which maps "
                f"{', '.join(sorted(MODULES))}): import the name from distinv instead.",
                name=fullname,
            )
        return None
