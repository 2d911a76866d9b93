"""Feasibility of a re-ranker trained for its job (issue 26, item 1): can a second stage over an MF
retriever's top-N candidates beat the retriever alone on ML-100K, on validation and on test?

The training signal is the hard part: the retriever fitted its training positives, so its score on them is
inflated beside a held-out item's, and a re-ranker that learns from those scores learns a biased feature.
Here (idea a of the issue) a share of each user's training interactions is held out, a second retriever is
trained without them (same preset, same seed), and the re-ranker learns to order that retriever's top-N
candidates with the held-out items as targets: the scores it sees on them are honest. At validation and
test time the real retriever's candidates and scores are re-ranked. Neither candidate set is told about
valid or test items (no leak): the re-ranker learns from training data only.

Rankers (each listwise: a softmax over a user's candidates, the user's targets among them the positives;
the features are in SCALARS, each computed from the history the scoring retriever was trained on):
- `linear` (idea c): a weighted sum of named features: the retriever's score (z-scored within the user's
  candidates), its gap to the top score, log rank, item popularity, user activity, user-genre affinity, item
  year and its distance to the user's mean year; then with recency (the item's ratings around the user's
  median week), an item-kNN score, or an EASE score (a second model's view of the user's history).
- `residual` (idea b): the retriever's z-score plus a small MLP's correction over those features, and over
  their crosses (item genres, user demographics, user genre profile).
Each is chosen by epoch on validation two-stage NDCG@10 (the real retriever's candidates, valid items as
targets), then measured once on test. NDCG@10 counts every held-out item of a user, found or not (as the
test loop does: metrics.RankingMetrics). Beside them, for scale: EASE alone over the whole catalogue, and
the fixed blend MF z + w EASE z (w chosen on validation): what an ensemble gives without a learned ranker.
ms per 1,000 users: retrieval of the top N, all 12 features (two [U, I] x [I, I] products: item-kNN and
EASE), and the ranker, for every test user, best of 3; the retriever alone is its top 10.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_reranker.py --out /tmp/rerank   # run folders kept there
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_reranker.py --out /tmp/rerank --holdout-seed 7
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_reranker.py --out /tmp/rerank --latest   # latest rows as targets
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_reranker.py --out /tmp/rerank   # run folders kept there
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn

import recsys_lightning.data.datamodule as datamodule_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.data.batches import RankingChunk, RankingChunks
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import Split, split_interactions
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.retrieval import retrieve
from recsys_lightning.runs.checkpoint_file import find_checkpoint, read_run_metrics
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.train import train

RETRIEVER = ["experiment=ml100k_mf"]
FEATURES = ["data.item_features=[genre,year]", "data.user_features=[age,gender,occupation]"]
QUIET = ["callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]
K = 10


def compose_config(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*QUIET, *overrides])


def trained(run_dir: Path, overrides: list[str]) -> Path:
    """The run folder, trained unless it already holds a finished run (metrics.json)."""
    if not (run_dir / "metrics.json").exists():
        train(compose_config([f"paths.run_dir={run_dir}", "run_name=bench", *overrides]))
    return run_dir


def trained_without_holdout(run_dir: Path, share: float, latest: bool, holdout_seed: int) -> Path:
    """The retriever's preset trained with `share` of each user's training rows left out (the latest by
    timestamp, or a seeded random share): the datamodule's split is wrapped for the one run."""

    def split_without_holdout(interactions, kind, ratios, seed) -> Split:
        split = split_interactions(interactions, kind, ratios, seed)
        rows = split.train
        users = interactions.users[rows]
        key = interactions.timestamps[rows] if latest else np.random.default_rng(holdout_seed).random(len(rows))
        order = np.lexsort((-key, users))  # per user, latest (or random) first
        sorted_users = users[order]
        starts = np.searchsorted(sorted_users, sorted_users, side="left")
        position = np.arange(len(order)) - starts
        counts = np.bincount(users, minlength=interactions.num_users)[sorted_users]
        held = order[position < np.maximum(1, np.round(share * counts)).astype(int)]
        return replace(split, train=np.setdiff1d(rows, rows[held]))

    if (run_dir / "metrics.json").exists():
        return run_dir
    original = datamodule_module.split_interactions
    datamodule_module.split_interactions = split_without_holdout
    try:
        return trained(run_dir, RETRIEVER)
    finally:
        datamodule_module.split_interactions = original


@dataclass(frozen=True)
class SideInfo:
    """Dense per-item and per-user side features and every training row's time (ML-100K is small)."""

    item_genres: Tensor  # [I, G] multi-hot
    item_year: Tensor  # [I] standardized release year (0 where unknown)
    user_demographics: Tensor  # [U, D] one-hot age decade, gender, occupation
    train_weeks: Tensor  # [U, I] week of each training interaction since the first rating, -1 where none


def side_info(num_users: int, num_items: int) -> SideInfo:
    datamodule = instantiate(compose_config([*RETRIEVER, *FEATURES]).data)
    datamodule.setup()
    data = datamodule.training_data
    assert (data.num_users, data.num_items) == (num_users, num_items)
    items, users = data.item_features, data.user_features

    def dense(table) -> Tensor:
        matrix = torch.zeros(table.num_entities, table.num_features)
        rows = torch.repeat_interleave(torch.arange(table.num_entities), torch.diff(table.indptr))
        matrix[rows, table.indices] = 1.0
        return matrix

    item_matrix = dense(items)
    genre_columns = [j for j, name in enumerate(items.names) if name.startswith("genre=")]
    # The RecBole file has two non-years ("year=V", "year=unkonwn"): those movies count as without a year.
    year_columns = [j for j, name in enumerate(items.names) if name.startswith("year=") and name[5:].isdigit()]
    years = torch.tensor([float(items.names[j].split("=", 1)[1]) for j in year_columns])
    has_year = item_matrix[:, year_columns].sum(1) > 0
    year = item_matrix[:, year_columns] @ years
    mean, std = year[has_year].mean(), year[has_year].std()
    year = torch.where(has_year, (year - mean) / std, torch.zeros_like(year))
    interactions, rows = datamodule.interactions, datamodule.split.train
    weeks = torch.full((num_users, num_items), -1, dtype=torch.long)
    seconds = interactions.timestamps[rows] - interactions.timestamps.min()
    weeks[torch.from_numpy(interactions.users[rows]), torch.from_numpy(interactions.items[rows])] = torch.from_numpy(
        seconds // (7 * 86400)
    ).long()
    return SideInfo(item_matrix[:, genre_columns], year, dense(users), weeks)


SCALARS = (
    "mf z",  # the retriever's score, z-scored within the user's candidates
    "mf gap",  # its distance to the user's top score
    "log rank",
    "log popularity",
    "log user activity",
    "genre affinity",  # the user's genre profile . the item's genres / the item's genre count
    "year",
    "year distance",  # |item year - mean year of the user's items|
    "item-kNN z",  # sum of cosine similarities to the user's items (all neighbours), z-scored within the candidates
    "EASE z",  # EASE (Steck 2019, l2 300 as bench/RESULTS.md chose) score, z-scored within the candidates
    "recent popularity z",  # log count of the item's ratings within +-1 week of the user's median week, z-scored
    "recent share",  # that count over the item's all-time count
)


class FeatureBuilder:
    """Features of (user, candidate) pairs from one history (the interactions the retriever was trained on)."""

    def __init__(self, history: UserItemCSR, side: SideInfo, ease_l2: float = 300.0) -> None:
        self.side = side
        self.matrix = dense_matrix(history)  # [U, I]: ML-100K, 943 x 1,682
        popularity = self.matrix.sum(0)
        activity = self.matrix.sum(1)
        self.log_popularity = _standardized(torch.log1p(popularity))
        self.log_activity = _standardized(torch.log1p(activity))
        profile = self.matrix @ side.item_genres
        self.genre_profile = profile / profile.sum(1, keepdim=True).clamp(min=1)
        self.mean_year = (self.matrix @ side.item_year) / activity.clamp(min=1)
        columns = self.matrix / self.matrix.norm(dim=0, keepdim=True).clamp(min=1e-9)
        self.item_similarity = (columns.T @ columns).fill_diagonal_(0.0)  # cosine item-kNN, all neighbours
        gram = self.matrix.T @ self.matrix + ease_l2 * torch.eye(self.matrix.shape[1])
        precision = torch.linalg.inv(gram)
        self.ease_weights = (-precision / precision.diag()).fill_diagonal_(0.0)
        weeks = torch.where(self.matrix > 0, side.train_weeks, -1)
        num_weeks = int(weeks.max()) + 1
        self.user_week = torch.tensor([int(row[row >= 0].float().median()) if (row >= 0).any() else 0 for row in weeks])
        per_week = torch.zeros(self.matrix.shape[1], num_weeks + 2)
        users, items = (weeks >= 0).nonzero(as_tuple=True)
        per_week.index_put_((items, weeks[users, items] + 1), torch.ones(len(items)), accumulate=True)
        self.item_weeks = per_week[:, :-2] + per_week[:, 1:-1] + per_week[:, 2:]  # [I, W]: ratings within +-1 week of week w
        self.popularity = popularity

    def __call__(self, users: Tensor, items: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(scalars [U, N, len(SCALARS)], crosses [U, N, C]) for candidates `items` [U, N] and retriever `scores` [U, N]."""
        ranks = torch.arange(items.shape[1], dtype=torch.float32).expand_as(scores)
        item_genres = self.side.item_genres[items]
        affinity = (item_genres * self.genre_profile[users, None, :]).sum(-1) / item_genres.sum(-1).clamp(min=1)
        history = self.matrix[users]
        year = self.side.item_year[items]
        recent = self.item_weeks[items, self.user_week[users, None].expand_as(items)]
        per_user = lambda values: values[users, None].expand_as(scores)  # noqa: E731
        scalars = torch.stack(
            [
                _within_user(scores),
                scores - scores[:, :1],
                torch.log1p(ranks),
                self.log_popularity[items],
                per_user(self.log_activity),
                affinity,
                year,
                (year - per_user(self.mean_year)).abs(),
                _within_user((history @ self.item_similarity).gather(1, items)),
                _within_user((history @ self.ease_weights).gather(1, items)),
                _within_user(torch.log1p(recent)),
                recent / self.popularity[items].clamp(min=1),
            ],
            dim=-1,
        )
        candidates = items.shape[1]
        crosses = torch.cat(
            [
                item_genres,
                self.side.user_demographics[users, None, :].expand(-1, candidates, -1),
                self.genre_profile[users, None, :].expand(-1, candidates, -1),
            ],
            dim=-1,
        )
        return scalars, crosses


def _within_user(values: Tensor) -> Tensor:
    return (values - values.mean(1, keepdim=True)) / values.std(1, keepdim=True).clamp(min=1e-6)


def dense_matrix(positives: UserItemCSR) -> Tensor:
    """The 0/1 float [U, I] matrix: a bench on ML-100K only, never a product path."""
    return positives.binary_matrix().to_dense()


def _standardized(values: Tensor) -> Tensor:
    return (values - values.mean()) / values.std().clamp(min=1e-6)


class LinearRanker(nn.Module):
    """Idea c: a weighted sum of the named scalar features (the retriever's z-score, first, starts at weight 1)."""

    def __init__(self, features: list[str], num_crosses: int) -> None:
        super().__init__()
        self.columns = [SCALARS.index(name) for name in features]
        self.weights = nn.Linear(len(features), 1)
        with torch.no_grad():
            self.weights.weight.zero_()
            self.weights.weight[0, 0] = 1.0
            self.weights.bias.zero_()

    def forward(self, scalars: Tensor, crosses: Tensor) -> Tensor:
        return self.weights(scalars[..., self.columns]).squeeze(-1)


class ResidualRanker(nn.Module):
    """Idea b: the retriever's z-score plus an MLP's correction over scalars and crosses (starts at zero)."""

    def __init__(self, features: list[str], num_crosses: int, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.columns = [SCALARS.index(name) for name in features]
        self.num_crosses = num_crosses
        self.mlp = nn.Sequential(nn.Linear(len(features) + num_crosses, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    def forward(self, scalars: Tensor, crosses: Tensor) -> Tensor:
        inputs = torch.cat([scalars[..., self.columns], crosses[..., : self.num_crosses]], dim=-1)
        return scalars[..., 0] + self.mlp(inputs).squeeze(-1)


@dataclass(frozen=True)
class CandidateSet:
    """Every ranked user's candidates, their features and which are held-out positives."""

    chunks: list[RankingChunk]
    items: Tensor  # [U, N]
    scalars: Tensor
    crosses: Tensor
    targets: Tensor  # [U, N] bool


def candidate_set(model: Recommender, heldout: UserItemCSR, exclude: UserItemCSR, features: FeatureBuilder, n: int) -> CandidateSet:
    """`model`'s top `n` unseen items (`exclude` hidden) of every user with `heldout` items, ranked as the test loop ranks."""
    heldout = replace(heldout, values=torch.ones(len(heldout.indices)))
    chunks = list(RankingChunks(heldout, exclude, chunk_size=1024))
    parts = []
    for chunk in chunks:
        items, scores = retrieve(model, chunk.users, chunk.exclude_rows, chunk.exclude_items, n)
        targets = torch.zeros(len(chunk.users), features.matrix.shape[1], dtype=torch.bool)
        targets[chunk.heldout_rows, chunk.heldout_items] = True
        parts.append((items, *features(chunk.users, items, scores), targets.gather(1, items)))
    items, scalars, crosses, targets = (torch.cat(column) for column in zip(*parts))
    return CandidateSet(chunks, items, scalars, crosses, targets)


def ndcg(candidates: CandidateSet, scores: Tensor, num_items: int) -> float:
    """NDCG@10 of the candidates ordered by `scores`, every held-out item of a user counted (found or not)."""
    ranked = candidates.items.gather(1, scores.argsort(dim=1, descending=True)[:, :K])
    metrics, start = RankingMetrics([K]), 0
    for chunk in candidates.chunks:
        metrics.update_ranked(ranked[start : start + len(chunk.users)], chunk, num_items)
        start += len(chunk.users)
    return float(metrics.compute()[f"ndcg@{K}"])


def listwise_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy over each user's candidates, averaged over the user's positives among them."""
    log_probabilities = torch.log_softmax(scores, dim=1)
    positives = targets.float()
    return -((log_probabilities * positives).sum(1) / positives.sum(1)).mean()


def fit(
    make: Callable[[], nn.Module], training: CandidateSet, valid: CandidateSet, num_items: int, lr: float, epochs: int, weight_decay: float
) -> tuple[nn.Module, float, int]:
    """Full-batch Adam on the listwise loss; the epoch with the best validation two-stage NDCG@10 is kept."""
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    has_target = training.targets.any(1)
    scalars, crosses, targets = training.scalars[has_target], training.crosses[has_target], training.targets[has_target]
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad()
        listwise_loss(model(scalars, crosses), targets).backward()
        optimizer.step()
        if epoch % 5 == 0:
            model.eval()
            with torch.no_grad():
                value = ndcg(valid, model(valid.scalars, valid.crosses), num_items)
            if value > best[0]:
                best = (value, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return model, best[0], best[1]


def ease_alone(features: FeatureBuilder, candidates: CandidateSet, num_items: int) -> float:
    """NDCG@10 of EASE's own full ranking (not limited to the candidates), as the test loop ranks: a second
    model beside the retriever, to tell a re-ranker's gain from an ensemble's."""
    metrics = RankingMetrics([K])
    for chunk in candidates.chunks:
        scores = features.matrix[chunk.users] @ features.ease_weights
        metrics.update_ranked(top_k_unseen(scores, chunk.exclude_rows, chunk.exclude_items, K), chunk, num_items)
    return float(metrics.compute()[f"ndcg@{K}"])


def ms_per_1000_users(model: Recommender, ranker: nn.Module | None, features: FeatureBuilder, candidates: CandidateSet, n: int) -> float:
    """Retrieval of the top `n`, features and re-ranking (or, without a ranker, the retriever's top 10), best of 3."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            for chunk in candidates.chunks:
                if ranker is None:
                    retrieve(model, chunk.users, chunk.exclude_rows, chunk.exclude_items, K)
                    continue
                items, scores = retrieve(model, chunk.users, chunk.exclude_rows, chunk.exclude_items, n)
                order = ranker(*features(chunk.users, items, scores)).topk(K, dim=1).indices
                items.gather(1, order)
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / len(candidates.items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: a new temporary one)")
    parser.add_argument("--candidates", type=int, default=100, help="retrieved candidates per user")
    parser.add_argument("--holdout", type=float, default=0.125, help="share of each user's training rows held out as targets")
    parser.add_argument(
        "--latest",
        action="store_true",
        help="hold out the latest rows by timestamp (default: a seeded random share, as the ratio split draws valid and test)",
    )
    parser.add_argument("--holdout-seed", type=int, default=43, help="seed of the random held-out share")
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_reranker_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = args.candidates

    retriever_run = load_trained(find_checkpoint(trained(out / "retriever", RETRIEVER)))
    holdout_name = f"retriever_minus_{'latest' if args.latest else f'random{args.holdout_seed}'}_{args.holdout:g}"
    honest_run = load_trained(find_checkpoint(trained_without_holdout(out / holdout_name, args.holdout, args.latest, args.holdout_seed)))
    catalogue = retriever_run.catalogue
    num_items = catalogue.num_items
    train_seen, honest_seen = catalogue.seen_in(["train"]), honest_run.catalogue.seen_in(["train"])
    held = dense_matrix(train_seen) - dense_matrix(honest_seen)
    users, items = (held > 0).nonzero(as_tuple=True)
    targets = UserItemCSR.from_pairs(users, items, catalogue.num_users, num_items)
    side = side_info(catalogue.num_users, num_items)

    serving_features = FeatureBuilder(train_seen, side)
    training = candidate_set(honest_run.model, targets, honest_seen, FeatureBuilder(honest_seen, side), n)
    valid = candidate_set(retriever_run.model, catalogue.seen_in(["valid"]), train_seen, serving_features, n)
    test = candidate_set(retriever_run.model, catalogue.seen_in(["test"]), catalogue.seen_in(["train", "valid"]), serving_features, n)
    num_crosses = training.crosses.shape[-1]
    print(
        f"held out {len(items):,} training rows ({args.holdout:g}, {'latest' if args.latest else 'random'}); "
        f"target recall@{n} in training candidates {training.targets.sum() / len(items):.4f}, "
        f"valid {valid.targets.sum() / catalogue.seen_in(['valid']).indices.numel():.4f}, "
        f"test {test.targets.sum() / catalogue.seen_in(['test']).indices.numel():.4f}"
    )

    retriever_alone = lambda candidates: torch.arange(n, 0, -1, dtype=torch.float32).expand_as(candidates.targets)  # noqa: E731
    rows = [
        {
            "ranker": "retriever alone",
            "val ndcg@10": ndcg(valid, retriever_alone(valid), num_items),
            "test ndcg@10": ndcg(test, retriever_alone(test), num_items),
            "epoch": "-",
            "ms/1k users": ms_per_1000_users(retriever_run.model, None, serving_features, test, n),
        }
    ]
    rows.append(
        {
            "ranker": "EASE alone (full ranking)",
            "val ndcg@10": ease_alone(serving_features, valid, num_items),
            "test ndcg@10": ease_alone(serving_features, test, num_items),
            "epoch": "-",
            "ms/1k users": float("nan"),
        }
    )
    base, recency = list(SCALARS[:8]), ["recent popularity z", "recent share"]
    variants = {
        "linear, 8 features": (lambda: LinearRanker(base, 0), 1e-2, 0.0),
        "linear, 8 + recency": (lambda: LinearRanker(base + recency, 0), 1e-2, 0.0),
        "linear, 8 + item-kNN": (lambda: LinearRanker([*base, "item-kNN z"], 0), 1e-2, 0.0),
        "linear, 8 + EASE": (lambda: LinearRanker([*base, "EASE z"], 0), 1e-2, 0.0),
        "linear, all 12": (lambda: LinearRanker(list(SCALARS), 0), 1e-2, 0.0),
        "residual MLP, all 12": (lambda: ResidualRanker(list(SCALARS), 0), 3e-3, 1e-4),
        "residual MLP, all 12 + crosses": (lambda: ResidualRanker(list(SCALARS), num_crosses), 3e-3, 1e-4),
    }
    blend = {weight: valid.scalars[..., 0] + weight * valid.scalars[..., SCALARS.index("EASE z")] for weight in (0.3, 0.5, 0.7, 1.0, 1.5)}
    weight = max(blend, key=lambda weight: ndcg(valid, blend[weight], num_items))
    test_blend = test.scalars[..., 0] + weight * test.scalars[..., SCALARS.index("EASE z")]
    rows.append(
        {
            "ranker": f"mf z + {weight:g} EASE z (weight on valid)",
            "val ndcg@10": ndcg(valid, blend[weight], num_items),
            "test ndcg@10": ndcg(test, test_blend, num_items),
            "epoch": "-",
            "ms/1k users": float("nan"),
        }
    )
    for name, (make, lr, weight_decay) in variants.items():
        ranker, val_value, epoch = fit(make, training, valid, num_items, lr, args.epochs, weight_decay)
        with torch.no_grad():
            test_value = ndcg(test, ranker(test.scalars, test.crosses), num_items)
        timing = ms_per_1000_users(retriever_run.model, ranker, serving_features, test, n)
        if isinstance(ranker, LinearRanker):
            weights = ", ".join(
                f"{SCALARS[column]} {value:+.3f}" for column, value in zip(ranker.columns, ranker.weights.weight[0].tolist())
            )
            print(f"{name} weights: {weights}")
        rows.append({"ranker": name, "val ndcg@10": val_value, "test ndcg@10": test_value, "epoch": epoch, "ms/1k users": timing})
    table = pd.DataFrame(rows)
    alone = table.iloc[0]
    table["val x"] = table["val ndcg@10"] / alone["val ndcg@10"]
    table["test x"] = table["test ndcg@10"] / alone["test ndcg@10"]
    recorded = read_run_metrics(out / "retriever")["test/ndcg@10"]
    print(
        f"\nML-100K, MF top {n} re-ranked, seed 42, {torch.get_num_threads()} torch thread(s); "
        f"retriever metrics.json test ndcg@10 {recorded:.4f}"
    )
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))


if __name__ == "__main__":
    main()
