import pytest
import torch

from recsys_lightning.models import HybridMF, MatrixFactorization, NeuMF


@pytest.mark.parametrize("bias", [True, False])
def test_full_ranking_scores_equal_pairwise_scores(bias):
    model = MatrixFactorization(num_users=7, num_items=11, dim=5, bias=bias)
    with torch.no_grad():
        if bias:
            model.user_bias.normal_()
            model.item_bias.normal_()
        users = torch.tensor([3, 0, 6])
        full = model.score_all(users)
        items = torch.arange(11).expand(3, 11)
        assert torch.allclose(full, model.score(users, items), atol=1e-6)
        assert torch.allclose(full[torch.arange(3), torch.tensor([1, 2, 3])], model.score(users, torch.tensor([1, 2, 3])), atol=1e-6)


def test_penalty_is_squared_norm_of_touched_rows_per_example():
    model = MatrixFactorization(num_users=4, num_items=5, dim=3, bias=False)
    users, items = torch.tensor([0, 0]), torch.tensor([[1, 2], [1, 4]])
    _, penalty = model.score_with_penalty(users, items)
    expected = (
        2 * model.user_factors[0].square().sum()
        + 2 * model.item_factors[1].square().sum()
        + model.item_factors[2].square().sum()
        + model.item_factors[4].square().sum()
    ) / 2
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: HybridMF(7, 11, dim=6, hidden=[8, 4], dropout=0.2),
        lambda: NeuMF(7, 11, gmf_dim=4, mlp_dim=6, hidden=[8, 4], dropout=0.2),
    ],
    ids=["hybrid", "ncf"],
)
def test_mlp_models_full_ranking_equals_pairwise_even_in_small_slices(build):
    model = build().eval()
    model.mlp.max_ranking_activations = 8 * 11 * 2  # force slices of 2 users
    with torch.no_grad():
        if isinstance(model, NeuMF):
            model.gmf_output.normal_()  # away from its all-ones start
        users = torch.tensor([3, 0, 6, 2, 5])
        full = model.score_all(users)
        assert full.shape == (5, 11)
        assert torch.allclose(full, model.score(users, torch.arange(11).expand(5, 11)), atol=1e-5)
        assert torch.allclose(full[:, 4], model.score(users, torch.full((5,), 4)), atol=1e-5)


def test_mlp_first_layer_split_equals_mlp_on_concatenation():
    model = HybridMF(3, 4, dim=5, hidden=[6])
    user, item = model.user_factors[:1], model.item_factors[:1]
    weight = torch.cat([model.mlp.user_in.weight, model.mlp.item_in.weight], 1)
    hidden = torch.relu(torch.cat([user, item], 1) @ weight.T + model.mlp.user_in.bias)
    expected = model.mlp.tower[-1](hidden).squeeze(-1)
    assert torch.allclose(model.mlp(user, item), expected, atol=1e-6)
