"""Ctrl-C ends an entry point with exit code 130, even when it lands in code an extension runs through
PyRun_String: CPython would otherwise mark the KeyboardInterrupt unhandled and, at exit, kill the process
with SIGINT whatever `sys.exit` asked (returncode -2; seen once in CI, mid-export)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from recsys_lightning.errors import CtrlC, ctrl_c_raises_subclass, interruptions_raise
from recsys_lightning.stop_signals import StopSignals

from helpers import ROOT

# Ctrl-C arrives inside code run by PyRun_String (as extensions run Python code), is caught by
# `interruptions_raise` and ends the process with sys.exit(130) (`exit_with_message`).
CTRL_C_INSIDE_PYRUN_STRING = textwrap.dedent(
    """
    import ctypes
    from recsys_lightning.errors import RecsysError, exit_with_message, interruptions_raise

    run_string = ctypes.pythonapi.PyRun_String
    run_string.restype = ctypes.py_object
    run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
    code = b"import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(30)"
    try:
        with interruptions_raise("stopped"):
            run_string(code, 257, {}, {})  # 257: Py_file_input
    except RecsysError as error:
        exit_with_message(error)
    """
)


def test_ctrl_c_inside_code_an_extension_runs_still_exits_with_130(tmp_path):
    (tmp_path / "stopped_module.py").write_text(CTRL_C_INSIDE_PYRUN_STRING)
    # Run with -m, as the entry points are: a script's SystemExit takes another exit path, never marked.
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    command = [sys.executable, "-m", "stopped_module"]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr[-2000:]
    assert result.stderr.strip() == "error: stopped"


def test_ctrl_c_raises_the_subclass_in_the_block_and_the_default_handler_is_back_after():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for block in (ctrl_c_raises_subclass(), StopSignals()):
        with pytest.raises(CtrlC), block:
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interruptions_raise("stopped"):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
