"""`trainer=sharded`: Lightning's DDP strategy, after it hands the model's row tables to TorchRec.

Lightning's `ModelParallelStrategy` (it skips the DDP wrap and calls `configure_model`) was read first, not
run: it builds a DTensor device mesh for FSDP2/tensor parallelism, which TorchRec's ShardedTensor tables do
not use, and saves checkpoints through DTensor state dicts. DDP's process set-up (torchrun, SLURM, Lightning's own
spawning; gloo on CPU, NCCL on GPU) is what the tables need; this strategy only takes the tables over before
the optimizers are built, and wraps in DDP what is left of the model, if anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recsys_lightning.errors import ConfigError
from recsys_lightning.losses import Candidates
from recsys_lightning.models.features import FeatureEmbedding
from recsys_lightning.models.hybrid import HybridMF
from recsys_lightning.models.mf import MatrixFactorization
from recsys_lightning.models.ncf import NeuMF
from recsys_lightning.module import RecommenderModule
from recsys_lightning.ranges import Range
from recsys_lightning.sharded import SAVE_KEY, folders_of, new_save_id, save_id_of, table_optimizer_folder, tables_folder
from recsys_lightning.sharded.checkpoint import load_into, save_sharded
from recsys_lightning.sharded.tables import ShardedRowTables, TableRows, TableSpec, table_key

# The optimizers FBGEMM fuses into backward, by the `optimizer._target_` that names them, and the devices
# that have them (its CPU kernels have no Adam).
FUSED_OPTIMIZERS = {
    "torch.optim.SGD": ("torch.optim.SGD", ("cpu", "cuda")),
    "torch.optim.Adagrad": ("torch.optim.Adagrad", ("cpu", "cuda")),
    "torchrec.optim.RowWiseAdagrad": ("torchrec.optim.RowWiseAdagrad", ("cpu", "cuda")),
    "torch.optim.Adam": ("torch.optim.Adam", ("cuda",)),
}
# The models whose every row table is read through `Recommender.rows` and ranked through `score_item_rows`.
SHARDABLE_MODELS = (MatrixFactorization, HybridMF, NeuMF)
# Optimizer keys with no effect on a fused table step (`fused` is torch's own kernel choice).
IGNORED_KEYS = {"_target_", "_partial_", "fused", "foreach"}


class ShardedTablesStrategy(DDPStrategy):
    """DDP whose module's row tables are TorchRec's: sharded row-wise at `row_wise_min_rows` rows or more,
    replicated below."""

    def __init__(self, row_wise_min_rows: Annotated[int, Range(1)] = 100_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.row_wise_min_rows = row_wise_min_rows
        self._loading_from: tuple[Path, str | None] | None = None  # the .ckpt being restored and its save id

    def teardown(self) -> None:
        """Every rank waits for the others before Lightning tears down: TorchRec's all-to-alls over gloo can
        leave a send in flight after a rank's last lookup, and a process exiting under it ends in a C++
        terminate ("terminate called without an active exception"), seen once in CI at the end of a test."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        super().teardown()

    def setup(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        if not hasattr(module.model, "sharded_tables"):  # once: validate and test after fit find them held already
            hand_over_tables(module, self.row_wise_min_rows, self.root_device)
        if trainer.state.fn == TrainerFn.FITTING:
            super().setup(trainer)
            return
        # DDP's set-up outside fit broadcasts rank 0's parameters, which would overwrite each rank's own rows.
        self.accelerator.setup(trainer)
        self.model_to_device()
        self.setup_precision_plugin()

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """DDP over the parameters TorchRec does not hold (none for mf): its tables reduce their own gradients.
        The side features' matrices are data every rank set itself: DDP neither broadcasts nor checks them."""
        held = {id(parameter) for parameter in self.lightning_module.model.sharded_tables.parameters()}
        held_names = [name for name, parameter in model.named_parameters() if id(parameter) in held]
        if len(held_names) == len(list(model.parameters())):
            return model
        sides = [owner for owner, side in model.named_modules() if isinstance(side, FeatureEmbedding)]
        model._ddp_params_and_buffers_to_ignore = held_names + [f"{owner}.{name}" for owner in sides for name in ("features", "trained")]
        return DistributedDataParallel(model, device_ids=self.determine_ddp_device_ids(), **self._ddp_kwargs)

    def _register_ddp_hooks(self) -> None:
        if isinstance(self.model, DistributedDataParallel):
            super()._register_ddp_hooks()

    # -- checkpoints: rank 0 writes the .ckpt (the dense rest), every rank its rows of the tables beside it ----

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """The fused optimizer's state and the tables into new folders named by a fresh save id, then the .ckpt
        naming that id (replaced atomically), then the folders of earlier saves: at every moment the .ckpt on
        disk names complete folders, so a crash anywhere leaves a resumable checkpoint."""
        tables = self.lightning_module.model.sharded_tables
        save_id = new_save_id()
        state = fused_optimizer_state(tables)
        if state:  # sgd keeps none
            save_sharded(state, table_optimizer_folder(filepath, save_id))
        save_sharded(tables.sharded.state_dict(), tables_folder(filepath, save_id))
        super().save_checkpoint({**checkpoint, SAVE_KEY: save_id}, filepath, storage_options)
        if self.is_global_zero:
            current = {tables_folder(filepath, save_id), table_optimizer_folder(filepath, save_id)}
            for folder in folders_of(filepath):
                if folder not in current:
                    shutil.rmtree(folder, ignore_errors=True)

    def remove_checkpoint(self, filepath: Any) -> None:
        super().remove_checkpoint(filepath)
        if self.is_global_zero:
            for folder in folders_of(filepath):
                shutil.rmtree(folder, ignore_errors=True)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        self._loading_from = (Path(checkpoint_path), save_id_of(checkpoint, checkpoint_path))
        return checkpoint

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """The .ckpt's dense rest, then each rank's rows from the tables beside it (saved at any W: the
        reader takes the rows this rank holds, sized by the model, never by the files)."""
        module = self.lightning_module
        if not hasattr(module.model, "sharded_tables"):  # fit restores before `setup`: the tables are still on meta
            hand_over_tables(module, self.row_wise_min_rows, self.root_device)
        super().load_model_state_dict(checkpoint, strict)
        tables = module.model.sharded_tables
        path, save_id = self._loading_from
        load_into(tables.sharded.state_dict(), tables_folder(path, save_id))
        state = fused_optimizer_state(tables)
        if state:  # the accumulators too, so that a resumed run steps as the uninterrupted one
            load_into(state, table_optimizer_folder(path, save_id))


def fused_optimizer_state(tables: ShardedRowTables) -> dict[str, Any]:
    """The optimizer state fused into backward, by `<table key>/<state>` (row-wise Adagrad: one accumulator per
    row, a ShardedTensor of this rank's rows); the tensors alias the optimizer's, so loading into them restores it."""
    state = tables.sharded.fused_optimizer.state_dict()["state"]
    return {f"{key}/{name}": value for key, values in state.items() for name, value in values.items() if isinstance(value, torch.Tensor)}


def hand_over_tables(module: RecommenderModule, row_wise_min_rows: int, device: torch.device) -> ShardedRowTables:
    """Replace the model's row and feature tables (built on the meta device, never allocated) by TorchRec's, each
    attribute by a `TableRows` handle, and draw negatives by example so that they do not depend on the number of ranks."""
    check_shardable(module)
    model = module.model
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    init_std = float(module.hparams.model.get("init_std", 0.1))
    # A feature table with biases keeps them in its last column; they start at zero, as the models' own do.
    bias_last = {id(side.embedding) for side in model.modules() if isinstance(side, FeatureEmbedding) and side.bias}
    held = model.shardable_tables()
    # A one-column table is a bias: it starts at zero, as the models' own do.
    specs = [
        TableSpec(table_key(names[id(table)]), *table.shape, 0.0 if table.shape[1] == 1 else init_std, id(table) in bias_last)
        for table in held
    ]
    optimizer, kwargs = fused_optimizer(module.hparams.optimizer, device)
    tables = ShardedRowTables(specs, row_wise_min_rows, optimizer, kwargs, module.hparams.seed, device)
    for table, spec in zip(held, specs):
        owner, _, attribute = names[id(table)].rpartition(".")
        holder = model.get_submodule(owner)
        delattr(holder, attribute)
        setattr(holder, attribute, TableRows(tables, spec.name))
    # Not a submodule: the module's state dict (the .ckpt rank 0 writes) keeps the dense rest, and the tables,
    # each rank's rows, are saved and loaded by every rank beside it (`save_checkpoint`, `load_model_state_dict`).
    object.__setattr__(model, "sharded_tables", tables)
    module.sampler.by_example = True
    return tables


def check_sharded_run(module: RecommenderModule, accelerator: str) -> None:
    """trainer=sharded's refusals, made when the module is built: a refusal inside the fit would be hidden
    by Lightning's teardown, which cannot move the model's unallocated (meta) tables."""
    check_shardable(module)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    fused_optimizer(module.hparams.optimizer, torch.device("cuda" if on_gpu else "cpu"))


def check_shardable(module: RecommenderModule) -> None:
    """One line for what trainer=sharded does not train, naming the key and what to use instead."""
    model, loss = module.model, module.loss
    if not isinstance(model, SHARDABLE_MODELS):
        raise ConfigError(
            f"trainer=sharded trains model=mf, hybrid or ncf; train {type(model).__name__} with trainer=ddp optimizer=sparse_adagrad"
        )
    if loss.candidates is Candidates.CATALOGUE:
        raise ConfigError(
            "loss=full_softmax scores the whole item table every step, which trainer=sharded splits; use loss=softmax sampler=shared_pool"
        )
    if loss.predicts_ratings:
        raise ConfigError("trainer=sharded trains ranking losses; use loss=bpr, loss=bce or loss=softmax")


def fused_optimizer(config: dict[str, Any], device: torch.device) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and arguments FBGEMM fuses into backward, from `optimizer=`'s config."""
    target = config["_target_"]
    if target not in FUSED_OPTIMIZERS:
        raise ConfigError(f"trainer=sharded updates tables with optimizer=sgd, sparse_adagrad, rowwise_adagrad or adam (GPU), not {target}")
    name, devices = FUSED_OPTIMIZERS[target]
    if device.type not in devices:
        raise ConfigError(
            f"{target} has no fused table update on {device.type} (FBGEMM); use optimizer=sparse_adagrad, rowwise_adagrad or sgd"
        )
    kwargs = {key: value for key, value in config.items() if key not in IGNORED_KEYS}
    for key in ("initial_accumulator_value", "momentum", "lr_decay"):
        if kwargs.pop(key, 0):
            raise ConfigError(f"trainer=sharded's fused table update has no optimizer.{key}; set it to 0")
    if "betas" in kwargs:
        kwargs["beta1"], kwargs["beta2"] = kwargs.pop("betas")
    module_name, _, class_name = name.rpartition(".")
    optimizer = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    return optimizer, kwargs
