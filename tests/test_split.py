import numpy as np
import pandas as pd
import pytest
import torch

from recsys_lightning.data.interactions import Interactions, latest_per_pair
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.data.split import split_interactions
from recsys_lightning.errors import ConfigError, DataError

from helpers import random_interactions


@pytest.fixture
def interactions(small_frame) -> Interactions:
    return Interactions.from_frame(small_frame)


@pytest.mark.parametrize("kind", ["ratio", "temporal", "leave_one_out"])
def test_parts_are_disjoint_and_cover_every_row(interactions, kind):
    split = split_interactions(interactions, kind, seed=1)
    rows = np.concatenate([split.train, split.valid, split.test])
    assert len(rows) == len(interactions)
    assert len(np.unique(rows)) == len(rows)
    assert set(np.unique(interactions.users[split.test])) <= set(np.unique(interactions.users[split.train]))
    assert interactions.items[rows].max() < interactions.num_items


def test_ratio_split_shares_per_user(interactions):
    # 15 interactions each: train ends at round(12.0) = 12, valid at round(13.5) = 14, so 12 / 2 / 1.
    split = split_interactions(interactions, "ratio", (0.8, 0.1, 0.1), seed=0)
    sizes = [np.bincount(interactions.users[part], minlength=interactions.num_users) for part in (split.train, split.valid, split.test)]
    assert (sizes[0] == 12).all() and (sizes[1] == 2).all() and (sizes[2] == 1).all()


def test_split_is_seeded(interactions):
    first = split_interactions(interactions, "ratio", seed=5)
    again = split_interactions(interactions, "ratio", seed=5)
    other = split_interactions(interactions, "ratio", seed=6)
    assert np.array_equal(first.test, again.test) and np.array_equal(first.valid, again.valid)
    assert not np.array_equal(first.test, other.test)


def test_leave_one_out_holds_out_latest(interactions):
    split = split_interactions(interactions, "leave_one_out")
    for user in range(interactions.num_users):
        mine = interactions.users == user
        latest = np.argsort(np.where(mine, interactions.timestamps, -np.inf))[-2:]
        assert set(split.test) & set(np.flatnonzero(mine)) == {latest[1]}
        assert set(split.valid) & set(np.flatnonzero(mine)) == {latest[0]}


def test_temporal_split_tests_on_the_future(interactions):
    split = split_interactions(interactions, "temporal")
    for user in range(interactions.num_users):
        train_times = interactions.timestamps[split.train][interactions.users[split.train] == user]
        test_times = interactions.timestamps[split.test][interactions.users[split.test] == user]
        assert train_times.max() < test_times.min()


def test_users_too_small_to_split_stay_in_train():
    frame = random_interactions(num_users=10, num_items=30, per_user=8)
    frame = frame[~((frame.user_id == 100) & (frame.index % 8 >= 2))]  # user 100 keeps 2 rows
    interactions = Interactions.from_frame(frame)
    split = split_interactions(interactions, "leave_one_out")
    assert split.train_only_users == 1
    assert (interactions.users[split.train] == 0).sum() == 2
    assert 0 not in interactions.users[split.test]


def test_bad_split_config_is_a_config_error(interactions):
    with pytest.raises(ConfigError, match="split kind"):
        split_interactions(interactions, "random")
    with pytest.raises(ConfigError, match="summing to 1"):
        split_interactions(interactions, "ratio", (0.8, 0.3, 0.1))


def test_ids_map_to_contiguous_indices_and_back(small_frame):
    interactions = Interactions.from_frame(small_frame)
    assert interactions.users.max() == interactions.num_users - 1
    raw_users = interactions.user_ids[interactions.users]
    raw_items = interactions.item_ids[interactions.items]
    assert set(zip(raw_users, raw_items)) == set(zip(small_frame.user_id, small_frame.item_id))


def test_duplicates_keep_latest_before_min_rating_applies(small_frame):
    first = small_frame.iloc[0]
    liked_then_disliked = pd.DataFrame(
        {"user_id": [first.user_id] * 2, "item_id": [first.item_id] * 2, "rating": [5.0, 1.0], "timestamp": [-2, 10**9]}
    )
    frame = pd.concat([small_frame.iloc[1:], liked_then_disliked], ignore_index=True)
    assert len(Interactions.from_frame(latest_per_pair(frame))) == len(small_frame)
    liked = Interactions.from_frame(latest_per_pair(frame), min_rating=4)
    assert len(liked) == int((small_frame.rating.iloc[1:] >= 4).sum())
    with pytest.raises(DataError, match="min_rating"):
        Interactions.from_frame(small_frame, min_rating=6)


def test_csr_coordinates_and_union():
    csr = UserItemCSR.from_pairs(torch.tensor([2, 0, 2, 0]), torch.tensor([5, 1, 3, 4]), num_users=3, num_items=6)
    assert csr.indices.tolist() == [1, 4, 3, 5]
    rows, items = csr.coordinates(torch.tensor([2, 1, 0]))
    assert rows.tolist() == [0, 0, 2, 2] and items.tolist() == [3, 5, 1, 4]
    other = UserItemCSR.from_pairs(torch.tensor([1]), torch.tensor([0]), num_users=3, num_items=6)
    assert csr.union(other).counts().tolist() == [2, 1, 2]
