"""`pretrained_from`: NeuMF's GMF + MLP pre-training, warm starts, and the runs it refuses to read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_lightning.build import build_module
from recsys_lightning.errors import ConfigError
from recsys_lightning.models import NeuMF
from recsys_lightning.ranges import constructor_rules

from helpers import FrameDataModule, module_config, planted_frame, quiet_trainer

NEUMF = {"_target_": "recsys_lightning.models.NeuMF", "gmf_dim": 8, "mlp_dim": 6, "hidden": [8, 4], "dropout": 0.3}
MF = {"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 8}


def datamodule(seed: int = 0) -> FrameDataModule:
    data = FrameDataModule(planted_frame(), batch_size=256, seed=seed)
    data.setup("fit")
    return data


def trained_run(folder: Path, model: dict, seed: int = 0, **config) -> torch.nn.Module:
    """A one-epoch run whose only checkpoint is `folder/checkpoints/epoch000.ckpt`; returns its model."""
    data = datamodule(seed)
    module = build_module(module_config(model=model, **config), data.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=folder)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(folder / "checkpoints" / "epoch000.ckpt")
    return module.model.eval()


def pretrained(runs: list[Path], model: dict = NEUMF, seed: int = 0) -> torch.nn.Module:
    data = datamodule(seed)
    return build_module(module_config(model=model, pretrained_from=[str(run) for run in runs]), data.training_data).model.eval()


@pytest.fixture(scope="module")
def gmf_and_mlp(tmp_path_factory) -> tuple[Path, torch.nn.Module, Path, torch.nn.Module]:
    gmf_dir, mlp_dir = tmp_path_factory.mktemp("gmf"), tmp_path_factory.mktemp("mlp")
    gmf = trained_run(gmf_dir, {**NEUMF, "paths": ["gmf"]})
    mlp = trained_run(mlp_dir, {**NEUMF, "paths": ["mlp"]})
    return gmf_dir, gmf, mlp_dir, mlp


def test_single_path_models_score_with_their_own_path_only():
    torch.manual_seed(0)  # about 1 draw in 100 leaves hidden=[4]'s ReLUs all dead: every item tied, whatever ran before
    gmf = NeuMF(5, 7, gmf_dim=3, mlp_dim=4, hidden=[4], paths=["gmf"])
    users = torch.arange(5)
    expected = (gmf.user_gmf * gmf.gmf_output) @ gmf.item_gmf.T
    torch.testing.assert_close(gmf.score_all(users), expected)
    assert gmf.mlp is None and list(gmf.embedding_tables()) == ["gmf"]
    mlp = NeuMF(5, 7, gmf_dim=3, mlp_dim=4, hidden=[4], paths=["mlp"])
    assert mlp.user_gmf is None and list(mlp.embedding_tables()) == ["mlp"]
    # alone, the MLP must not start at zero (every item would tie and nothing would be learned)
    assert mlp.score_all(users).std() > 0
    paths = constructor_rules("recsys_lightning.models.NeuMF")["paths"]
    assert [paths.accepts(value) for value in (["gmf"], ["gmf", "mlp"], ["gmf", "attention"], [])] == [True, True, False, False]


def test_neumf_from_gmf_and_mlp_scores_alpha_weighted_sum_of_both(gmf_and_mlp):
    gmf_dir, gmf, mlp_dir, mlp = gmf_and_mlp
    users = torch.arange(60)
    for alpha in (0.5, 0.8):
        neumf = pretrained([gmf_dir, mlp_dir], {**NEUMF, "pretrained_alpha": alpha})
        torch.testing.assert_close(neumf.user_gmf, gmf.user_gmf)
        torch.testing.assert_close(neumf.item_mlp, mlp.item_mlp)
        with torch.no_grad():
            expected = alpha * gmf.score_all(users) + (1 - alpha) * mlp.score_all(users)
            torch.testing.assert_close(neumf.score_all(users), expected)


def test_a_neumf_run_warm_starts_a_neumf_unchanged(tmp_path):
    """One source holding both paths is a warm start: nothing to fuse, so no alpha."""
    whole = trained_run(tmp_path, NEUMF)
    warm = pretrained([tmp_path])
    with torch.no_grad():
        torch.testing.assert_close(warm.score_all(torch.arange(60)), whole.score_all(torch.arange(60)))


def test_mf_warm_start_copies_every_weight(tmp_path):
    source = trained_run(tmp_path, MF)
    warm = pretrained([tmp_path], MF)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(warm.state_dict()[name], value)


def test_through_the_composed_config(gmf_and_mlp, tmp_path):
    """The key a user sets on the command line reaches the model built for training."""
    from recsys_lightning.validation import check_training_config

    from helpers import training_config

    gmf_dir, gmf, mlp_dir, _ = gmf_and_mlp
    cfg = training_config("model=ncf", f"pretrained_from=[{gmf_dir},{mlp_dir}]", run_dir=tmp_path)
    check_training_config(cfg)
    assert list(cfg.pretrained_from) == [str(gmf_dir), str(mlp_dir)] and list(cfg.model.paths) == ["gmf", "mlp"]


@pytest.mark.parametrize(
    "runs, model, seed, message",
    [
        (lambda g, m, t: [g, g], NEUMF, 0, "model.user_gmf is in both"),
        (lambda g, m, t: [t / "missing"], NEUMF, 0, "pretrained_from: run_dir=.*no such folder"),
        (lambda g, m, t: [g], NEUMF, 1, "trained on another split"),
        (lambda g, m, t: [g], MF, 0, "none of its weights .* belong to MatrixFactorization"),
        (lambda g, m, t: [g], {**NEUMF, "gmf_dim": 4}, 0, r"model.user_gmf is \[60, 8\], this model needs \[60, 4\]"),
    ],
    ids=["same-weights-twice", "no-folder", "other-split", "other-model", "other-size"],
)
def test_refuses_runs_that_do_not_fit(gmf_and_mlp, tmp_path, runs, model, seed, message):
    gmf_dir, _, mlp_dir, _ = gmf_and_mlp
    with pytest.raises(ConfigError, match=message):
        pretrained(runs(gmf_dir, mlp_dir, tmp_path), model, seed)


def test_refuses_other_data_and_non_finite_weights(tmp_path):
    other = tmp_path / "other"
    data = FrameDataModule(planted_frame(seed=1), batch_size=256)
    data.setup("fit")
    module = build_module(module_config(model=MF), data.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=other)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(other / "checkpoints" / "epoch000.ckpt")
    with pytest.raises(ConfigError, match="another split|other data"):
        pretrained([other], MF)

    broken = tmp_path / "broken"
    trained_run(broken, MF)
    path = broken / "checkpoints" / "epoch000.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.item_factors"][3, 1] = float("nan")
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match="model.item_factors holds NaN"):
        pretrained([broken], MF)


@pytest.mark.parametrize("tables", ["missing", "a file"])
def test_a_sharded_run_without_its_tables_folder_is_refused_not_half_warm_started(tmp_path, tables):
    """A trainer=sharded checkpoint keeps its row tables in `epoch000.tables/` beside it; with that folder gone
    (or a file in its place) the warm start took the one weight left (MF's global mean) and trained from
    scratch, saying nothing."""
    model = trained_run(tmp_path, MF)
    path = tmp_path / "checkpoints" / "epoch000.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    tables = {id(table) for table in model.row_tables()}
    held = [f"model.{name}" for name, parameter in model.named_parameters() if id(parameter) in tables]
    checkpoint["state_dict"] = {name: value for name, value in checkpoint["state_dict"].items() if name not in held}
    torch.save(checkpoint, path)
    if tables == "a file":
        (tmp_path / "checkpoints" / "epoch000.tables").write_text("x")
    with pytest.raises(ConfigError, match=r"epoch000\.ckpt: holds none of its model's row tables .* epoch000\.tables"):
        pretrained([tmp_path], MF)
