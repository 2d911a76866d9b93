"""What a crafted file costs the entry points that read it: exit code, seconds, peak memory, first error line.

Trains one short run on ML-100K through the training entry point, crafts files from its checkpoint in a
temporary folder, and runs the real entry point on each in a subprocess. Each case is one `Case` in
CASES: a name, and a function that writes its files and returns the command line, so a new kind of
crafted file (a FAISS index, a large `k`) is one more entry.

    .venv/bin/python bench/bench_crafted_files.py                  # every case
    .venv/bin/python bench/bench_crafted_files.py --only zip       # cases whose name contains "zip"
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


@dataclass(frozen=True)
class Case:
    """`craft(run_dir, folder)` writes the crafted files under `folder` and returns the command's arguments
    after `python -m` (entry point and overrides)."""

    name: str
    craft: Callable[[Path, Path], list[str]]


def edited_checkpoint(run_dir: Path, folder: Path, name: str, edit: Callable[[dict], None]) -> Path:
    """The run's last checkpoint after `edit(checkpoint)`, saved as `folder/name`."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    edit(checkpoint)
    path = folder / name
    torch.save(checkpoint, path)
    return path


def deflate_largest_entry(path: Path) -> None:
    """Rewrite the zip at `path` with its largest entry stored deflated (torch itself never compresses),
    streaming, so a 2 GiB entry costs no memory here."""
    rewritten = path.with_suffix(".rewritten")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
        largest = max(source.infolist(), key=lambda info: info.file_size)
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED if info is largest else zipfile.ZIP_STORED
            with source.open(info) as reader, target.open(entry, "w", force_zip64=True) as writer:
                while chunk := reader.read(1 << 24):
                    writer.write(chunk)
    rewritten.replace(path)


def recommend(run_dir: Path, checkpoint: Path) -> list[str]:
    return ["recsys_lightning.recommend", f"run_dir={run_dir}", f"checkpoint={checkpoint}", "user_id=1", "k=3"]


def zip_bomb(size: int) -> Callable[[Path, Path], list[str]]:
    """The real checkpoint plus one top-level tensor of `size` bytes of zeros, its zip entry deflated."""

    def craft(run_dir: Path, folder: Path) -> list[str]:
        # torch.empty of this size is fresh, untouched memory: zeros that cost no resident memory to save.
        path = edited_checkpoint(run_dir, folder, "bomb.ckpt", lambda ckpt: ckpt.update(padding=torch.empty(size // 4)))
        deflate_largest_entry(path)
        return recommend(run_dir, path)

    return craft


def recorded_model(name: str, model: dict) -> Callable[[Path, Path], list[str]]:
    """The real checkpoint whose recorded model config is `model` (its weights unchanged)."""

    def craft(run_dir: Path, folder: Path) -> list[str]:
        return recommend(run_dir, edited_checkpoint(run_dir, folder, name, lambda ckpt: ckpt["hyper_parameters"].update(model=model)))

    return craft


def catalogue_edit(name: str, edit: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    """The real checkpoint with its serving catalogue changed by `edit(catalogue)`."""

    def craft(run_dir: Path, folder: Path) -> list[str]:
        return recommend(run_dir, edited_checkpoint(run_dir, folder, name, lambda ckpt: edit(ckpt["catalogue"])))

    return craft


def _set(key: str, value: Callable[[dict], object]) -> Callable[[dict], None]:
    return lambda catalogue: catalogue.update({key: value(catalogue)})


MF = {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 64, "bias": True, "init_std": 0.1}  # the run's model

CASES = [
    Case("untouched checkpoint (reference)", recorded_model("plain.ckpt", MF)),
    Case("zip bomb: 2 GiB zero tensor, deflated", zip_bomb(2 * GIB)),
    Case(
        "recorded model: features=true, num_item_features=5_000_000",
        recorded_model("features.ckpt", {**MF, "features": True, "num_item_features": 5_000_000}),
    ),
    Case(
        "recorded model: hybrid, hidden=[65536]*8",
        recorded_model("hidden.ckpt", {"_target_": "recsys_lightning.models.HybridMF", "dim": 64, "hidden": [65536] * 8}),
    ),
    Case("catalogue: indptr decreasing", catalogue_edit("indptr_down.ckpt", _set("seen_indptr", lambda c: c["seen_indptr"].flip(0)))),
    Case("catalogue: indptr overshooting", catalogue_edit("indptr_over.ckpt", _set("seen_indptr", lambda c: c["seen_indptr"] * 2))),
    Case("catalogue: indptr as double", catalogue_edit("indptr_double.ckpt", _set("seen_indptr", lambda c: c["seen_indptr"].double()))),
    Case(
        "catalogue: duplicate item ids",
        catalogue_edit("dup_items.ckpt", _set("item_ids", lambda c: torch.cat([c["item_ids"][:1], c["item_ids"][:-1]]))),
    ),
    Case("catalogue: short seen_parts", catalogue_edit("short_parts.ckpt", _set("seen_parts", lambda c: c["seen_parts"][:-5]))),
]


def train_run(folder: Path) -> Path:
    """One epoch of the default preset on ML-100K, through the training entry point."""
    command = [sys.executable, "-m", "recsys_lightning.train", "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"]
    subprocess.run([*command, f"paths.output_dir={folder}"], cwd=ROOT, check=True, capture_output=True)
    (run_dir,) = (path.parent for path in folder.glob("runs/*/*/.hydra"))
    return run_dir


def measured(arguments: list[str], stderr_path: Path, cap_gb: float) -> tuple[int, float, float]:
    """(exit code, seconds, peak resident memory in GB) of `python -m arguments`; os.wait4 gives this
    child's own peak, where getrusage(RUSAGE_CHILDREN) would give the largest of all children so far.

    The child's address space is capped at `cap_gb`, so a case that asks for tens of gigabytes ends in an
    allocation error instead of taking the machine's memory from everything else running on it."""

    def capped() -> None:
        limit = int(cap_gb * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    with open(stderr_path, "wb") as stderr:
        command = [sys.executable, "-m", *arguments]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=capped)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024 / 1e9


def error_line(lines: list[str], code: int) -> str:
    """The one-line `error:` message; for a traceback, its last line that says something (Hydra ends with a hint)."""
    errors = [line for line in lines if line.startswith("error:")]
    if errors or not code:
        return errors[0] if errors else (lines[0] if lines else "")
    told = [line for line in lines if line.strip() and not line.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    return "traceback: " + told[-1].strip() if told else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--cap-gb", type=float, default=8.0, help="address-space limit of each case's process (GB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crafted_") as temporary:
        folder = Path(temporary)
        run_dir = train_run(folder / "train")
        print(f"{'case':<62} {'exit':>4} {'seconds':>8} {'peak GB':>8}  error line (first line of stderr when none)")
        for case in CASES:
            if args.only not in case.name:
                continue
            case_folder = folder / f"case{CASES.index(case)}"
            case_folder.mkdir()
            arguments = case.craft(run_dir, case_folder)
            code, seconds, peak = measured(arguments, case_folder / "stderr.txt", args.cap_gb)
            lines = (case_folder / "stderr.txt").read_text(errors="replace").splitlines()
            first = error_line(lines, code)
            print(f"{case.name:<62} {code:>4} {seconds:>8.1f} {peak:>8.2f}  {first[:160]}", flush=True)
            for path in case_folder.glob("*.ckpt"):
                path.unlink()  # a 2 GiB file need not wait for the end


if __name__ == "__main__":
    main()
