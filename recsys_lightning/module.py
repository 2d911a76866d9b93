"""The LightningModule: trains a model with a loss and a sampler, and evaluates by full ranking."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import Metric

from recsys_lightning.data.batches import RankingChunk, TrainingBatch
from recsys_lightning.data.positives import TrainingPositives
from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.errors import ConfigError
from recsys_lightning.losses import Candidates, RankingLoss
from recsys_lightning.metrics import CatalogueMetrics, PredictionMetric, RankingMetrics
from recsys_lightning.models.base import Recommender, build_recommender
from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.runs.checkpoint_file import CATALOGUE_KEY, FORMAT_KEY, FORMAT_VERSION
from recsys_lightning.samplers import NegativeSampler
from recsys_lightning.scoring import score_candidates
from recsys_lightning.seeds import stream_seed
from recsys_lightning.sharded.evaluation import held_ranking

# A closed-form model has no optimizer by design (configure_optimizers returns None): nothing to warn about.
warnings.filterwarnings("ignore", "`LightningModule.configure_optimizers` returned `None`")


class RecommenderModule(pl.LightningModule):
    """Trains any `Recommender` with any loss and negative sampler, all built from config dicts.

    Taking configs rather than objects lets `save_hyperparameters` record plain data, and the
    checkpoint rebuild the same model with no pickled objects. `data` is what the DataModule's
    `setup` produced; the module owns the training positives from it (on its own device), and saves
    the data's `Catalogue` in every checkpoint, so serving needs nothing but the checkpoint.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        model: dict[str, Any],
        loss: dict[str, Any],
        sampler: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        ks: Sequence[int] = (10, 20),
        seed: int = 0,
        data: TrainingData | None = None,
        tables_elsewhere: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["data", "tables_elsewhere"], logger=False)
        self.data = data
        # trainer=sharded holds the row tables in TorchRec, each rank its rows: the model's own are never allocated
        # (nor, until build_module has it accepted, its dense rest: `sharded.dense.build_dense_parts`).
        with torch.device("meta") if tables_elsewhere else nullcontext():
            self.model: Recommender = build_recommender(model, num_users, num_items)
        # A closed-form model has no optimizer: its one training step fits it (`fit_closed_form`).
        self.automatic_optimization = not isinstance(self.model, ClosedFormRecommender)
        self.loss: RankingLoss = instantiate(loss)
        self.sampler: NegativeSampler = instantiate(sampler)
        self.val_metrics = RankingMetrics(ks)
        self.val_predictions = nn.ModuleList([kind() for kind in self.loss.prediction_metrics])
        self.test_metrics = RankingMetrics(ks)
        self.test_catalogue = CatalogueMetrics(ks, num_items)
        self.test_predictions = nn.ModuleList([kind() for kind in self.loss.prediction_metrics])
        self.positives: TrainingPositives | None = None
        self.explicit_negatives: Tensor | None = None
        # The epoch's summed loss; none when a resumed run starts by ending an epoch it trained no batch of.
        self._epoch_loss_sum: Tensor | None = None
        self._epoch_samples = 0
        # trainer=sharded: this epoch's evaluation chunks, ranked together at its end (`_rank_held`).
        self._held_chunks: list[tuple[RankingChunk, int]] = []
        if data is not None and self.loss.predicts_ratings:  # before any training: a run without ratings is refused here
            if data.ratings_missing:
                loss_name = type(self.loss).__name__
                raise ConfigError(f"{loss_name} predicts ratings, but {data.ratings_missing}, or train a ranking loss such as loss=bpr")
            self.model.set_global_mean(data.mean_rating)  # a checkpoint's own value replaces it when one is loaded
        if data is not None:
            training = data.positives.csr
            # Models take tensors, never the data's tables: each side's features as their row-mean matrix.
            sides = (data.item_features, data.user_features)
            item_features, user_features = (None if table is None else table.mean_matrix() for table in sides)
            self.model.set_features(item_features, user_features, data.catalogue.popularity, training.counts())

    # -- data: what setup() produced, on this module's device ---------------------------------------

    def setup(self, stage: str) -> None:
        if self.data is None:
            raise ConfigError("RecommenderModule has no training data: build it with build_module(cfg, datamodule.training_data)")
        if stage == "fit" and not self.automatic_optimization and self.trainer.world_size > 1:  # DDP refuses a model with no parameters
            raise ConfigError(f"model {type(self.model).__name__} fits in closed form, in one process: train it without trainer=ddp")
        counts = self.data.positives.item_counts.double()
        # Self-information -log2 p(i) with p(i) the share of users holding item i; unseen items count as one user.
        self.register_buffer("item_self_information", -torch.log2(counts.clamp(min=1) / self.model.num_users), persistent=False)

    def on_fit_start(self) -> None:
        self._bind_training_data()

    def _bind_training_data(self) -> None:
        """The training positives and explicit negatives on this module's device, lent to the sampler."""
        self.positives = self.data.positives.to(self.device)
        self.sampler.bind(self.positives)
        explicit = self.data.explicit_negatives
        use_explicit = self.loss.uses_explicit_negatives and len(explicit) > 0
        self.explicit_negatives = explicit.to(self.device) if use_explicit else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
        checkpoint[CATALOGUE_KEY] = self.data.catalogue.to_state()

    # -- training -------------------------------------------------------------------------------

    def batch_loss(self, batch: TrainingBatch) -> Tensor:
        """The training objective of one batch: the loss over its scored candidates plus the weighted penalty.

        Callable outside a Trainer too (benchmarks, tests): the training data is bound on first use.
        """
        if self.positives is None:
            self._bind_training_data()
        scored, penalty = score_candidates(self.loss.candidates, self.model, batch, self.positives, self.sampler, self.explicit_negatives)
        return self.loss(scored) + self.loss.l2 * penalty

    def on_train_epoch_start(self) -> None:
        # Everything random in an epoch (negatives, dropout) derives from (seed, rank, epoch) alone, so
        # a run resumed at an epoch boundary replays exactly what the uninterrupted run did.
        # Negatives drawn by example (trainer=sharded) take no rank: the same at any number of ranks.
        seed, rank, epoch = self.hparams.seed, 0 if self.sampler.by_example else self.global_rank, self.current_epoch
        self.sampler.reseed(stream_seed(seed, "negatives", rank, epoch))
        torch.manual_seed(stream_seed(seed, "dropout", rank, epoch))
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_samples = 0

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            return self.fit_closed_form()
        loss = self.batch_loss(batch)
        # Summed here and logged once per epoch: a `self.log` per step costs more than a small step.
        self._epoch_loss_sum += loss.detach() * len(batch)
        self._epoch_samples += len(batch)
        return loss

    def fit_closed_form(self) -> None:
        """Fit a closed-form model from every training positive, as one step; training stops after this epoch's validation."""
        self.model.fit(self.positives.csr.binary_matrix())
        self.optimizers().step()  # a no-op that counts the fit as a step: Lightning checkpoints nothing before one
        self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if self._epoch_loss_sum is not None:
            self.log("train/loss", self._epoch_loss_sum / max(self._epoch_samples, 1), prog_bar=True, sync_dist=True)
        self._epoch_loss_sum = None

    # -- evaluation: full ranking of the catalogue (or the chunk's candidates), chunk by chunk ------------------------

    def validation_step(self, chunk: RankingChunk, batch_idx: int) -> None:
        if hasattr(self.model, "sharded_tables"):
            self._held_chunks.append((chunk, batch_idx))
            return
        scores = self.model.score_all(chunk.users)
        chunk_seed = stream_seed(self.hparams.seed, "validation", self.global_rank, batch_idx)
        for metric in self.val_predictions:  # before ranking: ranking overwrites the scores it hides
            metric.update(scores, chunk, chunk_seed)
        self._rank(scores, chunk, self.val_metrics)

    def test_step(self, chunk: RankingChunk, batch_idx: int) -> None:
        if hasattr(self.model, "sharded_tables"):
            self._held_chunks.append((chunk, batch_idx))
            return
        scores = self.model.score_all(chunk.users)
        chunk_seed = stream_seed(self.hparams.seed, "test", self.global_rank, batch_idx)
        for metric in self.test_predictions:  # before ranking, as in validation_step
            metric.update(scores, chunk, chunk_seed)
        top_items = self._rank(scores, chunk, self.test_metrics)
        # A K beyond what a user may be shown (eval.candidates=cold's few new items) ends in hidden items, at -inf.
        self.test_catalogue.update(top_items, self.item_self_information, shown=scores.gather(1, top_items) > -torch.inf)

    def _rank(self, scores: Tensor, chunk: RankingChunk, metrics: RankingMetrics) -> Tensor:
        """Hide each user's known items (and items not among the chunk's candidates), take the top K of the
        chunk's scores, count held-out hits."""
        top_items = top_k_unseen(scores, chunk.exclude_rows, chunk.exclude_items, metrics.max_k, chunk.candidates)
        metrics.update_ranked(top_items, chunk, self.model.num_items)
        return top_items

    def _rank_held(
        self, stage: str, metrics: RankingMetrics, predictions: nn.ModuleList, catalogue: CatalogueMetrics | None = None
    ) -> None:
        """trainer=sharded: rank the epoch's chunks now, all ranks together (each lookup is a collective, and
        ranks hold different numbers of chunks): what the steps do in one process."""
        if not hasattr(self.model, "sharded_tables"):
            return

        def predict(scores: Tensor, chunk: RankingChunk, batch_idx: int) -> None:
            for metric in predictions:
                metric.update(scores, chunk, stream_seed(self.hparams.seed, stage, self.global_rank, batch_idx))

        def predict_pairs(model: Recommender, entry: tuple[RankingChunk, int] | None) -> None:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            for metric in predictions:
                users = items = empty  # a padding chunk: the same lookups, of nothing
                if entry is not None:
                    chunk, batch_idx = entry
                    seed = stream_seed(self.hparams.seed, stage, self.global_rank, batch_idx)
                    rows, positives, negatives = metric.pairs_of(chunk, seed, model.num_items)
                    users, items = chunk.users[rows].repeat(2), torch.cat([positives, negatives])
                scores = model.score(users, items)
                if entry is not None:
                    metric.update_scored(scores[: len(rows)], scores[len(rows) :])

        chunks, self._held_chunks = self._held_chunks, []
        pairs = predict_pairs if len(predictions) else None
        for chunk, _, top_items, shown in held_ranking(self.model, chunks, metrics.max_k, predict, pairs):
            metrics.update_ranked(top_items, chunk, self.model.num_items)
            if catalogue is not None:
                catalogue.update(top_items, self.item_self_information, shown=shown)

    def on_validation_epoch_end(self) -> None:
        self._rank_held("validation", self.val_metrics, self.val_predictions)
        values = _computed("val", self.val_metrics)
        for metric in self.val_predictions:
            self._log_histograms(metric)
            values |= _computed("val", metric)
        # Re-validating the best checkpoint after fit must not add a point to the training curves.
        self.log_dict(values, logger=self.trainer.state.fn == "fit", sync_dist=True)  # equal on every rank already

    def on_test_epoch_end(self) -> None:
        self._rank_held("test", self.test_metrics, self.test_predictions, self.test_catalogue)
        values = _computed("test", self.test_metrics) | _computed("test", self.test_catalogue)
        for metric in self.test_predictions:
            values |= _computed("test", metric)
        self.log_dict(values, sync_dist=True)

    def _log_histograms(self, metric: PredictionMetric) -> None:
        if self.trainer.state.fn != "fit":
            return
        for name, values in metric.histograms().items():
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger) and len(values):
                    logger.experiment.add_histogram(f"val/{name}", values, self.global_step)

    # -- optimisation -------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if not self.automatic_optimization:
            return None  # a closed-form model has no parameters to optimise
        self._check_sparse_optimizer()
        # A table whose optimizer runs inside backward (trainer=sharded) is not this optimizer's.
        # A replicated TorchRec table (held apart from the module: `sharded_tables`) is stepped here, with the dense parameters.
        held = self.model.sharded_tables.parameters() if hasattr(self.model, "sharded_tables") else ()
        parameters = [parameter for parameter in (*self.parameters(), *held) if not hasattr(parameter, "_in_backward_optimizers")]
        if not parameters:
            return None
        optimizer = instantiate(dense_step_optimizer(self.hparams.optimizer, parameters))(parameters)
        if not self.hparams.scheduler:
            return optimizer
        lightning_options = dict(self.hparams.scheduler)
        scheduler = instantiate(lightning_options.pop("scheduler"))(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning_options}}

    def _check_sparse_optimizer(self) -> None:
        """SparseAdam fails on its first step, deep in torch, if any gradient is dense: say why up front."""
        if not self.hparams.optimizer["_target_"].endswith("SparseAdam"):
            return
        row_tables = {id(table) for table in self.model.row_tables()}
        dense = [name for name, parameter in self.named_parameters() if id(parameter) not in row_tables]
        if dense:
            raise ConfigError(
                f"optimizer=sparse_adam needs every parameter to be an embedding table, but {type(self.model).__name__} "
                f"also has {dense[0]} (and {len(dense) - 1} more); use optimizer=sparse_adagrad"
            )
        if not self.model.sparse_gradients:
            raise ConfigError("optimizer=sparse_adam needs model.sparse_gradients=true")
        if self.loss.candidates is Candidates.CATALOGUE:
            raise ConfigError("optimizer=sparse_adam cannot train loss=full_softmax: it reads the whole item table (dense gradient)")


def _computed(stage: str, metric: Metric) -> dict[str, Tensor]:
    values = {f"{stage}/{name}": value.float() for name, value in metric.compute().items()}
    metric.reset()
    return values


ROW_WISE_ADAGRAD = "torchrec.optim.RowWiseAdagrad"
# The arguments torchrec's RowWiseAdagrad and torch's Adagrad share (and _partial_, which instantiate reads).
ADAGRAD_KEYS = ("_partial_", "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize")


def dense_step_optimizer(config: dict[str, Any], parameters: list[nn.Parameter]) -> dict[str, Any]:
    """The optimizer config Lightning steps `parameters` with. Row-wise Adagrad (trainer=sharded's default)
    keeps one accumulator per row of a table and has no step for a vector, such as an MLP's bias: where one
    is among them (hybrid's and ncf's dense layers) they take Adagrad's step with the same arguments, while
    the tables FBGEMM updates in backward keep the row-wise one. MF has only tables, and keeps it."""
    if config["_target_"] != ROW_WISE_ADAGRAD or all(parameter.dim() >= 2 for parameter in parameters):
        return config
    return {"_target_": "torch.optim.Adagrad", **{key: config[key] for key in ADAGRAD_KEYS if key in config}}
