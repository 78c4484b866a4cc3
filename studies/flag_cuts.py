"""The cuts studies/flag_study.py compares (study only: what ships is utils.flagging.flag_labels). Every cut is a pure
function (agreement probabilities (N, C), given labels (N,)) -> bool (N,), True = flagged as wrong: the reference's
G4, G3 + G4, the suggestion alone, confident learning (Northcutt, Jiang and Chuang, JAIR 2021) on BKD's
probabilities, and as many of the lowest agreements as another cut flags. numpy only."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.bkd import DegenerateSplit, assign_groups, otsu_split  # noqa: E402
from utils.flagging import disagree  # noqa: E402


def on_label(probs, labels):
    return probs[np.arange(len(labels)), labels]


def otsu_groups(probs, labels):
    """Group 1..4 of each sample under the modified Otsu split of the agreement on its label (all 1: no split)."""
    agree = on_label(probs, labels)
    try:
        return assign_groups(agree, otsu_split(agree))
    except DegenerateSplit:
        return np.ones(len(labels), dtype=np.int64)


def g4(probs, labels):
    """The reference's detection: the lowest Otsu group."""
    return otsu_groups(probs, labels) == 4


def g34(probs, labels):
    """The two lower Otsu groups: flagged and uncertain."""
    return otsu_groups(probs, labels) >= 3


def lowest(probs, labels, k):
    """The k samples of lowest agreement on their label."""
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[np.argsort(on_label(probs, labels), kind="stable")[:int(k)]] = True
    return flagged


def confident_class(probs, labels):
    """Confident learning's confident class of each sample (Northcutt, Jiang and Chuang, JAIR 2021): among the
    classes j whose probability reaches class j's threshold (the mean probability of j over the samples labelled j),
    the most probable; -1 where no class reaches its threshold."""
    num_classes = probs.shape[1]
    thresholds = np.array([probs[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(num_classes)])
    above = probs >= thresholds - 1e-6  # the mean itself counts, whatever its rounding
    confident = np.where(above, probs, -np.inf).argmax(axis=1)
    return np.where(above.any(axis=1), confident, -1)


def rounded_rows(matrix):
    """Whole numbers for a non-negative matrix, each row keeping its (rounded) total: floors, then the units left
    over to the largest remainders."""
    floor = np.floor(matrix).astype(np.int64)
    for i, row in enumerate(matrix):
        left = int(round(row.sum())) - floor[i].sum()
        if left > 0:
            floor[i, np.argsort(-(row - floor[i]), kind="stable")[:left]] += 1
    return floor


def confident_joint(probs, labels):
    """C[i, j]: how many samples labelled i have the confident class j, calibrated so that each row sums to the number
    of samples labelled i (confident learning's estimate of the joint of given and true labels, in counts)."""
    num_classes = probs.shape[1]
    confident = confident_class(probs, labels)
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (labels[confident >= 0], confident[confident >= 0]), 1)
    given = np.bincount(labels, minlength=num_classes)
    return rounded_rows(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-6) * given[:, None])


def prune_by_noise_rate(probs, labels):
    """Confident learning's pruning by noise rate: for every pair of a given class i and another class j, the C[i, j]
    samples labelled i (confident_joint) whose probability of j most exceeds that of i. Every class keeps at least
    one sample."""
    joint = confident_joint(probs, labels)
    flagged = np.zeros(len(labels), dtype=bool)
    for i in range(probs.shape[1]):
        members = np.flatnonzero(labels == i)
        off = joint[i].copy()
        off[i] = 0
        if off.sum() > len(members) - 1:  # at least one sample of the class stays
            off = rounded_rows(off[None, :] * (len(members) - 1) / off.sum())[0]
        for j in np.flatnonzero(off):
            margin = probs[members, j] - probs[members, i]
            flagged[members[np.argsort(-margin, kind="stable")[:off[j]]]] = True
    return flagged


def confident_learning(probs, labels):
    """Confident learning's off-diagonal: the confident class exists and is not the given label."""
    confident = confident_class(probs, labels)
    return (confident >= 0) & (confident != labels)


def lowest_disagree_count(probs, labels):
    """As many samples as disagree with their label, those of lowest agreement on it."""
    return lowest(probs, labels, disagree(probs, labels).sum())


def lowest_confident_count(probs, labels):
    """As many samples as confident learning counts off its diagonal, those of lowest agreement on their label."""
    return lowest(probs, labels, confident_learning(probs, labels).sum())


CUTS = {"g4": g4, "g3+g4": g34, "suggested != given": disagree, "confident learning": confident_learning,
        "confident learning, pruned by noise rate": prune_by_noise_rate,
        "lowest k, k = suggested != given": lowest_disagree_count,
        "lowest k, k = confident learning's count": lowest_confident_count}
