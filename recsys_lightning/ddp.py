"""Lightning's DDP strategy, told which embedding tables get sparse gradients.

`DistributedDataParallel` expects a sparse gradient only from `nn.Embedding(sparse=True)` modules. The
models' tables are plain Parameters read with `F.embedding(sparse=True)` (`models.base.gather_rows`), so
stock DDP would copy their sparse gradients into its dense buckets and fail inside backward ("Cannot
access storage of SparseTensorImpl"). Marking them lets DDP all-reduce them as sparse tensors (gloo), so
a step exchanges the batch's rows instead of whole tables, as sparse optimizers intend.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class SparseTablesDDP(DistributedDataParallel):
    """DDP expecting sparse gradients from the parameters listed in `sparse`, besides sparse nn.Embeddings."""

    def __init__(self, module: nn.Module, sparse: frozenset[int], **kwargs) -> None:
        object.__setattr__(self, "_sparse_parameters", sparse)  # read by the reducer's set-up, inside super().__init__
        super().__init__(module, **kwargs)

    def _build_params_for_reducer(self):
        parameters, expect_sparse = super()._build_params_for_reducer()
        return parameters, [expected or id(parameter) in self._sparse_parameters for parameter, expected in zip(parameters, expect_sparse)]


class SparseTablesDDPStrategy(DDPStrategy):
    """`trainer=ddp`: Lightning's DDP, wrapping the module in `SparseTablesDDP` when the model reads its
    tables with sparse gradients (`model.sparse_gradients`, set by the sparse optimizers)."""

    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        recommender = getattr(self.lightning_module, "model", None)
        sparse = (
            frozenset(id(table) for table in recommender.row_tables()) if getattr(recommender, "sparse_gradients", False) else frozenset()
        )
        device_ids = self.determine_ddp_device_ids()
        context = torch.cuda.stream(torch.cuda.Stream()) if device_ids is not None else nullcontext()  # as Lightning does
        with context:
            return SparseTablesDDP(model, sparse, device_ids=device_ids, **self._ddp_kwargs)


def leave_together(destroy: bool) -> None:
    """Every rank waits for the others at the end of a distributed run, then (`destroy`) closes its process group.

    A run's last collective (the popularity baseline's sum, after testing) can leave a gloo send in flight on a
    rank that already returned; a process exiting under it dies in a C++ terminate ("terminate called without an
    active exception"), as CI saw in tests. Waiting at a barrier, then destroying the group, drains it. A sweep
    keeps its group: the next job in the same processes reuses it (Lightning initialises only once)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    if destroy:
        dist.destroy_process_group()
