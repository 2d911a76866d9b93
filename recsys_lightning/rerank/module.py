"""The re-ranker's LightningModule: the listwise loss on training lists, the two-stage ranking metrics on
validation and test lists (`val/two_stage/ndcg@10`: the retriever's candidates reordered, every held-out
item of a user counted, found among the candidates or not)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from torch import Tensor

from recsys_lightning.data.catalogue import Catalogue
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.rerank.lists import ListBatch, ListChunk, ranked
from recsys_lightning.rerank.ranker import listwise_loss
from recsys_lightning.runs.checkpoint_file import CATALOGUE_KEY, FORMAT_KEY, FORMAT_VERSION

STAGE = "two_stage"  # metric names: val/two_stage/ndcg@10


class RerankerModule(pl.LightningModule):
    """Glues a re-ranker (`model`) to its loss, optimizer and metrics; built from the composed config only."""

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None,
        ks: list[int],
        num_items: int,
        catalogue: Catalogue | None = None,
        candidates: int | None = None,
        ease_l2: float | None = None,
    ) -> None:
        """`catalogue`, the run's data, is saved with each checkpoint as every run's is (not a hyperparameter).
        `candidates`, the list length trained on (retrieval.candidates), is recorded so that serving can tell
        it from an edited .hydra/config.yaml: the ranker's log_rank and z-scores are relative to it; `ease_l2`
        (rerank.ease_l2) likewise, as the ease_z feature it weighs is EASE's at that l2."""
        super().__init__()
        self.save_hyperparameters(ignore=["catalogue"])
        self.model = instantiate(model)
        self.num_items = num_items
        self.catalogue = catalogue
        self.max_k = max(ks)
        self.val_metrics = RankingMetrics(ks)
        self.test_metrics = RankingMetrics(ks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
        if self.catalogue is not None:
            checkpoint[CATALOGUE_KEY] = self.catalogue.to_state()

    def scores(self, lists: ListBatch | ListChunk) -> Tensor:
        return self.model(lists.features)

    def training_step(self, batch: ListBatch, batch_idx: int) -> Tensor:
        scores = self.scores(batch).masked_fill(~batch.present, -float("inf"))
        loss = listwise_loss(scores, batch.targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: ListChunk, batch_idx: int) -> None:
        self.val_metrics.update_ranked(ranked(self.scores(batch), batch, self.max_k), batch.chunk, self.num_items)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: ListChunk, batch_idx: int) -> None:
        self.test_metrics.update_ranked(ranked(self.scores(batch), batch, self.max_k), batch.chunk, self.num_items)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: RankingMetrics) -> None:
        for name, value in metrics.compute().items():
            self.log(f"{stage}/{STAGE}/{name}", value.float())
        metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        lightning_options = dict(self.hparams.scheduler)
        scheduler = instantiate(lightning_options.pop("scheduler"))(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning_options}}
