"""The package's layers, enforced: every import inside ``distinv`` points to its own folder or to a lower layer.

The layers are ``docs/architecture.md``'s table, bottom to top. Folders of one layer (``numerics`` and
``operators``; ``tiling`` and ``physics``) do not import each other. Nothing outside ``bench/`` imports from
``bench/`` but the command line, which dispatches to both. Imports inside functions count as much as those at the
top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "distinv"

# Bottom to top. "" is the package's top-level modules (the entry, the solvers, deepinv's names).
LAYERS: list[tuple[str, ...]] = [
    ("runtime",),
    ("comm",),
    ("placements",),
    ("numerics", "operators"),
    ("tiling", "physics", "domain"),
    ("sharded",),
    ("",),
    ("denoisers",),
    ("bench",),
    ("cli",),
    ("__main__",),
]
LAYER_OF = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["distinv", *parts])


def room_of(module: str) -> str:
    """The folder (or top-level command-line module) a ``distinv`` module belongs to; ``""`` for the top level."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if (PACKAGE / parts[0]).is_dir():
        return parts[0]
    return parts[0] if parts[0] in LAYER_OF else ""


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``distinv`` module the file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "distinv"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "distinv":
                continue
            # `from distinv import pnp` imports a module: its room is the module's, not the package's.
            names = [f"{target}.{alias.name}" for alias in node.names] if target == "distinv" else [target]
            found += [(node.lineno, name) for name in names]
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_and_top_level_module_has_a_layer():
    rooms = {room_of(module_name(path)) for path in sources()}
    missing = rooms - set(LAYER_OF)
    assert not missing, f"folders without a layer in this test and the architecture doc: {missing}"


def test_no_import_points_up_the_layers_or_across_into_a_sibling_folder():
    broken = []
    for path in sources():
        source = module_name(path)
        if source == "distinv":  # the package's face re-exports the public names of every layer below it
            continue
        room = room_of(source)
        for line, target in imported_modules(path):
            target_room = room_of(target)
            if target == "distinv":  # `import distinv` / the public names: the top level
                target_room = ""
            if target_room == room:
                continue
            if LAYER_OF[target_room] >= LAYER_OF[room]:
                where = path.relative_to(PACKAGE.parent)
                broken.append(f"{where}:{line} ({room or 'top level'}) imports {target} ({target_room or 'top level'})")
    assert not broken, "imports against the layers:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    "source, target, allowed",
    [
        ("distinv.sharded.blur", "distinv.placements.row_bands", True),
        ("distinv.placements.row_bands", "distinv.sharded.blur", False),
        ("distinv.tiling.executor", "distinv.physics.stack", False),
        ("distinv.pnp", "distinv.bench.engines", False),
        ("distinv.cli", "distinv.bench.runner", True),
    ],
)
def test_the_rule_reads_rooms_as_the_doc_does(source, target, allowed):
    a, b = room_of(source), room_of(target)
    assert (a == b or LAYER_OF[b] < LAYER_OF[a]) is allowed
