"""`python -m recsys_lightning.train` as a user runs it, on real MovieLens-100K (fetched once into data/)."""

import json
import re

import pytest

from helpers import run_module

# Every test here runs the training entry point in a subprocess.
pytestmark = pytest.mark.slow


def test_three_epochs_on_movielens_write_sane_metrics(movielens_run):
    run_dir = movielens_run
    metrics = json.loads((run_dir / "metrics.json").read_text())

    for stage in ("val", "test"):
        for name in ("recall", "ndcg", "hit_rate", "precision", "mrr"):
            for k in (10, 20):
                assert 0.0 < metrics[f"{stage}/{name}@{k}"] <= 1.0, (stage, name, k)
        assert metrics[f"{stage}/recall@20"] >= metrics[f"{stage}/recall@10"]
        assert metrics[f"{stage}/hit_rate@10"] >= metrics[f"{stage}/precision@10"]
    # Three epochs of BPR already rank several times better than a random ranking (ndcg@10 ~ 0.006).
    assert metrics["test/ndcg@10"] > 0.03
    assert metrics["best_epoch"] in (0, 1, 2)
    assert (run_dir / metrics["best_checkpoint"]).is_file()
    assert metrics["data_source"] in {"grouplens-local", "recbole-local", "grouplens-download", "pypi-recbole-wheel"}
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert run_dir.name.endswith("_mf-bpr-uniform_max_epochs-3")  # what the user changed, not the progress bar or paths


def test_the_console_ends_with_a_table_and_shows_no_library_noise(movielens_run):
    output_dir = movielens_run.parents[2]
    stdout, stderr = (output_dir / "stdout.txt").read_text(), (output_dir / "stderr.txt").read_text()
    metrics = json.loads((movielens_run / "metrics.json").read_text())
    last = stdout.rstrip().splitlines()[-7:]
    assert last[0].split() == ["val", "test"]
    assert last[1].split() == ["ndcg@10", f"{metrics['val/ndcg@10']:.4f}", f"{metrics['test/ndcg@10']:.4f}"]
    assert last[2].split()[0] == "recall@10"
    assert last[3].startswith(f"best epoch {metrics['best_epoch']} of {metrics['epochs']}")
    assert last[4].startswith("note: val/ndcg@10 ") and "below the most popular items" in last[4]  # 3 epochs learn little
    assert last[5].startswith("run folder: ") and last[5].endswith(movielens_run.name)
    assert last[6].startswith("next: ") and "tensorboard --logdir" in last[6]
    for noise in ("Tip:", "litlogger", "LeafSpec", "Seed set to", "Restoring states", "Loaded model weights", "TPU available"):
        assert noise not in stdout + stderr, noise


def test_train_log_has_one_line_per_epoch(movielens_run):
    log = (movielens_run / "train.log").read_text()
    line = r"epoch (\d+), train/loss \d+\.\d{4}, val/ndcg@10 (\d\.\d{4}), \d+\.\d s \(validation \d+\.\d{1,2} s\)$"
    epochs = re.findall(line, log, flags=re.M)
    assert [int(epoch) for epoch, _ in epochs] == [0, 1, 2]
    best = json.loads((movielens_run / "metrics.json").read_text())["best_epoch"]
    assert max(float(ndcg) for _, ndcg in epochs) == float(epochs[best][1])


def test_bad_config_fails_in_one_line_and_writes_no_metrics(tmp_path):
    result = run_module("recsys_lightning.train", "data.split=random", "debug=quick", f"paths.output_dir={tmp_path}")
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: data.split=random: must be one of ratio, leave_one_out, temporal, cold_items"]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/metrics.json"))
