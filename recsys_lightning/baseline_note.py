"""The closing table's one-line note on a run that learnt too little: its best checkpoint ranks the
validation users' items worse than the most popular items do, or no epoch after the first improved it.

Defaults that fit one data set can learn nothing on another (a batch too large for a small CSV), and a
table of small numbers does not say so. The popularity figure is counted from the training positives and
ranked for the same validation users the run was judged on: no second training run, no model. On several
processes each ranks its own share of those users (with `data=prepared` it holds no others) and the sums
are added, as validation's are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.metrics import METRIC_NAMES, RankingMetrics
from recsys_lightning.ranking import top_k_unseen


def popularity_on_validation(datamodule: InteractionDataModule, ks: Sequence[int], distributed: bool = False) -> dict[str, float]:
    """`val/<metric>@K` of ranking each validation user's unseen items (among the chunks' candidates, as the
    run ranked them) by their number of training users (model=popularity's ranking), one evaluation chunk of
    scores at a time.

    The users are this process's share (its validation loader); `distributed` sums every process's, so
    every process must call it then."""
    popularity = datamodule.training_data.positives.item_counts.float()
    metrics = RankingMetrics(ks, sync_on_compute=distributed)
    for chunk in datamodule.val_dataloader():
        scores = popularity.expand(len(chunk.users), -1).clone()  # top_k_unseen overwrites what it hides
        top_items = top_k_unseen(scores, chunk.exclude_rows, chunk.exclude_items, metrics.max_k, chunk.candidates)
        metrics.update_ranked(top_items, chunk, len(popularity))
    return {f"val/{name}": value.item() for name, value in metrics.compute().items()}


def compared_with_popularity(monitor: str, is_popularity: bool, eval_candidates: str = "all") -> bool:
    """Whether the closing note weighs the run against the most popular items: a ranking monitor
    (`val/ndcg@10`, not `val/rmse`), a model other than popularity itself, and the whole catalogue ranked.
    With eval.candidates=cold every candidate is new, popularity 0: popularity leaves them in index order,
    no ranking to weigh a run against (on ML-100K that order is not even random: bench/RESULTS.md)."""
    ranking_monitor = monitor.startswith("val/") and monitor.removeprefix("val/").split("@")[0] in METRIC_NAMES
    return ranking_monitor and not is_popularity and eval_candidates == "all"


def closing_note(
    metrics: Mapping[str, Any], monitor: str, baseline: float | None, batch_size: int, closed_form: bool = False
) -> str | None:
    """What the closing table adds when the run learnt too little, with what to try; None otherwise.

    `baseline` is the popularity ranking's `monitor` (`popularity_on_validation`), None where the run is
    not compared with it (`compared_with_popularity`). A `closed_form` model (EASE, ItemKNN, feature_popularity)
    is fitted once, so training settings are not what to try."""
    value = metrics.get(monitor)
    if baseline is not None and isinstance(value, float):
        below = f"note: {monitor} {value:.4f} is below the most popular items' {baseline:.4f} on the same users; "
        if value < baseline and closed_form:
            return below + "a model fitted in closed form: no epoch count, batch size or learning rate changes it; try its own model keys"
        if value < baseline:
            return below + (f"try more epochs (trainer.max_epochs), a smaller data.batch_size (now {batch_size}) or another optimizer.lr")
    if metrics.get("best_epoch") == 0 and (metrics.get("epochs") or 0) > 1:
        return (
            f"note: no epoch after the first improved {monitor}; try a lower optimizer.lr or a higher loss.l2, "
            "or a smaller data.batch_size and a higher callbacks.early_stopping.patience"
        )
    return None
