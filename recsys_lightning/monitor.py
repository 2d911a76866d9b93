"""What a run is judged by: the metric the best checkpoint, early stopping, a plateau scheduler and a
sweep watch, and in which direction.

By default the loss says (`RankingLoss.monitor`): a loss that predicts ratings is judged by its rating
error (val/rmse, lower is better), a ranking loss by its ranking (val/ndcg@10, higher is better).
conf/config.yaml's `monitor` node reads these through the resolvers `config.py` registers, so every
consumer interpolates one setting and `monitor.metric=<name>` changes them all.
"""

from __future__ import annotations

from hydra.utils import get_class


def loss_monitor(loss_target: str) -> str:
    """The metric the loss class `loss_target` (a `_target_`) is judged by, e.g. val/rmse for MSELoss."""
    return get_class(loss_target).monitor


def lower_is_better(loss_target: str) -> list[str]:
    """The metrics a run with this loss logs that are better when lower: the training loss and errors."""
    loss_class = get_class(loss_target)
    return ["train/loss"] + [f"val/{name}" for kind in loss_class.prediction_metrics for name in kind.lower_is_better]


def metric_mode(metric: str, loss_target: str) -> str:
    """`min` for a metric better when lower (val/ or test/ errors, train/loss), else `max`."""
    stage, _, name = str(metric).partition("/")
    as_logged = f"val/{name}" if stage == "test" else str(metric)  # test/ names mirror the val/ ones
    return "min" if as_logged in lower_is_better(loss_target) else "max"


def sweep_direction(metric: str, loss_target: str) -> str:
    """Optuna's word for `metric_mode`: minimize or maximize."""
    return f"{metric_mode(metric, loss_target)}imize"
