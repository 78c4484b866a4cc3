"""Tipping-point rules: when to split. Pure functions of what a run records per epoch: the student's confidence and
the training fit (the mean agreement on the given labels during the epoch's training steps).

Each rule returns None (no split yet) or a Tipping: the tipping epoch, and the evidence it was found on, in words for
the log and metrics.json.
- `plateau` (the default): learning has stopped rising. Over the last PATIENCE epochs the student's confidence rose
  no more than MARGIN times its own epoch-to-epoch noise above every epoch before them, and the training fit no
  more than FIT_SHARE of its whole rise so far; the tipping epoch is the highest confidence of the last PATIENCE + 1
  epochs. A real turn (the confidence falls) and a plateau both end the rise; a wiggle of a rising curve does not,
  and neither does a confidence that stalls while the networks still learn the labels (the training fit still
  climbing). Chosen by studies/tipping_study.py (studies/tipping_study.md).
- `reference`: the reference implementation's rule (utils.bkd.find_tipping_epoch), the first epoch whose confidence
  is strictly above its two neighbours on each side, for numbers to compare with the paper. It fires on wiggles.
- `none`: never split (plain one-hot training throughout, nothing flagged: a baseline, and the recording runs of
  studies/tipping_study.py)."""
from typing import NamedTuple

import numpy as np

from utils.bkd import find_tipping_epoch

PATIENCE = 4  # epochs without a rise
MARGIN = 3.0  # the confidence rises when it gains more than this many noise levels
FIT_SHARE = 0.01  # the training fit rises when it gains more than this share of its whole rise so far
MIN_EPOCHS = 6  # no rule decides on fewer epochs (the reference's own minimum)


class Tipping(NamedTuple):
    epoch: int  # the tipping epoch: its recorded agreements are split
    evidence: str  # why, in words


def noise_level(history):
    """The curve's own epoch-to-epoch noise: a robust standard deviation from its second differences, which a steady
    rise or fall cancels: 1.4826 * MAD / sqrt(6) (a second difference of white noise of variance s^2 has 6 s^2)."""
    d2 = np.diff(np.asarray(history, dtype=np.float64), 2)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6)) if d2.size else 0.0


def recent_rise(history, patience=PATIENCE):
    """(how far the last `patience` epochs rose above every epoch before them, the curve's noise level)."""
    x = np.asarray(history, dtype=np.float64)
    return float(x[-patience:].max() - x[:-patience].max()), noise_level(x)


def fit_rise(fit, patience=PATIENCE):
    """(how far the last `patience` epochs of the training fit rose above every epoch before them, its whole rise so
    far: highest minus first). The fit is a smooth curve (a mean over every step of an epoch), but early in training
    its bends are large, which a noise level estimated from the curve would take for noise: measure it against
    its own rise instead."""
    x = np.asarray(fit, dtype=np.float64)
    return float(x[-patience:].max() - x[:-patience].max()), float(x.max() - x[0])


def plateau_rule(confidence, fit, patience=PATIENCE, margin=MARGIN, fit_share=FIT_SHARE):
    """The highest confidence of the last patience + 1 epochs, once over the last `patience` epochs the confidence rose
    no more than `margin` noise levels and the training fit no more than `fit_share` of its whole rise above every
    epoch before them; None before that (and while fewer than max(6, patience + 1) epochs are known)."""
    x = np.asarray(confidence, dtype=np.float64)
    if len(x) < max(MIN_EPOCHS, patience + 1):
        return None
    rise, noise = recent_rise(x, patience)
    learnt, so_far = fit_rise(fit, patience)
    if rise > margin * noise or learnt > fit_share * so_far:
        return None
    epoch = len(x) - 1 - patience + int(np.argmax(x[-patience - 1:]))
    turn = x[epoch] - x[-1]
    return Tipping(epoch, f"learning stopped rising: over the last {patience} epochs (up to epoch {len(x) - 1}) the "
                          f"student confidence rose {rise:+.4f}, within {margin:g} noise levels ({margin * noise:.4f}), "
                          f"and the training fit {learnt:+.4f}, within {fit_share:.0%} of its rise so far "
                          f"({so_far:.4f}); highest confidence {x[epoch]:.4f} at epoch {epoch}, "
                          + (f"then it fell {turn:.4f}: a turn" if turn > max(2 * margin * noise, 0.05 * (x.max() - x[0]))
                             else f"now {x[-1]:.4f}: a plateau"))


def reference_rule(history, fit=None):
    """The reference's rule: the first epoch strictly above both neighbours on each side (the fit is not used)."""
    epoch = find_tipping_epoch(history)
    if epoch is None:
        return None
    x = history
    return Tipping(epoch, f"student confidence {x[epoch]:.4f} at epoch {epoch} above its two neighbours on each side "
                          f"({', '.join(f'{v:.4f}' for v in x[epoch - 2:epoch])} before, "
                          f"{', '.join(f'{v:.4f}' for v in x[epoch + 1:epoch + 3])} after)")


def never_rule(history, fit=None):
    return None


# name: (rule, the most epochs a tipping epoch can be old when the rule finds it)
TIPPING_RULES = {"plateau": (plateau_rule, PATIENCE), "reference": (reference_rule, 2), "none": (never_rule, 0)}
DEFAULT_RULE = "plateau"


def find_tipping(rule, confidence, fit):
    """The Tipping the rule named `rule` finds in the histories of the student's confidence and of the training fit
    (one entry per epoch each), or None."""
    return TIPPING_RULES[rule][0](list(confidence), list(fit))


def history_slots(rule):
    """How many epochs of per-sample records a run keeps so that the tipping epoch's are still there when the rule
    finds it (it is found at the end of a later epoch, whose own records are the newest): at least 4, as before."""
    return max(4, TIPPING_RULES[rule][1] + 1)


def held_passes(rule, tipping, found):
    """The epochs of the full-set passes a run of `rule` holds when it splits at the end of epoch `found` with tipping
    epoch `tipping`, oldest first: history_slots(rule) of them, the newest the found epoch's own pass only where it
    is the tipping epoch (a run makes no pass at the end of an epoch that cannot be the tipping one). What a replay
    of recorded passes needs; a run records its own in metrics.json (label_issues_passes)."""
    newest = found if tipping == found else found - 1
    return list(range(newest - history_slots(rule) + 1, newest + 1))


LEARNT_SHARE = 0.1  # a pair whose training fit is within this share of the way from chance to 1, on a log scale,
# has not learnt yet (on a linear scale, healthy plateaus of many classes or mostly wrong labels fell below the line)


def premature_split(confidence, fit, num_classes, patience=PATIENCE):
    """At a split, by the curves alone (never the ground truth): a sentence saying why the split looks premature (the
    networks had not learnt yet), or None. Either of
    - learning was clearly still rising: over the last `patience` epochs the confidence rose twice the margin the
      plateau rule waits for, or the training fit five times its share (the reference rule's early splits; a plateau
      split cannot be one, since it waited for less);
    - nothing was learnt: the training fit, the mean agreement on the given labels, is still within LEARNT_SHARE of
      the way from chance (1 / num_classes, what two untrained networks agree on) to 1 on a log scale, below
      chance ** (1 - LEARNT_SHARE): 0.126 for 10 classes, 0.016 for 100. Flat curves pass for a plateau, so this is
      the warning a plateau split can carry (a learning rate too small, or far too large).
    The histories end with the epoch the split was made at."""
    patience = min(patience, len(confidence) - 1)  # a split after fewer epochs: are the curves above their first epoch?
    reasons = []
    rise, noise = recent_rise(confidence, patience)
    if rise > 2 * MARGIN * noise:
        reasons.append(f"the student confidence rose {rise:+.4f}" + (f" ({rise / noise:.1f} noise levels)" if noise else ""))
    learnt, so_far = fit_rise(fit, patience)
    if learnt > 5 * FIT_SHARE * so_far:
        reasons.append(f"the training fit rose {learnt:+.4f} ({learnt / so_far:.0%} of its rise so far)")
    epoch = len(confidence) - 1
    if reasons:
        return (f"learning was still rising when the split was made (epoch {epoch}): over the last {patience} "
                f"epochs {' and '.join(reasons)}")
    chance = 1.0 / num_classes
    if fit[-1] < chance ** (1 - LEARNT_SHARE):
        return (f"nothing was learnt yet when the split was made (epoch {epoch}): the training fit is {fit[-1]:.4f}, "
                f"within {LEARNT_SHARE:.0%} of the way from chance ({chance:.4f}, {num_classes} classes) to 1 on a log "
                f"scale (below {chance ** (1 - LEARNT_SHARE):.4f}); check the learning rate and the data")
    return None
