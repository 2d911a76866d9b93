"""Run folder names (TensorBoard's run names) carry the overrides a user typed, short and stable."""

import pytest

from recsys_lightning.run_names import MAX_LENGTH, run_label

EXCLUDED = ["model", "loss", "sampler", "data.path"]


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ([], ""),
        (["model=ncf", "loss=bce", "sampler=popularity"], ""),  # already in the name
        (["model.dim=128", "optimizer.lr=0.01"], "_dim=128,lr=0.01"),
        (["optimizer.lr=0.01", "model.dim=128"], "_dim=128,lr=0.01"),  # order on the command line does not matter
        (["experiment=ml100k_ncf", "seed=7"], "_ml100k_ncf,seed=7"),
        (["optimizer.lr=0.0031415926535", "loss.l2=2.9380279387035364e-04"], "_l2=0.0002938,lr=0.003142"),  # Optuna's proposals
        (["loss.l2=0.1", "model.l2=300"], "_loss.l2=0.1,model.l2=300"),  # a last part two keys share stays whole
        (["model.hidden=[64,32]", "data.path=/home/me/data.csv"], "_hidden=[64,32]"),
        (["+trainer.gradient_clip_val=1.0", "~callbacks.early_stopping"], "_~early_stopping,gradient_clip_val=1"),
        (["data.name='my data/v2'"], "_name=mydata-v2"),  # no quote, space or slash reaches the folder name
        (["model.hidden=[64, 32]", "data.tag=${oc.env:HOME}*"], "_tag=--oc.env-HOME--,hidden=[64,32]"),
    ],
)
def test_label_is_the_overrides_shortened(overrides, label):
    assert run_label(overrides, EXCLUDED) == label


def test_a_long_label_is_cut_with_a_hash_of_the_whole():
    overrides = [f"model.knob_{index}=value_{index}" for index in range(20)]
    label = run_label(overrides)
    assert len(label) == MAX_LENGTH + 1 and label.startswith("_knob_0=value_0,")
    assert label != run_label(overrides[:-1])  # a different tail gives a different hash
    assert label == run_label(list(reversed(overrides)))
