"""Run folder names (TensorBoard's run names) carry the overrides a user typed, short and stable."""

import shlex

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from recsys_lightning.run_names import MAX_LENGTH, run_label

from helpers import ROOT, compose_config

EXCLUDED = ["model", "loss", "sampler", "data.path"]


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ([], ""),
        (["model=ncf", "loss=bce", "sampler=popularity"], ""),  # already in the name
        (["model.dim=128", "optimizer.lr=0.01"], "_dim-128+lr-0.01"),
        (["optimizer.lr=0.01", "model.dim=128"], "_dim-128+lr-0.01"),  # order on the command line does not matter
        (["experiment=ml100k_ncf", "seed=7"], "_ml100k_ncf+seed-7"),
        (["optimizer.lr=0.0031415926535", "loss.l2=2.9380279387035364e-04"], "_l2-0.0002938+lr-0.003142"),  # Optuna's proposals
        (["loss.l2=0.1", "model.l2=300"], "_loss.l2-0.1+model.l2-300"),  # a last part two keys share stays whole
        (["model.hidden=[64, 32]", "data.path=/home/me/data.csv"], "_hidden-64x32"),
        (["model.paths=[gmf]", "eval.ks=[]"], "_ks-empty+paths-gmf"),
        (["+trainer.gradient_clip_val=1.0", "~callbacks.early_stopping"], "_no_early_stopping+gradient_clip_val-1"),
        (["data.name='my data/v2'", "data.tag=${oc.env:HOME}*"], "_name-mydata-v2+tag---oc.env-HOME--"),
        (["optimizer.lr=1e+5", "seed=-3", "data.min_rating=null"], "_min_rating-null+lr-1e05+seed--3"),
    ],
)
def test_label_is_the_overrides_shortened(overrides, label):
    assert run_label(overrides, EXCLUDED) == label


def test_a_long_label_is_cut_with_a_hash_of_the_whole():
    overrides = [f"model.knob_{index}=value_{index}" for index in range(20)]
    label = run_label(overrides)
    assert len(label) == MAX_LENGTH + 1 and label.startswith("_knob_0-value_0+")
    assert label != run_label(overrides[:-1])  # a different tail gives a different hash
    assert label == run_label(list(reversed(overrides)))


@pytest.mark.parametrize("overrides", [["model.hidden=[64,32]", "data.name=a=b,c"], ["optimizer.lr=0.00123", "experiment=ml100k_ncf"]])
def test_a_folder_named_so_can_be_passed_back_unquoted(overrides):
    """`run_dir=<folder>` and `pretrained_from=[<folder>,<folder>]` parse as one path each, as typed."""
    folder = f"outputs/runs/2026-12-02/10-00-00_ncf-bpr-uniform{run_label(overrides)}"
    parser = OverridesParser.create()
    assert parser.parse_override(f"run_dir={folder}").value() == folder
    assert parser.parse_override(f"pretrained_from=[{folder},{folder}]").value() == [folder, folder]
    assert shlex.split(f"tensorboard --logdir {folder}")[-1] == folder


def test_names_are_ascii_and_interpolations_stay_as_typed():
    label = run_label(["+note=中文" * 40, "+home=${oc.env:HOME}"])
    assert label.isascii() and len(label.encode()) <= MAX_LENGTH + 1 and "root" not in label
    assert run_label(["~a", "+a=1"]) == run_label(["+a=1", "~a"])
    assert not run_label([f"model.knob_{index}=v" for index in range(30)]).rsplit("-", 1)[0].endswith("+")


@pytest.fixture
def hydra_run():
    """The training config as a run sees it: run_name reads the options chosen from Hydra's runtime."""

    def compose(*overrides: str):
        config = compose_config("config", *overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(config)
        return config

    yield compose
    HydraConfig.instance().cfg = None  # no later test runs inside this one's Hydra runtime


@pytest.mark.parametrize(
    ("choices", "path", "name"),
    [
        (["mf", "bpr", "uniform", "movielens"], None, "mf-bpr-uniform"),
        (["popularity", "bpr", "uniform", "movielens"], None, "popularity"),  # closed form: no loss or sampler took part
        (["itemknn", "softmax", "in_batch", "movielens"], None, "itemknn"),
        (["ease", "bpr", "uniform", "csv"], "data/shop.csv", "ease-shop"),
        (["mf", "bpr", "uniform", "csv"], "/home/me/clicks.tsv.gz", "mf-bpr-uniform-clicks"),  # runs on other files differ
        (["ncf", "bce", "popularity", "csv"], "views.v2.csv.zip", "ncf-bce-popularity-views.v2"),
        (["mf", "bpr", "uniform", "prepared"], "/data/prepared/clicks", "mf-bpr-uniform-clicks"),  # the prepared folder's name
    ],
)
def test_the_run_name_is_what_was_trained_and_on_which_file(hydra_run, choices, path, name):
    model, loss, sampler, data = choices
    overrides = [f"model={model}", f"loss={loss}", f"sampler={sampler}", f"data={data}"]
    assert hydra_run(*overrides, *([f"data.path={path}"] if path else [])).run_name == name


def test_pre_split_files_name_the_run_after_the_training_file(hydra_run):
    assert hydra_run("data=csv", "data.train_path=in/week1.csv", "data.valid_path=in/week2.csv").run_name == "mf-bpr-uniform-week1"


def test_the_readmes_optuna_example_is_the_label_a_trial_gets():
    """conf/hparams_search/optuna.yaml's four keys, as a trial sets them: the whole keys' order, not the short names'."""
    label = run_label(["model.dim=64", "optimizer.lr=0.00455", "loss.l2=0.0002938", "sampler.num_negatives=4"])
    assert label == "_l2-0.0002938+dim-64+lr-0.00455+num_negatives-4"
    assert f"`..._{label[1:]}`" in (ROOT / "README.md").read_text()
