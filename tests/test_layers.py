"""The package's layers import only downwards (docs/architecture.md): the diffusion core knows
nothing of nnU-Net, the model nothing of training, and no part of the method imports a tool."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_unisegdiff"
TOOLS = {"cli", "demo", "analysis", "evaluation", "commands"}  # commands.py: child processes of the tools
BASE = ("defaults.py", "commands.py", "dice.py")  # top-level modules below every layer: they import none of the package
# subpackage -> the package's subpackages/modules it must not import
FORBIDDEN = {
    "diffusion": {"model", "training", "nnunet_ext", "conversion"} | TOOLS,
    "model": {"training", "nnunet_ext", "conversion"} | TOOLS,
    "training": {"nnunet_ext", "conversion"} | TOOLS,
    "nnunet_ext": {"conversion"} | TOOLS,
    "conversion": {"diffusion", "model", "training", "nnunet_ext"} | TOOLS,
    "evaluation": {"demo", "analysis", "cli"},
    "analysis": {"demo", "cli"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "nnunet_unisegdiff" and len(parts) > 1 else None


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_lower_layers(path):
    layer = path.relative_to(PACKAGE).parts[0]
    used = {layer_of(m) for m in imported_modules(path)} - {None, layer}
    assert not used & FORBIDDEN.get(layer, set()), f"{layer}/ must not import {sorted(used & FORBIDDEN[layer])}"


@pytest.mark.parametrize("name", BASE)
def test_base_modules_import_nothing_of_the_package(name):
    assert {layer_of(m) for m in imported_modules(PACKAGE / name)} <= {None}


@pytest.mark.parametrize("path", sorted((PACKAGE / "diffusion").glob("*.py")), ids=lambda p: p.name)
def test_the_diffusion_core_is_pure_torch(path):
    outside = {m.split(".")[0] for m in imported_modules(path)} - {"nnunet_unisegdiff"}
    allowed = {"__future__", "torch", "collections", "contextlib", "functools", "dataclasses", "enum", "typing", "math"}
    assert outside <= allowed, outside
