"""What TensorBoard's HParams tab shows for a model x loss x sampler sweep, read from TensorBoard's HTTP API.

    .venv/bin/python bench/check_hparams_tab.py                      # 12 runs of 3 epochs, about 2 minutes
    .venv/bin/python bench/check_hparams_tab.py --sweep outputs/multiruns/<date>/<time>   # a sweep you ran

Runs the README's sweep (model=mf,hybrid,ncf loss=bpr,bce sampler=uniform,popularity) through the real
entry point, starts TensorBoard on its folder, and prints the columns the tab declares and the rows it
serves, best validation NDCG@10 first: the table a user sorts and filters in the tab.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the HTTP client the tests use

from tensorboard_http import hparams_table, tensorboard_server  # noqa: E402

SWEEP = ["model=mf,hybrid,ncf", "loss=bpr,bce", "sampler=uniform,popularity"]
SHOWN_HPARAMS = ["model", "loss", "sampler", "model.dim", "model.hidden", "model.gmf_dim", "sampler.alpha", "optimizer.lr"]
SHOWN_METRICS = ["final/val/ndcg@10", "final/val/recall@10", "final/test/ndcg@10", "final/val/auc", "final/best_epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, help="an existing sweep folder; without it, a new sweep is run")
    parser.add_argument("overrides", nargs="*", default=["trainer.max_epochs=3"], help="added to the sweep (default: trainer.max_epochs=3)")
    args = parser.parse_args()
    sweep_dir = args.sweep or _run_sweep(args.overrides)
    runs = len([path for path in sweep_dir.iterdir() if (path / "metrics.json").is_file()])
    with tensorboard_server(sweep_dir) as url:
        experiment, groups = hparams_table(url, runs=runs, sort_by_metric="final/val/ndcg@10")
    hparams = {info["name"]: info["type"].removeprefix("DATA_TYPE_").lower() for info in experiment["hparamInfos"]}
    metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
    print(f"sweep: {sweep_dir}")
    print(f"{len(hparams)} hyperparameter columns: " + ", ".join(f"{name} ({kind})" for name, kind in hparams.items()))
    print(f"{len(metrics)} metric columns: " + ", ".join(metrics))
    print(f"{len(groups)} rows, best final/val/ndcg@10 first; a selection of the columns:")
    header = ["run", *SHOWN_HPARAMS, *[name.removeprefix("final/") for name in SHOWN_METRICS]]
    rows = [header]
    for group in groups:
        values = {value["name"]["tag"]: value["value"] for value in group.get("metricValues", [])}
        row = [group["name"].split("_", 1)[0]] + [_cell(group["hparams"].get(name)) for name in SHOWN_HPARAMS]
        rows.append(row + [_cell(values.get(name)) for name in SHOWN_METRICS])
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def _run_sweep(overrides: list[str]) -> Path:
    output_dir = Path(tempfile.mkdtemp(prefix="hparams_tab_"))
    command = [sys.executable, "-m", "recsys_lightning.train", "-m", *SWEEP, *overrides, f"paths.output_dir={output_dir}"]
    print("running:", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return next(output_dir.glob("multiruns/*/*"))


def _cell(value: object) -> str:
    if value is None:
        return ""  # TensorBoard leaves the cell empty
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
