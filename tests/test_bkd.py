"""Each algorithm function against hand-computed values, and gradient flow as the spec says."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.bkd import (DegenerateSplit, agreement, assign_groups, compensation_loss, find_tipping_epoch,
                       otsu_split, precision_recall_f1, robust_targets, soft_cross_entropy)


def test_compensation_loss_hand_value_masks_the_label():
    t = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 7.0]])
    y = torch.tensor([0, 2])
    # row 0 without class 0: 2^2 + 3^2 = 13; row 1 without class 2: 1 + 1 = 2; divided by B*C - 1 = 5
    assert compensation_loss(t, s, y).item() == pytest.approx(15 / 5)


def test_compensation_loss_trains_both_networks_and_never_sees_the_label_class():
    t = torch.randn(4, 5, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 3, 3, 4])
    compensation_loss(t, s, y).backward()
    rows = torch.arange(4)
    assert torch.all(t.grad[rows, y] == 0) and torch.all(s.grad[rows, y] == 0)
    other = torch.ones(4, 5, dtype=torch.bool)
    other[rows, y] = False
    assert torch.all(t.grad[other] != 0) and torch.all(s.grad[other] != 0)
    assert torch.allclose(t.grad, -s.grad)  # d/dt (t - s)^2 = -d/ds (t - s)^2


def test_agreement_hand_value_and_formula():
    t = torch.tensor([[0.0, math.log(2.0)]])  # p_t = (1/3, 2/3)
    s = torch.tensor([[5.0, 5.0]])  # p_s = (1/2, 1/2)
    assert torch.allclose(agreement(t, s), torch.tensor([[1 / 3, 2 / 3]]))
    t, s = torch.randn(8, 10), torch.randn(8, 10)
    product = t.softmax(1) * s.softmax(1)
    assert torch.allclose(agreement(t, s), product / product.sum(1, keepdim=True), atol=1e-6)


def test_agreement_survives_tiny_probabilities():
    t = torch.tensor([[200.0, -200.0, 0.0]])
    s = torch.tensor([[-200.0, 200.0, 0.0]])  # the plain product underflows to 0/0 in fp32
    p = agreement(t, s)
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)


def test_robust_targets_hand_value():
    y = torch.tensor([0, 1])
    s = torch.tensor([[3.0, 3.0], [3.0, 3.0]])  # p_s = (1/2, 1/2)
    r = robust_targets(y, torch.softmax(s, dim=1), torch.tensor([0.5, 0.0]))
    # alpha 0.5: (0.5 * (1, 0) + 0.5 * (0.5, 0.5)) ** 1.5 = (0.75 ** 1.5, 0.25 ** 1.5), normalised
    a, b = 0.75 ** 1.5, 0.25 ** 1.5
    assert torch.allclose(r[0], torch.tensor([a / (a + b), b / (a + b)]))
    assert torch.equal(r[1], torch.tensor([0.0, 1.0]))  # alpha 0 is the one-hot label


def test_robust_targets_reach_the_student_unless_alpha_is_zero():
    y = torch.tensor([1, 2])
    t = torch.randn(2, 4, requires_grad=True)
    s = torch.randn(2, 4, requires_grad=True)
    soft_cross_entropy(t, robust_targets(y, torch.softmax(s, dim=1), torch.tensor([0.3, 0.0]))).backward()
    assert torch.any(s.grad[0] != 0)  # p_s is not detached, as in the reference
    assert torch.all(s.grad[1] == 0)


def test_soft_cross_entropy_of_one_hot_is_cross_entropy():
    t, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert torch.allclose(soft_cross_entropy(t, F.one_hot(y, 10).float()), F.cross_entropy(t, y))


def test_otsu_split_two_clusters_hand_value():
    values = np.array([0.1005] * 30 + [0.9005] * 70)  # bins 100 and 900
    upper_mean, upper_sigma, lower_mean, lower_sigma, threshold = otsu_split(values)
    assert upper_mean == pytest.approx(0.9) and lower_mean == pytest.approx(0.1)
    assert upper_sigma == pytest.approx(math.sqrt(1e-5)) and lower_sigma == pytest.approx(math.sqrt(1e-5))
    assert threshold == pytest.approx(0.101)  # every cut 101..900 scores the same: the first one wins


def test_otsu_split_matches_the_spec_formula():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.beta(2, 8, 300), rng.beta(9, 2, 700)])
    h = np.histogram(values, bins=1000, range=(0, 1))[0]
    v, mu = np.arange(1000) / 1000, values.mean()
    scores = np.zeros(998)
    for cut in range(2, 998):
        n1, n2 = h[:cut].sum(), h[cut:].sum()
        if n1 == 0 or n2 == 0:
            scores[cut] = -1e7
            continue
        m1, m2 = (h[:cut] * v[:cut]).sum() / n1, (h[cut:] * v[cut:]).sum() / n2
        s1 = math.sqrt(max((h[:cut] * (v[:cut] - m1) ** 2).sum() / n1, 1e-5))
        s2 = math.sqrt(max((h[cut:] * (v[cut:] - m2) ** 2).sum() / n2, 1e-5))
        scores[cut] = (n1 * (m1 - mu) ** 2 + n2 * (m2 - mu) ** 2) / (n1 * s1 + n2 * s2)
    cut = int(np.argmax(scores))
    split = otsu_split(values)
    assert split[4] == pytest.approx(cut / 1000)
    assert split[2] == pytest.approx((h[:cut] * v[:cut]).sum() / h[:cut].sum())
    assert split[0] == pytest.approx((h[cut:] * v[cut:]).sum() / h[cut:].sum())
    assert 0.2 < split[4] < 0.8


def test_otsu_split_puts_exactly_one_in_the_last_bin():
    split = otsu_split([0.2] * 5 + [1.0] * 5)
    assert split[0] == pytest.approx(0.999) and split[2] == pytest.approx(0.2)


def test_otsu_split_skips_the_cuts_with_an_empty_side_quietly():
    """Cuts below the lowest value or above the highest are skipped, not scored as 0 / 0 (a numpy warning in every
    run's log, and a NaN score)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = otsu_split([0.3] * 5 + [0.6] * 5)
    assert split[2] == pytest.approx(0.3) and split[0] == pytest.approx(0.6)


@pytest.mark.parametrize("values", [[0.5] * 10, [1.0] * 4, [0.0, 0.0015], [0.9985, 0.999, 1.0]])
def test_otsu_split_refuses_values_no_cut_separates(values):
    with pytest.raises(DegenerateSplit):
        otsu_split(values)


def test_assign_groups_boundaries():
    split = (0.8, 0.05, 0.2, 0.05, 0.5)  # upper mean, upper sigma, lower mean, lower sigma, threshold
    values = [0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9]
    assert assign_groups(values, split).tolist() == [4, 3, 3, 2, 2, 1, 1]


@pytest.mark.parametrize("history, expected", [
    ([1, 2, 9, 3, 2], None),  # fewer than 6 epochs
    ([1, 2, 5, 3, 2, 1], 2),
    ([1, 2, 3, 4, 5, 6], None),
    ([1, 2, 5, 5, 2, 1], None),  # strict: a plateau is no peak
    ([0, 1, 2, 2, 1, 0], None),  # ... nor either end of one
    ([5, 0, 3, 1, 0, 0], None),  # above both later epochs and the one before, not the one two before
    ([1, 2, 3, 4, 9, 1], None),  # a peak needs two later epochs
    ([1, 2, 3, 4, 9, 1, 0], 4),
    ([1, 5, 2, 3, 6, 4, 3, 7, 8, 9], 4),  # index 1 has only one epoch before it
    ([0.5, 0.6, 0.8, 0.7, 0.9, 0.6], None),  # 0.8 is beaten two epochs later, 0.9 needs one more epoch
    ([0.5, 0.6, 0.8, 0.7, 0.9, 0.6, 0.5], 4),
])
def test_find_tipping_epoch(history, expected):
    assert find_tipping_epoch(history) == expected


def test_precision_recall_f1_hand_values():
    assert precision_recall_f1([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, 0.5, 0.5)
    p, r, f = precision_recall_f1([1, 1, 1, 0], [1, 1, 0, 0])
    assert (p, r, f) == pytest.approx((2 / 3, 1.0, 0.8))
    assert precision_recall_f1([0, 0], [1, 0]) == (0.0, 0.0, 0.0)
    flag_all = precision_recall_f1(np.ones(1000), np.arange(1000) < 400)
    assert flag_all[2] == pytest.approx(2 * 0.4 / 1.4)  # 0.571: the F1 of flagging everything at 40 % noise
