import pytest
import torch

from recsys_lightning.models import MatrixFactorization


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
    expected = (2 * model.user_factors[0].square().sum() + 2 * model.item_factors[1].square().sum()
                + model.item_factors[2].square().sum() + model.item_factors[4].square().sum()) / 2  # fmt: skip
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
