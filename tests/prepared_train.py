"""`python -m recsys_lightning.train` over in-memory shares of `SMALL_DATA`, as torchrun starts it on each rank:
`torchrun --nproc-per-node W tests/prepared_train.py data=prepared data.path=memory ...` (test_prepared_training.py).

Until a prepared folder can be written here, `open_prepared` hands every rank the same MemoryShares."""

from __future__ import annotations

import runpy

from hydra.utils import instantiate

from recsys_lightning.prepared import datamodule as prepared_datamodule
from recsys_lightning.prepared.share import ShareSource

from helpers import SMALL_DATA, MemoryShares, training_config


def memory_shares() -> ShareSource:
    single = instantiate(training_config(*SMALL_DATA).data)
    single.setup("fit")
    return MemoryShares(single)


if __name__ == "__main__":
    shares = memory_shares()  # composed before the entry point's own Hydra run begins
    prepared_datamodule.open_prepared = lambda path: shares
    runpy.run_module("recsys_lightning.train", run_name="__main__", alter_sys=True)
