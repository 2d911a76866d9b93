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
    allowed = ("recsys_lightning.data", "recsys_lightning.errors", "recsys_lightning.seeds")
    assert not [name for name in imports_of(path) if not name.startswith(allowed)]


def named_imports(path) -> set[str]:
    """`imports_of`, with `from recsys_lightning import samplers` read as `recsys_lightning.samplers`."""
    found = imports_of(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "recsys_lightning":
            found |= {f"recsys_lightning.{alias.name}" for alias in node.names}
    return found


def test_losses_import_nothing_from_samplers():
    """A loss accepts or refuses a sampler by what the sampler class declares, not by its class."""
    assert not [name for name in named_imports(PACKAGE / "losses.py") if name.startswith("recsys_lightning.samplers")]


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda path: path.name)
def test_models_import_nothing_from_data(path):
    """Models take tensors: the module turns the data's tables into them."""
    assert not [name for name in named_imports(path) if name.startswith("recsys_lightning.data")]
