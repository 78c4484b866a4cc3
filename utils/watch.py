"""After the split: are the soft targets making the networks worse? A run watches its noisy-validation accuracy every
epoch (the pair's agreement prediction against the validation split's own, noisy, labels: no ground truth). Once it
has split, it compares the mean of the epochs after the split with the plateau the split was made on (the mean of
the last BASELINE epochs up to it), in units of the curve's own epoch-to-epoch noise (utils.tipping.noise_level, at
least NOISE_FLOOR points): `z = (after - before) / (noise * sqrt(1 / BASELINE + 1 / epochs after))`.

- Below -WARN_Z, the accuracy fell clearly: a WARNING at that epoch and in the final summary (kept in metrics.json),
  naming learning.py --checkpoint best, under every tipping rule.
- The guard (the default rule only; never the reference's, the paper's method): if within GUARD_EPOCHS epochs of the
  split z falls below -GUARD_Z, the run goes back to the networks and the optimizer of the split and to the given
  labels (one-hot targets) for the rest of the schedule, and says so. Such a run is the no-split run from the split
  on (a few epochs later); its detection at the split stands (with --judge final its final teacher still judges
  unless it memorised the split's flags: utils.findings).
- Where the guard is off (the reference recipe, --no-guard, another rule), a WARNING at the epoch where it would have
  gone back, naming what would have turned it on: the run itself goes on with the soft targets.
- A collapse, under every rule: when in COLLAPSE_EPOCHS epochs in a row after the split the pair puts more of the
  validation images in one class than halfway from the given labels' largest class share to all of them, a WARNING
  naming learning.py --checkpoint best and --tipping_rule none. A run split before its networks learnt can end
  predicting one class without a fall to see (its level before the split was near chance). A sign only: nothing
  goes back on it.
Chosen by studies/learning_study.py (studies/learning_study.md). Without a validation split (--val_ratio 0) nothing is watched."""
import math

import numpy as np
import torch

from utils.tipping import noise_level

BASELINE = 5  # epochs up to the split whose mean noisy-validation accuracy is the level the split was made on
GUARD_EPOCHS = 5  # the guard decides within this many epochs after the split
GUARD_Z = 1.5  # noise units below the level: the soft targets are making the networks worse
WARN_Z = 3.0  # noise units below the level: a warning, whatever the rule
NOISE_FLOOR = 0.25  # points: the least epoch-to-epoch noise assumed (a curve on a plateau can repeat one value)
COLLAPSE_EPOCHS = 2  # epochs in a row of predictions collapsed onto one class before the watch says so


def fall(val, split_epoch):
    """(z, the mean accuracy after the split, the level before it, the noise) of a noisy-validation curve (one value
    per epoch, in %) split at the end of epoch split_epoch; None before the first epoch after it."""
    val = np.asarray(val, dtype=np.float64)
    after = val[split_epoch + 1:]
    if not len(after):
        return None
    before = val[max(0, split_epoch + 1 - BASELINE):split_epoch + 1]
    noise = max(noise_level(val[:split_epoch + 1]), NOISE_FLOOR)
    z = (after.mean() - before.mean()) / (noise * math.sqrt(1 / len(before) + 1 / len(after)))
    return float(z), float(after.mean()), float(before.mean()), noise


FELL = "the noisy-validation accuracy fell after the split"  # how the warning begins
COLLAPSED = "the networks collapsed onto one class after the split"  # how the collapse's warning begins
GUARD_OFF = "the guard would have gone back to the networks of the split"  # how the note of a guard that is off begins


def collapse_level(label_share):
    """The share of the validation images in one predicted class above which the pair has collapsed: halfway from the
    largest share of a class in the given labels to all of them (0.56 for 9 balanced classes, 0.55 for 10)."""
    return label_share + (1 - label_share) / 2


def largest_share(classes):
    """The share of the samples in the most frequent class of an integer array or tensor."""
    classes = torch.as_tensor(classes)
    return torch.bincount(classes).max().item() / len(classes)


def collapsed_onto_one_class(predicted, labels):
    """Whether predictions put more of the samples in one class than collapse_level of the labels' largest share:
    the watch's measure, for a whole pass at once (the studies replay it on finished runs)."""
    return largest_share(predicted) > collapse_level(largest_share(labels))


def collapse(top_shares, label_share, split_epoch, epoch):
    """The collapse's warning sentence at `epoch`, or None: the shares of the validation images in the most predicted
    class (one per watched epoch, the newest last) above collapse_level in each of the last COLLAPSE_EPOCHS epochs,
    all of them after the split."""
    recent = top_shares[-COLLAPSE_EPOCHS:]
    level = collapse_level(label_share)
    if epoch - split_epoch < COLLAPSE_EPOCHS or len(recent) < COLLAPSE_EPOCHS or min(recent) <= level:
        return None
    return (f"{COLLAPSED} (epoch {split_epoch}): at epoch {epoch} they put {recent[-1]:.0%} of the validation images "
            f"in one class, while no class has more than {label_share:.0%} of their given labels, for "
            f"{COLLAPSE_EPOCHS} epochs in a row; if they stay so, the final networks are poor classifiers "
            f"(learning.py --checkpoint best evaluates those of the best epoch; --tipping_rule none trains the pair "
            f"without a split)")


def has_fallen(metrics):
    """Whether a run has warned that its noisy-validation accuracy fell after the split."""
    return any(w.startswith(FELL) for w in metrics["warnings"])


def has_collapsed(metrics):
    """Whether a run has warned that its networks collapsed onto one class after the split."""
    return any(w.startswith(COLLAPSED) for w in metrics["warnings"])


class Watch:
    """The noisy-validation curve of a run and what it says after the split. `guard`: whether the run may go back to
    the labels (the plateau rule, with a validation split); `guard_hint`: where it is off, why and what would turn it
    on (None: no note of where it would have acted)."""

    def __init__(self, guard, val_labels=None, guard_hint=None):
        self.guard, self.guard_hint = guard, guard_hint
        # the largest share of one class in the validation split's given labels (None: no collapse is watched)
        self.label_share = None if val_labels is None or not len(val_labels) else largest_share(val_labels)
        self.snapshot = None  # the networks and the optimizer at the split, while the guard may still act

    def keep(self, teacher, student, optimizer):
        """At the split: what the guard would go back to, the networks and the optimizer's momentum (in host memory,
        and in the state until the guard has decided)."""
        if self.guard:
            self.snapshot = dict(teacher=_to_cpu(teacher.state_dict()), student=_to_cpu(student.state_dict()),
                                 momentum=[_to_cpu(optimizer.state.get(p, {}).get("momentum_buffer"))
                                           for group in optimizer.param_groups for p in group["params"]])

    def check(self, metrics, epoch):
        """After an epoch of a run that has split: a warning sentence when the accuracy fell clearly (once), and
        whether to go back to the labels now. Keeps its reading in metrics['watch']."""
        split = metrics["tipping_found_epoch"]
        reading = fall([v for v in metrics["val_every_epoch"]], split)
        if reading is None:
            return None, False
        z, after, before, noise = reading
        metrics["watch"] = dict(epoch=epoch, z=z, after=after, before=before, noise=noise)
        warning = None
        if z < -WARN_Z and not has_fallen(metrics):
            warning = (f"{FELL} (epoch {split}): {after:.2f} % on average "
                       f"over the {epoch - split} epochs since, against {before:.2f} % over the {BASELINE} epochs up "
                       f"to it ({-z:.1f} times its noise); the final networks may be worse than those of the best "
                       f"epoch (learning.py --checkpoint best)")
        back = self.guard and self.snapshot is not None and z < -GUARD_Z and epoch - split <= GUARD_EPOCHS
        if epoch - split >= GUARD_EPOCHS and not back:
            self.snapshot = None  # the guard has decided to stay: no more to keep (go_back drops it otherwise)
        return warning, back

    def unguarded(self, metrics, epoch):
        """Where the guard is off: the note, once, at the first epoch at which it would have gone back (the reading
        check() kept in metrics['watch'] for this epoch), or None."""
        reading, split = metrics.get("watch"), metrics["tipping_found_epoch"]
        if (self.guard or self.guard_hint is None or reading is None or reading["epoch"] != epoch
                or any(w.startswith(GUARD_OFF) for w in metrics["warnings"])):
            return None
        if not (reading["z"] < -GUARD_Z and epoch - split <= GUARD_EPOCHS):
            return None
        return (f"{GUARD_OFF} and to the given labels at epoch {epoch}: the noisy-validation accuracy after the "
                f"split (epoch {split}), {reading['after']:.2f} % on average, fell below the {reading['before']:.2f} % "
                f"up to it by {-reading['z']:.1f} times its noise (the guard goes back beyond {GUARD_Z:g} within "
                f"{GUARD_EPOCHS} epochs); {self.guard_hint}")

    @staticmethod
    def record(metrics, accuracy, top_share):
        """An epoch's reading of the validation split: its accuracy (val_every_epoch) and the share of its images in
        the class the pair predicts most (val_top_class_share: where a collapse shows)."""
        metrics["val_every_epoch"].append(accuracy)
        metrics.setdefault("val_top_class_share", []).append(top_share)  # setdefault: a state saved before it

    def collapsed(self, metrics, epoch):
        """After an epoch of a run that has split: the collapse's warning sentence, once, or None."""
        if self.label_share is None or has_collapsed(metrics):
            return None
        return collapse(metrics.get("val_top_class_share") or [], self.label_share, metrics["tipping_found_epoch"],
                        epoch)

    @torch.no_grad()
    def go_back(self, teacher, student, optimizer):
        """The networks and the optimizer's momentum of the split, copied back into their own tensors (a captured
        CUDA-graph step keeps updating them; the learning rate stays the schedule's)."""
        teacher.load_state_dict(self.snapshot["teacher"])
        student.load_state_dict(self.snapshot["student"])
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p, kept in zip(params, self.snapshot["momentum"]):
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None and kept is not None:
                buffer.copy_(kept)
        self.snapshot = None

    def state(self):
        return self.snapshot

    def load(self, state):
        self.snapshot = state


def _to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state
