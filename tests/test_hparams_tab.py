"""TensorBoard's HParams tab compares models: every run declares the same curated columns and final
metrics, whichever run TensorBoard reads first; checked through TensorBoard's own HTTP API."""

import json

import pytest
from torch.utils.tensorboard import SummaryWriter

from recsys_lightning.hparams_tab import ABSENT_TEXT, hparam_columns, hparams_row, hparams_summaries, metric_columns

from helpers import run_module, training_config
from tensorboard_http import hparams_table, tensorboard_server

# (choices, overrides, final metrics) of three runs that share few keys.
RUNS = {
    "mf-bpr": ({"model": "mf", "loss": "bpr", "sampler": "uniform"}, [], {"val/ndcg@10": 0.25, "test/ndcg@10": 0.29, "best_epoch": 60}),
    "ncf-bce": (
        {"model": "ncf", "loss": "bce", "sampler": "popularity"},
        ["model=ncf", "loss=bce", "sampler=popularity", "model.hidden=[16,8]"],
        {"val/ndcg@10": 0.21, "val/auc": 0.9, "best_epoch": 12},
    ),
    "hybrid-mse": (
        {"model": "hybrid", "loss": "mse", "sampler": "uniform", "experiment": "ml100k_ratings"},
        ["model=hybrid", "loss=mse"],
        {"val/ndcg@10": 0.05, "val/rmse": 0.93, "best_epoch": 3},
    ),
}


def _row(name):
    choices, overrides, _ = RUNS[name]
    return hparams_row(training_config(*overrides), choices)


def test_columns_are_the_options_keys_without_targets_hashes_or_urls():
    columns = {column.name: column.kind for column in hparam_columns()}
    for name, kind in [("model", "text"), ("model.dim", "number"), ("model.hidden", "text"), ("model.dropout", "number")]:
        assert columns[name] == kind
    for name in ("model.gmf_dim", "sampler.alpha", "sampler.num_negatives", "loss.l2", "optimizer.lr", "seed", "model.bias"):
        assert name in columns
    assert not [name for name in columns if "_target_" in name or "sha256" in name or "url" in name or name.startswith("data.recbole")]
    assert 25 <= len(columns) <= 45  # curated: the full config has about 75 keys
    assert {"final/val/bce", "final/test/recall@10", "final/val/ndcg@5", "final/test/ndcg@100"} <= set(metric_columns())


def test_every_run_has_every_column_with_absent_values_left_out():
    mf, ncf = _row("mf-bpr"), _row("ncf-bce")
    assert list(mf) == list(ncf) == [column.name for column in hparam_columns()]
    assert (mf["model"], mf["model.dim"], mf["model.hidden"], mf["sampler.alpha"], mf["experiment"]) == ("mf", 64.0, None, None, None)
    assert (ncf["model.hidden"], ncf["model.gmf_dim"], ncf["sampler.alpha"]) == ("[16, 8]", 32.0, 0.75)
    assert mf["seed"] == ncf["seed"] == 42.0


def test_a_closed_form_model_shows_no_optimizer_sampler_or_regulariser():
    row = hparams_row(training_config("model=ease"), {"model": "ease", "loss": "bpr", "sampler": "uniform", "optimizer": "adam"})
    assert (row["model"], row["loss"], row["model.l2"], row["seed"]) == ("ease", "bpr", 300.0, 42.0)
    assert row["optimizer"] is row["optimizer.lr"] is row["sampler"] is row["sampler.num_negatives"] is row["loss.l2"] is None


def test_outside_hydra_a_group_is_named_by_its_class():
    row = hparams_row(training_config("model=ncf"), {})
    assert (row["model"], row["loss"], row["sampler"]) == ("NeuMF", "BPRLoss", "UniformSampler")


def _write_run(run_dir, name):
    _, _, final = RUNS[name]
    with SummaryWriter(str(run_dir)) as writer:
        for metric, value in final.items():
            writer.add_scalar(f"final/{metric}", value, 0)
        for summary in hparams_summaries(hparam_columns(), _row(name), metric_columns()):
            writer.file_writer.add_summary(summary)


@pytest.mark.slow
@pytest.mark.parametrize("first", list(RUNS))
def test_tensorboard_serves_one_table_whichever_run_it_reads_first(tmp_path, first):
    for index, name in enumerate(sorted(RUNS, key=lambda name: name != first)):  # folder order is read order
        _write_run(tmp_path / f"{index}_{name}", name)
    with tensorboard_server(tmp_path) as url:
        experiment, groups = hparams_table(url, runs=3, sort_by_metric="final/val/ndcg@10")
    assert sorted(info["name"] for info in experiment["hparamInfos"]) == sorted(column.name for column in hparam_columns())
    assert sorted(info["name"]["tag"] for info in experiment["metricInfos"]) == sorted(metric_columns())
    by_run = {group["name"].split("_", 1)[1]: group for group in groups}
    assert [group["name"].split("_", 1)[1] for group in groups] == ["mf-bpr", "ncf-bce", "hybrid-mse"]  # sorted on a metric
    assert by_run["mf-bpr"]["hparams"]["model.hidden"] == ABSENT_TEXT and "model.dropout" not in by_run["mf-bpr"]["hparams"]
    assert by_run["ncf-bce"]["hparams"]["model.hidden"] == "[16, 8]" and by_run["ncf-bce"]["hparams"]["model.dropout"] == 0.0
    metrics = {value["name"]["tag"]: value["value"] for value in by_run["ncf-bce"]["metricValues"]}
    assert metrics["final/val/auc"] == pytest.approx(0.9) and "final/val/rmse" not in metrics


@pytest.mark.slow
def test_a_real_run_declares_the_table_and_writes_no_hparams_yaml(movielens_run):
    assert not (movielens_run / "hparams.yaml").exists()
    metrics = json.loads((movielens_run / "metrics.json").read_text())
    with tensorboard_server(movielens_run) as url:
        experiment, (group,) = hparams_table(url, runs=1, sort_by_metric="final/val/ndcg@10")
    assert sorted(info["name"] for info in experiment["hparamInfos"]) == sorted(column.name for column in hparam_columns())
    assert (group["hparams"]["model"], group["hparams"]["loss"], group["hparams"]["eval.ks"]) == ("mf", "bpr", "[10, 20]")
    assert group["hparams"]["experiment"] == ABSENT_TEXT
    values = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
    assert values["final/test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"])
    assert values["final/best_epoch"] == metrics["best_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "none"])
def test_other_loggers_get_the_row_and_no_logger_still_finishes(tmp_path, logger):
    """CSV, MLflow and W&B loggers take log_hyperparams(params) alone; with `~logger` there is nowhere to
    log learning rates, and the closing lines offer no TensorBoard."""
    csv = ["+logger.csv._target_=pytorch_lightning.loggers.CSVLogger", "+logger.csv.save_dir=${paths.run_dir}", "~logger.tensorboard"]
    result = run_module("recsys_lightning.train", "debug=quick", f"paths.output_dir={tmp_path}", *(csv if logger == "csv" else ["~logger"]))
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = [path.parent for path in tmp_path.glob("runs/*/*/.hydra")]
    assert (run_dir / "metrics.json").is_file() and not list(run_dir.glob("events.out.tfevents.*"))
    assert "tensorboard --logdir" not in result.stdout
    if logger == "csv":
        assert "final/test/ndcg@10" in next(run_dir.glob("lightning_logs/*/metrics.csv")).read_text()
