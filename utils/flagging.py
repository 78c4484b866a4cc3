"""Which labels to flag, from the last full-set passes before the split: FLAGGED_CUT (flag_labels), what
label_issues.csv flags and review.html shows, chosen by studies/flag_study.py among the cuts of studies/flag_cuts.py and
confirmed on sources it never saw (studies/flag_study.md). detection.npy holds the reference's G4 (the lowest group of the
modified Otsu split of the agreement on the given label) unless asked for this column. numpy only."""
import numpy as np


def probabilities(teacher_logits, student_logits):
    """(agreement probabilities softmax(t + s), student probabilities softmax(s)), float64 (N, C) each."""
    def softmax(z):
        z = np.asarray(z, dtype=np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return softmax(np.asarray(teacher_logits) + np.asarray(student_logits)), softmax(student_logits)


def disagree(probs, labels):
    """The suggested label (the agreement's argmax) is not the given one."""
    return probs.argmax(axis=1) != labels


# the teacher may accept the given label in this many of the last passes, and no more: none, chosen again on the
# synthetic, digits, Fashion- and Animal-MNIST label sets by the worst row and confirmed on MNIST (studies/flag_study.md)
TEACHER_SPARES = 0


# what label_issues.csv flags (docs/detection.md)
FLAGGED_CUT = "suggested label != given, the teacher predicting another class in every one of the last passes"


def flag_labels(recent_probs, labels, teacher_predictions, spares=TEACHER_SPARES):
    """The labels believed wrong: where the suggested label, the argmax of the agreement averaged over the last
    full-set passes (recent_probs, (N, C): each pass draws its own augmentation, and the networks move between
    epochs, so the average is steadier than one pass), is not the given one, and the teacher, the network trained on
    the given labels, predicted another class than the given one in all of those passes but `spares`
    (teacher_predictions, (passes, N)). The suggestion alone also disagrees with right labels of images the networks
    get wrong, which where few labels are wrong is much of what it flags; the teacher's steady refusal of the label
    leaves most of those out (studies/flag_study.py, studies/flag_study.md). bool (N,)."""
    labels, teacher_predictions = np.asarray(labels), np.asarray(teacher_predictions)
    refusals = np.sum(teacher_predictions != labels[None, :], axis=0)
    return disagree(np.asarray(recent_probs), labels) & (refusals >= len(teacher_predictions) - spares)
