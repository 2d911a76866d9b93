"""Shared-pool negatives (in-batch, a sampled pool) and the per-user full softmax against loop references.

Each reference scores every (example, candidate) pair with `model.score` one at a time and builds
each example's softmax or BPR terms by hand, so it shares nothing with the vectorised path but the model.
"""

import math

import pytest
import torch

from recsys_lightning.data.batches import TrainingBatch
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.losses import BPRLoss, Candidates, FullSoftmaxLoss, SampledSoftmaxLoss
from recsys_lightning.models import MatrixFactorization
from recsys_lightning.samplers import InBatchSampler, SharedPool, SharedPoolSampler
from recsys_lightning.scoring import score_candidates

NUM_USERS, NUM_ITEMS = 6, 12


def tiny_positives() -> TrainingPositives:
    generator = torch.Generator().manual_seed(3)
    pairs = {(u, int(i)) for u in range(NUM_USERS) for i in torch.randperm(NUM_ITEMS, generator=generator)[: 2 + u]}
    users, items = zip(*sorted(pairs))
    return TrainingPositives.from_csr(UserItemCSR.from_pairs(torch.tensor(users), torch.tensor(items), NUM_USERS, NUM_ITEMS))


def tiny_batch(positives: TrainingPositives) -> TrainingBatch:
    """Eight training pairs, users repeated, so rows are shared and pools hit other positives."""
    users, items = positives.coordinates(torch.arange(NUM_USERS))
    pick = torch.tensor([0, 1, 2, 5, 9, 10, 14, 20])
    return TrainingBatch(users=users[pick], items=items[pick], ratings=None)


def held(positives: TrainingPositives, user: int, item: int) -> bool:
    return bool(positives.contains(torch.tensor([user]), torch.tensor([item])))


def model_score(model, user: int, item: int) -> float:
    return model.score(torch.tensor([user]), torch.tensor([item])).item()


class FixedPool(SharedPoolSampler):
    """The shared-pool sampler with its draws fixed, repeats included, so a reference can list them."""

    def __init__(self, draws: list[int], alpha: float) -> None:
        super().__init__(num_negatives=len(draws), alpha=alpha)
        self.draws = draws

    def sample(self, users, positive_items, model):
        return SharedPool.of(torch.tensor(self.draws))


def scored(loss, sampler, model, positives, batch):
    sampler.bind(positives)
    sampler.reseed(0)
    candidates, _ = score_candidates(loss.candidates, model, batch, positives, sampler)
    return loss(candidates).item()


def reference_softmax(model, positives, batch, draws, log_q, temperature):
    """Mean over examples of -log softmax of the positive among itself and every draw (repeats kept)
    that is not a training positive of the example's user, each logit s / T - log q."""
    total = 0.0
    for user, item in zip(batch.users.tolist(), batch.items.tolist()):
        positive = model_score(model, user, item) / temperature - log_q(item)
        logits = [positive] + [model_score(model, user, j) / temperature - log_q(j) for j in draws if not held(positives, user, j)]
        total += -(positive - math.log(sum(math.exp(x) for x in logits)))
    return total / len(batch.users)


@pytest.mark.parametrize("alpha", [0.0, 0.75])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_shared_pool_softmax_equals_the_loop_reference(alpha, temperature):
    torch.manual_seed(0)
    positives, model = tiny_positives(), MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=4, init_std=1.0)
    batch = tiny_batch(positives)
    draws = [3, 7, 7, 0, 11, 5, 3, 3, 9]  # repeats, and items that are some users' positives
    sampler = FixedPool(draws, alpha)
    got = scored(SampledSoftmaxLoss(temperature=temperature), sampler, model, positives, batch)
    log_q = lambda item: sampler.log_probability(torch.tensor([item])).item()  # noqa: E731
    assert got == pytest.approx(reference_softmax(model, positives, batch, draws, log_q, temperature), rel=1e-5)
    uncorrected = scored(SampledSoftmaxLoss(temperature=temperature, log_q_correction=False), sampler, model, positives, batch)
    assert uncorrected == pytest.approx(reference_softmax(model, positives, batch, draws, lambda item: 0.0, temperature), rel=1e-5)


def test_in_batch_softmax_scores_every_example_against_the_batch_positives():
    torch.manual_seed(1)
    positives, model = tiny_positives(), MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=4, init_std=1.0)
    batch = tiny_batch(positives)
    sampler = InBatchSampler()
    got = scored(SampledSoftmaxLoss(), sampler, model, positives, batch)
    frequency = positives.item_counts.double() / positives.item_counts.sum()
    log_q = lambda item: math.log(frequency[item].item())  # noqa: E731
    # The pool is the batch's positives with their repeats; each example's own positive is a hit, masked.
    assert got == pytest.approx(reference_softmax(model, positives, batch, batch.items.tolist(), log_q, 1.0), rel=1e-5)


def test_shared_pool_bpr_averages_over_every_valid_draw():
    torch.manual_seed(2)
    positives, model = tiny_positives(), MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=4, init_std=1.0)
    batch = tiny_batch(positives)
    draws = [1, 1, 4, 8, 10, 2]
    got = scored(BPRLoss(), FixedPool(draws, 0.0), model, positives, batch)
    terms = [
        -math.log(1 / (1 + math.exp(-(model_score(model, u, i) - model_score(model, u, j)))))
        for u, i in zip(batch.users.tolist(), batch.items.tolist())
        for j in draws
        if not held(positives, u, j)
    ]
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_full_softmax_equals_the_loop_reference(temperature):
    """Each positive against every item its user has not trained on, itself included: the per-user
    normaliser the loss computes once must equal the per-example sum."""
    torch.manual_seed(3)
    positives, model = tiny_positives(), MatrixFactorization(NUM_USERS, NUM_ITEMS, dim=4, init_std=1.0)
    batch = tiny_batch(positives)
    got = scored(FullSoftmaxLoss(temperature=temperature), InBatchSampler(), model, positives, batch)
    everything = list(range(NUM_ITEMS))
    assert got == pytest.approx(reference_softmax(model, positives, batch, everything, lambda item: 0.0, temperature), rel=1e-5)
    assert FullSoftmaxLoss.candidates is Candidates.CATALOGUE


def test_held_matrix_agrees_with_membership_of_each_pair():
    positives = tiny_positives()
    users, items = torch.tensor([4, 0, 2, 5]), torch.tensor([11, 0, 3, 7, 9])
    expected = positives.contains(users, items.expand(len(users), -1))
    assert torch.equal(positives.held(users, items), expected) and expected.any() and not expected.all()
