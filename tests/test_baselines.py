"""The closed-form baselines (popularity, feature_popularity, itemknn, ease) against direct references, and through the same
training, checkpoint, serving and sweep paths as every other model."""

import io
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from recsys_lightning.build import build_module
from recsys_lightning.errors import ConfigError
from recsys_lightning.models import EASE, FeaturePopularity, ItemKNN, Popularity
from recsys_lightning.models.base import build_recommender
from recsys_lightning.runs.trained_run import TrainedRun
from recsys_lightning.serving.service import ITEM_ITEM, RecommendationService

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer, run_module

NUM_USERS, NUM_ITEMS = 40, 15
TARGETS = {"popularity": "Popularity", "itemknn": "ItemKNN", "ease": "EASE"}


@pytest.fixture
def interactions() -> np.ndarray:
    """A binary [users, items] matrix whose items differ in popularity; seed 0 has no tie at the cut-offs tested."""
    rng = np.random.default_rng(0)
    return (rng.random((NUM_USERS, NUM_ITEMS)) < np.linspace(0.15, 0.7, NUM_ITEMS)).astype(np.float64)


def fitted(model, matrix: np.ndarray):
    model.fit(torch.from_numpy(matrix).float().to_sparse())
    return model


def all_scores(model) -> np.ndarray:
    return model.score_all(torch.arange(model.num_users)).numpy()


# --- each model equals its definition --------------------------------------------------------------


def test_popularity_scores_each_item_by_its_number_of_training_users(interactions):
    users, items = np.nonzero(interactions)
    counts = Counter(items.tolist())
    scores = all_scores(fitted(Popularity(NUM_USERS, NUM_ITEMS), interactions))
    assert scores.tolist() == [[float(counts[item]) for item in range(NUM_ITEMS)]] * NUM_USERS


def test_feature_popularity_scores_a_hand_computed_case():
    """Features A, B: item 0 is A, 1 B, 2 A and B, 3 A, 4 B and new (no training user). User 0 trained on items
    0 and 3 (A shares 1, B 0), user 1 on 0, 1 and 2 (A 2/3, B 2/3), user 2 on none. Popularity 2, 1, 1, 1, 0
    (plus r_i in [0, 1), seed 0's draw) breaks ties as (p + r) / (max p + 1) / n_u: user 0 gets 1 + (2 + r_0)/3/2
    for item 0, (1 + r_1)/3/2 for item 1; user 2 popularity alone."""
    genres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]).to_sparse()  # row means, as the data gives them
    model = FeaturePopularity(3, 5, num_item_features=2)
    model.set_features(genres, None, torch.zeros(5), torch.zeros(3))
    training = torch.zeros(3, 5)
    training[0, [0, 3]] = training[1, [0, 1, 2]] = 1
    model.fit(training.to_sparse())
    matches = torch.tensor([[2.0, 0, 2, 2, 0], [2, 2, 4, 2, 2], [0, 0, 0, 0, 0]])  # training items sharing each feature
    order = (torch.tensor([2.0, 1, 1, 1, 0]) + torch.rand(5, generator=torch.Generator().manual_seed(0))) / 3
    expected = (matches + order) / torch.tensor([[2.0], [3.0], [1.0]])
    torch.testing.assert_close(model.score_all(torch.arange(3)), expected)
    # popularity then the draw order what features leave tied: items 2 and 3 for user 0, every new item
    ranked = model.score_all(torch.arange(3)).argsort(1, descending=True)
    assert ranked[0, :3].tolist() == [0, *sorted([2, 3], key=lambda item: -model.item_tiebreak[item])]


def test_feature_popularity_without_item_features_is_one_line():
    with pytest.raises(ConfigError) as caught:
        FeaturePopularity(3, 5).set_features(None, torch.eye(3).to_sparse(), torch.zeros(5), torch.zeros(3))
    assert str(caught.value) == (
        "model=feature_popularity ranks items by their features, and the data has none: "
        "set data.item_features (ML-100K: [genre]) and keep model.features=true"
    )


@pytest.mark.parametrize("l2", [1.0, 50.0])
def test_ease_weights_and_scores_equal_the_dense_closed_form(interactions, l2):
    # Steck 2019, eq. 8, in float64 numpy: P = (X^T X + l2 I)^-1, B = -P / diag(P) column-wise, diag(B) = 0.
    precision = np.linalg.inv(interactions.T @ interactions + l2 * np.eye(NUM_ITEMS))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    model = fitted(EASE(NUM_USERS, NUM_ITEMS, l2=l2), interactions)
    np.testing.assert_allclose(model.item_weights.numpy(), weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(all_scores(model), interactions @ weights, rtol=1e-4, atol=1e-5)


def brute_force_knn_scores(matrix: np.ndarray, num_neighbours: int, shrink: float) -> np.ndarray:
    """Item-kNN by explicit loops over sets of users: what ItemKNN computes with sparse products."""
    num_users, num_items = matrix.shape
    holders = [set(np.nonzero(matrix[:, item])[0]) for item in range(num_items)]
    weights = np.zeros((num_items, num_items))
    for i in range(num_items):
        similarity = {}
        for j in range(num_items):
            if j != i:
                denominator = np.sqrt(len(holders[i]) * len(holders[j])) + shrink
                similarity[j] = len(holders[i] & holders[j]) / denominator if denominator else 0.0
        ranked = sorted(similarity.values(), reverse=True)
        assert ranked[num_neighbours - 1] > ranked[num_neighbours], "a tie at the cut-off: the reference would be ambiguous"
        for j, value in similarity.items():
            if value >= ranked[num_neighbours - 1]:
                weights[i, j] = value
    scores = np.zeros((num_users, num_items))
    for user in range(num_users):
        for i in np.nonzero(matrix[user])[0]:
            for j in range(num_items):
                scores[user, j] += weights[i, j]
    return scores


@pytest.mark.parametrize(("num_neighbours", "shrink"), [(4, 0.0), (6, 3.0)])
def test_itemknn_scores_equal_a_brute_force_reference(interactions, num_neighbours, shrink):
    model = fitted(ItemKNN(NUM_USERS, NUM_ITEMS, num_neighbours=num_neighbours, shrink=shrink), interactions)
    expected = brute_force_knn_scores(interactions, num_neighbours, shrink)
    np.testing.assert_allclose(all_scores(model), expected, rtol=1e-5, atol=1e-5)


def test_itemknn_never_lists_an_item_as_its_own_neighbour(interactions):
    model = fitted(ItemKNN(NUM_USERS, NUM_ITEMS, num_neighbours=NUM_ITEMS), interactions)
    assert model.neighbours.shape == (NUM_ITEMS, NUM_ITEMS - 1)
    assert not (model.neighbours == torch.arange(NUM_ITEMS)[:, None]).any()


@pytest.mark.parametrize("model_class", [Popularity, ItemKNN, EASE])
def test_a_checkpoint_restores_the_fit_into_an_unfitted_model(interactions, model_class):
    model = fitted(model_class(NUM_USERS, NUM_ITEMS), interactions)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    with torch.sparse.check_sparse_tensor_invariants():
        state = torch.load(buffer, weights_only=True)
    restored = model_class(NUM_USERS, NUM_ITEMS)  # the training matrix it held had no entries
    restored.load_state_dict(state)
    np.testing.assert_array_equal(all_scores(restored), all_scores(model))


def test_ease_refuses_a_catalogue_above_max_items_before_allocating_it():
    # A million items would need a 3.6 TiB matrix: only a check made first returns at once.
    with pytest.raises(ConfigError, match=r"model=ease: 1000000 items .* above model.max_items=50000; raise model.max_items"):
        build_recommender({"_target_": "recsys_lightning.models.EASE"}, num_users=10, num_items=1_000_000)
    small = module_config(model={"_target_": "recsys_lightning.models.EASE", "max_items": 50})
    datamodule = FrameDataModule(planted_frame())  # 100 items
    datamodule.setup("fit")
    with pytest.raises(ConfigError, match="above model.max_items=50"):
        build_module(small, datamodule.training_data)


# --- the same training, checkpoint and serving paths as any model ---------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Each baseline trained through the module on the planted two-group data, asked for up to 5 epochs."""
    runs = {}
    for name, target in TARGETS.items():
        folder = tmp_path_factory.mktemp(name)
        datamodule = FrameDataModule(planted_frame())
        datamodule.setup("fit")
        module = build_module(module_config(model={"_target_": f"recsys_lightning.models.{target}"}), datamodule.training_data)
        best = ModelCheckpoint(dirpath=folder, monitor="val/ndcg@10", mode="max")
        trainer = quiet_trainer(max_epochs=5, callbacks=[best], default_root_dir=folder)
        trainer.fit(module, datamodule=datamodule)
        validated = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False, weights_only=True)[0]
        runs[name] = dict(trainer=trainer, module=module, best=best.best_model_path, val=validated, test=tested)
    return runs


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_baseline_fits_in_one_step_of_one_epoch_then_validates_checkpoints_and_tests(trained, name):
    run = trained[name]
    assert (run["trainer"].current_epoch, run["trainer"].global_step) == (1, 1)
    assert run["best"].endswith("epoch=0-step=1.ckpt")
    assert run["val"]["val/ndcg@10"] > 0 and run["test"]["test/ndcg@10"] > 0
    assert not list(run["module"].parameters())


def test_personal_baselines_beat_popularity_on_planted_taste_groups(trained):
    popularity = trained["popularity"]["val"]["val/ndcg@10"]
    assert trained["itemknn"]["val"]["val/ndcg@10"] > 1.5 * popularity
    assert trained["ease"]["val"]["val/ndcg@10"] > 1.5 * popularity


def served(run: dict) -> RecommendationService:
    module = run["module"]
    return RecommendationService(TrainedRun(module.model.eval(), module.data.catalogue, dict(module.hparams), run["best"]))


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_similar_items_of_an_item_item_model_are_its_heaviest_weights(trained, name):
    service = served(trained[name])
    found = service.similar_items(7, 5)
    weights = service.model.item_similarities(torch.tensor([7]))[0]
    weights[7] = -torch.inf
    assert found.embedding == ITEM_ITEM and 7 not in found.indices.tolist()
    assert torch.equal(found.similarities, weights.topk(5).values)
    assert set(found.indices.tolist()) < set(range(50))  # item 7 is in the first taste group


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [("popularity", "items", "Popularity has no item embeddings"), ("ease", "users", "EASE has no user embeddings")],
)
def test_similarity_a_baseline_cannot_answer_is_one_clear_error(trained, name, kind, message):
    service = served(trained[name])
    with pytest.raises(ConfigError, match=f"{message} to find similar {kind} by; train one of mf"):
        service.similar_items(0, 5) if kind == "items" else service.similar_users(0, 5)


@pytest.mark.parametrize("name", list(TARGETS))
def test_recommendations_of_a_baseline_are_its_top_unseen_scores(trained, name):
    service = served(trained[name])
    answer = service.recommend(torch.tensor([3]), 5)
    scores = service.model.score_all(torch.tensor([3]))[0]
    seen = service.excluded.coordinates(torch.tensor([3]))[1]
    scores[seen] = -torch.inf
    assert not answer.fallback.any()
    torch.testing.assert_close(answer.scores[0], scores.topk(5).values)


# --- the entry points, as a user runs them ------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_over_baselines_and_trained_models_writes_one_summary_and_the_runs_serve(tmp_path):
    result = run_module(
        "recsys_lightning.train",
        "-m",
        "model=popularity,itemknn,ease,mf,ncf",
        "data=synthetic",
        "data.num_users=150",
        "data.num_items=80",
        "data.num_interactions=3000",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "callbacks.progress_bar.refresh_rate=0",
        f"paths.output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = next(tmp_path.glob("multiruns/*/*"))
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == 5 and ("error" not in summary or summary["error"].isna().all())
    # Closed-form baselines are named by their model alone: no loss or sampler took part in them.
    assert sorted(name.split("_")[1] for name in summary["run"]) == ["ease", "itemknn", "mf-bpr-uniform", "ncf-bpr-uniform", "popularity"]
    assert (summary["val/ndcg@10"] > 0).all() and (summary["test/ndcg@10"] > 0).all()

    ease_run = next(sweep_dir.glob("*_ease_*"))
    assert json.loads((ease_run / "metrics.json").read_text())["epochs"] == 1  # though max_epochs=2
    recommended = run_module("recsys_lightning.recommend", f"run_dir='{ease_run}'", "user_id=0", "k=5")
    assert recommended.returncode == 0, recommended.stderr[-2000:]
    assert "top 5 unseen items for user 0 (EASE" in recommended.stdout
    similar = run_module("recsys_lightning.recommend", f"run_dir='{ease_run}'", "item_id=0", "k=3")
    assert similar.returncode == 0 and "the EASE item-item weights from it" in similar.stdout, similar.stderr[-2000:]
    evaluated = run_module("recsys_lightning.evaluate", f"run_dir='{ease_run}'")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "metrics equal metrics.json" in evaluated.stdout
