"""Serving a trained ML-100K run: a safe checkpoint, answers equal to the model's own ranking (and to
the test metrics), cold start, FAISS, evaluate, the projector."""

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys_lightning.config import register_resolvers
from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.errors import ConfigError, RecsysError, UnknownId
from recsys_lightning.evaluate import compare_with_recorded, evaluate
from recsys_lightning.recommend import serve
from recsys_lightning.runs.checkpoint_file import FORMAT_KEY, FORMAT_VERSION, find_checkpoint, load_checkpoint
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving.service import UNKNOWN, RecommendationService
from recsys_lightning.serving.vector_index import ItemVectorIndex

from helpers import compose_config, quiet_trainer, run_module

register_resolvers()
TOY_STORY = 1


@pytest.fixture(scope="module")
def served(movielens_run):
    return load_trained(find_checkpoint(movielens_run))


def recommend_cli(run_dir, *overrides):
    return run_module("recsys_lightning.recommend", f"run_dir={run_dir}", *overrides)


def table_rows(stdout: str) -> list[list[str]]:
    """Rows of a printed table: the lines after the heading and the column names, split on spaces."""
    return [line.split() for line in stdout.strip().splitlines()[2:]]


def run_data(run_dir):
    datamodule = instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data)
    datamodule.setup("test")
    return datamodule


@pytest.mark.slow
def test_checkpoint_loads_with_weights_only_and_carries_the_catalogue(movielens_run, served):
    checkpoint = torch.load(find_checkpoint(movielens_run), weights_only=True)
    assert checkpoint[FORMAT_KEY] == FORMAT_VERSION
    catalogue = Catalogue.from_state(checkpoint["catalogue"])
    assert (catalogue.num_users, catalogue.num_items) == (943, 1682)
    assert catalogue.titles[catalogue.item_index(TOY_STORY)] == "Toy Story (1995)"
    assert int(catalogue.seen.counts().sum()) == 100_000
    assert sorted(torch.unique(catalogue.seen.values).tolist()) == [0, 1, 2]
    assert int(catalogue.popularity.sum()) == int((catalogue.seen.values == 0).sum())
    assert catalogue.user_index(42) == catalogue.user_index("42") == 41
    assert catalogue.user_index(10**9) is None and catalogue.user_index("x") is None


def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": ConfigError("any object that is not plain data")}, path)
    with pytest.raises(ConfigError, match="refused"):
        load_checkpoint(path)


@pytest.mark.slow
def test_recommend_one_user_shows_titles_and_the_models_own_scores(movielens_run, served):
    result = recommend_cli(movielens_run, "user_id=42", "k=5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank  item_id" in result.stdout and "title" in result.stdout
    rows = table_rows(result.stdout)
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5]
    assert all(row[-1] == "model" for row in rows)
    items = torch.tensor([served.catalogue.item_index(int(row[1])) for row in rows])
    printed = torch.tensor([float(row[-2]) for row in rows])
    user = served.catalogue.user_index(42)
    with torch.no_grad():
        own = served.model.score(torch.full((5,), user), items)
    torch.testing.assert_close(printed, own, atol=1e-5, rtol=0)
    seen = set(served.catalogue.seen.indices[served.catalogue.seen.indptr[user] : served.catalogue.seen.indptr[user + 1]].tolist())
    assert not seen & set(items.tolist())
    title = served.catalogue.title_of([items[0].item()])[0]
    assert title in result.stdout


@pytest.mark.slow
def test_exported_csv_reproduces_the_test_ndcg_of_metrics_json(movielens_run, tmp_path):
    output = tmp_path / "recs.csv"
    result = recommend_cli(movielens_run, "users=all", "k=10", "exclude=[train,valid]", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "chunk/s" not in result.stderr and "\r" not in result.stderr  # no progress-bar frames in a pipe
    recommendations = pd.read_csv(output)
    assert list(recommendations.columns) == ["user_id", "rank", "item_id", "score", "source"]
    assert len(recommendations) == 943 * 10 and (recommendations["source"] == "model").all()
    assert (recommendations.groupby("user_id")["score"].diff().dropna() <= 0).all()

    datamodule = run_data(movielens_run)
    interactions, test_rows = datamodule.interactions, datamodule.split.test
    held_out = pd.DataFrame(
        {"user_id": interactions.user_ids[interactions.users[test_rows]], "item_id": interactions.item_ids[interactions.items[test_rows]]}
    )
    metrics = json.loads((movielens_run / "metrics.json").read_text())
    assert independent_ndcg(recommendations, held_out, k=10) == pytest.approx(metrics["test/ndcg@10"], abs=1e-6)


def independent_ndcg(recommendations: pd.DataFrame, held_out: pd.DataFrame, k: int) -> float:
    """Textbook NDCG@k, binary relevance, averaged over users with held-out items; no library code."""
    relevant = held_out.groupby("user_id")["item_id"].apply(set).to_dict()
    total = 0.0
    for user, items in relevant.items():
        ranked = recommendations[recommendations["user_id"] == user].sort_values("rank")["item_id"].tolist()[:k]
        dcg = sum(1 / math.log2(rank + 2) for rank, item in enumerate(ranked) if item in items)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(items), k)))
        total += dcg / ideal
    return total / len(relevant)


@pytest.mark.slow
def test_exact_faiss_ranks_every_user_like_the_model(served):
    users = torch.arange(served.catalogue.num_users)
    by_model = RecommendationService(served).recommend(users, 10)
    item_vectors = served.model.item_vectors()
    by_faiss = RecommendationService(served, index=ItemVectorIndex.build(item_vectors, "flat")).recommend(users, 10)
    assert torch.equal(by_faiss.items, by_model.items)
    torch.testing.assert_close(by_faiss.scores, by_model.scores, atol=1e-5, rtol=0)
    # IVF visiting every list is exhaustive, so it must agree too.
    ivf = ItemVectorIndex.build(item_vectors, "ivf", nlist=16, nprobe=16)
    assert torch.equal(RecommendationService(served, index=ivf).recommend(users, 10).items, by_model.items)


@pytest.mark.slow
def test_faiss_through_the_entry_point_and_saved_index(movielens_run, tmp_path):
    saved = tmp_path / "items.faiss"
    built = recommend_cli(movielens_run, "user_id=42", "index=faiss", f"faiss.path={saved}")
    by_model = io.StringIO()
    serve(compose_config("recommend", f"run_dir={movielens_run}", "user_id=42"), by_model)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "wrote the flat index" in built.stderr
    assert "searched with a FAISS flat index" in built.stdout.splitlines()[0]  # the heading says FAISS answered
    assert [row[1] for row in table_rows(built.stdout)] == [row[1] for row in table_rows(by_model.getvalue())]
    assert ItemVectorIndex.load(saved).num_items == 1682
    assert pd.read_csv(f"{saved}.items.csv")["item_id"].tolist()[:3] == [1, 2, 3]
    reused = recommend_cli(movielens_run, "user_id=42", "index=faiss", f"faiss.path={saved}")
    assert "loaded the flat index" in reused.stderr and reused.stdout == built.stdout
    other_settings = recommend_cli(movielens_run, "user_id=42", "index=faiss", "faiss.kind=ivf", "faiss.nlist=8", f"faiss.path={saved}")
    assert "wrote the ivf index" in other_settings.stderr
    assert "a FAISS IVF index (nprobe 16)" in other_settings.stdout.splitlines()[0]


@pytest.mark.slow
def test_unknown_users_and_short_histories_get_popular_unseen_items(served):
    catalogue = served.catalogue
    most_popular = torch.argsort(catalogue.popularity, descending=True, stable=True)[:5]
    unknown = RecommendationService(served).recommend(torch.tensor([UNKNOWN]), 5)
    assert unknown.fallback.tolist() == [True]
    assert torch.equal(unknown.items[0], most_popular)
    assert unknown.scores[0].tolist() == catalogue.popularity[most_popular].float().tolist()

    user = catalogue.user_index(1)
    short = RecommendationService(served, min_history=10**6).recommend(torch.tensor([user]), 5)
    seen = set(catalogue.seen.indices[catalogue.seen.indptr[user] : catalogue.seen.indptr[user + 1]].tolist())
    expected = [item for item in torch.argsort(catalogue.popularity, descending=True, stable=True).tolist() if item not in seen][:5]
    assert short.fallback.tolist() == [True] and short.items[0].tolist() == expected


@pytest.mark.slow
def test_the_service_answers_raw_ids_as_their_indices(served):
    service = RecommendationService(served)
    catalogue = served.catalogue
    by_raw_id = service.recommend_for([1, "42", 999999], 5)
    by_index = service.recommend(torch.tensor([catalogue.user_index(1), catalogue.user_index(42), UNKNOWN]), 5)
    assert by_raw_id.users.tolist() == by_index.users.tolist() == [0, 41, UNKNOWN]
    assert torch.equal(by_raw_id.items, by_index.items) and by_raw_id.fallback.tolist() == [False, False, True]
    assert torch.equal(service.similar_items_to(TOY_STORY, 5).indices, service.similar_items(catalogue.item_index(TOY_STORY), 5).indices)
    assert torch.equal(service.similar_users_to("42", 5).indices, service.similar_users(41, 5).indices)


@pytest.mark.slow
@pytest.mark.parametrize("kind, raw_id, shown", [("item", 999999, "999999"), ("user", "x" * 500, "'xxx"), ("user", 1.0, "1.0")])
def test_similar_to_an_unknown_id_names_it_and_shows_valid_ones(served, kind, raw_id, shown):
    service = RecommendationService(served)
    with pytest.raises(UnknownId) as error:
        service.similar_items_to(raw_id, 5) if kind == "item" else service.similar_users_to(raw_id, 5)
    message = str(error.value)
    assert message.startswith(f"{kind} id {shown}") and "is not in this run's data" in message and "ids such as 1, " in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.slow
def test_cold_start_through_the_entry_point_is_flagged(movielens_run, tmp_path):
    unknown = recommend_cli(movielens_run, "user_id=999999", "k=3")
    assert unknown.returncode == 0, unknown.stderr[-2000:]
    assert "unknown" in unknown.stdout and [row[-1] for row in table_rows(unknown.stdout)] == ["popularity"] * 3
    output = tmp_path / "batch.csv"
    batch = recommend_cli(movielens_run, "users=[1,999999]", "k=3", f"output={output}")
    assert batch.returncode == 0, batch.stderr[-2000:]
    sources = pd.read_csv(output).groupby("user_id")["source"].unique()
    assert list(sources[1]) == ["model"] and list(sources[999999]) == ["popularity"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["item_id=999999"], "item id 999999 is not in this run's data"),
        (["similar_users=999999"], "user id 999999 is not in this run's data"),
        (["user_id=1", "similar_users=1"], "ask one thing per call"),
        (["user_id=1", "exclude=[train,holdout]"], "exclude=[train,holdout]: must be a list, each entry one of train, valid, test"),
        (["user_id=1", "checkpoint=nowhere.ckpt"], ""),
    ],
)
def test_bad_requests_are_refused_with_one_line(movielens_run, overrides, message):
    """What serve() refuses a request with: the entry point prints it as one line with exit code 1 (next test)."""
    with pytest.raises(RecsysError) as refused:
        serve(compose_config("recommend", f"run_dir={movielens_run}", *overrides), io.StringIO())
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value) and refused.value.exit_code == 1


@pytest.mark.slow
def test_a_bad_request_exits_1_with_one_line(movielens_run):
    result = recommend_cli(movielens_run, "item_id=999999")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: item id 999999 is not in this run's data"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_similar_items_are_the_nearest_by_cosine_and_exclude_the_item(served):
    item = served.catalogue.item_index(TOY_STORY)
    found = RecommendationService(served).similar_items(item, 10)
    assert found.embedding == "factors" and item not in found.indices.tolist()
    table = served.model.item_factors.detach()
    brute = torch.stack([torch.cosine_similarity(table[item], table[other], dim=0) for other in range(len(table))])
    brute[item] = -math.inf
    torch.testing.assert_close(found.similarities, brute.topk(10).values, atol=1e-5, rtol=0)
    assert torch.equal(found.indices, brute.topk(10).indices)


@pytest.mark.slow
def test_similar_items_and_users_through_the_entry_point(movielens_run):
    items = recommend_cli(movielens_run, "item_id=1", "k=4")
    assert items.returncode == 0 and "Toy Story (1995)" in items.stdout.splitlines()[0]
    assert len(table_rows(items.stdout)) == 4
    users = recommend_cli(movielens_run, "similar_users=42", "k=3")
    assert users.returncode == 0 and [int(row[0]) for row in table_rows(users.stdout)] == [1, 2, 3]
    assert "42" not in [row[1] for row in table_rows(users.stdout)]


def test_ncf_says_which_embedding_and_refuses_faiss(tmp_path):

    from recsys_lightning.build import build_module

    from helpers import FrameDataModule, module_config, planted_frame  # a small NCF trained for one epoch

    datamodule = FrameDataModule(planted_frame(), batch_size=256)
    datamodule.setup("fit")
    config = module_config(model={"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [8]})
    module = build_module(config, datamodule.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "ncf.ckpt")

    base = [f"run_dir={tmp_path}", f"checkpoint={tmp_path / 'ncf.ckpt'}"]
    out = io.StringIO()
    serve(compose_config("recommend", *base, "item_id=3"), out)
    assert "'gmf' item embeddings" in out.getvalue()
    out = io.StringIO()
    serve(compose_config("recommend", *base, "item_id=3", "embedding=mlp"), out)
    assert "'mlp' item embeddings" in out.getvalue()
    with pytest.raises(ConfigError, match="index=faiss serves inner-product models"):
        serve(compose_config("recommend", *base, "user_id=1", "index=faiss"), io.StringIO())
    with pytest.raises(ConfigError, match="has gmf, mlp"):
        serve(compose_config("recommend", *base, "item_id=3", "embedding=other"), io.StringIO())


@pytest.mark.slow
@pytest.mark.parametrize("split, prefix", [("test", "test/"), ("valid", "val/")])
def test_evaluate_reproduces_metrics_json(movielens_run, split, prefix):
    evaluated = evaluate(movielens_run, split=split, accelerator="cpu")
    assert {"ndcg@10", "recall@10"} <= {name.removeprefix(prefix) for name in evaluated}
    table = compare_with_recorded(evaluated, movielens_run, tolerance=1e-6)
    assert table["equal"].all(), table


@pytest.mark.slow
def test_evaluate_entry_point_prints_the_comparison(movielens_run):
    interval = "callbacks.progress_log.interval_seconds=0.000001"
    result = run_module("recsys_lightning.evaluate", f"run_dir={movielens_run}", "accelerator=cpu", interval)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/ndcg@10" in result.stdout and "metrics equal metrics.json" in result.stdout
    # Off a terminal, progress lines while the data is rebuilt and ranked, in the log (stderr), not the table.
    assert "data: training positives and the catalogue done; built in " in result.stderr
    assert "test: user chunk 1 of 1, " in result.stderr and " users/s, ~0 s to its end" in result.stderr
    for noise in ("Tip:", "litlogger", "LeafSpec", "TPU available", "GPU available: False"):  # filtered as in train (console.py)
        assert noise not in result.stdout + result.stderr, noise


@pytest.mark.slow
def test_projector_gets_item_embeddings_labelled_with_titles(movielens_run):
    assert (movielens_run / "projector_config.pbtxt").is_file()
    metadata = list(movielens_run.glob("**/metadata.tsv"))
    assert len(metadata) == 1
    rows = pd.read_csv(metadata[0], sep="\t")
    assert list(rows.columns) == ["item_id", "title", "popularity"]
    assert len(rows) == 1682 and "Toy Story (1995)" in set(rows["title"])
    assert np.all(np.diff(rows["popularity"].to_numpy()) <= 0)


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_an_interrupted_export_exits_with_the_signals_code_and_leaves_no_file(movielens_run, tmp_path, sent, exit_code):
    """SIGTERM (docker stop, a job's time limit) or Ctrl-C mid-export: no recs.csv, no hidden temporary file."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    output = tmp_path / "recs.csv"
    command = [
        sys.executable,
        "-m",
        "recsys_lightning.recommend",
        f"run_dir={movielens_run}",
        "users=all",
        "chunk_size=1",
        f"output={output}",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".recs.csv.*.tmp")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(getattr(signal, sent))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: recommend was interrupted; no output file was written or changed"
    ]
    assert list(tmp_path.iterdir()) == []
