"""The classes a config read back from disk may build, by config group: exactly the `_target_`s that the
options of `conf/<group>/` name, listed in the package so that serving or evaluating a run needs no conf/.

tests/test_offered_targets.py holds this list to conf/: an option added there without its class here fails
that test, naming the YAML file and the line to add.
"""

from __future__ import annotations

OFFERED_TARGETS: dict[str, frozenset[str]] = {
    "data": frozenset(
        {
            "recsys_lightning.data.csv.CsvDataModule",
            "recsys_lightning.data.movielens.MovieLensDataModule",
            "recsys_lightning.data.synthetic.SyntheticDataModule",
            "recsys_lightning.prepared.datamodule.PreparedDataModule",
        }
    ),
    "model": frozenset(
        {
            "recsys_lightning.models.EASE",
            "recsys_lightning.models.FeaturePopularity",
            "recsys_lightning.models.HybridMF",
            "recsys_lightning.models.ItemKNN",
            "recsys_lightning.models.MatrixFactorization",
            "recsys_lightning.models.NeuMF",
            "recsys_lightning.models.Popularity",
        }
    ),
    "loss": frozenset(
        {
            "recsys_lightning.losses.BCELoss",
            "recsys_lightning.losses.BPRLoss",
            "recsys_lightning.losses.FullSoftmaxLoss",
            "recsys_lightning.losses.MSELoss",
            "recsys_lightning.losses.SampledSoftmaxLoss",
        }
    ),
    "sampler": frozenset(
        {
            "recsys_lightning.samplers.HardNegativeSampler",
            "recsys_lightning.samplers.InBatchSampler",
            "recsys_lightning.samplers.PopularitySampler",
            "recsys_lightning.samplers.RetrievedSampler",
            "recsys_lightning.samplers.SharedPoolSampler",
            "recsys_lightning.samplers.UniformSampler",
        }
    ),
    "optimizer": frozenset(
        {"torch.optim.Adagrad", "torch.optim.Adam", "torch.optim.SGD", "torch.optim.SparseAdam", "torchrec.optim.RowWiseAdagrad"}
    ),
    "scheduler": frozenset({"torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.ReduceLROnPlateau"}),
}


def offered_targets(group: str) -> frozenset[str]:
    """The classes the project offers in `group` (model, loss, ...): what a recorded config may build there."""
    return OFFERED_TARGETS.get(group, frozenset())
