"""Which labels to flag, from the pass of the tipping epoch: cuts of BKD's per-class agreement probabilities.

Every cut is a pure function (agreement probabilities (N, C), given labels (N,)) -> bool (N,), True = flagged as
wrong. `g4` is the reference's (the lowest group of the modified Otsu split of the agreement on the given label,
what detection.npy holds); FLAGGED_CUT (flag_labels, which also weighs the teacher's predictions of the last
passes) is what label_issues.csv flags and review.html shows, chosen by tools/flag_study.py (docs/detection.md).
numpy only."""
import numpy as np

from utils.bkd import DegenerateSplit, assign_groups, otsu_split


def probabilities(teacher_logits, student_logits):
    """(agreement probabilities softmax(t + s), student probabilities softmax(s)), float64 (N, C) each."""
    def softmax(z):
        z = np.asarray(z, dtype=np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return softmax(np.asarray(teacher_logits) + np.asarray(student_logits)), softmax(student_logits)


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


def disagree(probs, labels):
    """The suggested label (the agreement's argmax) is not the given one."""
    return probs.argmax(axis=1) != labels


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


TEACHER_SPARES = 1  # the teacher may accept the given label in this many of the last passes, and no more


# what label_issues.csv flags (docs/detection.md)
FLAGGED_CUT = "suggested label != given, the teacher predicting another class in all but one of the last passes"


def flag_labels(recent_probs, labels, teacher_predictions, spares=TEACHER_SPARES):
    """The labels believed wrong: where the suggested label, the argmax of the agreement averaged over the last
    full-set passes (recent_probs, (N, C): each pass draws its own augmentation, and the networks move between
    epochs, so the average is steadier than one pass), is not the given one, and the teacher, the network trained on
    the given labels, predicted another class than the given one in all but `spares` of those passes
    (teacher_predictions, (passes, N)). The suggestion alone also disagrees with right labels of images the networks
    get wrong, which where few labels are wrong is much of what it flags; the teacher's steady refusal of the label
    leaves most of those out (tools/flag_study.py, docs/detection.md). bool (N,)."""
    labels, teacher_predictions = np.asarray(labels), np.asarray(teacher_predictions)
    refusals = np.sum(teacher_predictions != labels[None, :], axis=0)
    return disagree(np.asarray(recent_probs), labels) & (refusals >= len(teacher_predictions) - spares)
