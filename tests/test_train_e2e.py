"""`python -m recsys_lightning.train` as a user runs it, on real MovieLens-100K (fetched once into data/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys_lightning.train", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )  # fmt: skip


def only_run_dir(output_dir: Path) -> Path:
    run_dirs = [path.parent for path in output_dir.glob("runs/*/*/.hydra")]
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


def test_two_epochs_on_movielens_write_sane_metrics(tmp_path):
    result = run_train("trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    for stage in ("val", "test"):
        for name in ("recall", "ndcg", "hit_rate", "precision", "mrr"):
            for k in (10, 20):
                assert 0.0 < metrics[f"{stage}/{name}@{k}"] <= 1.0, (stage, name, k)
        assert metrics[f"{stage}/recall@20"] >= metrics[f"{stage}/recall@10"]
        assert metrics[f"{stage}/hit_rate@10"] >= metrics[f"{stage}/precision@10"]
    # Two epochs of BPR already rank several times better than a random ranking (ndcg@10 ~ 0.006).
    assert metrics["test/ndcg@10"] > 0.03
    assert metrics["best_epoch"] in (0, 1)
    assert metrics["data_source"] in {"grouplens-local", "recbole-local", "grouplens-download", "pypi-recbole-wheel"}
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_bad_config_fails_in_one_line_and_writes_no_metrics(tmp_path):
    result = run_train("data.split=random", "trainer.max_epochs=1", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: data.split='random' is not a split kind: use one of ratio, leave_one_out, temporal"]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/metrics.json"))
