import math

import pytest
import torch

from recsys_lightning.data.batches import RankingChunk
from recsys_lightning.hparams_tab import metric_columns
from recsys_lightning.metrics import (
    HPARAMS_KS,
    METRIC_NAMES,
    CatalogueMetrics,
    PointwiseMetrics,
    RankingMetrics,
    RatingErrors,
    per_user_metrics,
)
from recsys_lightning.ranking import hits, top_k_unseen
from recsys_lightning.sweep import COLUMNS


def reference_metrics(scores, exclude, heldout, k):
    """Slow and obvious: rank each user's unseen items one by one with Python sets."""
    results = {name: [] for name in METRIC_NAMES}
    for user in range(scores.shape[0]):
        candidates = [i for i in range(scores.shape[1]) if i not in exclude[user]]
        ranked = sorted(candidates, key=lambda i: -scores[user, i].item())[:k]
        relevant = heldout[user]
        found = [item in relevant for item in ranked]
        dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(found) if hit)
        idcg = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
        results["recall"].append(sum(found) / len(relevant))
        results["ndcg"].append(dcg / idcg)
        results["hit_rate"].append(float(any(found)))
        results["precision"].append(sum(found) / k)
        results["mrr"].append(next((1 / (rank + 1) for rank, hit in enumerate(found) if hit), 0.0))
    return {f"{name}@{k}": sum(values) / len(values) for name, values in results.items()}


def coordinates(sets):
    rows = [row for row, items in enumerate(sets) for _ in items]
    items = [item for item_set in sets for item in sorted(item_set)]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(items, dtype=torch.long)


def vectorised_metrics(scores, exclude, heldout, ks, chunk):
    metric = RankingMetrics(ks)
    for start in range(0, scores.shape[0], chunk):
        stop = min(start + chunk, scores.shape[0])
        exclude_rows, exclude_items = coordinates(exclude[start:stop])
        heldout_rows, heldout_items = coordinates(heldout[start:stop])
        top = top_k_unseen(scores[start:stop].clone(), exclude_rows, exclude_items, metric.max_k)
        metric.update(hits(top, heldout_rows, heldout_items, scores.shape[1]), torch.bincount(heldout_rows, minlength=stop - start))
    return {name: value.item() for name, value in metric.compute().items()}


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_slow_reference_on_random_data(seed):
    generator = torch.Generator().manual_seed(seed)
    num_users, num_items = 37, 50
    scores = torch.randn(num_users, num_items, generator=generator)
    exclude, heldout = [], []
    for _ in range(num_users):
        order = torch.randperm(num_items, generator=generator).tolist()
        num_exclude = int(torch.randint(0, 20, (1,), generator=generator))
        num_heldout = int(torch.randint(1, 15, (1,), generator=generator))
        exclude.append(set(order[:num_exclude]))
        heldout.append(set(order[num_exclude : num_exclude + num_heldout]))
    ours = vectorised_metrics(scores, exclude, heldout, ks=(5, 10, 20), chunk=8)
    for k in (5, 10, 20):
        for name, value in reference_metrics(scores, exclude, heldout, k).items():
            assert ours[name] == pytest.approx(value, abs=1e-9), name


def test_metrics_on_hand_computed_case():
    # User 0 ranks items 0,1,2 first with held-out {0, 2}; user 1 ranks 3,4,5 first with held-out {5}.
    scores = torch.tensor([[9.0, 8, 7, 1, 1, 1], [1.0, 1, 1, 9, 8, 7]])
    heldout_rows, heldout_items = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 5])
    top = top_k_unseen(scores, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3)
    assert top.tolist() == [[0, 1, 2], [3, 4, 5]]
    found = hits(top, heldout_rows, heldout_items, num_items=6)
    assert found.tolist() == [[True, False, True], [False, False, True]]

    metric = RankingMetrics(ks=(2, 3))
    metric.update(found, torch.tensor([2, 1]))
    values = {name: value.item() for name, value in metric.compute().items()}
    ndcg_user0_at3 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert values["recall@3"] == pytest.approx((1.0 + 1.0) / 2)
    assert values["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert values["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert values["hit_rate@2"] == pytest.approx(0.5)
    assert values["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert values["mrr@2"] == pytest.approx(0.5)
    assert values["ndcg@3"] == pytest.approx((ndcg_user0_at3 + 0.5) / 2)
    assert values["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0.0) / 2)


def test_excluded_items_never_recommended():
    scores = torch.arange(10.0).repeat(2, 1)
    top = top_k_unseen(scores, torch.tensor([0, 0, 1]), torch.tensor([9, 8, 9]), 3)
    assert top.tolist() == [[7, 6, 5], [8, 7, 6]]


def test_fewer_ranked_items_than_k_counts_as_misses():
    values = per_user_metrics(torch.tensor([[True, False]]), torch.tensor([1]), ks=[5])
    assert values[METRIC_NAMES.index("recall"), 0, 0].item() == 1.0
    assert values[METRIC_NAMES.index("precision"), 0, 0].item() == pytest.approx(0.2)


def test_states_sum_so_chunked_updates_equal_one_update():
    found = torch.rand(30, 10) > 0.7
    relevant = torch.randint(1, 6, (30,))
    whole, chunked = RankingMetrics((5, 10)), RankingMetrics((5, 10))
    whole.update(found, relevant)
    for rows in torch.arange(30).split(7):
        chunked.update(found[rows], relevant[rows])
    for name, value in whole.compute().items():
        assert chunked.compute()[name].item() == pytest.approx(value.item(), abs=1e-12)


def test_coverage_and_novelty_on_hand_computed_case():
    # Two users, four items with self-information 1, 2, 3, 4 bits; top-2 lists [0, 1] and [0, 2].
    metric = CatalogueMetrics(ks=(1, 2), num_items=4)
    metric.update(torch.tensor([[0, 1], [0, 2]]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    values = {name: value.item() for name, value in metric.compute().items()}
    assert values["coverage@1"] == pytest.approx(1 / 4)
    assert values["coverage@2"] == pytest.approx(3 / 4)
    assert values["novelty@1"] == pytest.approx(1.0)
    assert values["novelty@2"] == pytest.approx((1 + 2 + 1 + 3) / 4)


def chunk_of(heldout_rows, heldout_items, ratings, num_users):
    return RankingChunk(
        torch.arange(num_users),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        torch.tensor(heldout_rows),
        torch.tensor(heldout_items),
        torch.tensor(ratings),
    )


def test_rating_errors_on_hand_computed_case():
    # Predictions 4, 2, 3.5 against ratings 3, 4, 3: errors 1, -2, 0.5.
    scores = torch.tensor([[4.0, 0.0, 2.0], [0.0, 3.5, 0.0]])
    metric = RatingErrors()
    metric.update(scores, chunk_of([0, 0, 1], [0, 2, 1], [3.0, 4.0, 3.0], 2), chunk_seed=0)
    values = metric.compute()
    assert values["rmse"].item() == pytest.approx(math.sqrt((1 + 4 + 0.25) / 3))
    assert values["mae"].item() == pytest.approx((1 + 2 + 0.5) / 3)
    assert metric.histograms()["rating_error"].tolist() == [1.0, -2.0, 0.5]


def test_rating_errors_over_chunks_equal_the_reference_on_random_data():
    generator = torch.Generator().manual_seed(0)
    metric, errors = RatingErrors(), []
    for chunk in range(4):
        scores = torch.rand(6, 9, generator=generator) * 5
        rows, items = torch.randint(0, 6, (12,), generator=generator), torch.randint(0, 9, (12,), generator=generator)
        ratings = torch.randint(1, 6, (12,), generator=generator).float()
        metric.update(scores, chunk_of(rows.tolist(), items.tolist(), ratings.tolist(), 6), chunk_seed=chunk)
        errors += [scores[row, item].item() - rating for row, item, rating in zip(rows.tolist(), items.tolist(), ratings.tolist())]
    assert metric.compute()["rmse"].item() == pytest.approx(math.sqrt(sum(e * e for e in errors) / len(errors)), rel=1e-5)
    assert metric.compute()["mae"].item() == pytest.approx(sum(abs(e) for e in errors) / len(errors), rel=1e-5)


def test_tables_comparing_runs_name_logged_metrics_from_one_list():
    """A sweep's summary and the HParams tab take their metric columns from `summary_metrics`: the sweep's
    keep today's order (with the pointwise losses' bce and auc added), and every name is one a run logs."""
    sweep = [column for column in COLUMNS if "/" in column]
    headline = ["val/ndcg@10", "val/recall@10", "test/ndcg@10", "test/recall@10"]
    test_detail = ["test/hit_rate@10", "test/mrr@10", "test/coverage@10", "test/novelty@10"]
    predicted = [f"{split}/{name}" for split in ("val", "test") for name in ("rmse", "mae", "bce", "auc")]
    assert sweep == headline + test_detail + predicted
    tab = [column.removeprefix("final/") for column in metric_columns() if column.count("/") == 2]
    assert set(sweep) - set(test_detail) <= set(tab) and len(tab) == 2 * (2 * len(HPARAMS_KS) + 4)
    ranking, catalogue = RankingMetrics(HPARAMS_KS), CatalogueMetrics(HPARAMS_KS, num_items=3)
    ranking.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    catalogue.update(torch.tensor([[0, 1]]), torch.ones(3))
    logged = {*ranking.compute(), *catalogue.compute(), *RatingErrors.names, *PointwiseMetrics.names}
    assert {name.split("/", 1)[1] for name in sweep + tab} <= logged
