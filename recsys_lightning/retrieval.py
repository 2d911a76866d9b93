"""A model's best unseen items for a chunk of users, and a second model's scores of them: the two stages
that training (`sampler=retrieved`), `evaluate` and `recommend` share, each a whole-chunk tensor operation."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.models.base import Recommender
from recsys_lightning.ranking import top_k_unseen

MAX_SCORES = 2**27  # scores held at once when every user's candidates are retrieved (data.eval_max_scores' default)


@torch.no_grad()
def retrieve(model: Recommender, users: Tensor, exclude_rows: Tensor, exclude_items: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The model's `n` best items for `users` [U] (at most the catalogue), best first, and their scores,
    both [U, min(n, num_items)]. Excluded items, given as (row, item) coordinates, score -inf: they only
    fill the tail of a user with fewer than n other items."""
    scores = model.score_all(users)
    top = top_k_unseen(scores, exclude_rows, exclude_items, n)
    return top, scores.gather(1, top)


def retrieve_for_every_user(model: Recommender, positives: TrainingPositives, n: int) -> tuple[Tensor, Tensor]:
    """`retrieve` for all users with their training positives excluded, a chunk of users at a time so
    that at most MAX_SCORES scores are held: (items, scores), [num_users, min(n, num_items)]."""
    users = torch.arange(positives.num_users, device=positives.device)
    chunks = [retrieve(model, chunk, *positives.coordinates(chunk), n) for chunk in users.split(max(1, MAX_SCORES // positives.num_items))]
    return torch.cat([items for items, _ in chunks]), torch.cat([scores for _, scores in chunks])


@torch.no_grad()
def rerank_scores(model: Recommender, users: Tensor, candidates: Tensor, candidate_scores: Tensor) -> Tensor:
    """The re-ranker's scores [U, N] of each user's `candidates` [U, N], one `score` call for the chunk;
    -inf where the retriever had no candidate (`candidate_scores` -inf: an excluded item padding the list)."""
    return model.score(users, candidates).masked_fill(candidate_scores == -torch.inf, -torch.inf)
