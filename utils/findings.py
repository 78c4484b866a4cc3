"""What a run finds wrong, and when it writes it.

- At the split: the reference's detection, unchanged so that challenge and paper numbers stay comparable:
  `detection.npy` (G4 of the modified Otsu split of the tipping pass's agreement on each given label) and
  `detection_scores.npy` (that agreement). The run also keeps what the passes held at the split suggest and flag
  (utils.flagging.flag_labels): the judgement of the reference recipe, and the fallback of the final teacher's.
- At the end of the run: label_issues.csv, with the final networks' agreement on every label and the final teacher's
  probability of it beside the split's: two full-set passes of both networks, trained on to the end of the schedule
  (one pass without augmentation, one with crops and flips drawn from a generator seeded by the run's seed, so a
  resumed run makes the same passes). The table is ranked and flagged by the split (--judge split, the default) or
  by the final teacher (--judge final: FINAL_RANKING and FINAL_CUT), except where the final teacher memorised the
  labels the split flagged or collapsed onto one class (final_teacher_verdict): then by the split. The final teacher
  ranked better than the split on every confirming row of studies/judge_study.py but flagged worse on one, so its
  pre-registered rule kept the split as the default (studies/judge_study.md). numpy, and torch for the passes."""
import numpy as np
import torch

from utils.bkd import DegenerateSplit, assign_groups, otsu_split
from utils.checkpoint import save_npy, save_npz
from utils.flagging import FLAGGED_CUT as SPLIT_CUT, flag_labels
from utils.label_issues import as_written, write_label_issues
from utils.watch import collapse_level, largest_share

SPLIT_NAMES = ("upper_mean", "upper_sigma", "lower_mean", "lower_sigma", "threshold")
FINAL_RANKING = ("the final teacher's probability of the given label, averaged over a pass without augmentation and "
                 "one with")
FINAL_CUT = "the final teacher predicting another class than the given one (its two passes averaged)"
# what --judge final flagged in versions before the final teacher judged (the final networks' agreement)
EARLIER_FINAL_CUT = "suggested label != given, the teacher predicting another class in both final passes"
FINAL_SEED = 100003  # the augmented final pass draws its crops and flips from seed * FINAL_SEED + the last epoch


# the final teacher memorised when it gives more than this share of the labels the split flagged their given class (set
# before the confirming runs of studies/judge_study.md, not fitted)
MEMORISED_FIT = 0.5


def memorised(teacher_predicted, labels, split_flagged, level=MEMORISED_FIT):
    """Whether the final teacher memorised the labels the split believed wrong: it predicts the given class for more
    than `level` of the labels the split flagged (a network that learnt the images' classes, not their labels,
    refuses most of them). No ground truth; False where the split flagged nothing."""
    split_flagged = np.asarray(split_flagged, dtype=bool)
    if not split_flagged.any():
        return False
    return bool(np.mean(np.asarray(teacher_predicted)[split_flagged] == np.asarray(labels)[split_flagged]) > level)


def final_teacher_verdict(teacher_predicted, labels, split_flagged):
    """(whether the final teacher may judge the labels, why, in words): not where it memorised the labels the split
    flagged (memorised) or puts more images in one class than utils.watch's collapse level for the labels' largest
    class. Arrays over the images that count (label fixes' dropped ones left out)."""
    teacher_predicted, labels = np.asarray(teacher_predicted), np.asarray(labels)
    split_flagged = np.asarray(split_flagged, dtype=bool)
    top, level = largest_share(teacher_predicted), collapse_level(largest_share(labels))
    if top > level:
        return False, (f"the final teacher puts {top:.0%} of the images in one class, above the collapse level "
                       f"{level:.0%}: it collapsed")
    n = int(split_flagged.sum())
    fit = float(np.mean(teacher_predicted[split_flagged] == labels[split_flagged])) if n else 0.0
    if memorised(teacher_predicted, labels, split_flagged):
        return False, (f"the final teacher gives {fit:.0%} of the {n} labels the split flagged their given class, "
                       f"more than {MEMORISED_FIT:.0%}: it memorised them")
    return True, (f"the final teacher gives {fit:.0%} of the {n} labels the split flagged their given class, not "
                  f"more than {MEMORISED_FIT:.0%}: it did not memorise them, and it did not collapse onto one class")


def split_groups(scores, kept):
    """(groups 1..4 of the modified Otsu split of scores over the kept images, the split's five numbers), or
    (None, the reason) when no threshold separates them."""
    try:
        split = otsu_split(scores[kept])
    except DegenerateSplit as e:
        return None, str(e)
    return assign_groups(scores, split), split


class Findings:
    """The findings of one run: at_split (the reference's detection, and the split's flags kept), final (the final
    networks' judgement, label_issues.csv). `state`/`load` carry the split's between a kill and --resume."""

    def __init__(self, data, out_dir, detection_npy, main_process=True):
        self.data, self.out_dir, self.detection_npy, self.main_process = data, out_dir, detection_npy, main_process
        self.split = None  # dict of numpy arrays once the run has split

    def at_split(self, scores, recent_probs, teacher_predicted):
        """Detection at the split, from the agreement on each label of the tipping epoch's full-set pass (N, dataset
        order), the agreement of every class averaged over the last passes (N, C) and the teacher's predicted classes
        of those passes (passes, N). Writes detection.npy (G4; the flagged labels with --detection_npy flagged are
        written at the end) and detection_scores.npy; returns (G4, the split's flags, the split's five numbers or
        the reason there is none)."""
        kept, labels = self.data.kept, self.data.noisy_labels
        groups, split = split_groups(scores, kept)
        g4 = np.zeros(len(labels), dtype=bool) if groups is None else (groups == 4) & kept
        flagged = flag_labels(recent_probs, labels, teacher_predicted) & kept
        self.split = dict(scores=np.asarray(scores, dtype=np.float32), groups=groups, g4=g4, flagged=flagged,
                          suggested=recent_probs.argmax(axis=1), agreement_suggested=recent_probs.max(axis=1))
        if self.main_process:
            if self.detection_npy == "g4":
                save_npy(f"{self.out_dir}/detection.npy", g4)
            save_npy(f"{self.out_dir}/detection_scores.npy", self.split["scores"])
        return g4, flagged, split

    @torch.inference_mode()
    def final(self, passes, judge):
        """label_issues.csv at the end of the run: `passes`, [(teacher logits, student logits)] of the final networks
        over the full set (N, C each), their agreement on each label and the teacher's probability of it written
        beside the split's; ranked and flagged by the final teacher where `judge` is "final" and
        final_teacher_verdict lets it, else by the split. Writes the table (and detection.npy with --detection_npy
        flagged); returns (the ranking score, the flags, who judged: "final_teacher" or "split", the suggested
        labels, why the final teacher judged or not: None with --judge split)."""
        kept, labels = self.data.kept, self.data.noisy_labels
        rows = np.arange(len(labels))
        agreement = np.mean([torch.softmax(t.double() + s.double(), dim=1).cpu().numpy() for t, s in passes], axis=0)
        teacher = np.mean([torch.softmax(t.double(), dim=1).cpu().numpy() for t, _ in passes], axis=0)
        teacher_predicted = teacher.argmax(axis=1)
        final_given = as_written(agreement[rows, labels])  # the file's order is its scores' order
        teacher_given = as_written(teacher[rows, labels])
        trusted, why = (final_teacher_verdict(teacher_predicted[kept], labels[kept], self.split["flagged"][kept])
                        if judge == "final" else (False, None))
        if trusted:
            judged, ranking, flagged = "final_teacher", teacher_given, (teacher_predicted != labels) & kept
            suggested, agreement_suggested = teacher_predicted, agreement[rows, teacher_predicted]
        else:
            judged, ranking, flagged = "split", self.split["scores"], self.split["flagged"]
            suggested, agreement_suggested = self.split["suggested"], self.split["agreement_suggested"]
        if self.main_process:
            write_label_issues(f"{self.out_dir}/label_issues.csv", labels, suggested, self.split["scores"],
                               agreement_suggested, self.split["groups"], flagged, self.data.class_names,
                               self.data.train_files, self.data.dropped, final_given=final_given,
                               final_teacher_given=teacher_given, ranking=ranking)
            if self.detection_npy == "flagged":
                save_npy(f"{self.out_dir}/detection.npy", flagged)
        return as_written(ranking), flagged, judged, suggested, why  # its scores as a reader of the file gets them

    def state(self):
        return None if self.split is None else {k: (None if v is None else torch.as_tensor(v))
                                                for k, v in self.split.items()}

    def load(self, state):
        """The split's findings of a saved state, in the process that writes the outputs; the other ranks of a
        torchrun run hold none, resumed or not (the pass history they come from lives in rank 0)."""
        self.split = (None if state is None or not self.main_process else
                      {k: (None if v is None else v.numpy()) for k, v in state.items()})


def record_final(out_dir, passes):
    """--record_passes: the final passes' logits, for studies/ranking_study.py (passes/final.npz)."""
    (pt, ps), (at, as_) = passes
    save_npz(f"{out_dir}/passes/final.npz", plain_teacher=pt.cpu().numpy(), plain_student=ps.cpu().numpy(),
             aug_teacher=at.cpu().numpy(), aug_student=as_.cpu().numpy())
