import math

import pytest
import torch
import torch.nn.functional as F

from recsys_lightning.losses import BCELoss, BPRLoss, FullSoftmaxLoss, MSELoss, SampledSoftmaxLoss, ScoredCandidates
from recsys_lightning.samplers import HardNegativeSampler, NegativeSampler

POSITIVE = torch.tensor([2.0, -1.0])
NEGATIVE = torch.tensor([[1.0, 3.0], [0.0, -2.0]])


def test_bpr_is_mean_negative_log_sigmoid_of_differences():
    expected = -sum(math.log(1 / (1 + math.exp(-(p - n)))) for p, row in zip([2.0, -1.0], [[1, 3], [0, -2]]) for n in row) / 4
    assert BPRLoss()(ScoredCandidates(POSITIVE, NEGATIVE)).item() == pytest.approx(expected)


def test_masked_negatives_do_not_count():
    valid = torch.tensor([[True, False], [True, True]])
    changed = NEGATIVE.clone()
    changed[0, 1] = 100.0
    for loss in (BPRLoss(), BCELoss(), SampledSoftmaxLoss(log_q_correction=False)):
        assert loss(ScoredCandidates(POSITIVE, NEGATIVE, valid)).item() == pytest.approx(
            loss(ScoredCandidates(POSITIVE, changed, valid)).item()
        )


def test_bce_is_pointwise_log_loss_over_positives_and_negatives():
    logits = torch.cat([POSITIVE, NEGATIVE.flatten()])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert BCELoss()(ScoredCandidates(POSITIVE, NEGATIVE)).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, labels).item()
    )


def test_sampled_softmax_subtracts_log_q_before_cross_entropy():
    log_q_pos, log_q_neg = torch.tensor([-1.0, -2.0]), torch.tensor([[-0.5, -3.0], [-1.5, -1.0]])
    batch = ScoredCandidates(POSITIVE, NEGATIVE, positive_log_q=log_q_pos, negative_log_q=log_q_neg)
    # The correction is on the sampling probability, so it is not scaled by the temperature.
    logits = torch.cat([POSITIVE.unsqueeze(1), NEGATIVE], 1) / 0.5 - torch.cat([log_q_pos.unsqueeze(1), log_q_neg], 1)
    expected = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    assert SampledSoftmaxLoss(temperature=0.5)(batch).item() == pytest.approx(expected.item())
    uncorrected = F.cross_entropy(torch.cat([POSITIVE.unsqueeze(1), NEGATIVE], 1), torch.zeros(2, dtype=torch.long))
    assert SampledSoftmaxLoss(log_q_correction=False)(batch).item() == pytest.approx(uncorrected.item())


def test_full_softmax_adds_each_positive_to_its_users_normaliser():
    # Two users' scores of every item, their training positives hidden; three examples, two of user 0.
    user_scores = torch.tensor([[2.0, 0.5, -torch.inf, 1.0], [0.0, -1.0, 3.0, -torch.inf]])
    positive, rows = torch.tensor([2.5, -1.0, 0.3]), torch.tensor([0, 0, 1])
    others = [[2.0, 0.5, 1.0], [2.0, 0.5, 1.0], [0.0, -1.0, 3.0]]
    expected = sum(-p + math.log(math.exp(p) + sum(math.exp(s) for s in row)) for p, row in zip(positive.tolist(), others)) / 3
    assert FullSoftmaxLoss()(ScoredCandidates(positive, user_scores, rows=rows)).item() == pytest.approx(expected)


def test_mse_regresses_scores_on_ratings():
    batch = ScoredCandidates(POSITIVE, NEGATIVE, ratings=torch.tensor([4.0, 1.0]))
    assert MSELoss()(batch).item() == pytest.approx(((2 - 4) ** 2 + (-1 - 1) ** 2) / 2)


class FromTheBatch(NegativeSampler):
    """A sampler no loss has heard of (its `sample` left out: a loss reads only the declarations)."""

    draws_from_batch = True


class UniformUnseen(NegativeSampler):
    """Another sampler no loss has heard of, declaring uniform draws over a user's unseen items."""

    uniform_unseen = True


def test_a_new_sampler_is_accepted_or_refused_by_what_it_declares():
    undeclared = HardNegativeSampler  # declares neither: draws per example, not uniformly
    assert [loss.sampler_conflict(undeclared) for loss in (BPRLoss, BCELoss, SampledSoftmaxLoss, FullSoftmaxLoss)] == [None] * 4
    assert BCELoss.sampler_conflict(FromTheBatch) == "in-batch negatives are popularity-biased and pointwise BCE has no correction for that"
    assert [loss.sampler_conflict(FromTheBatch) for loss in (BPRLoss, SampledSoftmaxLoss, FullSoftmaxLoss)] == [None] * 3
    assert MSELoss.sampler_conflict(UniformUnseen) is None
    assert MSELoss.sampler_conflict(FromTheBatch) == MSELoss.sampler_conflict(undeclared) == "rating regression uses no negatives"
