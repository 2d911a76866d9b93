"""Top-K over an item table split in row blocks over gloo ranks equals ranking the whole table in one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_lightning.data.batches import RankingChunks
from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.sharded.ranking import RowBlocks, padded_chunks, sharded_top_k

NUM_USERS, NUM_ITEMS, DIM = 53, 47, 6
KS = (5, 30)  # 30 is more than a block at W = 2 (24 rows) and W = 3 (16)
CHUNK_SIZE = 5  # and one more on each next rank, so ranks rank different numbers of chunks of different sizes


def interactions(seed: int, num_items: int = NUM_ITEMS) -> tuple[UserItemCSR, UserItemCSR]:
    """(seen, held out) of each user, disjoint: 4..12 seen items and 1..5 held-out ones, a few users none."""
    generator = torch.Generator().manual_seed(seed)
    seen_users, seen_items, heldout_users, heldout_items = [], [], [], []
    for user in range(NUM_USERS):
        items = torch.randperm(num_items, generator=generator)
        num_seen, num_heldout = torch.randint(4, 13, (), generator=generator), torch.randint(0, 6, (), generator=generator)
        seen_items.append(items[:num_seen])
        heldout_items.append(items[num_seen : num_seen + num_heldout])
        seen_users.append(torch.full((int(num_seen),), user))
        heldout_users.append(torch.full((int(num_heldout),), user))

    def csr(users: list[torch.Tensor], items: list[torch.Tensor]) -> UserItemCSR:
        users, items = torch.cat(users), torch.cat(items)
        return UserItemCSR.from_pairs(users, items, NUM_USERS, num_items, values=torch.ones(len(users)))

    return csr(seen_users, seen_items), csr(heldout_users, heldout_items)


def tables(seed: int, tied: bool, num_items: int = NUM_ITEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) tables; `tied`: small integers, so many items score the same for a user."""
    generator = torch.Generator().manual_seed(seed)
    if tied:
        return (
            torch.randint(-1, 2, (NUM_USERS, DIM), generator=generator).float(),
            torch.randint(-1, 2, (num_items, DIM), generator=generator).float(),
        )
    return torch.randn(NUM_USERS, DIM, generator=generator), torch.randn(num_items, DIM, generator=generator)


def rank_in_one_process(users_table, items_table, seen, heldout, k):
    """Today's evaluation: every user's scores over the whole table, `top_k_unseen`, RankingMetrics."""
    metrics = RankingMetrics(KS, sync_on_compute=False)
    tops = {}
    for chunk in RankingChunks(heldout, seen, CHUNK_SIZE):
        scores = users_table[chunk.users] @ items_table.T
        top = top_k_unseen(scores, chunk.exclude_rows, chunk.exclude_items, k)
        metrics.update_ranked(top, chunk, NUM_ITEMS)
        tops.update({int(user): (items, scores.gather(0, items)) for user, items, scores in zip(chunk.users, top, scores)})
    return {name: float(value) for name, value in metrics.compute().items()}, tops


def ordered_reference(users_table, items_table, seen, heldout, k):
    """Each user's top k by (score descending, item index ascending), one user at a time."""
    tops = {}
    for user in torch.nonzero(heldout.counts() > 0).flatten().tolist():
        scores = users_table[user] @ items_table.T
        scores[seen.coordinates(torch.tensor([user]))[1]] = -torch.inf
        order = sorted(range(len(items_table)), key=lambda item: (-scores[item].item(), item))[:k]
        tops[user] = (torch.tensor(order), scores[order])
    return tops


def rank_on(rank, world, store, out, users_table, items_table, seen, heldout, k):
    """One gloo rank: its users in RankingChunks (as DDP evaluation shards them), its block of the item table."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    layout = RowBlocks(len(items_table), world)
    start, stop = layout.bounds(rank)
    metrics = RankingMetrics(KS)
    tops = {}
    empty = torch.zeros(0, dtype=torch.long)
    chunks = RankingChunks(heldout, seen, CHUNK_SIZE + rank, rank, world)
    for chunk in padded_chunks(chunks):
        users = empty if chunk is None else chunk.users
        rows, items = (empty, empty) if chunk is None else (chunk.exclude_rows, chunk.exclude_items)
        top, scores = sharded_top_k(users_table[users], items_table[start:stop], rows, items, k, layout)
        if chunk is not None:
            metrics.update_ranked(top, chunk, len(items_table))
            tops.update({int(user): (items, values) for user, items, values in zip(users, top, scores)})
    computed = {name: float(value) for name, value in metrics.compute().items()}
    torch.save({"metrics": computed, "tops": tops, "chunks": len(chunks)}, out / f"rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while another's last exchange is in flight (a C++ terminate)
    dist.destroy_process_group()


def ranked_at(world, tmp_path, *data):
    mp.spawn(rank_on, args=(world, tmp_path / "store", tmp_path, *data), nprocs=world)
    records = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    return records[0]["metrics"], {user: top for record in records for user, top in record["tops"].items()}, records


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
def test_metrics_over_row_sharded_items_equal_one_process(world, tmp_path):
    seen, heldout = interactions(world)
    users_table, items_table = tables(world, tied=False)
    expected_metrics, expected_tops = rank_in_one_process(users_table, items_table, seen, heldout, max(KS))
    metrics, tops, records = ranked_at(world, tmp_path, users_table, items_table, seen, heldout, max(KS))
    assert all(record["metrics"] == metrics for record in records)  # summed over the ranks, the same on each
    assert len({record["chunks"] for record in records}) == min(world, 2)  # some ranks padded with empty chunks
    assert metrics.keys() == expected_metrics.keys()
    assert all(abs(metrics[name] - expected_metrics[name]) < 1e-6 for name in metrics)
    assert tops.keys() == expected_tops.keys() and len(tops) > 40
    for user, (items, scores) in expected_tops.items():
        assert torch.equal(tops[user][0], items), user
        torch.testing.assert_close(tops[user][1], scores, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "num_items", "k"), [(2, NUM_ITEMS, NUM_ITEMS + 5), (3, 400, 10)])
def test_ties_rank_the_lower_item_first_at_every_world_size(world, num_items, k, tmp_path):
    """Scores of small integers tie often: at k = 10 a block of 134 holds more items at its k-th score than
    places left (torch.topk then picks any of them); k beyond the catalogue ranks the hidden items too (at -inf, by index)."""
    seen, heldout = interactions(7, num_items)
    users_table, items_table = tables(7, tied=True, num_items=num_items)
    expected = ordered_reference(users_table, items_table, seen, heldout, k)
    _, tops, _ = ranked_at(world, tmp_path, users_table, items_table, seen, heldout, k)
    assert tops.keys() == expected.keys()
    for user, (items, scores) in expected.items():
        assert torch.equal(tops[user][0], items), user
        assert torch.equal(tops[user][1], scores), user


def test_row_blocks_follow_torchrec_row_wise_layout():
    """TorchRec 1.8's row-wise plan of 11 rows over 3 gloo ranks put rows 0-3, 4-7, 8-10 (ShardedTensor offsets)."""
    layout = RowBlocks(11, 3)
    assert [layout.bounds(rank) for rank in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert layout.owners(torch.arange(11)).tolist() == [0] * 4 + [1] * 4 + [2] * 3
    assert [RowBlocks(4, 3).bounds(rank) for rank in range(3)] == [(0, 2), (2, 4), (4, 4)]


@pytest.fixture
def one_rank(tmp_path):
    """A gloo group of this process alone, for the fast loop (the several-rank tests above are slow)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_ranks_as_today_and_pads_to_the_whole_catalogue(one_rank):
    seen, heldout = interactions(3)
    users_table, items_table = tables(3, tied=False)
    chunk = RankingChunks(heldout, seen, 64)[0]
    queries = users_table[chunk.users]
    expected = top_k_unseen(queries @ items_table.T, chunk.exclude_rows, chunk.exclude_items, 20)
    top, scores = sharded_top_k(queries, items_table, chunk.exclude_rows, chunk.exclude_items, 20, RowBlocks(NUM_ITEMS, 1))
    assert torch.equal(top, expected) and torch.equal(scores, (queries @ items_table.T).gather(1, expected))
    top, scores = sharded_top_k(queries, items_table, chunk.exclude_rows, chunk.exclude_items, 10**9, RowBlocks(NUM_ITEMS, 1))
    assert top.shape == (len(queries), NUM_ITEMS)  # k past the catalogue: every item once, the hidden last by index
    hidden = scores == -torch.inf
    assert torch.equal(hidden.sum(1), seen.counts(chunk.users)) and all(row[mask].diff().gt(0).all() for row, mask in zip(top, hidden))
    empty = sharded_top_k(queries[:0], items_table, chunk.exclude_rows[:0], chunk.exclude_items[:0], 20, RowBlocks(NUM_ITEMS, 1))
    assert empty[0].shape == (0, 20)
