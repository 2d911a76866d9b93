"""How long the README's long commands take: the figures the README states are measured with this script.

Each command runs exactly as the README writes it, in a temporary clone of this repository (its
committed HEAD; `.venv` and `data/` linked to this checkout's, so nothing is installed or fetched), and
the clone is removed after. Beside each: wall seconds, the exit code (or the timeout it ran into), and
the 1-minute load average before it started and while it ran (sampled every 5 s: mean and max), since a
time measured beside other work is not a time on a quiet machine.

    .venv/bin/python bench/readme_times.py --list             # the commands and their names
    .venv/bin/python bench/readme_times.py --only main        # one or several: --only main,ncf
    .venv/bin/python bench/readme_times.py                    # all of them: hours on 2 cores
    .venv/bin/python bench/readme_times.py --only sweep --timeout 3600

A command the README no longer shows is refused by name: this list follows the README, not the other way.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ".venv/bin/python"
SAMPLE_SECONDS = 5.0


@dataclass(frozen=True)
class Command:
    name: str
    line: str  # as the README writes it, after `.venv/bin/python `
    timeout: float  # seconds; a run past it is stopped and reported as such


COMMANDS = [
    Command("main", "-m recsys_lightning.train", 900),
    Command("tests", "-m pytest -q", 4 * 3600),
    Command("tests-fast", '-m pytest -q -m "not slow"', 3600),
    Command("ncf", "-m recsys_lightning.train experiment=ml100k_ncf", 3600),
    Command("sweep", "-m recsys_lightning.train -m model=mf,hybrid,ncf loss=bpr,bce sampler=uniform,popularity", 4 * 3600),
    Command("baselines", "-m recsys_lightning.train -m model=popularity,itemknn,ease,mf,ncf", 3600),
    Command("optuna", "-m recsys_lightning.train -m hparams_search=optuna", 4 * 3600),
    Command(
        "synthetic",
        "-m recsys_lightning.train data=synthetic data.num_users=138000 data.num_items=27000 data.num_interactions=20000000",
        4 * 3600,
    ),
]


@dataclass(frozen=True)
class Timing:
    seconds: float
    exit_code: int | None  # None: stopped at its timeout
    load_before: float
    load_mean: float
    load_max: float
    last_error: str


def check_in_readme(commands: list[Command]) -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [command.name for command in commands if f"{PYTHON} {command.line}" not in readme]
    if missing:
        raise SystemExit(f"README.md no longer shows {', '.join(missing)}: update COMMANDS in {Path(__file__).name}")


def fresh_clone(folder: Path) -> Path:
    """HEAD of this repository in `folder`, with this checkout's virtual environment and data linked in."""
    clone = folder / "repo"
    subprocess.run(["git", "clone", "--quiet", "--local", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    for shared in (".venv", "data"):
        if (ROOT / shared).exists():
            (clone / shared).symlink_to((ROOT / shared).resolve())
    imported = subprocess.run(
        [PYTHON, "-c", "import recsys_lightning; print(recsys_lightning.__file__)"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(imported).resolve().is_relative_to(clone.resolve()):
        raise SystemExit(f"the clone imports recsys_lightning from {imported}, not from itself: its figures would time other code")
    return clone


def run(command: Command, timeout: float) -> Timing:
    """`command` in a fresh clone, in its own process group (a sweep's or a test's children end with it)."""
    with tempfile.TemporaryDirectory(prefix=f"readme-{command.name}-") as folder:
        clone = fresh_clone(Path(folder))
        log = Path(folder) / "stderr.txt"
        load_before = os.getloadavg()[0]
        samples = []
        start = time.monotonic()
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                f"{PYTHON} {command.line}", shell=True, cwd=clone, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
            exit_code: int | None = None
            try:
                while exit_code is None and time.monotonic() - start <= timeout:
                    try:
                        exit_code = process.wait(timeout=SAMPLE_SECONDS)
                    except subprocess.TimeoutExpired:
                        samples.append(os.getloadavg()[0])
            finally:  # past its timeout, or this script interrupted: the command and its children end too
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        seconds = time.monotonic() - start
        samples = samples or [os.getloadavg()[0]]
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return Timing(seconds, exit_code, load_before, sum(samples) / len(samples), max(samples), lines[-1][:160] if lines else "")


def shown(timing: Timing, timeout: float) -> str:
    minutes, seconds = divmod(timing.seconds, 60)
    wall = f"{int(minutes)}:{seconds:04.1f}" if minutes else f"{seconds:.1f} s"
    ended = f"timed out after {timeout:.0f} s" if timing.exit_code is None else f"exit {timing.exit_code}"
    return f"{wall:>10}  load {timing.load_before:4.2f} before, {timing.load_mean:4.2f} mean ({timing.load_max:4.2f} max) during  {ended}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names (see --list); default: every command")
    parser.add_argument("--timeout", type=float, help="seconds per command, in place of each command's own")
    parser.add_argument("--list", action="store_true", help="print the names and commands, run nothing")
    args = parser.parse_args()
    check_in_readme(COMMANDS)
    by_name = {command.name: command for command in COMMANDS}
    names = args.only.split(",") if args.only else list(by_name)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)}: not a command here; use {', '.join(by_name)}")
    if args.list:
        for command in COMMANDS:
            print(f"{command.name:<11} {PYTHON} {command.line}   (timeout {command.timeout:.0f} s)")
        return
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    threads = " ".join(
        f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if name in os.environ
    )
    print(f"commit {head}, {os.cpu_count()} cores, {threads or 'no OMP_*/MKL_* variables set'}")
    for name in names:
        command = by_name[name]
        timeout = args.timeout or command.timeout
        timing = run(command, timeout)
        print(f"{name:<11}{shown(timing, timeout)}   {PYTHON} {command.line}", flush=True)
        if timing.exit_code != 0:
            print(f"{'':<11}last stderr line: {timing.last_error}", flush=True)


if __name__ == "__main__":
    main()
