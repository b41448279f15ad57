"""The package's layers import only downwards.

Order, lowest first: core, features, metrics, volume, io, study, workflow, cli.
A module may import from its own layer and any lower one, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS = ["core", "features", "metrics", "volume", "io", "study", "workflow", "cli"]
PACKAGE = Path(__file__).resolve().parents[1] / "medfuse"


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medfuse" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_downwards(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for imported in _imported_layers(path) - allowed:
            bad.append(f"{path.relative_to(PACKAGE.parent)} imports medfuse.{imported}")
    assert not bad, "\n".join(bad)

