import pytest
import torch

from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.ranges import constructor_rules
from recsys_lightning.samplers import HardNegativeSampler, InBatchSampler, PopularitySampler, SharedPoolSampler, UniformSampler


def positives(num_users=50, num_items=80, seed=0) -> UserItemCSR:
    """Random positives, including a user holding all items but one and a user with none."""
    generator = torch.Generator().manual_seed(seed)
    users, items = [], []
    for user in range(num_users):
        count = {0: num_items - 1, 1: 0}.get(user, int(torch.randint(1, num_items // 2, (1,), generator=generator)))
        chosen = torch.randperm(num_items, generator=generator)[:count]
        users.append(torch.full((count,), user))
        items.append(chosen)
    return UserItemCSR.from_pairs(torch.cat(users), torch.cat(items), num_users, num_items)


def bound_sampler(csr: UserItemCSR, num_negatives=3, seed=0, kind=UniformSampler, **options):
    sampler = kind(num_negatives=num_negatives, **options)
    sampler.bind(TrainingPositives.from_csr(csr))
    sampler.reseed(seed)
    return sampler


class ItemIndexModel:
    """Scores an item by its index, so the hardest negative is the largest index."""

    def score(self, users, items):
        return items.float()


@pytest.mark.parametrize("kind", [UniformSampler, PopularitySampler, HardNegativeSampler])
def test_sampler_never_returns_training_positive(kind):
    csr = positives()
    known = {(u, i) for u in range(csr.num_users) for i in csr.indices[csr.indptr[u] : csr.indptr[u + 1]].tolist()}
    sampler = bound_sampler(csr, num_negatives=5, kind=kind)
    for _ in range(200):
        users = torch.randint(0, csr.num_users, (256,))
        negatives = sampler.sample(users, users, model=ItemIndexModel())
        assert negatives.shape == (256, 5)
        assert ((negatives >= 0) & (negatives < csr.num_items)).all()
        pairs = zip(users.repeat_interleave(5).tolist(), negatives.flatten().tolist())
        assert not any(pair in known for pair in pairs)


def test_user_with_one_free_item_always_gets_it():
    csr = positives()
    free_item = (set(range(csr.num_items)) - set(csr.indices[: csr.indptr[1]].tolist())).pop()
    negatives = bound_sampler(csr).sample(torch.zeros(100, dtype=torch.long), None, None)
    assert (negatives == free_item).all()


def test_negatives_are_uniform_over_unseen_items():
    csr = positives()
    user = 7
    seen = set(csr.indices[csr.indptr[user] : csr.indptr[user + 1]].tolist())
    unseen = sorted(set(range(csr.num_items)) - seen)
    draws = bound_sampler(csr, num_negatives=100).sample(torch.full((2000,), user), None, None).flatten()
    counts = torch.bincount(draws, minlength=csr.num_items).double()
    assert counts[sorted(seen)].sum() == 0
    expected = len(draws) / len(unseen)
    chi_square = ((counts[unseen] - expected) ** 2 / expected).sum().item()
    degrees = len(unseen) - 1
    # chi-square with d degrees of freedom: mean d, sd sqrt(2d); 5 sd is a one-in-millions false alarm.
    assert chi_square < degrees + 5 * (2 * degrees) ** 0.5


def test_same_seed_same_negatives_and_new_seed_new_ones():
    csr = positives()
    users = torch.randint(0, csr.num_users, (500,))
    first = bound_sampler(csr, seed=3).sample(users, None, None)
    again = bound_sampler(csr, seed=3).sample(users, None, None)
    other = bound_sampler(csr, seed=4).sample(users, None, None)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_num_negatives_must_be_positive():
    rule = constructor_rules("recsys_lightning.samplers.UniformSampler")["num_negatives"]
    assert (rule.accepts(1), rule.accepts(0), rule.accepts(1.5), str(rule)) == (True, False, False, "an integer >= 1")


def test_popularity_negatives_follow_count_to_the_alpha():
    csr = positives(num_users=60, num_items=40, seed=2)
    sampler = bound_sampler(csr, num_negatives=200, kind=PopularitySampler, alpha=0.75)
    user = 1  # holds no positives, so every item is allowed
    draws = sampler.sample(torch.full((500,), user), None, None).flatten()
    weights = csr.counts_per_item().double().pow(0.75)
    expected = weights / weights.sum() * len(draws)
    observed = torch.bincount(draws, minlength=csr.num_items).double()
    used = expected > 5
    chi_square = ((observed[used] - expected[used]) ** 2 / expected[used]).sum().item()
    degrees = int(used.sum()) - 1
    assert chi_square < degrees + 5 * (2 * degrees) ** 0.5
    # And it is not uniform: most and least popular items are drawn in the ratio of their weights.
    top, bottom = weights.argmax(), weights.argmin()
    assert (observed[top] / observed[bottom]).item() == pytest.approx((weights[top] / weights[bottom]).item(), rel=0.15)
    assert (weights[top] / weights[bottom]).item() > 2


def test_popularity_sampler_falls_back_when_positives_hold_most_mass():
    csr = positives()
    free_item = (set(range(csr.num_items)) - set(csr.indices[: csr.indptr[1]].tolist())).pop()
    sampler = bound_sampler(csr, kind=PopularitySampler, max_rounds=2)
    assert (sampler.sample(torch.zeros(50, dtype=torch.long), None, None) == free_item).all()


def test_in_batch_pool_is_the_batch_positives_counted():
    sampler = InBatchSampler()
    sampler.bind(TrainingPositives.from_csr(positives()))
    pool = sampler.sample(torch.zeros(6, dtype=torch.long), torch.tensor([5, 3, 5, 9, 5, 3]), None)
    assert pool.items.tolist() == [3, 5, 9] and pool.counts.tolist() == [2, 3, 1]


def test_shared_pool_draws_its_size_in_proportion_to_count_power_alpha():
    csr = positives()
    sampler = bound_sampler(csr, num_negatives=20_000, kind=SharedPoolSampler, alpha=1.0)
    pool = sampler.sample(torch.zeros(3, dtype=torch.long), None, None)
    assert pool.counts.sum().item() == 20_000 and len(pool.items) == len(set(pool.items.tolist()))
    observed = torch.zeros(csr.num_items).index_add_(0, pool.items, pool.counts.float()) / 20_000
    expected = torch.bincount(csr.indices, minlength=csr.num_items).float()
    assert torch.allclose(observed, expected / expected.sum(), atol=0.01)
    assert bound_sampler(csr, num_negatives=7, kind=SharedPoolSampler, seed=4).sample(None, None, None).counts.sum() == 7


def test_hard_sampler_keeps_the_best_scored_candidate():
    csr = positives()
    users = torch.randint(2, csr.num_users, (400,))
    hard = bound_sampler(csr, num_negatives=2, kind=HardNegativeSampler, candidates=8).sample(users, None, ItemIndexModel())
    uniform = bound_sampler(csr, num_negatives=2).sample(users, None, None)
    # The max of 8 uniform draws sits near the top of the catalogue; one draw sits near the middle.
    assert hard.double().mean() > uniform.double().mean() + 0.25 * csr.num_items
