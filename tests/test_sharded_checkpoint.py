"""Sharded checkpoints: saved by several gloo ranks through DCP, read back at any number of ranks bit-equal,
and a crafted or damaged folder refused in one line that names the file, without running what it holds."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, TensorProperties, TensorStorageMetadata

from recsys_lightning.runs.atomic import WriteFailed
from recsys_lightning.sharded.checkpoint import CheckpointRefused, load_into, load_sharded_tables, read_index, save_sharded
from recsys_lightning.sharded.ranking import RowBlocks

TABLES = {"item_embedding": (11, 8), "user_embedding": (7, 8)}  # uneven over 2 and 3 ranks
SHAPES = {f"embeddings.{name}.weight": shape for name, shape in TABLES.items()}


def dmp_rank(rank: int, world: int, store: Path, out: Path, save: bool) -> None:
    """One gloo rank of a TorchRec EmbeddingCollection sharded row-wise by DistributedModelParallel: it saves
    the model's state dict (`save`) or loads the checkpoint into it, and records its own rows (offset, tensor)
    and what the model looks up for every id, for the test to compare."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingType
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    torch.manual_seed(rank)
    configs = [
        EmbeddingConfig(name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[name]) for name, (rows, dim) in TABLES.items()
    ]
    collection = EmbeddingCollection(tables=configs, device=torch.device("meta"))
    row_wise = ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"), constraints=dict.fromkeys(TABLES, row_wise)
    )
    sharders = [EmbeddingCollectionSharder()]
    plan = planner.collective_plan(collection, sharders, dist.GroupMember.WORLD)
    model = DistributedModelParallel(collection, device=torch.device("cpu"), plan=plan, sharders=sharders)
    if save:
        save_sharded(model.state_dict(), out / "checkpoint")
    else:
        load_into(model.state_dict(), out / "checkpoint")
    state = model.state_dict()
    local = {
        name: [(shard.metadata.shard_offsets, shard.tensor.clone()) for shard in value.local_shards()] for name, value in state.items()
    }
    batch = max(rows for rows, _ in TABLES.values())  # every key has a length per example: 1 while a table has ids left
    every_id = KeyedJaggedTensor.from_lengths_sync(
        keys=list(TABLES),
        values=torch.cat([torch.arange(rows) for rows, _ in TABLES.values()]),
        lengths=torch.cat([(torch.arange(batch) < rows).long() for rows, _ in TABLES.values()]),
    )
    looked_up = {name: embeddings.values().detach().clone() for name, embeddings in model(every_id).items()}
    record = {"types": {name: type(value).__name__ for name, value in state.items()}, "local": local, "looked_up": looked_up}
    torch.save(record, out / f"{'saved' if save else 'loaded'}{rank}.pt")
    dist.barrier()  # no rank tears gloo down while another's last exchange is in flight (a C++ terminate)
    dist.destroy_process_group()


def whole_tables(records: list[dict], world: int) -> dict[str, torch.Tensor]:
    """The tables the ranks' own rows make up, each rank's rows where TorchRec's row-wise layout puts them."""
    tables = {name: torch.full(shape, torch.nan) for name, shape in SHAPES.items()}
    for rank, record in enumerate(records):
        for name, shards in record["local"].items():
            for (row, column), tensor in shards:
                assert column == 0 and row == RowBlocks(SHAPES[name][0], world).bounds(rank)[0]  # rows [r*B, (r+1)*B), B = ceil(R/W)
                tables[name][row : row + len(tensor)] = tensor
    return tables


@pytest.mark.slow
def test_dmp_tables_saved_at_two_ranks_load_bit_equal_at_one_and_three(tmp_path):
    mp.spawn(dmp_rank, args=(2, tmp_path / "store2", tmp_path, True), nprocs=2)
    saved = [torch.load(tmp_path / f"saved{rank}.pt") for rank in range(2)]
    assert set(saved[0]["types"].values()) == {"ShardedTensor"}  # TorchRec 1.8 on CPU: not DTensor
    expected = whole_tables(saved, 2)
    assert sorted(path.name for path in (tmp_path / "checkpoint").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list(tmp_path.glob(".checkpoint*"))  # the hidden folder became the checkpoint

    whole = load_sharded_tables(tmp_path / "checkpoint", SHAPES)  # one plain process
    assert whole.keys() == expected.keys() and all(torch.equal(whole[name], expected[name]) for name in SHAPES)

    mp.spawn(dmp_rank, args=(3, tmp_path / "store3", tmp_path, False), nprocs=3)  # 3 ranks, other seeds: other initial rows
    loaded = [torch.load(tmp_path / f"loaded{rank}.pt") for rank in range(3)]
    assert all(torch.equal(table, expected[name]) for name, table in whole_tables(loaded, 3).items())
    for record in loaded:  # the model itself looks up the saved rows, not only its state dict's copy
        for name, (rows, _) in TABLES.items():
            assert torch.equal(record["looked_up"][name], expected[f"embeddings.{name}.weight"][:rows])


TABLE = torch.arange(40.0).view(10, 4)
SHAPE = {"table": (10, 4), "bias": (10,)}


@pytest.fixture
def saved(tmp_path) -> Path:
    """A checkpoint written by one process (no process group): one shard file."""
    save_sharded({"table": TABLE, "bias": TABLE[:, 0].clone()}, tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def refused(folder: Path, shapes=SHAPE) -> str:
    with pytest.raises(CheckpointRefused) as caught:
        load_sharded_tables(folder, shapes)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    return message


def rewrite_metadata(folder: Path, change) -> None:
    """The test's own (trusted) edit of the index, as an attacker would write it."""
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    change(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def test_one_process_checkpoint_loads_whole_and_from_a_moved_folder(saved, tmp_path):
    loaded = load_sharded_tables(saved, SHAPE)
    assert torch.equal(loaded["table"], TABLE) and torch.equal(loaded["bias"], TABLE[:, 0])
    moved = shutil.move(saved, tmp_path / "elsewhere")
    assert torch.equal(load_sharded_tables(moved, SHAPE, {"table": (3, 7)})["table"], TABLE[3:7])


def test_saving_again_replaces_the_checkpoint_and_a_failed_save_keeps_the_previous(saved, monkeypatch):
    save_sharded({"table": TABLE + 1, "bias": TABLE[:, 0].clone()}, saved)
    assert torch.equal(load_sharded_tables(saved, SHAPE)["table"], TABLE + 1)

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("torch.distributed.checkpoint.save", cut_off)
    with pytest.raises(KeyboardInterrupt):
        save_sharded({"table": TABLE + 2, "bias": TABLE[:, 0].clone()}, saved)
    assert torch.equal(load_sharded_tables(saved, SHAPE)["table"], TABLE + 1)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(saved, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailed, match=r"checkpoint: cannot write .*the disk is full: free space there and run again$"):
        save_sharded({"table": TABLE + 2, "bias": TABLE[:, 0].clone()}, saved)
    monkeypatch.undo()
    assert torch.equal(load_sharded_tables(saved, SHAPE)["table"], TABLE)
    assert sorted(path.name for path in saved.parent.iterdir()) == ["checkpoint"]  # no hidden folder left


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_payload_in_the_index_is_refused_without_running(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (saved / ".metadata").write_bytes(pickle.dumps(Payload()))
    assert "refused global posix.system" in refused(saved) and not (tmp_path / "pwned").exists()


def test_a_pickle_payload_in_a_shard_file_is_refused_without_running(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    point_every_block_at(saved, Payload())
    assert "hold pickled objects beyond a tensor" in refused(saved) and not (tmp_path / "pwned").exists()
    (saved / "__0_0.distcp").write_bytes(pickle.dumps(Payload()) * 100)  # not even torch's zip
    assert "are not a torch record" in refused(saved) and not (tmp_path / "pwned").exists()


def test_a_tensor_larger_than_the_model_is_refused_before_reading(saved):
    message = refused(saved, {"table": (9, 4), "bias": (10,)})
    assert "'table' is [10, 4], the model's at most [9, 4]" in message


def point_every_block_at(folder: Path, stored: object) -> None:
    """The shard file replaced by torch.save(stored), and every block of the index pointed at all of it."""
    torch.save(stored, folder / "__0_0.distcp")
    length = (folder / "__0_0.distcp").stat().st_size

    def point_at_it(metadata):
        for key in metadata.storage_data:
            metadata.storage_data[key] = _StorageInfo("__0_0.distcp", 0, length)

    rewrite_metadata(folder, point_at_it)


def test_a_block_of_the_wrong_shape_is_refused(saved):
    point_every_block_at(saved, torch.zeros(3, 4))
    assert "hold (3, 4) torch.float32, not the (10, 4) torch.float32" in refused(saved)


def test_a_block_past_the_table_is_refused(saved):
    def shift(metadata):
        metadata.state_dict_metadata["table"].chunks[0] = ChunkStorageMetadata(torch.Size([12, 0]), torch.Size([10, 4]))

    rewrite_metadata(saved, shift)
    assert "a block at [12, 0] of [10, 4], not the next rows of [10, 4]" in refused(saved)


def test_bytes_past_the_end_of_a_shard_file_are_refused(saved):
    def stretch(metadata):
        for key, info in metadata.storage_data.items():
            metadata.storage_data[key] = _StorageInfo(info.relative_path, info.offset + 10**9, info.length)

    rewrite_metadata(saved, stretch)
    assert "__0_0.distcp: " in refused(saved) and "shorter than" in refused(saved)


def test_a_path_out_of_the_folder_is_refused(saved):
    def escape(metadata):
        key = MetadataIndex("table", torch.Size([0, 0]), 0)
        metadata.storage_data[key] = _StorageInfo("../../etc/passwd", 0, 10)

    rewrite_metadata(saved, escape)
    assert "names the file '../../etc/passwd', not a shard file" in refused(saved)


def test_missing_extra_and_short_shard_files_are_named(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "extra")
    shutil.copy(saved / "__0_0.distcp", tmp_path / "extra" / "__1_0.distcp")
    assert "extra/__1_0.distcp: a shard file the checkpoint's index does not name" in refused(tmp_path / "extra")
    shutil.copytree(saved, tmp_path / "short")
    os.truncate(tmp_path / "short" / "__0_0.distcp", 100)
    assert "short/__0_0.distcp: 100 bytes, shorter than" in refused(tmp_path / "short")
    (saved / "__0_0.distcp").rename(saved.parent / "__0_0.distcp")
    assert "checkpoint/__0_0.distcp: missing shard file" in refused(saved)
    (saved / ".metadata").unlink()
    assert "checkpoint/.metadata: missing" in refused(saved)


def test_another_models_checkpoint_is_refused_by_its_keys(saved):
    assert "holds the tensor 'bias', which the model has not" in refused(saved, {"table": (10, 4)})
    assert "lacks the tensor 'other' of the model" in refused(saved, {**SHAPE, "other": (3,)})


def test_the_index_reads_without_allocating_the_tables(saved):
    index = read_index(saved, SHAPE)
    assert index["table"].size == (10, 4) and [block.rows for block in index["table"].blocks] == [10]


def test_load_into_fills_a_plain_state_dict_in_one_process(saved):
    state = {"table": torch.zeros(10, 4), "bias": torch.zeros(10)}
    load_into(state, saved)
    assert torch.equal(state["table"], TABLE) and torch.equal(state["bias"], TABLE[:, 0])
    with pytest.raises(CheckpointRefused, match="'table' is \\[10, 4\\], the model's at most \\[8, 4\\]"):
        load_into({"table": torch.zeros(8, 4), "bias": torch.zeros(10)}, saved)


def test_an_index_of_dcp_classes_without_their_fields_is_refused(saved):
    original = (saved / ".metadata").read_bytes()
    module, name = Metadata.__module__.encode(), Metadata.__name__.encode()
    hollow_metadata = (
        b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name + b"\x93)\x81."
    )  # NEWOBJ, no BUILD
    (saved / ".metadata").write_bytes(hollow_metadata)
    assert "it holds no DCP Metadata" in refused(saved)

    def hollow(metadata):
        metadata.state_dict_metadata["table"] = TensorStorageMetadata.__new__(TensorStorageMetadata)

    (saved / ".metadata").write_bytes(original)
    rewrite_metadata(saved, hollow)
    assert "the tensor 'table' is not stored as a tensor" in refused(saved)

    def listed_dtype(metadata):
        metadata.state_dict_metadata["table"] = TensorStorageMetadata(TensorProperties(dtype=[]), torch.Size([10, 4]), [])

    (saved / ".metadata").write_bytes(original)
    rewrite_metadata(saved, listed_dtype)
    assert "the tensor 'table' has the dtype '[]'" in refused(saved)
