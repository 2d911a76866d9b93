"""Issue 27, item 5: the score of given (user, item) pairs through recommend, one pair or a file of them,
named a predicted rating for a rating model; ids and files checked as everything else recommend reads."""

import io
import re

import pandas as pd
import pytest
import torch

from recsys_lightning.errors import ConfigError, DataError, UnknownId
from recsys_lightning.models import MatrixFactorization
from recsys_lightning.models.base import Recommender
from recsys_lightning.recommend import serve
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.runs.trained_run import load_trained

from helpers import FrameDataModule, compose_config, module_config, random_interactions, trained_run_folder

MSE = {"_target_": "recsys_lightning.losses.MSELoss", "l2": 1e-4}
# random_interactions: users 100-129, items 1000-1039, ratings 1-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small data trained with a ranking loss (bpr) and with a rating loss (mse)."""
    root = tmp_path_factory.mktemp("pairs")
    frame = random_interactions(num_users=30, num_items=40, per_user=10)
    bpr = trained_run_folder(root / "bpr", FrameDataModule(frame, batch_size=64), module_config())
    mse = trained_run_folder(root / "mse", FrameDataModule(frame, batch_size=64), module_config(loss=MSE))
    return {"bpr": bpr, "mse": mse}


def serving(run_dir, *overrides):
    return compose_config("recommend", f"run_dir={run_dir}", *overrides)


def answer(run_dir, *overrides) -> str:
    out = io.StringIO()
    serve(serving(run_dir, *overrides), out)
    return out.getvalue()


def model_scores(run_dir, users: list[int], items: list[int]) -> list[float]:
    """The model's own scores of raw id pairs, looked up one by one."""
    run = load_trained(find_checkpoint(run_dir))
    user_index = torch.tensor([run.catalogue.user_index(user) for user in users])
    item_index = torch.tensor([run.catalogue.item_index(item) for item in items])
    with torch.no_grad():
        return run.model.score(user_index, item_index).tolist()


@pytest.mark.parametrize(
    "loss, named",
    [
        ("bpr", "score {:.4f} (MatrixFactorization trained with BPRLoss: it ranks items, it is no rating)"),
        ("mse", "predicted rating {:.4f} "),
    ],
)
def test_one_pair_is_one_line_with_the_models_score_named_for_its_loss(runs, loss, named):
    (expected,) = model_scores(runs[loss], [105], [1003])
    line = answer(runs[loss], "user_id=105", "item_id=1003")
    assert line.count("\n") == 1
    assert line.startswith("user 105, item 1003: " + named.format(expected))


def test_a_rating_models_pair_score_is_its_predicted_rating_around_the_mean(runs):
    line = answer(runs["mse"], "user_id=105", "item_id=1003")
    rating = float(line.split("predicted rating ")[1].split()[0])
    assert 1.5 < rating < 4.5  # mu + b_u + b_i + <p, q> after one epoch: near the mean rating 3, not a ranking logit


def write_pairs(path, rows: list[tuple[str, str]], header: str = "item_id,comment,user_id") -> str:
    """A pairs file whose id columns stand in another order than the export's, beside a column of text."""
    lines = [header] + [f"{item},some text,{user}" for user, item in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


PAIRS = [("100", "1000"), ("105", "1003"), ("105", "1003"), ("129", "1039"), ("110", "1020"), ("111", "1021"), ("112", "1022")]


@pytest.mark.parametrize("loss, column", [("bpr", "score"), ("mse", "predicted_rating")])
def test_a_file_of_pairs_is_scored_a_chunk_at_a_time_in_one_model_call_per_chunk(runs, tmp_path, monkeypatch, loss, column):
    calls = []

    def counted(self, users, items):
        calls.append(len(users))
        return Recommender.score(self, users, items)

    monkeypatch.setattr(MatrixFactorization, "score", counted)
    output = tmp_path / "scores.csv"
    answer(runs[loss], f"pairs={write_pairs(tmp_path / 'pairs.csv', PAIRS)}", "chunk_size=3", f"output={output}")
    assert calls == [3, 3, 1]  # 7 pairs in chunks of 3
    assert output.read_text().splitlines()[0] == f"user_id,item_id,{column}"
    scores = pd.read_csv(output, dtype={"user_id": str, "item_id": str})
    assert list(zip(scores["user_id"], scores["item_id"])) == PAIRS
    users, items = zip(*((int(user), int(item)) for user, item in PAIRS))
    assert scores[column].tolist() == pytest.approx(model_scores(runs[loss], list(users), list(items)), abs=1e-6)


def test_pairs_go_to_standard_output_without_output(runs, tmp_path):
    lines = answer(runs["bpr"], f"pairs={write_pairs(tmp_path / 'pairs.csv', PAIRS[:2])}").splitlines()
    assert lines[0] == "user_id,item_id,score"
    assert [line.split(",")[:2] for line in lines[1:]] == [["100", "1000"], ["105", "1003"]]


def test_an_unknown_id_names_the_file_line_and_id_and_leaves_no_output(runs, tmp_path):
    output = tmp_path / "scores.csv"
    pairs = write_pairs(tmp_path / "pairs.csv", [*PAIRS[:4], ("100", "9999")])
    with pytest.raises(UnknownId) as refused:
        answer(runs["bpr"], f"pairs={pairs}", "chunk_size=2", f"output={output}")
    assert str(refused.value).startswith(f"{pairs}: line 6: item id '9999' is not in this run's data (40 items, ids such as 1000, 1039)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pairs.csv"]  # no export, no temporary file


@pytest.mark.parametrize("spelling", ["0105", "+105", "105.0", " 105", ""])
def test_an_id_in_a_file_matches_only_as_the_command_line_matches_it(runs, tmp_path, spelling):
    """Integer ids in their one decimal spelling, as Catalogue.user_index takes them: `0105` is not user 105."""
    run = load_trained(find_checkpoint(runs["bpr"]))
    assert run.catalogue.user_index(spelling) is None
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f'user_id,item_id\n105,1003\n"{spelling}",1003\n')
    with pytest.raises(UnknownId, match=re.escape(f"{pairs}: line 3: user id {spelling!r} is not in this run's data")):
        answer(runs["bpr"], f"pairs={pairs}")


def test_a_pairs_file_without_its_columns_is_refused_before_any_checkpoint_is_loaded(tmp_path):
    empty_run = tmp_path / "run"
    empty_run.mkdir()  # no checkpoint: reaching the file's error proves nothing was loaded
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,2\n")
    with pytest.raises(
        DataError, match=f"^{pairs}: no column 'user_id'; columns found: 'user', 'item'. Set pair_columns.user to the right one$"
    ):
        serve(serving(empty_run, f"pairs={pairs}"), io.StringIO())
    with pytest.raises(DataError, match="^pairs=.*missing.csv: file not found"):
        serve(serving(empty_run, f"pairs={tmp_path / 'missing.csv'}"), io.StringIO())


def test_other_column_names_are_read_with_pair_columns(runs, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("customer\tsku\n105\t1003\n")
    printed = answer(runs["bpr"], f"pairs={pairs}", "pair_columns.user=customer", "pair_columns.item=sku")
    assert printed.splitlines()[1].startswith("105,1003,")


def test_an_earlier_pairs_export_is_replaced_and_any_other_file_refused(runs, tmp_path):
    pairs, output = write_pairs(tmp_path / "pairs.csv", PAIRS[:1]), tmp_path / "scores.csv"
    answer(runs["bpr"], f"pairs={pairs}", f"output={output}")
    answer(runs["mse"], f"pairs={pairs}", f"output={output}")
    assert output.read_text().splitlines()[0] == "user_id,item_id,predicted_rating"
    with pytest.raises(ConfigError, match="exists and is not a recommendations CSV this project wrote"):
        answer(runs["bpr"], f"pairs={pairs}", f"output={pairs}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["user_id=105", "item_id=1003", "retrieval.run_dir=elsewhere"], "item_id is answered by run_dir's model alone"),
        (["pairs=p.csv", "retrieval.run_dir=elsewhere"], "pairs is answered by run_dir's model alone"),
        (["user_id=105", "item_id=1003", "index=faiss"], "index=faiss searches for top-K items; a pair's score is the model's own"),
        (["user_id=105", "item_id=1003", "output=scores.csv"], "output=scores.csv is written only in batch mode"),
        (["pairs=p.csv", "users=all"], "ask one thing per call"),
        (["user_id=105", "item_id=1003", "similar_users=105"], "ask one thing per call"),
    ],
)
def test_pair_requests_that_cannot_work_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as refused:
        serve(serving(tmp_path, *overrides), io.StringIO())
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_an_unknown_id_in_one_pair_is_named(runs):
    with pytest.raises(UnknownId, match="^user id 999 is not in this run's data \\(30 users, ids such as 100, 129\\)"):
        answer(runs["bpr"], "user_id=999", "item_id=1003")
