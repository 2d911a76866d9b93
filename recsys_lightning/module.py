"""The LightningModule: glues model, loss, sampler and optimiser, and evaluates by full ranking."""

from __future__ import annotations

from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor

from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.base import Recommender
from recsys_lightning.ranking import hits, top_k_unseen


class RecommenderModule(pl.LightningModule):
    """Trains any `Recommender` with any loss and negative sampler, all built from config dicts.

    Taking configs rather than objects lets `save_hyperparameters` record plain data, so
    `RecommenderModule.load_from_checkpoint(path)` rebuilds the same model with no pickled objects.
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
        self.loss = instantiate(loss)
        self.sampler = instantiate(sampler)
        self.val_metrics = RankingMetrics(ks)
        self.test_metrics = RankingMetrics(ks)

    def on_fit_start(self) -> None:
        self.sampler.bind(self.trainer.datamodule.train_positives.to(self.device))

    def on_train_epoch_start(self) -> None:
        self.sampler.reseed(self.hparams.seed * 1_000_003 + self.current_epoch + 1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        users, positives = batch["users"], batch["items"]
        negatives = self.sampler.sample(users, positives, self.model)
        items = torch.cat([positives.unsqueeze(1), negatives], 1)
        scores, penalty = self.model.score_with_penalty(users, items)
        loss = self.loss(scores[:, 0], scores[:, 1:]) + self.loss.l2 * penalty
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(users))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_ranking("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_ranking("test", self.test_metrics)

    def _rank(self, batch: dict[str, Tensor], metrics: RankingMetrics) -> None:
        """Score a chunk of users against every item with one call, hide their known items, take top-K."""
        scores = self.model.score_all(batch["users"])
        top_items = top_k_unseen(scores, batch["exclude_rows"], batch["exclude_items"], metrics.max_k)
        chunk_hits = hits(top_items, batch["heldout_rows"], batch["heldout_items"], self.model.num_items)
        num_relevant = torch.bincount(batch["heldout_rows"], minlength=len(batch["users"]))
        metrics.update(chunk_hits, num_relevant)

    def _log_ranking(self, stage: str, metrics: RankingMetrics) -> None:
        values = {f"{stage}/{name}": value.float() for name, value in metrics.compute().items()}
        # Re-validating the best checkpoint after fit must not add a point to the training curves.
        to_logger = stage != "val" or self.trainer.state.fn == "fit"
        self.log_dict(values, logger=to_logger)
        metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        lightning_options = dict(self.hparams.scheduler)
        scheduler = instantiate(lightning_options.pop("scheduler"))(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning_options}}
