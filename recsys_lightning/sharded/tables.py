"""A model's row tables held by TorchRec: sharded row-wise over the ranks above a size, replicated below.

The model keeps its code: each table attribute (`user_factors`, `item_bias`, ...) becomes a `TableRows`
handle whose `gather(index)` is what `Recommender.rows` reads, so one row-reading path serves one process
and W ranks. Each table is one `EmbeddingCollection` (on CPU only that, not the bag version, shards
row-wise: TorchRec issue 1252). A row-wise table's optimizer is fused into the backward pass
(`apply_optimizer_in_backward`): no dense gradient, and no optimizer state beyond this rank's rows, ever
exists. A replicated table is TorchRec's data parallel (gradients all-reduced) and Lightning's optimizer
steps it with the dense parameters.

Row-wise layout (TorchRec's, checked by tests/test_sharded_training.py): with B = ceil(R / W), rank r
holds rows [r * B, min((r + 1) * B, R)).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recsys_lightning.errors import ConfigError
from recsys_lightning.seeds import stream_seed

# FBGEMM's CPU lookup of a replicated table warns in backward that it has no autograd kernel registered; its
# gradients are right (test_sharded_training.py compares them with a plain process).
warnings.filterwarnings("ignore", "fbgemm::dense_embedding_codegen_lookup_function")

# FBGEMM's fused kernels take widths in multiples of 4: a narrower table (a bias) is stored padded with zero
# columns no lookup returns, so they never get a gradient and stay zero.
WIDTH_MULTIPLE = 4

# Initial rows are drawn in blocks of this many rows, each from its own seed: a rank draws only the blocks
# over its rows, and every W gives the same initial table. Small, so that drawing adds little to a rank's
# peak (2 MiB a block at dim 64).
INIT_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class TableSpec:
    """One row table: its key (`table_key` of its parameter's name on the model), shape, and initial rows
    (N(0, init_std), or zeros), the last column zero where it is a bias (a feature table's, `zero_last_column`)."""

    name: str
    num_rows: int
    dim: int
    init_std: float
    zero_last_column: bool = False

    @property
    def stored_dim(self) -> int:
        return math.ceil(self.dim / WIDTH_MULTIPLE) * WIDTH_MULTIPLE


def table_key(parameter_name: str) -> str:
    """The TorchRec table name of the model parameter `parameter_name` (`item_features.embedding`:
    `item_features_embedding`): a table name keys a module dict and a state dict, where dots nest."""
    return parameter_name.replace(".", "_")


def row_range(total_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """The rows [first, stop) rank `rank` holds of a row-wise table of `total_rows` over `world_size` ranks."""
    block = math.ceil(total_rows / world_size)
    return min(rank * block, total_rows), min((rank + 1) * block, total_rows)


def initial_rows(seed: int, spec: TableSpec, first: int, stop: int) -> Tensor:
    """Rows [first, stop) of `spec`'s initial table, the same whichever ranks hold them."""
    if spec.init_std == 0:
        return torch.zeros(stop - first, spec.dim)
    parts = []
    for block in range(first // INIT_BLOCK_ROWS, math.ceil(stop / INIT_BLOCK_ROWS)):
        start = block * INIT_BLOCK_ROWS
        rows = min(INIT_BLOCK_ROWS, spec.num_rows - start)
        generator = torch.Generator().manual_seed(stream_seed(seed, f"table/{spec.name}", epoch=block))
        values = torch.randn(rows, spec.dim, generator=generator).mul_(spec.init_std)
        if spec.zero_last_column:
            values[:, -1] = 0
        parts.append(values[max(first - start, 0) : stop - start])
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else torch.zeros(0, spec.dim)


@contextmanager
def _quiet_torchrec() -> Iterator[None]:
    """TorchRec's planner and FBGEMM log hundreds of INFO lines (some on the root logger) and warn about their
    own deprecations while tables are sharded: none of it is the user's to act on."""
    root, library = logging.getLogger(), logging.getLogger("torchrec")
    levels = root.level, library.level
    root.setLevel(logging.ERROR)
    library.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        root.setLevel(levels[0])
        library.setLevel(levels[1])


class TableRows:
    """What a model holds in place of a table it reads by row: `gather(index)` is `table[index]`."""

    def __init__(self, tables: ShardedRowTables, name: str) -> None:
        self.tables = tables
        self.name = name

    def gather(self, index: Tensor) -> Tensor:
        return self.tables.gather(self.name, index)


class ShardedRowTables(nn.Module):
    """The model's row tables as TorchRec tables over the default process group, one collection per table.

    A table of at least `row_wise_min_rows` rows is sharded row-wise, a smaller one replicated (data
    parallel); `optimizer` (a torch optimizer class) with `optimizer_kwargs` updates them inside backward.
    Every rank must call `gather` for the same tables in the same order (each call is a collective).
    """

    def __init__(
        self,
        specs: Iterable[TableSpec],
        row_wise_min_rows: int,
        optimizer: type[torch.optim.Optimizer],
        optimizer_kwargs: Mapping[str, Any],
        seed: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        with _quiet_torchrec():
            self._shard(list(specs), row_wise_min_rows, optimizer, optimizer_kwargs, device)
        self._initialise(seed)

    def _shard(
        self,
        specs: list[TableSpec],
        row_wise_min_rows: int,
        optimizer: type[torch.optim.Optimizer],
        optimizer_kwargs: Mapping[str, Any],
        device: torch.device,
    ) -> None:
        # TorchRec loads lazily: only trainer=sharded pays its import.
        from torchrec import EmbeddingCollection, EmbeddingConfig
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.types import ShardingEnv, ShardingType
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        self.specs = {spec.name: spec for spec in specs}
        self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self.device = device
        # One collection per table: a lookup then names one key (TorchRec mishandles a data-parallel key
        # left empty beside a filled one), and tables of different widths never share a collection.
        collections = nn.ModuleDict(
            {
                spec.name: EmbeddingCollection(
                    tables=[
                        EmbeddingConfig(
                            num_embeddings=spec.num_rows, embedding_dim=spec.stored_dim, name=spec.name, feature_names=[spec.name]
                        )
                    ],
                    device=torch.device("meta"),  # nothing allocated before sharding: each rank then holds its rows only
                )
                for spec in self.specs.values()
            }
        )
        apply_optimizer_in_backward(optimizer, collections.parameters(), dict(optimizer_kwargs))
        constraints = {
            spec.name: ParameterConstraints(
                sharding_types=[ShardingType.ROW_WISE.value if spec.num_rows >= row_wise_min_rows else ShardingType.DATA_PARALLEL.value]
            )
            for spec in self.specs.values()
        }
        sharders = [EmbeddingCollectionSharder()]
        group = dist.GroupMember.WORLD
        topology = Topology(world_size=self.world_size, compute_device=device.type)
        plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(collections, sharders, group)
        self.sharded = DistributedModelParallel(
            collections, env=ShardingEnv.from_process_group(group), device=device, plan=plan, sharders=sharders, init_data_parallel=True
        )

    def _weights(self) -> dict[str, Any]:
        """Each table's weight as the sharded module holds it: a ShardedTensor (this rank's rows) or a full tensor."""
        state = self.sharded.state_dict()
        return {name: state[f"{name}.embeddings.{name}.weight"] for name in self.specs}

    @torch.no_grad()
    def _initialise(self, seed: int) -> None:
        for name, weight in self._weights().items():
            spec = self.specs[name]
            for local, first in _local_parts(weight):
                # Block by block: a rank never holds a second copy of its rows.
                for start in range(0, len(local), INIT_BLOCK_ROWS):
                    stop = min(start + INIT_BLOCK_ROWS, len(local))
                    local[start:stop, : spec.dim].copy_(initial_rows(seed, spec, first + start, first + stop))

    def gather(self, name: str, index: Tensor) -> Tensor:
        """`table[index]` of table `name` for any index shape, empty included: one lookup through TorchRec (a
        collective: every rank calls it, with or without ids)."""
        from torchrec import KeyedJaggedTensor

        flat = index.reshape(-1)
        # A rank with no ids (a padding chunk) still joins the collective: it looks up row 0 and keeps none of
        # it (TorchRec fails on an empty batch of a replicated table).
        ids = flat if len(flat) else torch.zeros(1, dtype=flat.dtype, device=flat.device)
        features = KeyedJaggedTensor.from_lengths_sync(keys=[name], values=ids, lengths=torch.ones_like(ids, dtype=torch.int32))
        dim = self.specs[name].dim
        return self.sharded.module[name](features.to(self.device))[name].values()[: len(flat), :dim].reshape(*index.shape, dim)

    def row_wise(self, name: str) -> bool:
        """Whether table `name` is split row-wise over the ranks (else each rank holds all of it)."""
        return hasattr(self._weights()[name], "local_shards")

    def local_rows(self, name: str) -> tuple[Tensor, int, int]:
        """(this rank's rows of table `name`, its first row, the table's rows): the whole table where replicated."""
        parts = _local_parts(self._weights()[name])
        if not parts:
            return torch.zeros(0, self.specs[name].dim, device=self.device), 0, self.specs[name].num_rows
        local, first = parts[0]
        return local[:, : self.specs[name].dim], first, self.specs[name].num_rows


def _local_parts(weight: Any) -> list[tuple[Tensor, int]]:
    """(rows, first row) of each shard of `weight` on this rank: one for a sharded or a replicated table."""
    if hasattr(weight, "local_shards"):
        return [(shard.tensor, shard.metadata.shard_offsets[0]) for shard in weight.local_shards()]
    return [(weight, 0)]


def local_rows(model: nn.Module, name: str) -> tuple[Tensor, int, int]:
    """(this rank's rows of `model`'s table `name`, its first row, the table's rows), sharded or not: a plain
    Parameter is the whole table at row 0. The rows held are [first, first + len(rows))."""
    table = getattr(model, name)
    if isinstance(table, TableRows):
        return table.tables.local_rows(name)
    if not isinstance(table, Tensor):
        raise ConfigError(f"{type(model).__name__} has no row table {name!r}")
    return table, 0, len(table)
