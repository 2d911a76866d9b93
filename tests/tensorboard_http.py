"""TensorBoard's HTTP API as the HParams tab's own frontend calls it: a server over a log folder, the
columns it declares (`experiment`) and the rows it serves (`session_groups`).

Used by tests/test_hparams_tab.py and by bench/check_hparams_tab.py (a real sweep).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def tensorboard_server(logdir: Path, timeout: float = 120.0) -> Iterator[str]:
    """The URL of a TensorBoard serving `logdir`, once it answers; stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--load_fast", "false", "--reload_interval", "1"]
    log = tempfile.TemporaryFile()  # not a pipe: a pipe nobody reads would stall the server once full
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/data/runs", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError) as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"TensorBoard did not start: {log.read().decode()[-2000:]}") from error
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def post(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/data/plugin/hparams/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def hparams_table(url: str, runs: int, sort_by_metric: str, timeout: float = 120.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(experiment, session groups best first by `sort_by_metric`) once TensorBoard has loaded `runs` runs."""
    deadline = time.monotonic() + timeout
    while True:
        experiment = post(url, "experiment", {"experimentName": "", "includeMetrics": True})
        columns = [{"hparam": info["name"], "includeInResult": True} for info in experiment.get("hparamInfos", [])]
        columns += [{"metric": info["name"], "includeInResult": True} for info in experiment.get("metricInfos", [])]
        for column in columns:
            if column.get("metric", {}).get("tag") == sort_by_metric:
                column["order"] = "ORDER_DESC"
        groups = post(
            url,
            "session_groups",
            {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": columns, "startIndex": 0, "sliceSize": 1000},
        )
        found = groups.get("sessionGroups", [])
        if len(found) == runs and all(group.get("metricValues") for group in found):
            return experiment, found
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard served {len(found)} of {runs} runs")
        time.sleep(1.0)
