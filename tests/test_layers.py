"""The package's folders are its layers: no module imports from a layer above its own, and peers stay apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rlvr_extrap

PACKAGE = Path(rlvr_extrap.__file__).parent

# Lowest first. A module may import from its own layer and any layer below it, never above.
LAYERS = {
    "utils": 0,  # atomic files, cache builds, figures, greedy generation
    "linalg": 1,  # low-rank deltas, bases, rank-1 SVD
    "trajectory": 2,  # snapshots on a clock, spill to disk
    "extrapolators": 3,  # fit a trajectory, predict a step
    "skill": 4,  # forecast skill and diagnostics
    "presets": 5,  # what each reference's code fixes, as extrap_* values
    "config": 5,  # the extrap_* options
    "runtime": 6,  # the in-trainer callback, worker, guard
    "offline": 6,  # checkpoints on disk; a peer of runtime, not importing it
    "experiments": 7,  # tasks, models, the toy, the demo
    "cli": 8,
}
PEERS = {("runtime", "offline"), ("offline", "runtime")}


def layer_of(module: str) -> str:
    """``rlvr_extrap.runtime.worker`` -> ``runtime``."""
    return module.split(".")[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every ``rlvr_extrap`` module ``path`` imports (at any depth: function-level imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rlvr_extrap."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.module == "rlvr_extrap":
            found.append((node.lineno, "rlvr_extrap.cli"))  # the facade imports the runtime: only the top may use it
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("rlvr_extrap.")]
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")  # the facade re-exports


def test_every_module_sits_in_a_known_layer() -> None:
    for path in modules():
        name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert name in LAYERS, f"{path.relative_to(PACKAGE)}: add its folder to LAYERS (and to the README's map)"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for line, module in imports_of(path):
        assert module != "<relative>", f"{path.name}:{line}: import absolutely, so the layer is visible"
        other = layer_of(module)
        assert LAYERS[other] <= LAYERS[own], f"{path.name}:{line} ({own}) imports {module} ({other}), a layer above"
        assert (own, other) not in PEERS, f"{path.name}:{line}: {own} and {other} are peers and stay apart"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rlvr_extrap.runtime.callback import ExtrapolationCallback\n")
    assert [m for _, m in imports_of(bad)] == ["rlvr_extrap.runtime.callback"]
    assert LAYERS[layer_of("rlvr_extrap.runtime.callback")] > LAYERS["linalg"]
