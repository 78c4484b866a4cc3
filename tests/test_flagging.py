"""The flagged cut of utils/flagging.py and the study's cuts of studies/flag_cuts.py on hand-computed examples: the
shipped cut (suggested label != given, on the agreement averaged over the last passes, the teacher refusing the
label in every one of them), confident learning's confident class, joint and pruning by noise rate (worked out by hand below), and, where
the study's cleanlab is installed, the pruning against cleanlab's own."""
import os
import sys

import numpy as np

from tests.conftest import ROOT
from utils.flagging import FLAGGED_CUT, TEACHER_SPARES, flag_labels

sys.path.insert(0, os.path.join(ROOT, "studies"))
from flag_cuts import (CUTS, confident_class, confident_joint, confident_learning, g4, lowest,  # noqa: E402
                       prune_by_noise_rate, rounded_rows)

LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
# thresholds: class 0 (0.9 + 0.6) / 2 = 0.75, class 1 (0.7 + 0.2) / 2 = 0.45. Sample 0 reaches only 0's, sample 1
# neither, sample 2 only 1's, sample 3 only 0's: confident classes 0, -1, 1, 0. Joint: labelled 0 -> [1, 0] (sample 1
# has none), labelled 1 -> [1, 1]; calibrated to 2 samples per class: [[2, 0], [1, 1]]. Pruning: one sample labelled
# 1 goes, the one whose p(0) - p(1) is largest: sample 3 (0.6 against -0.4).


def test_the_flagged_cut_is_the_suggestion_of_the_averaged_passes_where_the_teacher_refuses_the_label():
    labels = np.array([0, 1, 2])
    passes = np.array([
        [[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],  # one pass: sample 0 suggests 1
        [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]],  # another: sample 0 suggests 0, sample 2 suggests 0
        [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]])
    refusing = np.array([[1, 1, 2]] * 3)  # in every pass the teacher predicts another class for sample 0 only
    # averaged: sample 0 (0.467, 0.433, 0.1) keeps its label, sample 2 (0.233, 0.1, 0.667) too: nothing flagged,
    # where the middle pass alone flags sample 2 and the first alone flags sample 0
    assert not flag_labels(passes.mean(axis=0), labels, refusing).any()
    assert flag_labels(passes[0], labels, refusing).tolist() == [True, False, False]
    # sample 2's suggestion differs in the middle pass, but the teacher accepts its label: not flagged
    assert flag_labels(passes[1], labels, refusing).tolist() == [False, False, False]
    assert flag_labels(passes[1], labels, [[0, 1, 0]] * 3).tolist() == [False, False, True]
    assert FLAGGED_CUT.startswith("suggested label != given") and set(CUTS) >= {"g4", "suggested != given"}


def test_the_teacher_must_refuse_the_label_in_every_one_of_the_last_passes():
    labels = np.array([0, 0, 0, 1])
    probs = np.array([[0.1, 0.9]] * 3 + [[0.9, 0.1]])  # every suggestion differs from its label
    teacher = np.array([[1, 1, 0, 0],  # 5 passes of the teacher's predicted classes
                        [1, 1, 0, 0],
                        [1, 1, 1, 1],
                        [1, 0, 0, 0],
                        [1, 1, 0, 0]])
    # refusals: sample 0 in all 5, sample 1 in 4 (all but one), sample 2 in 1, sample 3 (label 1) in 4
    assert TEACHER_SPARES == 0
    assert flag_labels(probs, labels, teacher).tolist() == [True, False, False, False]
    assert flag_labels(probs, labels, teacher, spares=1).tolist() == [True, True, False, True]  # the previous cut
    assert flag_labels(probs, labels, teacher[2:3]).tolist() == [True, True, True, False]  # one pass: that one
    assert not flag_labels(np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]]), labels, teacher).any()  # suggestions agree


def test_confident_learning_by_hand():
    assert confident_class(PROBS, LABELS).tolist() == [0, -1, 1, 0]
    assert confident_learning(PROBS, LABELS).tolist() == [False, False, False, True]
    assert confident_joint(PROBS, LABELS).tolist() == [[2, 0], [1, 1]]
    assert prune_by_noise_rate(PROBS, LABELS).tolist() == [False, False, False, True]


def test_pruning_keeps_a_sample_of_every_class():
    """Every sample labelled 0 confidently belongs to 1: the joint moves both, the pruning only one (the first of
    the tie), so that class 0 keeps a sample."""
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.05, 0.95], [0.05, 0.95], [0.1, 0.9], [0.1, 0.9]])
    assert confident_joint(probs, labels).tolist() == [[0, 2], [0, 2]]
    assert prune_by_noise_rate(probs, labels).tolist() == [True, False, False, False]


def test_rounded_rows_keep_their_totals():
    assert rounded_rows(np.array([[0.4, 0.4, 0.2]])).tolist() == [[1, 0, 0]]  # the largest remainder, first of a tie
    assert rounded_rows(np.array([[1.5, 2.5], [3.0, 0.0]])).tolist() == [[2, 2], [3, 0]]
    rows = np.random.RandomState(0).dirichlet(np.ones(5), size=20) * 37
    assert np.array_equal(rounded_rows(rows).sum(axis=1), np.full(20, 37))


def test_lowest_and_g4():
    labels = np.zeros(6, dtype=np.int64)
    agree = np.array([0.5, 0.01, 0.9, 0.01, 0.95, 0.02])
    probs = np.stack([agree, 1 - agree], axis=1)
    assert lowest(probs, labels, 2).tolist() == [False, True, False, True, False, False]  # ties by index
    # Otsu splits {0.01, 0.01, 0.02} from {0.5, 0.9, 0.95}; group 4 lies below the lower mean, 0.0133: 0.02 is group 3
    assert g4(probs, labels).tolist() == [False, True, False, True, False, False]


# What cleanlab 2.9.0's find_label_issues(labels, probs, filter_by="prune_by_noise_rate") flags on the data set of the
# test below (numpy's RandomState(0), whose stream is frozen): recorded once from cleanlab itself, so that the
# comparison runs where cleanlab, a study dependency only, is not installed (CI).
CLEANLAB_2_9_FLAGS = (
    1, 5, 10, 12, 26, 28, 35, 41, 53, 64, 68, 70, 78, 83, 115, 118, 121, 123, 125, 143, 149, 152, 154, 164, 166, 174,
    183, 187, 207, 213, 216, 219, 222, 252, 256, 263, 275, 277, 281, 282, 285, 287, 294, 298, 306, 319, 325, 329, 335,
    336, 340, 342, 352, 356, 370, 373, 376, 377, 396, 410, 420, 425, 428, 435, 442, 443, 444, 446, 450, 453, 455, 467,
    483, 495, 498, 509, 510, 514, 519, 523, 525, 534, 540, 558, 586, 588, 593, 600, 618, 619, 625, 627, 629, 632, 634,
    643, 657, 679, 682, 689, 692, 694, 708, 722, 723, 738, 742, 754, 755, 766, 768, 774, 778, 786, 787, 799, 805, 806,
    811, 817, 829, 830, 831, 837, 844, 845, 849, 852, 859, 861, 863, 864, 880, 881, 895, 898, 934, 937, 939, 940, 942,
    945, 947, 951, 958, 960, 966, 986, 987)


def pruning_data():
    rng = np.random.RandomState(0)
    true = rng.randint(0, 5, size=1000)
    labels = np.where(rng.rand(1000) < 0.2, rng.randint(0, 5, size=1000), true)
    logits = rng.randn(1000, 5) + 3 * np.eye(5)[true]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_pruning_matches_cleanlab():
    """Our numpy pruning flags the images cleanlab's find_label_issues(filter_by='prune_by_noise_rate') flags:
    exactly cleanlab 2.9.0's flags recorded above, and, against the installed cleanlab where there is one, all but a
    few per thousand (rounding may differ between its versions)."""
    labels, probs = pruning_data()
    ours = prune_by_noise_rate(probs, labels)
    assert np.flatnonzero(ours).tolist() == list(CLEANLAB_2_9_FLAGS)
    try:
        import cleanlab.filter
    except ImportError:
        return
    theirs = cleanlab.filter.find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    assert np.sum(ours != theirs) <= 0.01 * len(labels), (ours.sum(), theirs.sum())
