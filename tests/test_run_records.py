"""A run folder's records (metrics.json, .hydra/*.yaml, checkpoints) are untrusted input to evaluate and
recommend: damaged or crafted ones get one line, are never overwritten, and never make them write elsewhere."""

import io
import json
import logging
import os
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf

from recsys_lightning.errors import ConfigError, DataError
from recsys_lightning.evaluate import compare_with_recorded, evaluate, is_recorded_checkpoint
from recsys_lightning.recommend import serve
from recsys_lightning.runs.checkpoint_file import find_checkpoint, read_run_metrics
from recsys_lightning.runs.hydra_record import read_run_yaml
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving.arguments import CSV_COLUMNS, check_serving_config

from helpers import compose_config, run_module, training_config

# Every test here reads a run trained through the entry point (`finished_run`, conftest.py).
pytestmark = pytest.mark.slow

DAMAGED = "metrics.json is damaged"
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + level)}: &{chr(98 + level)} [{', '.join([f'*{chr(97 + level)}'] * 9)}]\n" for level in range(8)
)


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of the trained run that a test may damage."""
    return shutil.copytree(finished_run, tmp_path / "run")


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def serving_config(run_dir, *overrides):
    return compose_config("recommend", f"run_dir={run_dir}", *overrides)


# 1. recommend's output never replaces a file it did not write


def test_recommend_refuses_to_overwrite_a_checkpoint_with_csv(run):
    target = run / "checkpoints" / "last.ckpt"
    before = target.read_bytes()
    result = run_module("recsys_lightning.recommend", f"run_dir={run}", "users=all", "k=3", f"output={target}")
    assert result.returncode == 1
    assert error_lines(result) == [
        f"error: output={target} exists and is not a recommendations CSV this project wrote; "
        "refusing to overwrite it: remove it or pick another path"
    ]
    assert target.read_bytes() == before


NOT_OURS = {  # name -> how to make it; each is a path the user might mistype as output=
    "metrics.json": lambda run: run / "metrics.json",
    "config.yaml": lambda run: run / ".hydra" / "config.yaml",
    "empty": lambda run: written(run / "empty.csv", ""),
    "header-without-newline": lambda run: written(run / "cut.csv", ",".join(CSV_COLUMNS)),
    "other-header": lambda run: written(run / "other.csv", "user_id,rank,item_id,score\n1,1,2,0.5\n"),
    "fifo": lambda run: os.mkfifo(run / "pipe") or run / "pipe",
    "symlink": lambda run: (run / "link").symlink_to(run / "metrics.json") or run / "link",
    "dangling-symlink": lambda run: (run / "dangling").symlink_to(run / "nowhere") or run / "dangling",
}


def written(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", list(NOT_OURS))
def test_an_existing_output_that_is_not_our_csv_is_refused_before_loading(run, kind):
    target = NOT_OURS[kind](run)
    with pytest.raises(ConfigError, match="exists and is not a recommendations CSV this project wrote; refusing to overwrite it"):
        check_serving_config(serving_config(run, "users=all", f"output={target}"))


def test_a_folder_or_a_device_as_output_is_refused(run):
    with pytest.raises(ConfigError, match="is a folder; give a file path"):
        check_serving_config(serving_config(run, "users=all", f"output={run / 'checkpoints'}"))
    with pytest.raises(ConfigError, match="exists and is not a recommendations CSV"):
        check_serving_config(serving_config(run, "users=all", "output=/dev/null"))


def test_an_earlier_export_is_replaced_and_unknown_users_are_reported(run, caplog):
    output = run / "recs.csv"
    output.write_text(",".join(CSV_COLUMNS) + "\nstale,1,1,0.5,model\n")
    known = load_trained(find_checkpoint(run)).catalogue.user_ids[0]
    with caplog.at_level(logging.WARNING, logger="recsys_lightning.recommend"):
        serve(serving_config(run, f"users=[{known},99999,{known},'abc']", "k=3", f"output={output}"))
    lines = output.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 1 + 4 * 3 and "stale" not in output.read_text()
    assert [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING] == [
        "2 of 4 requested users are unknown to this run (e.g. 99999, 'abc'): they get the most popular items (source=popularity)"
    ]


def test_all_known_users_give_no_warning(run, caplog):
    known = load_trained(find_checkpoint(run)).catalogue.user_ids[0]
    with caplog.at_level(logging.WARNING, logger="recsys_lightning.recommend"):
        serve(serving_config(run, f"users=[{known}]", "k=2", f"output={run / 'recs.csv'}"))
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_relative_output_or_index_path_lands_in_the_run_folder(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the folder the command runs from: nothing is written here
    known = load_trained(find_checkpoint(run)).catalogue.user_ids[0]
    serve(serving_config(run, f"users=[{known}]", "k=2", "output=recs.csv"))
    serve(serving_config(run, f"user_id={known}", "index=faiss", "faiss.path=items.faiss"), out=io.StringIO())
    assert (run / "recs.csv").read_text().startswith(",".join(CSV_COLUMNS)) and (run / "items.faiss").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


# 4. metrics.json is read through one reader


@pytest.mark.parametrize(
    "content, detail",
    [
        ('{"best_checkpoint": "checkpoints/ep', "not valid JSON"),
        ("[1]", "a JSON list, not an object"),
        ("", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"best_checkpoint": 5}', "best_checkpoint is '5', not the name of a file in checkpoints/"),
        ('{"best_checkpoint": ""}', "not the name of a file in checkpoints/"),
        ('{"best_checkpoint": "../../../etc/passwd"}', "not the name of a file in checkpoints/"),
        ('{"best_checkpoint": "/etc/passwd"}', "not the name of a file in checkpoints/"),
        ('{"best_checkpoint": "checkpoints/../metrics.json"}', "not the name of a file in checkpoints/"),
        ('{"best_checkpoint": ".hydra/config.yaml"}', "not the name of a file in checkpoints/"),
    ],
)
def test_a_damaged_metrics_json_is_one_line_naming_the_file(run, content, detail):
    (run / "metrics.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as refused:
        find_checkpoint(run, "best")
    message = str(refused.value)
    assert message.startswith(f"{run / 'metrics.json'}: {DAMAGED} (") and detail in message
    assert message.endswith("pass checkpoint=last or checkpoint=<path>") and "\n" not in message and len(message) < 400
    with pytest.raises(ConfigError, match=DAMAGED):
        compare_with_recorded({"test/ndcg@10": 0.1}, run, tolerance=1e-6)
    assert find_checkpoint(run, "last") == run / "checkpoints" / "last.ckpt"  # the advice works


def test_best_checkpoint_may_not_lead_out_through_a_symlink(run, tmp_path):
    (tmp_path / "outside.ckpt").write_bytes(b"not ours")
    (run / "checkpoints" / "escape.ckpt").symlink_to(tmp_path / "outside.ckpt")
    (run / "metrics.json").write_text('{"best_checkpoint": "checkpoints/escape.ckpt"}')
    with pytest.raises(ConfigError, match=DAMAGED):
        read_run_metrics(run)


def test_a_metrics_json_without_best_checkpoint_falls_back_to_the_only_epoch_file(run):
    (run / "metrics.json").write_text('{"best_checkpoint": null}')
    (epoch_file,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert find_checkpoint(run, "best") == epoch_file


def test_a_folder_as_checkpoint_says_so(run):
    with pytest.raises(ConfigError, match=r"checkpoints: is a folder, not a checkpoint file; use best, last"):
        find_checkpoint(run, str(run / "checkpoints"))


@pytest.mark.parametrize(("module", "content"), [("recommend", '{"best_checkpoint": "chec'), ("evaluate", "[1]")])
def test_damaged_metrics_json_through_the_entry_points(run, module, content):
    (run / "metrics.json").write_text(content)
    action = ["user_id=1"] if module == "recommend" else ["accelerator=cpu"]
    result = run_module(f"recsys_lightning.{module}", f"run_dir={run}", *action)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith(f"error: {run / 'metrics.json'}: {DAMAGED} (")


# 2. evaluate compares the checkpoint's data with the run's, and fails when the named checkpoint disagrees


def test_evaluate_refuses_a_checkpoint_of_other_data_of_the_same_size(run):
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    config.data.seed = 7  # another sample and split of 300 users x 200 items
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"trained on other data than .*config.yaml rebuilds \(same sizes, but its users, items"):
        evaluate(run, accelerator="cpu")


def test_evaluate_refuses_a_checkpoint_without_a_catalogue(run, tmp_path):
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    del state["catalogue"]
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(ConfigError, match="carries no record of the data it was trained on"):
        evaluate(run, checkpoint=str(tmp_path / "old.ckpt"), accelerator="cpu")


def test_only_the_checkpoint_metrics_json_names_must_reproduce_it(run):
    (epoch_file,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert is_recorded_checkpoint(run, "best") and is_recorded_checkpoint(run, str(epoch_file))
    assert not is_recorded_checkpoint(run, "last")


def test_evaluate_exits_1_when_the_named_checkpoint_no_longer_gives_metrics_json(run):
    path = run / "metrics.json"
    recorded = json.loads(path.read_text())
    recorded["test/ndcg@10"] += 0.5
    del recorded["test/recall@10"]  # not recorded: shown as differing, but it contradicts nothing
    path.write_text(json.dumps(recorded))
    result = run_module("recsys_lightning.evaluate", f"run_dir={run}", "accelerator=cpu")
    assert result.returncode == 1
    recorded_test_metrics = sum(name.startswith("test/") for name in recorded)
    (summary,) = [line for line in result.stdout.splitlines() if "metrics differ" in line]
    assert summary.startswith(f"2 of {recorded_test_metrics + 1} metrics differ from metrics.json: ")
    assert sorted(summary.split(": ")[1].split(", ")) == ["test/ndcg@10", "test/recall@10"]
    assert error_lines(result) == [f"error: 1 of {recorded_test_metrics} metrics differ from metrics.json: test/ndcg@10"]


# 3. YAML bombs and oversized YAML in .hydra/


@pytest.mark.parametrize("name", ["config.yaml", "hydra.yaml"])
def test_a_yaml_bomb_in_the_run_config_is_refused_at_once(run, name):
    path = run / ".hydra" / name
    path.write_text(BILLION_LAUGHS + path.read_text())
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"{name}: holds YAML anchors or aliases, which Hydra never writes"):
        evaluate(run, accelerator="cpu")
    assert time.monotonic() - started < 5


def test_run_yaml_over_1_mib_or_not_a_mapping_is_refused(run):
    path = run / ".hydra" / "config.yaml"
    path.write_text("# padding\n" * 120_000 + path.read_text())
    with pytest.raises(ConfigError, match="config.yaml: not a regular file of at most 1 MiB"):
        read_run_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="config.yaml: holds a YAML ListConfig, not a mapping"):
        read_run_yaml(path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="config.yaml: cannot be read"):
        read_run_yaml(path)


def test_the_real_run_config_reads_back_whole(finished_run):
    assert read_run_yaml(finished_run / ".hydra" / "config.yaml").data.num_users == 300


# 5. a recorded data_dir is read, never created or downloaded into


def test_evaluate_never_creates_or_fetches_a_recorded_movielens_data_dir(run, tmp_path):
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    movielens = training_config("data=movielens").data
    movielens.data_dir, movielens.seed, movielens.grouplens_url = str(tmp_path / "x" / "deep"), 42, "http://127.0.0.1:9/none.zip"
    config.data = movielens
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    with pytest.raises(DataError) as refused:
        evaluate(run, accelerator="cpu")
    assert str(refused.value) == (
        f"{tmp_path / 'x' / 'deep' / 'ml-100k'}: no MovieLens-100K here; evaluate reads the run's data, "
        "it does not fetch it: run training once (which fetches it) or fix data_dir in "
        "<run>/.hydra/config.yaml"
    )
    assert not (tmp_path / "x").exists()
