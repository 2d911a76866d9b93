"""A process that has imported torch, Lightning, Hydra and the entry points once, and forks one child per
`python -m <entry point> overrides...` that a test runs (`helpers.run_module`).

Why: importing torch and Lightning takes about 9 of the 11 seconds of a small training run, and the suite
runs a few hundred entry points; paid once per pytest worker, the suite takes half the time. The child
runs the module as `python -m` does (`runpy`, as `__main__`, with the test's argv, environment, working
directory, stdout and stderr files) and exits as an interpreter would: the code SystemExit asks for, 1
with a traceback for another exception, death by SIGINT for an uncaught KeyboardInterrupt. Nothing of
the entry points runs here before the fork, and no thread pool has started: OpenMP is not fork-safe.

Protocol: one JSON request per line on stdin, one JSON reply per line on the file descriptor given as
argv[1] (stdout and stderr of this process stay free for stray output).
"""

import atexit
import importlib
import json
import os
import runpy
import signal
import sys
import traceback

import recsys_lightning

ENTRY_POINTS = ("evaluate", "prepare", "recommend", "train")


def _import_what_the_entry_points_import() -> None:
    """Everything the entry points import, but not the entry point modules: `python -m` runs a module
    that was not imported before (runpy warns otherwise), and one imported by name later is a second copy."""
    for name in ENTRY_POINTS:
        importlib.import_module(f"recsys_lightning.{name}")
    for name in ENTRY_POINTS:
        del sys.modules[f"recsys_lightning.{name}"]
        delattr(recsys_lightning, name)


def _run_child(request: dict, reply_fd: int) -> None:
    """In the forked child: become `python -m module args...` and exit as it would; never returns."""
    code = 1
    try:
        os.close(reply_fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # as for `python -m`: the working directory first, then PYTHONPATH (sys.path[0] is this file's folder)
        sys.path[0:1] = [os.getcwd(), *(path for path in request["env"].get("PYTHONPATH", "").split(os.pathsep) if path)]
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if code == -signal.SIGINT:  # as the interpreter ends on an uncaught KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def main() -> None:
    reply_fd = int(sys.argv[1])
    _import_what_the_entry_points_import()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            _run_child(request, reply_fd)
        _, status = os.waitpid(child, 0)
        os.write(reply_fd, (json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())


if __name__ == "__main__":
    main()
