"""Progress lines for long work when stdout is not a terminal (CI, nohup, a scheduler's log), at a fixed
interval in time: while the data is built (`building`, `stage`), while training, validation and test run
(callbacks.ProgressLog) and while `evaluate` ranks. In a terminal the progress bar shows training instead,
and these lines are off; so are they on DDP ranks other than 0, which would repeat rank 0's.

One interval for the whole process, `callbacks.progress_log.interval_seconds` (0: no lines), set by the
entry points around their work (`every`); nothing is printed by work shorter than it.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 30.0
# The watching thread of a build wakes at most this often, however small the interval (a test's 1e-6).
MIN_WATCH_SECONDS = 1.0
_interval_seconds = DEFAULT_INTERVAL_SECONDS
_build: _Build | None = None


@contextmanager
def every(interval_seconds: float) -> Iterator[None]:
    """The process's progress interval while the block runs (an entry point's work); the previous one after."""
    global _interval_seconds
    before, _interval_seconds = _interval_seconds, float(interval_seconds)
    try:
        yield
    finally:
        _interval_seconds = before


def interval_seconds() -> float:
    return _interval_seconds


def reporting(interval: float) -> bool:
    """Whether lines are written at `interval`: off at 0, in a terminal and on DDP ranks other than 0."""
    return interval > 0 and not sys.stdout.isatty() and getattr(rank_zero_only, "rank", 0) == 0


class ProgressClock:
    """When a line is due and what it says: where the work is, `done` of `total`, the pace and the time
    left at that pace. One clock read per `due`, so callers check it per batch or chunk, never per row."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = _interval_seconds if interval is None else interval
        self.enabled = reporting(self.interval)
        self.start()

    def start(self) -> None:
        self.started = self.reported = time.perf_counter()

    def due(self) -> bool:
        return self.enabled and time.perf_counter() - self.reported >= self.interval

    def report(self, where: str, done: float, total: float, end: str, counted: int | None = None, unit: str = "") -> None:
        """'<where>, <counted per second> <unit>/s, ~<time> to <end>', `counted` since `start`; `total` may be
        inf (unknown)."""
        now = time.perf_counter()
        elapsed, self.reported = now - self.started, now
        pace = f"{counted / elapsed:,.0f} {unit}/s, " if counted is not None and elapsed > 0 else ""
        left = (total - done) * elapsed / done if done > 0 and math.isfinite(total) else math.nan
        log.info("%s, %s%s", where, pace, f"~{duration(left)} to {end}" if math.isfinite(left) else "time left unknown")


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class _Build:
    """The steps of one long piece of work and a thread that names the running step every interval:
    one numpy sort of 20M rows can take a minute, with no loop of ours to check a clock in."""

    def __init__(self, what: str, interval: float) -> None:
        self.what, self.interval = what, interval
        self.started = self.step_started = time.perf_counter()
        self.step, self.total, self.done = "loading", None, None
        self.long = False  # once the work has run past the interval, each step's start and end get a line too
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name=f"progress: {what}", daemon=True)

    def _watch(self) -> None:
        while not self.finished.wait(max(self.interval, MIN_WATCH_SECONDS)):
            with self.lock:
                now = time.perf_counter()
                self.long = True
                log.info(
                    "%s: %s%s, %s so far (%s in all)",
                    self.what,
                    self.step,
                    self._count(now),
                    duration(now - self.step_started),
                    duration(now - self.started),
                )

    def begin(self, step: str, total: int | None) -> None:
        with self.lock:
            now = time.perf_counter()
            self.long = self.long or now - self.started >= self.interval
            if self.long:
                log.info("%s: %s done in %s; %s%s", self.what, self.step, duration(now - self.step_started), step, _of(total))
            self.step, self.step_started, self.total, self.done = step, now, total, None

    def end(self, completed: bool) -> None:
        """The watcher stops; a line with the whole time if the work was long and did not fail."""
        with self.lock:
            self.finished.set()
            now = time.perf_counter()
            if completed and (self.long or now - self.started >= self.interval):
                log.info("%s: %s done; built in %s", self.what, self.step, duration(now - self.started))

    def _count(self, now: float) -> str:
        if self.done is None:
            return _of(self.total)
        left = ""
        if self.total and self.done:
            left = f", ~{duration((self.total - self.done) * (now - self.step_started) / self.done)} left"
        return f": {self.done:,} of {self.total:,}{left}" if self.total else f": {self.done:,} so far"


def _of(total: int | None) -> str:
    return f" ({total:,} rows)" if total is not None else ""


@contextmanager
def building(what: str) -> Iterator[None]:
    """Long work named `what` (e.g. 'data'), whose steps `stage` names as they start; lines only when it
    runs past the interval. Inside another build it is that build's next step."""
    global _build
    if _build is not None:
        stage(what)
        yield
        return
    if not reporting(_interval_seconds):
        yield
        return
    build = _build = _Build(what, _interval_seconds)
    build.watcher.start()
    completed = False
    try:
        yield
        completed = True
    finally:
        _build = None
        build.end(completed)


def stage(step: str, total: int | None = None) -> None:
    """The step of the current build that starts now (its rows, where known); nothing outside a build."""
    if _build is not None:
        _build.begin(step, total)


def advance(done: int) -> None:
    """Rows done so far of the current step, for a step that works in chunks; nothing outside a build."""
    if _build is not None:
        _build.done = done
