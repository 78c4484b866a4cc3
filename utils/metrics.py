"""Threshold-free quality of a detection score against the ground truth: AUROC, average precision, precision at k,
and how often the suggested label is the true one. numpy and scipy only (no torch), so every script can use it.

Every ranking function takes a `suspicion` (higher = more likely mislabelled) and a boolean `positive` (truly
mislabelled). BKD's detection score is the agreement on the given label, where LOW is suspicious, so callers
pass suspicion = -agreement. Ties are never broken by position: tied samples count as one block (see each
function), so the numbers do not depend on the order of the data set."""
import math

import numpy as np

from utils.bkd import precision_recall_f1


def auroc(suspicion, positive):
    """Area under the ROC curve: the probability that a random positive is more suspicious than a random negative,
    a tied pair counting one half (Mann-Whitney U over midranks). nan without positives or without negatives."""
    suspicion, positive = np.asarray(suspicion, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy import stats  # here, not at the top: scipy.stats takes a second to import, every script imports this
    ranks = stats.rankdata(suspicion)  # tied values share their mean rank: each tied pair adds 1/2
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def precision_recall_curve(suspicion, positive):
    """(precision, recall, threshold) arrays, one entry per distinct suspicion value from the highest down:
    flagging every sample with suspicion >= threshold. Tied samples are flagged together. Recall is nan without
    positives."""
    suspicion, positive = np.asarray(suspicion, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-suspicion, kind="stable")
    s, hits = suspicion[order], np.cumsum(positive[order])
    last_of_block = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)  # end of each tie block
    flagged = np.flatnonzero(last_of_block) + 1
    true_pos = hits[last_of_block]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = true_pos / positive.sum()
    return true_pos / flagged, recall, s[last_of_block]


def average_precision(suspicion, positive):
    """Sum over the distinct thresholds of (recall gained) x (precision there), as scikit-learn computes it: all
    samples of one suspicion value enter together. nan without positives."""
    precision, recall, _ = precision_recall_curve(suspicion, positive)
    if recall.size == 0 or math.isnan(recall[-1]):
        return math.nan
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def precision_at_k(suspicion, positive, k):
    """Fraction of positives among the k most suspicious samples. Where the k-th place falls inside a block of tied
    values, the block's remaining places are filled with its positive fraction (the mean over every order of the
    tie). nan for k = 0."""
    suspicion, positive = np.asarray(suspicion, dtype=np.float64), np.asarray(positive, dtype=bool)
    k = min(int(k), suspicion.size)
    if k <= 0:
        return math.nan
    boundary = np.sort(suspicion)[::-1][k - 1]  # suspicion of the k-th place
    above = suspicion > boundary
    tied = suspicion == boundary
    hits = positive[above].sum() + (k - above.sum()) * positive[tied].mean()
    return float(hits / k)


def _json_number(x):
    """A float for JSON: None where the value is undefined (nan), since JSON has no nan."""
    return None if math.isnan(x) else float(x)


def detection_report(flagged, scores, truly_noisy, suggested=None, clean_labels=None):
    """Every detection number of a run as plain Python values (JSON-ready; undefined ones are None): `flagged`
    (bool per image), `scores` (agreement on the given label, low = suspicious; None: no ranking numbers),
    `truly_noisy` (bool, or None when the ground truth is unknown: then only the counts), and optionally the
    suggested and the clean labels."""
    flagged = np.asarray(flagged, dtype=bool)
    report = dict(images=int(flagged.size), flagged=int(flagged.sum()))
    if truly_noisy is None:
        return report
    truly_noisy = np.asarray(truly_noisy, dtype=bool)
    precision, recall, f1 = precision_recall_f1(flagged, truly_noisy)
    k = int(truly_noisy.sum())
    report.update(truly_noisy=k, precision=precision, recall=recall, f1=f1)
    if scores is not None:
        suspicion = -np.asarray(scores, dtype=np.float64)
        report.update(auroc=_json_number(auroc(suspicion, truly_noisy)),
                      average_precision=_json_number(average_precision(suspicion, truly_noisy)),
                      precision_at_k=_json_number(precision_at_k(suspicion, truly_noisy, k)), k=k)
    if suggested is not None and clean_labels is not None:
        caught = flagged & truly_noisy  # flagged and truly mislabelled: would relabelling them fix them?
        correct = int(np.sum(np.asarray(suggested)[caught] == np.asarray(clean_labels)[caught]))
        report.update(suggestion_accuracy=correct / int(caught.sum()) if caught.any() else None,
                      suggestion_correct=correct, flagged_truly_noisy=int(caught.sum()))
    return report
