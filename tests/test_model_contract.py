"""Every model offered in conf/model/ keeps the contract of recsys_lightning/models/base.py.

Training, evaluation and serving only talk to that contract, so a model that breaks it (a full ranking
that drops a bias, a table the sparse optimizer never sees) would train and rank wrongly without an error.
"""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys_lightning.models import ClosedFormRecommender, Recommender

from helpers import CONF, recommender_options

# Distinct from every width in conf/model/, so a table with a row per user or per item is told by its shape.
NUM_USERS, NUM_ITEMS = 9, 13
# Keys that change how a model computes its scores: each is also tested flipped where a model has it.
SCORING_SWITCHES = ("bias", "zero_init_mlp", "sparse_gradients")


def model_cases():
    for option in recommender_options():
        defaults = OmegaConf.load(CONF / "model" / f"{option}.yaml")
        yield pytest.param((option, {}), id=option)
        for key in SCORING_SWITCHES:
            if key in defaults:
                yield pytest.param((option, {key: not defaults[key]}), id=f"{option}-{key}={not defaults[key]}")


@pytest.fixture(params=list(model_cases()))
def model(request) -> Recommender:
    """The YAML's model with every parameter moved off its initial value: zero-initialised biases and
    MLP outputs would otherwise hide a term that one scoring path leaves out. A closed-form model is
    fitted on random positives instead (unfitted, it scores everything 0)."""
    option, changes = request.param
    torch.manual_seed(0)
    built = instantiate(
        OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{option}.yaml"), changes), num_users=NUM_USERS, num_items=NUM_ITEMS
    ).eval()
    with torch.no_grad():
        for parameter in built.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    if isinstance(built, ClosedFormRecommender):
        built.fit((torch.rand(NUM_USERS, NUM_ITEMS) < 0.4).float().to_sparse())
    return built


USERS = torch.tensor([3, 0, 8, 3, 5])


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_full_ranking_equals_pair_scores_on_the_same_pairs(model):
    full = model.score_all(USERS)
    assert full.shape == (len(USERS), NUM_ITEMS)
    assert_close(model.score(USERS, torch.arange(NUM_ITEMS).expand(len(USERS), NUM_ITEMS)), full)
    items = torch.tensor([12, 0, 4, 4, 7])
    assert_close(model.score(USERS, items), full[torch.arange(len(USERS)), items])
    candidates = torch.randint(NUM_ITEMS, (len(USERS), 6), generator=torch.Generator().manual_seed(1))
    assert_close(model.score(USERS, candidates), full.gather(1, candidates))
    pool = torch.tensor([11, 2, 5, 0])  # a shared negative pool, scored as one matrix
    assert_close(model.score_items(USERS, pool), full[:, pool])


@torch.no_grad()
@pytest.mark.parametrize("items", [torch.tensor([1, 2, 12, 2, 0]), torch.tensor([[1, 5, 9]] * 5)], ids=["pairs", "negatives"])
def test_penalty_is_finite_non_negative_and_grows_with_every_row_table(model, items):
    scores, penalty = model.score_with_penalty(USERS, items)
    assert scores.shape == items.shape
    assert penalty.dim() == 0 and torch.isfinite(penalty) and penalty >= 0
    for table in model.row_tables():
        table.mul_(2)
        grown = model.score_with_penalty(USERS, items)[1]
        assert grown > penalty, f"scaling a {tuple(table.shape)} table left the penalty at {penalty.item()}"
        penalty = grown


def test_row_tables_are_every_table_with_a_row_per_user_or_item(model):
    """The sparse optimizer and sparse gradients reach exactly these: one left out would be trained densely
    (or not at all under a sparse-only optimizer)."""
    parameters = dict(model.named_parameters())
    per_row = {name for name, parameter in parameters.items() if parameter.dim() == 2 and parameter.shape[0] in (NUM_USERS, NUM_ITEMS)}
    names = {id(parameter): name for name, parameter in parameters.items()}
    listed = [names.get(id(table), "a tensor that is not a parameter of the model") for table in model.row_tables()]
    assert sorted(listed) == sorted(per_row)


def test_embedding_tables_pair_a_user_and_an_item_table_of_one_width(model):
    tables = model.embedding_tables()
    assert tables or isinstance(model, ClosedFormRecommender)  # popularity, itemknn and ease have none
    for users, items in tables.values():
        assert users.dim() == items.dim() == 2
        assert (users.shape[0], items.shape[0]) == (NUM_USERS, NUM_ITEMS)
        assert users.shape[1] == items.shape[1] >= 1


@torch.no_grad()
def test_query_vectors_times_item_vectors_is_the_full_ranking(model):
    item_vectors = model.item_vectors()
    if item_vectors is None:
        with pytest.raises(NotImplementedError):
            model.query_vectors(USERS)
        return
    query_vectors = model.query_vectors(USERS)
    assert item_vectors.shape[0] == NUM_ITEMS and query_vectors.shape == (len(USERS), item_vectors.shape[1])
    assert_close(query_vectors @ item_vectors.T, model.score_all(USERS))


@torch.no_grad()
def test_ranking_against_item_rows_given_apart_is_the_full_ranking_in_any_blocks(model):
    """trainer=sharded's ranking (mf, hybrid, ncf): each rank scores the users' `ranking_queries` against its
    block of the item tables' rows; the blocks side by side are `score_all`. Models it does not train say so."""
    try:
        names = model.item_table_names()
    except NotImplementedError:
        return
    queries = model.ranking_queries(USERS)
    blocks = [slice(0, 5), slice(5, 6), slice(6, NUM_ITEMS)]  # uneven, as TorchRec's last block is
    tables = {name: getattr(model, name) for name in names}
    items = torch.arange(NUM_ITEMS)
    scored = [
        model.score_item_rows(queries, model.ranking_item_rows({name: t[block] for name, t in tables.items()}, items[block]))
        for block in blocks
    ]
    assert all(getattr(model, name).shape[0] == NUM_ITEMS for name in names)
    assert_close(torch.cat(scored, 1), model.score_all(USERS))
