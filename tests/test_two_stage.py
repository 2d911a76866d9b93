"""Two-stage serving and evaluation: a retriever's candidates re-ranked by a second run, on small planted data."""

import io
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lightning import progress
from recsys_lightning.data.catalogue import PARTS
from recsys_lightning.errors import ConfigError
from recsys_lightning.evaluate import candidate_counts, check_evaluate_config, evaluate_two_stage, print_two_stage
from recsys_lightning.module import RecommenderModule
from recsys_lightning.recommend import serve
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving.service import RecommendationService, TwoStageService
from recsys_lightning.two_stage import STAGES, compare_stages, gains_over_retriever

from helpers import FrameDataModule, compose_config, module_config, planted_frame, quiet_trainer, run_module, trained_run_folder

NCF = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 8, "hidden": [8]}
NUM_ITEMS = 100  # planted_frame's catalogue


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An MF retriever and an NCF re-ranker on one split, an MF run on another split, and the re-ranker's
    test metrics as the Lightning test loop computes them."""
    root = tmp_path_factory.mktemp("two_stage")
    retriever = trained_run_folder(root / "mf", FrameDataModule(planted_frame(), batch_size=256), module_config())
    datamodule = FrameDataModule(planted_frame(), batch_size=256)
    reranker = trained_run_folder(root / "ncf", datamodule, module_config(model=NCF))
    other_split = trained_run_folder(root / "other", FrameDataModule(planted_frame(), batch_size=256, seed=7), module_config())
    tested = quiet_trainer().test(_module_of(reranker, datamodule), datamodule=datamodule, verbose=False)[0]
    return {"retriever": retriever, "reranker": reranker, "other_split": other_split, "tested": tested}


def _module_of(run_dir, datamodule) -> RecommenderModule:
    """The run's LightningModule, for the test loop's own figures."""
    state = torch.load(find_checkpoint(run_dir), weights_only=True)
    module = RecommenderModule(**state["hyper_parameters"], data=datamodule.training_data)
    module.load_state_dict(state["state_dict"])
    return module


def services(retriever_dir, reranker_dir, candidates):
    reranker, retriever = load_trained(find_checkpoint(reranker_dir)), load_trained(find_checkpoint(retriever_dir))
    return RecommendationService(reranker), TwoStageService(reranker, RecommendationService(retriever), candidates)


def test_two_stages_over_the_whole_catalogue_rank_as_the_reranker_alone(runs):
    alone, two_stage = services(runs["retriever"], runs["reranker"], candidates=NUM_ITEMS)
    users = torch.arange(60)
    expected, found = alone.recommend(users, 10), two_stage.recommend(users, 10)
    assert torch.equal(found.items, expected.items)
    assert torch.allclose(found.scores, expected.scores, atol=1e-5)


def test_a_run_reranking_its_own_candidates_answers_as_one_stage(runs):
    alone, two_stage = services(runs["reranker"], runs["reranker"], candidates=15)
    users = torch.arange(60)
    expected, found = alone.recommend(users, 10), two_stage.recommend(users, 10)
    assert torch.equal(found.items, expected.items)
    assert torch.allclose(found.retrieval_scores, expected.scores, atol=1e-5)


def test_candidate_recall_is_the_share_of_test_items_among_the_candidates(runs):
    retriever, reranker = load_trained(find_checkpoint(runs["retriever"])), load_trained(find_checkpoint(runs["reranker"]))
    table = compare_stages(retriever.model, reranker.model, reranker.catalogue, candidates=7, ks=[3])
    catalogue = reranker.catalogue
    seen = catalogue.seen.values.numpy()
    indptr, indices = catalogue.seen.indptr.numpy(), catalogue.seen.indices.numpy()
    scores = retriever.model.score_all(torch.arange(60)).detach().numpy()
    shares = []
    for user in range(60):  # brute force, one user at a time
        items, parts = indices[indptr[user] : indptr[user + 1]], seen[indptr[user] : indptr[user + 1]]
        test_items = set(items[parts == PARTS.index("test")])
        if not test_items:
            continue
        ranked = [item for item in np.argsort(-scores[user], kind="stable") if item not in set(items[parts != PARTS.index("test")])]
        shares.append(len(test_items & set(ranked[:7])) / len(test_items))
    assert table["recall@7"][0] == pytest.approx(np.mean(shares))
    assert table["recall@7"][2] == pytest.approx(table["recall@7"][0])  # the second stage reorders the same items


def test_each_stage_logs_chunks_ranked_users_per_second_and_time_left(runs, monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    retriever, reranker = load_trained(find_checkpoint(runs["retriever"])), load_trained(find_checkpoint(runs["reranker"]))
    with caplog.at_level(logging.INFO, logger="recsys_lightning.progress"), progress.every(1e-9):
        compare_stages(retriever.model, reranker.model, reranker.catalogue, candidates=7, ks=[3], chunk_size=25)
    lines = [record.getMessage() for record in caplog.records if "user chunk" in record.getMessage()]
    assert [line.split(":")[0] for line in lines] == [f"test split, {stage}" for stage in STAGES for _ in range(3)]
    assert lines[0].startswith("test split, retriever: user chunk 1 of 3, ") and " users/s, ~" in lines[0]
    assert lines[-1].endswith("~0 s to its end")


def test_evaluate_two_stage_beside_each_model_alone(runs):
    table, heading = evaluate_two_stage(runs["reranker"], runs["retriever"], candidates=NUM_ITEMS, accelerator="cpu")
    assert list(table["stage"]) == ["retriever", "re-ranker", "two-stage"]
    assert "candidate recall@100 1.0000" in heading and str(runs["retriever"]) in heading
    reranker_alone, two_stage = table.iloc[1], table.iloc[2]
    for metric in ("ndcg@10", "recall@10"):  # the Lightning test loop's figures, and two stages over everything
        assert reranker_alone[metric] == pytest.approx(runs["tested"][f"test/{metric}"], abs=1e-6)
        assert two_stage[metric] == pytest.approx(reranker_alone[metric], abs=1e-6)
    assert (table["ms/1k users"] > 0).all()


def test_a_candidate_sweep_equals_a_separate_run_at_each_count(runs):
    retriever, reranker = load_trained(find_checkpoint(runs["retriever"])), load_trained(find_checkpoint(runs["reranker"]))
    stages = (retriever.model, reranker.model, reranker.catalogue)
    sweep = compare_stages(*stages, candidates=[20, 5, 50], ks=[3, 10], chunk_size=25)  # one retrieval, at 50
    assert list(sweep["stage"]) == ["retriever", "re-ranker", "two-stage", "two-stage", "two-stage"]
    assert list(sweep["candidates"]) == ["-", "-", 5, 20, 50] and sweep["candidate recall"][:2].isna().all()
    metrics = ["ndcg@3", "recall@3", "ndcg@10", "recall@10"]
    for row, count in zip(range(2, 5), (5, 20, 50)):
        alone = compare_stages(*stages, candidates=count, ks=[3, 10], chunk_size=25)  # its own retrieval at `count`
        assert sweep["candidate recall"][row] == alone[f"recall@{count}"][2] == alone[f"recall@{count}"][0]
        assert sweep.loc[row, metrics].tolist() == alone.loc[2, metrics].tolist()
        assert sweep.loc[:1, metrics].values.tolist() == alone.loc[:1, metrics].values.tolist()


def test_gains_are_each_stage_over_the_retriever_and_a_zero_retriever_figure_prints_a_dash():
    table = pd.DataFrame(
        {
            "stage": ["retriever", "re-ranker", "two-stage"],
            "model": ["MF", "NeuMF", "MF -> NeuMF"],
            "recall@50": [0.8, 0.7, 0.8],  # candidate recall: no gain is taken of it
            "ndcg@10": [0.2, 0.3, 0.1],
            "recall@10": [0.0, 0.1, 0.0],
            "ms/1k users": [1.0, 2.0, 3.0],
        }
    )
    gains = gains_over_retriever(table)
    assert list(gains.columns) == ["stage", "ndcg@10", "recall@10"]
    assert gains["ndcg@10"].tolist() == pytest.approx([1.0, 1.5, 0.5])
    assert gains["recall@10"].isna().all()
    out = io.StringIO()
    print_two_stage(table, "heading", out)
    assert out.getvalue().splitlines()[-1].split() == ["two-stage", "0.500", "-"]


def test_a_sweep_prints_one_row_per_count_cut_to_the_catalogue(runs, caplog):
    with caplog.at_level(logging.WARNING, logger="recsys_lightning.evaluate"):
        table, heading = evaluate_two_stage(runs["reranker"], runs["retriever"], candidates=[10, 500, 200], accelerator="cpu")
    assert [record.getMessage() for record in caplog.records] == [
        "retrieval.candidates=[10,500,200]: this run has 100 items, so 200, 500 are cut to 100 (every unseen item a candidate)"
    ]
    assert list(table["candidates"]) == ["-", "-", 10, 100] and "top 10, 100 unseen items" in heading
    assert table["candidate recall"][3] == pytest.approx(1.0)
    assert table.loc[3, "ndcg@10"] == pytest.approx(table.loc[1, "ndcg@10"], abs=1e-6)  # every item a candidate: the re-ranker's ranking


def test_a_single_count_beyond_the_catalogue_is_cut_to_it_as_a_sweeps_are(caplog):
    """recall@100 (every item), not a recall@100000000000 column named after a number the user typed."""
    with caplog.at_level(logging.WARNING, logger="recsys_lightning.evaluate"):
        assert candidate_counts(10**11, NUM_ITEMS) == NUM_ITEMS and candidate_counts(7, NUM_ITEMS) == 7
    assert [record.getMessage() for record in caplog.records] == [
        f"retrieval.candidates={10**11}: this run has 100 items, so {10**11} is cut to 100 (every unseen item a candidate)"
    ]


@pytest.mark.parametrize(
    "candidates",
    ["[]", "[0,10]", "[10.5]", "[a]", "[" + ",".join(str(count) for count in range(1, 18)) + "]", "true"],
)
def test_a_bad_candidate_list_is_refused_in_one_line_naming_the_key(runs, candidates):
    cfg = compose_config(
        "evaluate", f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['retriever']}", f"retrieval.candidates={candidates}"
    )
    with pytest.raises(ConfigError) as error:
        check_evaluate_config(cfg)
    assert str(error.value).startswith("retrieval.candidates=") and "\n" not in str(error.value)
    assert "a non-empty list of at most 16 entries, each entry an integer >= 1" in str(error.value)


def test_a_retriever_of_another_split_is_refused_naming_both_runs(runs):
    with pytest.raises(ConfigError) as error:
        evaluate_two_stage(runs["reranker"], runs["other_split"], candidates=10, accelerator="cpu")
    message = str(error.value)
    assert f"retrieval.run_dir={runs['other_split']}" in message and f"run_dir={runs['reranker']}" in message
    assert "same data, split and seed" in message and "\n" not in message
    with pytest.raises(ConfigError, match="another split"):
        serve(compose_config("recommend", f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['other_split']}", "user_id=1"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["item_id=1000"], "item_id is answered by run_dir's model alone"),
        (["user_id=1", "index=faiss"], "use retrieval.index=faiss|search the retriever's index with retrieval.index=faiss"),
        (["user_id=1", "retrieval.candidates=0"], "retrieval.candidates=0: must be an integer >= 1"),
    ],
)
def test_two_stage_arguments_are_checked_before_loading(runs, overrides, message):
    with pytest.raises(ConfigError, match=message):
        serve(compose_config("recommend", f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['retriever']}", *overrides))


def test_faiss_retrieval_equals_exact_retrieval_and_refuses_a_non_inner_product_retriever(runs):
    answers = []
    for index in ("model", "faiss"):
        out = io.StringIO()
        base = [f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['retriever']}", "retrieval.candidates=20"]
        serve(compose_config("recommend", *base, f"retrieval.index={index}", "users=all"), out)
        answers.append(pd.read_csv(io.StringIO(out.getvalue())))
    pd.testing.assert_frame_equal(answers[0], answers[1], atol=1e-4)
    with pytest.raises(ConfigError, match="retrieval.index=faiss serves inner-product models"):
        serve(
            compose_config(
                "recommend", f"run_dir={runs['retriever']}", f"retrieval.run_dir={runs['reranker']}", "retrieval.index=faiss", "user_id=1"
            )
        )


def test_batch_export_has_both_scores_and_replaces_its_own_file(runs, tmp_path):
    output = tmp_path / "recs.csv"
    base = [f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['retriever']}", "users=all", "k=5", f"output={output}"]
    for _ in range(2):  # the second export recognises the first as its own and replaces it
        serve(compose_config("recommend", *base, "retrieval.candidates=8"), io.StringIO())
    exported = pd.read_csv(output)
    assert list(exported.columns) == ["user_id", "rank", "item_id", "score", "source", "retrieval_score"]
    assert len(exported) == 60 * 5 and (exported["source"] == "model").all()
    assert (exported.groupby("user_id")["score"].diff().dropna() <= 0).all()  # ordered by the re-ranker's score


@pytest.mark.slow
def test_recommend_entry_point_prints_both_scores(runs):
    result = run_module(
        "recsys_lightning.recommend", f"run_dir={runs['reranker']}", f"retrieval.run_dir={runs['retriever']}", "user_id=1", "k=5"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    heading, columns, *rows = result.stdout.strip().splitlines()
    assert "NeuMF re-ranking the top 100 of MatrixFactorization" in heading  # retrieval.candidates=200 of 100 items
    assert "retrieval.candidates=200: this run has 100 items, so every unseen item is a candidate" in result.stderr
    assert columns.split() == ["rank", "item_id", "title", "score", "source", "retrieval_score"]
    assert len(rows) == 5


@pytest.mark.slow
def test_evaluate_entry_point_prints_the_stages(runs):
    result = run_module(
        "recsys_lightning.evaluate",
        f"run_dir={runs['reranker']}",
        f"retrieval.run_dir={runs['retriever']}",
        "accelerator=cpu",
        "callbacks.progress_log.interval_seconds=0.000001",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test split, two-stage: user chunk 1 of 1, " in result.stderr  # progress lines go to the log, not the table
    heading, columns, *rows = result.stdout.strip().splitlines()
    assert "hands its top 100 unseen items" in heading and "candidate recall@100" in heading  # retrieval.candidates=200 of 100 items
    assert "retrieval.candidates=200: this run has 100 items, so 200 is cut to 100 (every unseen item a candidate)" in result.stderr
    stages, gains = "\n".join(rows).split("\n\nover the retriever")
    assert columns.split()[:3] == ["stage", "model", "recall@100"] and [row.split()[0] for row in stages.splitlines()] == list(STAGES)
    assert gains.splitlines()[1].split() == ["stage", "ndcg@10", "recall@10"]  # the runs' eval.ks
    assert gains.splitlines()[2].split() == ["retriever", "1.000", "1.000"]


@pytest.mark.parametrize("candidates", [[], 0, [5, 0]])
def test_compare_stages_called_with_no_count_is_refused_before_ranking(candidates):
    with pytest.raises(ValueError, match=r"give a count >= 1, or a non-empty list of them"):
        compare_stages(None, None, None, candidates, [10])
