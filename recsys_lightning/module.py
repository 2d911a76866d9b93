"""The LightningModule: glues model, loss, sampler and optimiser, and evaluates by full ranking."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError

from recsys_lightning.errors import ConfigError, TrainingDiverged
from recsys_lightning.losses import RankingLoss, ScoredCandidates
from recsys_lightning.metrics import CatalogueMetrics, RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.ranking import hits, top_k_unseen
from recsys_lightning.samplers import NegativeSampler
from recsys_lightning.serving.catalogue import Catalogue
from recsys_lightning.serving.checkpoint import CATALOGUE_KEY

NONFINITE_CHECK_EVERY = 50  # training steps between checks of the loss (one host sync each)


class RecommenderModule(pl.LightningModule):
    """Trains any `Recommender` with any loss and negative sampler, all built from config dicts.

    Taking configs rather than objects lets `save_hyperparameters` record plain data, so
    `RecommenderModule.load_from_checkpoint(path)` rebuilds the same model with no pickled objects.
    Each checkpoint also carries the data's `Catalogue` (ids, seen items, popularity, titles), so
    serving needs nothing but the checkpoint.
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.model: Recommender = instantiate(model, num_users=num_users, num_items=num_items)
        self.loss: RankingLoss = instantiate(loss)
        self.sampler: NegativeSampler = instantiate(sampler)
        self.val_metrics = RankingMetrics(ks)
        self.test_metrics = RankingMetrics(ks)
        self.test_catalogue = CatalogueMetrics(ks, num_items)
        self.val_bce, self.val_accuracy = MeanMetric(), MeanMetric()
        self.val_rmse, self.val_mae = MeanSquaredError(squared=False), MeanAbsoluteError()
        self._val_errors: list[Tensor] = []
        self.register_buffer("explicit_negatives", None, persistent=False)
        self.catalogue: Catalogue | None = None  # from the DataModule at setup, saved in every checkpoint

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.catalogue is None:  # setup runs for fit, validate and test alike
            self.catalogue = Catalogue.from_datamodule(datamodule)
        counts = datamodule.train_positives.counts_per_item().double()
        # Self-information -log2 p(i) with p(i) the share of users holding item i; unseen items count as one user.
        self.register_buffer("item_self_information", -torch.log2(counts.clamp(min=1) / self.model.num_users), persistent=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CATALOGUE_KEY] = self.catalogue.to_state()

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.sampler.bind(datamodule.train_positives.to(self.device))
        explicit = getattr(datamodule, "explicit_negatives", None)
        use_explicit = self.loss.pointwise and explicit is not None and len(explicit) > 0
        self.explicit_negatives = explicit.to(self.device) if use_explicit else None

    def on_train_epoch_start(self) -> None:
        # Everything random in an epoch (negatives, dropout) derives from (seed, rank, epoch) alone, so
        # a run resumed at an epoch boundary replays exactly what the uninterrupted run did.
        epoch_seed = self.hparams.seed * 1_000_003 + (self.global_rank << 32) + self.current_epoch + 1
        self.sampler.reseed(epoch_seed)
        torch.manual_seed(epoch_seed)
        self._epoch_start, self._epoch_samples = time.perf_counter(), 0
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._first_bad_loss = torch.zeros((), device=self.device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        users, positives = batch["users"], batch["items"]
        if self.loss.full_catalogue:
            candidates, penalty = self._score_catalogue(users, positives)
        else:
            candidates, penalty = self._score_sampled(users, positives, batch.get("ratings"))
        loss = self.loss(candidates) + self.loss.l2 * penalty
        # Summed here and logged once per epoch: a `self.log` per step costs more than a small step.
        self._epoch_loss_sum += loss.detach() * len(users)
        self._epoch_samples += len(users)
        # Recorded on the device (no host sync per step) and checked every few steps.
        first_bad = (self._first_bad_step < 0) & ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(first_bad, batch_idx, self._first_bad_step)
        self._first_bad_loss = torch.where(first_bad, loss.detach(), self._first_bad_loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        last_of_epoch = batch_idx + 1 == self.trainer.num_training_batches
        if ((batch_idx + 1) % NONFINITE_CHECK_EVERY == 0 or last_of_epoch) and self._first_bad_step >= 0:
            self._stop_on_nonfinite_loss(batch_idx)

    def _stop_on_nonfinite_loss(self, batch_idx: int) -> None:
        """Raise before this epoch's validation, so no checkpoint of the broken weights is written."""
        written = [callback.last_model_path or callback.best_model_path for callback in self.trainer.checkpoint_callbacks]
        kept = max((path for path in written if path and os.path.exists(path)), key=os.path.getmtime, default="")
        bad_batch = int(self._first_bad_step)
        global_step = self.global_step - 1 - (batch_idx - bad_batch)  # global_step already counts this batch
        raise TrainingDiverged(
            f"the loss became {self._first_bad_loss.item()} at epoch {self.current_epoch}, batch {bad_batch} "
            f"(global step {global_step}); training stopped"
            + (f" and the last good checkpoint {kept} is kept" if kept else " before any checkpoint was written")
            + ". Lower optimizer.lr, set trainer.gradient_clip_val (e.g. 1.0) or raise loss.l2"
        )

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self.log("train/loss", self._epoch_loss_sum / max(self._epoch_samples, 1), prog_bar=True, sync_dist=True)
        self.log("train/samples_per_second", self._epoch_samples / seconds, sync_dist=True)

    def _score_sampled(self, users: Tensor, positives: Tensor, ratings: Tensor | None) -> tuple[ScoredCandidates, Tensor]:
        negatives = self.sampler.sample(users, positives, self.model)
        items = torch.cat([positives.unsqueeze(1), negatives], 1)
        scores, penalty = self.model.score_with_penalty(users, items)
        log_q = self.sampler.log_probability(items)
        labelled_negative = None
        if self.explicit_negatives is not None:  # as many explicit negatives as positives, drawn at random
            drawn = torch.randint(len(self.explicit_negatives), (len(users),), generator=self.sampler.generator, device=users.device)
            pairs = self.explicit_negatives[drawn]
            labelled_negative = self.model.score(pairs[:, 0], pairs[:, 1])
        candidates = ScoredCandidates(
            positive=scores[:, 0],
            negative=scores[:, 1:],
            negative_valid=self.sampler.valid_negatives(users, negatives),
            positive_log_q=None if log_q is None else log_q[:, 0],
            negative_log_q=None if log_q is None else log_q[:, 1:],
            ratings=ratings,
            labelled_negative=labelled_negative,
        )
        return candidates, penalty

    def _score_catalogue(self, users: Tensor, positives: Tensor) -> tuple[ScoredCandidates, Tensor]:
        """Every item is a candidate; the user's other training positives are hidden from the softmax."""
        positive_scores, penalty = self.model.score_with_penalty(users, positives)
        scores = self.model.score_all(users)
        rows, items = self.sampler.training_positives_of(users)
        others = items != positives[rows]
        scores = scores.index_put((rows[others], items[others]), torch.tensor(-torch.inf, device=scores.device))
        return ScoredCandidates(positive=positive_scores, negative=scores), penalty

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        scores = self.model.score_all(batch["users"])
        if self.loss.predicts_ratings:
            self._update_rating_errors(scores, batch)
        if self.loss.pointwise:
            self._update_pointwise(scores, batch, batch_idx)
        self._rank(scores, batch, self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        scores = self.model.score_all(batch["users"])
        top_items = self._rank(scores, batch, self.test_metrics)
        self.test_catalogue.update(top_items, self.item_self_information)

    def on_validation_epoch_end(self) -> None:
        values = self._computed("val", self.val_metrics)
        if self.loss.predicts_ratings:
            values |= {"val/rmse": self.val_rmse.compute(), "val/mae": self.val_mae.compute()}
            self._log_error_histogram()
        if self.val_bce.update_count:
            values |= {"val/bce": self.val_bce.compute(), "val/accuracy": self.val_accuracy.compute()}
        for metric in (self.val_rmse, self.val_mae, self.val_bce, self.val_accuracy):
            metric.reset()
        # Re-validating the best checkpoint after fit must not add a point to the training curves.
        self.log_dict(values, logger=self.trainer.state.fn == "fit", sync_dist=True)  # equal on every rank already

    def on_test_epoch_end(self) -> None:
        values = self._computed("test", self.test_metrics) | self._computed("test", self.test_catalogue)
        self.log_dict(values, sync_dist=True)

    def _rank(self, scores: Tensor, batch: dict[str, Tensor], metrics: RankingMetrics) -> Tensor:
        """Hide each user's known items, take the top K of the chunk's scores, count held-out hits."""
        top_items = top_k_unseen(scores, batch["exclude_rows"], batch["exclude_items"], metrics.max_k)
        chunk_hits = hits(top_items, batch["heldout_rows"], batch["heldout_items"], self.model.num_items)
        num_relevant = torch.bincount(batch["heldout_rows"], minlength=len(batch["users"]))
        metrics.update(chunk_hits, num_relevant)
        return top_items

    def _update_rating_errors(self, scores: Tensor, batch: dict[str, Tensor]) -> None:
        predicted = scores[batch["heldout_rows"], batch["heldout_items"]]
        self.val_rmse.update(predicted, batch["heldout_ratings"])
        self.val_mae.update(predicted, batch["heldout_ratings"])
        self._val_errors.append((predicted - batch["heldout_ratings"]).detach().cpu())

    def _update_pointwise(self, scores: Tensor, batch: dict[str, Tensor], batch_idx: int) -> None:
        """BCE and accuracy on held-out positives plus as many uniform negatives from the unseen items.

        The negatives come from a fixed-seed stream, so every validation epoch judges the same pairs.
        """
        rows, items = batch["heldout_rows"], batch["heldout_items"]
        allowed = torch.ones_like(scores, dtype=torch.bool)
        allowed[batch["exclude_rows"], batch["exclude_items"]] = False
        allowed[rows, items] = False
        generator = torch.Generator(device=scores.device).manual_seed(self.hparams.seed * 1_000_003 + batch_idx)
        counts = torch.bincount(rows, minlength=len(scores))
        drawn = torch.multinomial(allowed.float(), int(counts.max()), replacement=True, generator=generator)
        position_in_row = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
        logits = torch.cat([scores[rows, items], scores[rows, drawn[rows, position_in_row]]])
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows)]).float()
        self.val_bce.update(F.binary_cross_entropy_with_logits(logits, labels), weight=len(labels))
        self.val_accuracy.update(((logits > 0).float() == labels).float().mean(), weight=len(labels))

    def _log_error_histogram(self) -> None:
        errors = torch.cat(self._val_errors) if self._val_errors else torch.zeros(0)
        self._val_errors.clear()
        if self.trainer.state.fn != "fit" or not len(errors):
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram("val/rating_error", errors, self.global_step)

    @staticmethod
    def _computed(stage: str, metric) -> dict[str, Tensor]:
        values = {f"{stage}/{name}": value.float() for name, value in metric.compute().items()}
        metric.reset()
        return values

    def configure_optimizers(self) -> Any:
        self._check_sparse_optimizer()
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
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
        model_name = type(self.model).__name__
        if dense:
            raise ConfigError(f"optimizer=sparse_adam needs every parameter to be an embedding table, but {model_name} also has "
                              f"{dense[0]} (and {len(dense) - 1} more); use optimizer=sparse_adagrad")  # fmt: skip
        if not self.model.sparse_gradients:
            raise ConfigError("optimizer=sparse_adam needs model.sparse_gradients=true")
        if self.loss.full_catalogue:
            raise ConfigError("optimizer=sparse_adam cannot train loss=full_softmax: it reads the whole item table (dense gradient)")
