"""SIGTERM in every phase of a training run, so each ends with one line saying what to do.

Lightning handles SIGTERM only inside a stage (fit, validate, test): its handler sets a flag that the
loops read between batches (evaluation loops not after their last batch), and it puts back the handler
it found when the stage ends. Outside a stage (data loading, between fit and test, writing metrics.json)
the default handler would end the process with no message.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from recsys_lightning.errors import ctrl_c_raises_subclass


class SignalReceived(BaseException):
    """SIGTERM outside Lightning's own handling. A BaseException, as KeyboardInterrupt is, so that no
    library's `except Exception` swallows it."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class StopSignals:
    """Within the block, SIGTERM raises SignalReceived at once, except while a Lightning stage has its
    handler in place (which chains to this one): there the stage stops at its next batch, and a signal it
    never acted on (during the last evaluation batch) is raised by `raise_if_received` after the stage.

    SIGINT raises KeyboardInterrupt, as a subclass (`errors.CtrlC`, which says why); Lightning turns one
    inside a stage into SystemExit(1).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._handler = self._handle  # one object: Lightning keeps it, and `_handle` compares with it
        self._previous: object = None
        self._ctrl_c = ctrl_c_raises_subclass()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._ctrl_c.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._ctrl_c.__exit__(None, None, None)

    def raise_if_received(self) -> None:
        """After a Lightning stage: the signal it saw but did not stop for."""
        if self.received is not None:
            raise SignalReceived(self.received)

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        self.received = signal_number
        if signal.getsignal(signal.SIGTERM) is self._handler:  # no Lightning stage is running: stop here
            raise SignalReceived(signal_number)
