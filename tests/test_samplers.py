import pytest
import torch

from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.samplers import UniformSampler


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


def bound_sampler(csr: UserItemCSR, num_negatives=3, seed=0) -> UniformSampler:
    sampler = UniformSampler(num_negatives=num_negatives)
    sampler.bind(csr)
    sampler.reseed(seed)
    return sampler


def test_sampler_never_returns_training_positive():
    csr = positives()
    known = {(u, i) for u in range(csr.num_users) for i in csr.indices[csr.indptr[u] : csr.indptr[u + 1]].tolist()}
    sampler = bound_sampler(csr, num_negatives=5)
    for _ in range(200):
        users = torch.randint(0, csr.num_users, (256,))
        negatives = sampler.sample(users, users, model=None)
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
    with pytest.raises(ValueError, match="num_negatives"):
        UniformSampler(num_negatives=0)
