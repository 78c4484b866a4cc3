"""The pieces of Blind Knowledge Distillation (arXiv:2211.11355) as small, pure functions.

Every function here is what `../shared/BKD_SPEC.md` section 3 describes, and nothing else:
the training script only wires them together. Gradients flow exactly as in the reference
implementation (nothing is detached unless the docstring says so).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

OTSU_BINS = 1000
OTSU_VARIANCE_FLOOR = 1e-5


class DegenerateSplit(ValueError):
    """No Otsu cut separates the values (they all sit at one end of [0, 1])."""


def compensation_loss(teacher_logits, student_logits, labels):
    """Blind compensation loss: squared teacher-student logit difference summed over the batch and every
    class except the label's own, divided by (B * C - 1) as in the reference. Trains both networks."""
    batch, n_class = teacher_logits.shape
    blind = torch.ones_like(teacher_logits).scatter_(1, labels[:, None], 0.0)  # 0 at the given label
    return ((teacher_logits - student_logits) ** 2 * blind).sum() / (batch * n_class - 1)


def agreement(teacher_logits, student_logits):
    """Teacher-student agreement p_t * p_s / sum_c(p_t * p_s), shape (B, C).

    Computed as softmax(t + s), which is the same quantity (the log-partition terms cancel in the
    normalisation) without underflow when both probabilities are tiny."""
    return torch.softmax(teacher_logits + student_logits, dim=1)


def robust_targets(labels, student_probs, alphas):
    """Soft teacher targets r = ((1 - a) * onehot(y) + a * p_s) ** (1 + a), normalised to sum 1.

    `student_probs` is p_s = softmax(student logits); `alphas` holds one weight per sample (0 gives the plain one-hot
    label). p_s is not detached, as in the reference, so the teacher's cross-entropy also reaches the student
    through these targets."""
    n_class = student_probs.shape[1]
    onehot = F.one_hot(labels, n_class).to(student_probs.dtype)
    a = alphas.to(student_probs.dtype)[:, None]
    r = ((1 - a) * onehot + a * student_probs) ** (1 + a)
    return r / r.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits, targets):
    """Mean over the batch of -sum_c target_c * log_softmax(logits)_c (equals cross-entropy for one-hot)."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def otsu_split(values):
    """Modified Otsu threshold on values in [0, 1]: (upper_mean, upper_sigma, lower_mean, lower_sigma,
    threshold) as floats. Raises DegenerateSplit when no cut in 2..997 has samples on both sides."""
    values = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    hist = np.histogram(values, bins=OTSU_BINS, range=(0.0, 1.0))[0].astype(np.float64)
    bin_value = np.arange(OTSU_BINS) / OTSU_BINS
    mu = values.mean()

    def side(h, v):  # count, count-weighted mean bin value, floored standard deviation
        n = h.sum()
        mean = (h * v).sum() / n
        return n, mean, math.sqrt(max((h * (v - mean) ** 2).sum() / n, OTSU_VARIANCE_FLOOR))

    best_score, best = 0.0, None  # cuts 0 and 1 score 0 and can never be used
    for cut in range(2, OTSU_BINS - 2):
        if hist[:cut].sum() == 0 or hist[cut:].sum() == 0:
            continue  # the reference scores this cut -1e7: it never wins over a valid cut
        n1, mu1, sigma1 = side(hist[:cut], bin_value[:cut])
        n2, mu2, sigma2 = side(hist[cut:], bin_value[cut:])
        score = (n1 * (mu1 - mu) ** 2 + n2 * (mu2 - mu) ** 2) / (n1 * sigma1 + n2 * sigma2)
        if score > best_score:  # strict: the first cut with the highest score wins
            best_score, best = score, (mu2, sigma2, mu1, sigma1, cut / OTSU_BINS)
    if best is None:
        raise DegenerateSplit(f"all {values.size} values lie at one end of [0, 1] "
                              f"(min {values.min():.4f}, max {values.max():.4f}); no threshold separates them")
    return tuple(float(x) for x in best)


def assign_groups(values, split):
    """Group of each value under an Otsu split: 1 p >= upper_mean; 2 threshold <= p < upper_mean;
    3 lower_mean <= p < threshold; 4 p < lower_mean. Returns an int64 numpy array."""
    upper_mean, _, lower_mean, _, threshold = split
    values = np.asarray(values, dtype=np.float64)
    groups = np.full(values.shape, 2, dtype=np.int64)
    groups[values >= upper_mean] = 1
    groups[values < threshold] = 3
    groups[values < lower_mean] = 4
    return groups


def find_tipping_epoch(history):
    """First epoch i (2 <= i <= len - 3) whose student confidence is strictly above both neighbours on
    each side; None while fewer than 6 epochs are known or no such epoch exists."""
    x = list(history)
    if len(x) < 6:
        return None
    for i in range(2, len(x) - 2):
        if x[i] > x[i - 1] and x[i] > x[i - 2] and x[i] > x[i + 1] and x[i] > x[i + 2]:
            return i
    return None


def precision_recall_f1(flagged, truly_noisy):
    """Detection scores of a boolean flag array against the boolean ground truth: precision = TP / flagged,
    recall = TP / truly noisy, F1 = 2PR / (P + R); each is 0 where its denominator is 0."""
    flagged = np.asarray(flagged, dtype=bool)
    truly_noisy = np.asarray(truly_noisy, dtype=bool)
    hits = int(np.sum(flagged & truly_noisy))
    precision = hits / flagged.sum() if flagged.sum() else 0.0
    recall = hits / truly_noisy.sum() if truly_noisy.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)
