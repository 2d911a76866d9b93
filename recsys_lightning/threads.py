"""How many threads torch computes with, and how they wait: a CPU shared with other work stays shared.

OpenMP's worker threads (libgomp, torch's CPU wheels) spin while they wait for each other. Beside
other busy processes the spinning threads take the cores their descheduled siblings need, and a
training run burns several times the CPU of a one-thread run and slows 20-70x (issue 22). So:

- at import of the package, before torch and its OpenMP runtime load, `prepare_environment` sets
  OMP_WAIT_POLICY=PASSIVE (waiting threads sleep) and OMP_NUM_THREADS / MKL_NUM_THREADS to 1, unless
  the user set them: one intra-op thread per process was the fastest setting measured, idle and beside
  busy processes, for both MF and NeuMF (bench/bench_threads.py; these models' ops are too small to
  repay waking a second thread);
- once the config is composed, `apply_thread_count` takes `runtime.threads`: `auto` (one), `share`
  (the cores this process may use, by CPU affinity and cgroup quota, divided among the DDP ranks and
  the parallel jobs of a sweep on this host), or a count, and calls torch.set_num_threads.

This module imports nothing heavy: the package's `__init__` runs it before anything imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recsys_lightning.errors import ConfigError

WAIT_POLICY = "OMP_WAIT_POLICY"
COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# `RECSYS_LIGHTNING_THREADS=off`: the package leaves the environment and torch's thread count as they are
# (libgomp's spinning default; how bench/bench_threads.py reproduces the behaviour before issue 22).
SWITCH = "RECSYS_LIGHTNING_THREADS"
# The count this package wrote into COUNT_VARIABLES. A process it starts (a DDP rank, a sweep job)
# inherits both: a count equal to the marker is ours to recompute, any other count is the user's.
MARKER = "_RECSYS_LIGHTNING_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
AUTO_THREADS = 1  # `runtime.threads=auto`: see the module docstring for the measurements behind it


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """Cores the cgroup CPU quota allows (v2 `cpu.max`: "<quota> <period>" or "max <period>"; v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`, quota -1 = none); None without a readable quota."""
    candidates = [(root / "cpu.max", None)] + [
        (root / folder / "cpu.cfs_quota_us", root / folder / "cpu.cfs_period_us") for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu")
    ]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                fields = quota_file.read_text()[:100].split()
                if len(fields) != 2:
                    continue
                quota_text, period_text = fields
            else:
                quota_text, period_text = quota_file.read_text()[:100].strip(), period_file.read_text()[:100].strip()
        except (OSError, UnicodeDecodeError):
            continue
        if quota_text == "max":
            return None
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            continue  # a file this code does not understand limits nothing
        if quota <= 0 or period <= 0:  # v1 writes -1 for no quota
            return None
        return quota / period
    return None


def cores_available(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded down: a
    thread throttled by the quota holds up every other thread at the next barrier), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on macOS
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)


def user_thread_count(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The thread count the user set in OMP_NUM_THREADS (or MKL_NUM_THREADS): a set value that is not
    the one this package wrote; None when unset, ours, or not a number."""
    for name in COUNT_VARIABLES:
        value = environ.get(name)
        if value is not None and value != environ.get(MARKER):
            try:
                return max(1, int(value.split(",")[0]))  # OpenMP takes "4,2" for nested levels
            except ValueError:
                return None
    return None


def policy_disabled(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH, "").strip().lower() == "off"


def prepare_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """Before torch loads: waiting threads sleep, and there is one per process. A user's own
    OMP_WAIT_POLICY or thread count is kept; `RECSYS_LIGHTNING_THREADS=off` keeps all.
    So is a count this package wrote in the process that started this one: a DDP rank's share, which a
    `ddp_spawn` worker (it runs no entry point, so no `apply_thread_count`) computes with as it is."""
    if policy_disabled(environ):
        return
    # A blank variable (`OMP_NUM_THREADS= python ...`) is unset to OpenMP, so it is to us too.
    if not environ.get(WAIT_POLICY, "").strip():
        environ[WAIT_POLICY] = "PASSIVE"
    if not any(environ.get(name, "").strip() for name in COUNT_VARIABLES):
        _write_count(environ, AUTO_THREADS)


@dataclass(frozen=True)
class ThreadPlan:
    """The intra-op thread count of this process and why: the run log's line."""

    threads: int
    cores: int
    ranks: int
    jobs: int
    source: str  # auto, share, runtime.threads, OMP_NUM_THREADS (the user's), or off
    wait_policy: str

    def describe(self) -> str:
        shared = f"cores available {self.cores}, ranks {self.ranks}" + (f", parallel jobs {self.jobs}" if self.jobs > 1 else "")
        return f"threads: {self.threads} intra-op ({shared}; {self.source}), {WAIT_POLICY}={self.wait_policy}"


def plan_threads(
    setting: Any, ranks: int = 1, jobs: int = 1, environ: MutableMapping[str, str] = os.environ, root: Path = CGROUP_ROOT
) -> ThreadPlan:
    """The count for `runtime.threads` = `setting`: a whole number wins; `auto` and `share` keep the user's
    OMP_NUM_THREADS; else `auto` is one thread, `share` an equal share of the cores for each of `ranks` x `jobs`
    processes on this host."""
    cores = cores_available(root)
    if jobs < 0:  # joblib's n_jobs=-1: as many jobs as cores, -2: all but one
        jobs = max(1, cores + 1 + jobs)
    wait_policy = environ.get(WAIT_POLICY, "unset (libgomp spins)")
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return ThreadPlan(setting, cores, ranks, jobs, "runtime.threads", wait_policy)
    if setting not in ("auto", "share"):
        raise ConfigError(f"runtime.threads={str(setting)[:50]}: use auto, share or a whole number of threads >= 1")
    user = user_thread_count(environ)
    if user is not None:
        return ThreadPlan(user, cores, ranks, jobs, "OMP_NUM_THREADS set by the user", wait_policy)
    if policy_disabled(environ) or _user_set_any_count(environ):
        return ThreadPlan(0, cores, ranks, jobs, f"{SWITCH}=off or an unreadable count: torch's own", wait_policy)
    if setting == "auto":
        return ThreadPlan(AUTO_THREADS, cores, ranks, jobs, "auto", wait_policy)
    return ThreadPlan(max(1, cores // max(1, ranks * jobs)), cores, ranks, jobs, "share", wait_policy)


def processes_per_host(devices: Any) -> int:
    """Processes Lightning starts on this host for `trainer.devices`: the number, or the list's length; 1 for `auto`."""
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return max(1, devices)
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return max(1, len(devices))
    return 1


def apply_thread_count(
    setting: Any, ranks: int = 1, jobs: int = 1, environ: MutableMapping[str, str] = os.environ, root: Path = CGROUP_ROOT
) -> ThreadPlan:
    """Set torch's intra-op count as `plan_threads` says, and write it to the environment the DDP ranks
    and workers this process starts inherit (where Lightning then keeps it instead of its own share)."""
    import torch  # here, not at the top: this module runs before torch may load

    plan = plan_threads(setting, ranks, jobs, environ, root)
    if plan.threads == 0:  # left to torch
        return replace(plan, threads=torch.get_num_threads())
    if plan.source in ("auto", "share", "runtime.threads"):
        _write_count(environ, plan.threads)
    torch.set_num_threads(plan.threads)
    return plan


def _write_count(environ: MutableMapping[str, str], threads: int) -> None:
    for name in COUNT_VARIABLES:
        environ[name] = str(threads)
    environ[MARKER] = str(threads)


def _user_set_any_count(environ: MutableMapping[str, str]) -> bool:
    """A count variable the user set that is not a number: kept, and torch reads it as it will."""
    return any(name in environ and environ[name] != environ.get(MARKER) for name in COUNT_VARIABLES)
