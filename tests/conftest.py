"""Shared fixtures; the plain helpers they and the tests use are in helpers.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings

from recsys_lightning.data.movielens import resolve_movielens

from helpers import ROOT, SMALL_RUN, SMALL_SWEEP, random_interactions, run_module

# The generated-input tests run the same examples on every run (derandomize, which also means no example
# database): a run never depends on what an earlier run left in .hypothesis/, and a suite that passed passes
# again. `pytest --hypothesis-profile=explore` draws new examples each run (still without a database), to hunt
# for new failures; pin one found that way with @example.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", database=None)
settings.load_profile("repeatable")


# Session fixtures that train through an entry point: a test using one waits for that run, so it is slow too.
ENTRY_POINT_RUNS = frozenset({"movielens_run", "finished_run", "finished_sweep"})


def pytest_configure(config: pytest.Config) -> None:
    """A suite a script starts in the background (`pytest &`) inherits SIGINT ignored, and so would every
    process it starts: the tests of what Ctrl-C does would see nothing happen. This process (each xdist
    worker too) takes the default a terminal gives, which its children get back as they start."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`-m "not slow"` leaves out every test that runs an entry point or trains on ML-100K, including those
    that only read such a run (README)."""
    for item in items:
        if ENTRY_POINT_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def movielens_on_disk() -> None:
    """ML-100K fetched into the data folder once, before any test, as a user's first run fetches it: tests
    spread over workers run in any order, and one that limits its process (a file-size limit, a folder it
    cannot write) must not be the first to need the data and fetch it. Workers starting together fetch once
    (the fetch lock); with the data already there this reads it and costs a second."""
    resolve_movielens(Path(os.environ.get("RECSYS_DATA_DIR") or ROOT / "data"))


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return random_interactions(num_users=40, num_items=60, per_user=15)


@pytest.fixture(scope="session")
def movielens_run(tmp_path_factory) -> Path:
    """One short MF/BPR run on real ML-100K through the training entry point, shared by the tests
    that read its outputs (metrics, checkpoints, serving, evaluation)."""
    output_dir = tmp_path_factory.mktemp("movielens_run")
    overrides = ("trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0", f"paths.output_dir={output_dir}")
    result = run_module("recsys_lightning.train", *overrides, fresh=True)  # a new interpreter, as a user starts it
    assert result.returncode == 0, result.stderr[-3000:]
    (output_dir / "stdout.txt").write_text(result.stdout)  # what the user saw, for the console tests
    (output_dir / "stderr.txt").write_text(result.stderr)
    run_dirs = [path.parent for path in output_dir.glob("runs/*/*/.hydra")]
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One run of `SMALL_RUN` for three epochs through the training entry point, finished (metrics.json,
    best and last checkpoints, .hydra/), shared by the tests of run folders, resume and run records.
    A test that changes it works on a copy; the few that train into it must be refused and change nothing."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_module("recsys_lightning.train", *SMALL_RUN, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory) -> Path:
    """One finished `SMALL_SWEEP` through the training entry point (two jobs, multirun.yaml), shared by
    the tests of sweep folders; each works on a copy."""
    sweep_dir = tmp_path_factory.mktemp("finished_sweep") / "sweep"
    result = run_module("recsys_lightning.train", *SMALL_SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir
