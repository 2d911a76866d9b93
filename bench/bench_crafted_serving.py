"""What a crafted FAISS index file or a huge `k` costs `recommend`, through the real entry point.

Each case runs `python -m recsys_lightning.recommend ...` in a subprocess and prints its exit code,
seconds, peak resident memory (the child's own ru_maxrss, from os.wait4) and the first line of stderr
past the info lines (which model is served, which index was loaded or written):

- baseline: `user_id=1 k=10`, the memory any answer costs;
- large k: `user_id=1 k=200000000` (issue 21, defect 4);
- crafted index: a real flat FAISS index of the run's item vectors, written by `recommend index=faiss
  faiss.path=...`, then cut to 4 KiB with its code vector's length declared as 2 GiB, and the sidecar's
  index_sha256 edited to match (issue 21, defect 3); the same for an IVF index whose first inverted
  list declares 2 GiB of codes (cut 4 KiB after that list size).

    .venv/bin/python bench/bench_crafted_serving.py                        # trains a 1-epoch ML-100K run first
    .venv/bin/python bench/bench_crafted_serving.py --run-dir outputs/runs/<run>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECLARED = 2**31  # bytes of codes the crafted header declares
FLAT_CODES_LENGTH_AT = 4 + 4 + 8 + 8 + 8 + 1 + 4  # fourcc, d, ntotal, two dummies, is_trained, metric_type


def run(*overrides: str, timeout: int = 900) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak RSS in GB, first telling stderr line) of one `recommend` call."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "recsys_lightning.recommend", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.kill()
            raise
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("serving ", "loaded the ", "wrote the "))]  # skip the info lines
    return process.returncode, seconds, usage.ru_maxrss / 2**20, (telling or lines or [""])[0][:160]


def train_run(output_dir: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "recsys_lightning.train", "trainer.max_epochs=1", f"paths.output_dir={output_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        sys.exit(result.stderr[-2000:])
    return next(output_dir.glob("runs/*/*/metrics.json")).parent


def crafted(path: Path, declared: int, kind: str) -> None:
    """Cut the index in `path` short, declaring `declared` bytes of codes, and make its sidecar's hash match."""
    data = bytearray(path.read_bytes())
    if kind == "flat":
        data[FLAT_CODES_LENGTH_AT : FLAT_CODES_LENGTH_AT + 8] = struct.pack("<Q", declared // 4)  # counted in floats
        end = 4096
    else:  # the first inverted list's size, in the "full" list-size vector after the "ilar" header
        invlists = data.index(b"ilar")
        code_size = struct.unpack_from("<Q", data, invlists + 12)[0]
        sizes_at = invlists + 4 + 8 + 8 + 4 + 8
        data[sizes_at : sizes_at + 8] = struct.pack("<Q", declared // code_size)
        end = sizes_at + 4096  # the centroids come first: the cut falls in the codes
    data = bytes(data[:end])
    path.write_bytes(data)
    sidecar = path.with_name(path.name + ".json")
    record = json.loads(sidecar.read_text())
    record["index_sha256"] = hashlib.sha256(data).hexdigest()
    sidecar.write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a trained MF run folder (default: train one epoch on ML-100K)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        run_dir = args.run_dir or train_run(folder / "train")
        cases = [("baseline k=10", ["user_id=1", "k=10"]), ("large k=200000000", ["user_id=1", "k=200000000"])]
        for kind in ("flat", "ivf"):
            path = folder / f"{kind}.faiss"
            faiss = ["index=faiss", f"faiss.kind={kind}", f"faiss.path={path}"]
            code, *_ = run(f"run_dir={run_dir}", "user_id=1", *faiss)
            assert code == 0 and path.is_file(), f"building the {kind} index failed"
            crafted(path, DECLARED, kind)
            cases.append((f"crafted {kind} index (4 KiB, declares 2 GiB)", ["user_id=1", *faiss]))
        print(f"{'case':44} {'exit':>4} {'seconds':>8} {'peak GB':>8}  first stderr line")
        for name, overrides in cases:
            code, seconds, peak, line = run(f"run_dir={run_dir}", *overrides)
            print(f"{name:44} {code:>4} {seconds:>8.1f} {peak:>8.2f}  {line}", flush=True)


if __name__ == "__main__":
    main()
