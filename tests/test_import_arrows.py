"""The import arrows say what the design says: data knows nothing of training, training nothing of serving."""

import ast

import pytest

from helpers import ROOT

PACKAGE = ROOT / "recsys_lightning"
SERVING = ("recsys_lightning.serving", "recsys_lightning.recommend")
RUNS = "recsys_lightning.runs"
ENTRY_POINTS = tuple(f"recsys_lightning.{name}" for name in ("train", "evaluate", "recommend", "sweep"))


def imports_of(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "recsys_lightning":  # `from recsys_lightning import train` imports recsys_lightning.train
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
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
def test_data_imports_only_data_errors_seeds_and_progress(path):
    allowed = (
        "recsys_lightning.data",
        "recsys_lightning.errors",
        "recsys_lightning.ranges",
        "recsys_lightning.seeds",
        "recsys_lightning.progress",
    )
    assert not [name for name in imports_of(path) if not name.startswith(allowed)]


def is_module(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


DATA_AND_MODELS = [*sorted((PACKAGE / "data").rglob("*.py")), *sorted((PACKAGE / "models").rglob("*.py"))]


@pytest.mark.parametrize("path", DATA_AND_MODELS, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_data_and_models_never_import_runs(path):
    assert not [name for name in imports_of(path) if is_module(name, (RUNS,))]


@pytest.mark.parametrize("path", sorted((PACKAGE / "runs").rglob("*.py")), ids=lambda path: path.name)
def test_runs_import_no_entry_point_and_nothing_of_serving(path):
    assert not [name for name in imports_of(path) if is_module(name, (*ENTRY_POINTS, *SERVING))]


@pytest.mark.parametrize("name", ["samplers.py", "losses.py", "module.py", "build.py", "pretrained.py", "callbacks.py"])
def test_training_reads_another_run_only_through_runs(name):
    """A retriever's candidates or a warm start's weights come through runs/ (and retrieval.py), never
    through an entry point, serving or the two-stage comparison evaluate prints."""
    higher = (*ENTRY_POINTS, *SERVING, "recsys_lightning.two_stage")
    assert not [imported for imported in imports_of(PACKAGE / name) if is_module(imported, higher)]


def test_the_arrows_see_what_they_check():
    """The checks above would pass on a parser that finds nothing: these imports are there today."""
    assert "recsys_lightning.runs.other_runs" in imports_of(PACKAGE / "samplers.py")
    assert "recsys_lightning.runs.checkpoint_file" in imports_of(PACKAGE / "runs" / "trained_run.py")
    assert "recsys_lightning.monitor" in imports_of(PACKAGE / "validation.py")


def test_progress_imports_nothing_of_the_package():
    """Data, callbacks and the entry points all report through progress.py: it must stay below them all."""
    assert not imports_of(PACKAGE / "progress.py")


def test_losses_import_nothing_from_samplers():
    """A loss accepts or refuses a sampler by what the sampler class declares, not by its class."""
    assert not [name for name in imports_of(PACKAGE / "losses.py") if name.startswith("recsys_lightning.samplers")]


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda path: path.name)
def test_models_import_nothing_from_data(path):
    """Models take tensors: the module turns the data's tables into them."""
    assert not [name for name in imports_of(path) if name.startswith("recsys_lightning.data")]
