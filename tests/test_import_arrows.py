"""The import arrows say what the design says: data knows nothing of training, training nothing of serving."""

import ast

import pytest

from helpers import ROOT

PACKAGE = ROOT / "recsys_lightning"
SERVING = ("recsys_lightning.serving", "recsys_lightning.recommend")


def imports_of(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("recsys_lightning")}


def module_files(*exclude: str) -> list:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if not any(str(path.relative_to(PACKAGE)).startswith(e) for e in exclude)]


@pytest.mark.parametrize("path", module_files("serving", "recommend.py"), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_serving_imports_serving(path):
    assert not [name for name in imports_of(path) if name.startswith(SERVING)]


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").glob("*.py")), ids=lambda path: path.name)
def test_data_imports_only_data_errors_and_seeds(path):
    allowed = ("recsys_lightning.data", "recsys_lightning.errors", "recsys_lightning.ranges", "recsys_lightning.seeds")
    assert not [name for name in imports_of(path) if not name.startswith(allowed)]
