"""Threads that share the CPU (issue 22): the wait policy and count are set before torch loads, a user's
own variables win, the cgroup quota caps the count, runtime.threads overrides it, DDP ranks share the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys_lightning.errors import ConfigError
from recsys_lightning.runs.run_config import changed_settings, config_record
from recsys_lightning.threads import (
    MARKER,
    apply_thread_count,
    cgroup_cpu_limit,
    cores_available,
    plan_threads,
    prepare_environment,
    processes_per_host,
    user_thread_count,
)

from helpers import ROOT, compose_config, training_config

# Runs an entry point as `python -m` does (its __main__, with --help) and records the environment at the
# moment torch is first imported: what OpenMP reads when it loads.
SPY = """
import importlib.abc, json, os, runpy, sys
seen = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.update({key: os.environ.get(key) for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        return None
sys.meta_path.insert(0, Spy())
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
import torch
print(json.dumps({"at_torch_import": seen, "torch_threads": torch.get_num_threads()}))
"""
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RECSYS_LIGHTNING_THREADS", MARKER)


def _spy(module: str, **variables: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES} | variables
    result = subprocess.run([sys.executable, "-c", SPY, module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("module", ["recsys_lightning.train", "recsys_lightning.recommend", "recsys_lightning.evaluate"])
def test_entry_point_sets_passive_wait_and_one_thread_before_torch_loads(module):
    seen = _spy(module)
    assert seen["at_torch_import"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert seen["torch_threads"] == 1


@pytest.mark.slow
def test_entry_point_keeps_the_users_own_wait_policy_and_thread_count():
    seen = _spy("recsys_lightning.train", OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2")
    assert seen["at_torch_import"]["OMP_WAIT_POLICY"] == "ACTIVE"
    assert seen["at_torch_import"]["OMP_NUM_THREADS"] == "2"
    assert seen["torch_threads"] == 2


@pytest.mark.slow
def test_switch_off_leaves_the_environment_as_it_was():
    seen = _spy("recsys_lightning.train", RECSYS_LIGHTNING_THREADS="off")
    assert seen["at_torch_import"] == {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}


def test_importing_the_package_does_not_load_torch():
    """The package's __init__ runs before an entry point's imports: it must set the environment without torch."""
    code = "import sys, recsys_lightning; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def _four_cores(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    (tmp_path / "cpu.max").write_text("400000 100000")
    return tmp_path


def _no_quota(tmp_path: Path) -> Path:
    return tmp_path / "no-cgroup"


def test_prepare_environment_sets_passive_and_one_thread_when_unset():
    environ: dict[str, str] = {}
    prepare_environment(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", MARKER: "1"}


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_variable_is_unset_as_openmp_reads_it(blank):
    """`OMP_NUM_THREADS= cmd` leaves OpenMP its default (spinning, a thread per core): it gets ours instead."""
    environ = {"OMP_NUM_THREADS": blank, "MKL_NUM_THREADS": blank, "OMP_WAIT_POLICY": blank}
    prepare_environment(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", MARKER: "1"}


@pytest.mark.parametrize(
    "users",
    [
        {"OMP_WAIT_POLICY": "ACTIVE"},
        {"OMP_NUM_THREADS": "3"},
        {"MKL_NUM_THREADS": "3"},
        {"OMP_NUM_THREADS": "4,2"},
        {"OMP_NUM_THREADS": "lots"},
    ],
)
def test_prepare_environment_keeps_what_the_user_set(users):
    environ = dict(users)
    prepare_environment(environ)
    assert {key: environ[key] for key in users} == users
    if "OMP_WAIT_POLICY" not in users:  # a count of one's own keeps the count, not the spinning
        assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert MARKER not in environ and set(environ) == {*users, "OMP_WAIT_POLICY"}


def test_a_count_this_package_wrote_is_kept_by_the_processes_it_starts_and_redone_by_auto(tmp_path, monkeypatch):
    """A DDP rank inherits our OMP_NUM_THREADS with the marker: its share, kept at import (a ddp_spawn worker
    runs no entry point), not the user's, so `share` at the entry point computes the share again."""
    inherited = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", MARKER: "2", "OMP_WAIT_POLICY": "PASSIVE"}
    prepare_environment(inherited)
    assert inherited == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", MARKER: "2", "OMP_WAIT_POLICY": "PASSIVE"}
    assert user_thread_count(inherited) is None
    assert plan_threads("share", environ=inherited, root=_four_cores(tmp_path, monkeypatch)).threads == 4
    assert user_thread_count({"OMP_NUM_THREADS": "3", MARKER: "1"}) == 3  # the user changed it since


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({"cpu.max": "12 0"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit_reads_v2_and_v1_quotas(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(("quota", "cores"), [("100000 100000", 1), ("150000 100000", 1), ("10000 100000", 1)])
def test_cores_available_rounds_the_quota_down_to_at_least_one(tmp_path, quota, cores):
    (tmp_path / "cpu.max").write_text(quota)
    assert cores_available(tmp_path) == cores


def test_cores_available_is_the_affinity_without_a_quota(tmp_path):
    assert cores_available(_no_quota(tmp_path)) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("ranks", "jobs", "threads"), [(1, 1, 4), (2, 1, 2), (3, 1, 1), (8, 1, 1), (2, 2, 1), (1, 2, 2), (1, -1, 1), (1, -3, 2)]
)
def test_ddp_ranks_and_parallel_jobs_share_the_cores(tmp_path, monkeypatch, ranks, jobs, threads):
    plan = plan_threads("share", ranks=ranks, jobs=jobs, environ={}, root=_four_cores(tmp_path, monkeypatch))
    assert (plan.threads, plan.cores, plan.source) == (threads, 4, "share")
    assert plan_threads("auto", ranks=ranks, jobs=jobs, environ={}, root=tmp_path).threads == 1


def test_runtime_threads_overrides_the_count_and_the_users_variable(tmp_path, monkeypatch):
    plan = plan_threads(3, ranks=2, environ={"OMP_NUM_THREADS": "1"}, root=_four_cores(tmp_path, monkeypatch))
    assert (plan.threads, plan.source) == (3, "runtime.threads")
    assert plan_threads("share", ranks=2, environ={"OMP_NUM_THREADS": "1"}, root=tmp_path).threads == 1


@pytest.mark.parametrize("setting", [0, -2, "many", 1.5, True, None])
def test_runtime_threads_refuses_what_is_not_a_count(tmp_path, setting):
    with pytest.raises(ConfigError, match=r"^runtime\.threads=.*: use auto, share or a whole number of threads >= 1$"):
        plan_threads(setting, environ={}, root=tmp_path)


def test_apply_thread_count_sets_torch_and_the_environment_ranks_inherit(tmp_path, monkeypatch):
    """Lightning's DDP launcher sets its own share only while OMP_NUM_THREADS is unset: ours is written first."""
    environ: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
    before = torch.get_num_threads()
    try:
        plan = apply_thread_count("share", ranks=2, environ=environ, root=_four_cores(tmp_path, monkeypatch))
        assert torch.get_num_threads() == plan.threads == 2
        assert environ["OMP_NUM_THREADS"] == environ[MARKER] == "2"
        assert plan.describe() == "threads: 2 intra-op (cores available 4, ranks 2; share), OMP_WAIT_POLICY=PASSIVE"
    finally:
        torch.set_num_threads(before)


def test_apply_thread_count_left_off_reports_torchs_own_count(tmp_path):
    plan = apply_thread_count("auto", environ={"RECSYS_LIGHTNING_THREADS": "off"}, root=tmp_path)
    assert plan.threads == torch.get_num_threads()
    assert "OMP_WAIT_POLICY=unset (libgomp spins)" in plan.describe()


@pytest.mark.parametrize(("devices", "processes"), [(1, 1), (4, 4), ("2", 2), ([0, 1], 2), ("auto", 1), (-1, 1)])
def test_processes_per_host_follows_trainer_devices(devices, processes):
    assert processes_per_host(devices) == processes


@pytest.mark.parametrize("config_name", ["config", "evaluate", "recommend"])
def test_every_entry_point_config_has_runtime_threads_auto(config_name):
    overrides = ["run_dir=x"] if config_name != "config" else []
    assert compose_config(config_name, *overrides).runtime.threads == "auto"


@pytest.mark.slow
def test_run_log_says_how_many_threads_and_why(movielens_run):
    lines = [line for line in (movielens_run / "train.log").read_text().splitlines() if "] - threads: " in line]
    assert len(lines) == 1
    expected = f"threads: {torch.get_num_threads()} intra-op (cores available {cores_available()}, ranks 1;"
    assert lines[0].split("] - ", 1)[1].startswith(expected)
    assert lines[0].endswith(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")


THREAD_SPY_CALLBACK = """
import os, torch, pytorch_lightning as pl
class ThreadSpy(pl.Callback):
    def __init__(self, folder):
        self.folder = folder
    def on_train_start(self, trainer, pl_module):
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.txt"), "w") as handle:
            handle.write(f"{torch.get_num_threads()} {os.environ['OMP_NUM_THREADS']}")
"""


@pytest.mark.slow
def test_ddp_on_cpu_ranks_share_the_cores_and_the_log_says_so(tmp_path):
    """Two gloo ranks on this host with runtime.threads=share: each trains on cores // 2 threads (Lightning keeps
    ours instead of its own), rank 0 logs it."""
    (tmp_path / "thread_spy.py").write_text(THREAD_SPY_CALLBACK)
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])), "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "run"
    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "runtime.threads=share", "debug=quick", "logger=[]"]
    overrides.append(f"hydra.run.dir={run_dir}")
    overrides += ["+callbacks.spy._target_=thread_spy.ThreadSpy", f"+callbacks.spy.folder={tmp_path}"]
    command = [sys.executable, "-m", "recsys_lightning.train", *overrides]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    share = max(1, cores_available() // 2)
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == [f"{share} {share}"] * 2
    logged = [line.split("] - ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines() if "] - threads: " in line]
    assert logged == [f"threads: {share} intra-op (cores available {cores_available()}, ranks 2; share), OMP_WAIT_POLICY=PASSIVE"]


def test_a_resume_may_change_the_threads_or_come_from_a_run_recorded_before_runtime_existed():
    """How many threads compute an epoch is not what is trained: a resume on another machine may change it."""
    recorded = config_record(training_config("runtime.threads=4"))
    assert changed_settings(recorded, training_config("runtime.threads=1")) == []
    del recorded["config"]["runtime"]
    assert changed_settings(recorded, training_config()) == []
