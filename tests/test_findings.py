"""What a run finds wrong (utils/findings.py), on hand-made passes: at the split the reference's detection files and
the split's flags kept; at the end label_issues.csv from the final teacher's passes, or the split's judgement where it
memorised the split's flags or collapsed (or with --judge split); the split's findings survive a kill through the
state."""
import numpy as np
import torch

from data.dataset import Dataset
from utils.findings import Findings, split_groups
from utils.flagging import flag_labels, probabilities
from utils.label_issues import in_dataset_order, read_label_issues

N, C = 8, 2
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def data():
    return Dataset("test", C, np.zeros((N, 8, 8, 3), np.uint8), LABELS, None, None, None,
                   mean_std=((0, 0, 0), (1, 1, 1)), class_names=("cat", "dog"))


def logits(predicted, strength=5.0):
    """(teacher, student) logits of a pass whose networks both predict `predicted`, as float32 tensors."""
    z = torch.tensor(np.eye(C)[predicted] * strength, dtype=torch.float32)
    return z, z.clone()


def split_findings(tmp_path):
    """At the split, images 3 and 7 look wrong (a low agreement on their labels), and the last passes suggest the
    other class for both; the teacher refused image 3's label in every pass, image 7's in all but one."""
    findings = Findings(data(), str(tmp_path), "g4")
    scores = np.array([0.9, 0.8, 0.85, 0.02, 0.9, 0.95, 0.8, 0.03])
    recent = np.tile(np.eye(C)[LABELS] * 0.9 + 0.05, (1, 1))
    recent[[3, 7]] = recent[[3, 7]][:, ::-1]
    teacher = np.tile(LABELS, (5, 1))
    teacher[:, 3] = 1
    teacher[1:, 7] = 0
    findings.at_split(scores, recent, teacher)
    return findings, scores


def test_at_split_writes_the_references_detection_and_keeps_the_split_flags(tmp_path):
    findings, scores = split_findings(tmp_path)
    groups, split = split_groups(scores, np.ones(N, bool))
    assert np.array_equal(np.load(tmp_path / "detection.npy"), groups == 4)  # G4, the reference's
    assert np.array_equal(np.load(tmp_path / "detection_scores.npy"), scores.astype(np.float32))
    assert findings.split["flagged"].tolist() == [False, False, False, True, False, False, False, False]
    # the suggestion and its agreement: the larger class of each image's averaged passes (0.95 either way, by hand)
    assert findings.split["suggested"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    assert np.allclose(findings.split["agreement_suggested"], 0.95)
    assert not (tmp_path / "label_issues.csv").exists()  # that comes at the end of the run


def final_passes(plain, augmented, student=None):
    """Two final passes (teacher, student logits) whose teachers predict `plain` and `augmented`; the students
    predict `student` (default: what the teacher of the pass predicts)."""
    out = []
    for predicted in (plain, augmented):
        teacher, _ = logits(predicted)
        out.append((teacher, logits(predicted if student is None else student, strength=2.0)[0]))
    return out


def test_the_final_teacher_judges_with_judge_final(tmp_path):
    """--judge final, the final teacher neither memorised nor collapsed: image 7 is now the other class in both
    passes (the split had spared it), image 2 in the augmented one only, less surely than its own class in the plain
    one: flagged are 3 and 7 (the averaged teacher's prediction is not the given label), ranked by the averaged
    teacher's probability of the label, suggested its prediction, with the final agreement on that. The student
    prefers class 0 for image 5 (label 1), more strongly than the teacher its label: the agreement would flag it and
    rank it among the most suspicious, the teacher does neither."""
    findings, scores = split_findings(tmp_path)
    plain = LABELS.copy()
    plain[[3, 7]] = 1 - LABELS[[3, 7]]
    student = logits(plain)[1]
    student[5] = torch.tensor([12.0, 0.0])
    passes = [(logits(plain)[0], student), (logits(plain)[0], student)]
    passes[1][0][2] = torch.tensor([0.0, 2.0])  # image 2: the other class in the augmented pass, by less
    ranking, flagged, judged, suggested, why = findings.final(passes, "final")
    assert judged == "final_teacher" and flagged.tolist() == [False, False, False, True, False, False, False, True]
    assert "gives 0% of the 1 labels the split flagged their given class" in why and "did not memorise" in why
    table = read_label_issues(tmp_path / "label_issues.csv", N)
    teacher = np.mean([torch.softmax(t.double(), 1).numpy() for t, _ in passes], axis=0)
    agreement = np.mean([probabilities(t.numpy(), s.numpy())[0] for t, s in passes], axis=0)
    assert teacher[2, 0] > 0.5  # image 2 stays its own class on average: not flagged
    assert agreement[5].argmax() == 0 and agreement[5, 1] < 0.01 < 0.99 < teacher[5, 1]  # the two views of image 5
    assert np.allclose(in_dataset_order(table, "final_teacher_given"), teacher[np.arange(N), LABELS], rtol=1e-5)
    assert np.allclose(in_dataset_order(table, "final_agreement_given"), agreement[np.arange(N), LABELS], rtol=1e-5)
    assert table["index"].tolist() == np.argsort(teacher[np.arange(N), LABELS], kind="stable").tolist()
    assert np.allclose(in_dataset_order(table, "agreement_given"), scores, rtol=1e-5)  # the tipping pass's, kept
    assert in_dataset_order(table, "flagged").tolist() == flagged.tolist()
    assert suggested.tolist() == teacher.argmax(axis=1).tolist() == plain.tolist()
    assert np.allclose(in_dataset_order(table, "agreement_suggested"), agreement[np.arange(N), plain], rtol=1e-5)


def split_judged(findings, tmp_path, scores):
    """The table is the split's: ranked by the tipping pass, with the split's suggestions and flags; the final
    networks' numbers still written."""
    table = read_label_issues(tmp_path / "label_issues.csv", N)
    assert table["index"].tolist() == np.argsort(scores, kind="stable").tolist()
    assert in_dataset_order(table, "suggested_label").tolist() == findings.split["suggested"].tolist()
    assert in_dataset_order(table, "flagged").tolist() == findings.split["flagged"].tolist()
    return table


def test_the_split_judges_with_judge_split(tmp_path):
    """--judge split (the reference recipe's): the split's table whatever the final networks say; their agreement
    and the teacher's probability of every label are still written."""
    findings, scores = split_findings(tmp_path)
    plain = LABELS.copy()
    plain[[3, 7]] = 1 - LABELS[[3, 7]]
    ranking, flagged, judged, suggested, why = findings.final(final_passes(plain, plain), "split")
    assert judged == "split" and why is None and flagged.tolist() == findings.split["flagged"].tolist()
    table = split_judged(findings, tmp_path, scores)
    assert in_dataset_order(table, "final_teacher_given")[3] < 0.01  # their numbers are still shown
    assert in_dataset_order(table, "final_agreement_given")[3] < 0.01


def test_a_final_teacher_that_memorised_the_split_flags_does_not_judge(tmp_path):
    """--judge final, but the final teacher gives image 3's label (the one label the split flagged) its given class,
    as a network that memorised the wrong labels does: the split judges, and says why."""
    findings, scores = split_findings(tmp_path)
    ranking, flagged, judged, suggested, why = findings.final(final_passes(LABELS, LABELS), "final")
    assert judged == "split" and "gives 100% of the 1 labels the split flagged their given class" in why
    assert "memorised them" in why
    split_judged(findings, tmp_path, scores)


def test_a_collapsed_final_teacher_does_not_judge(tmp_path):
    """--judge final, but the final teacher predicts one class for every image (it refuses image 3's label, so it
    did not memorise it): collapsed, so the split judges, and says why."""
    findings, scores = split_findings(tmp_path)
    ones = np.ones(N, dtype=np.int64)
    ranking, flagged, judged, suggested, why = findings.final(final_passes(ones, ones, student=LABELS), "final")
    assert judged == "split" and "puts 100% of the images in one class, above the collapse level 75%" in why
    split_judged(findings, tmp_path, scores)


def test_memorised_reads_the_split_flags_only():
    """memorised: the share of the split's flagged labels the final teacher gives their given class, above the level
    (not at it); nothing flagged: nothing to tell, not memorised."""
    from utils.findings import MEMORISED_FIT, memorised
    labels = np.array([0, 0, 1, 1])
    assert MEMORISED_FIT == 0.5
    assert not memorised(np.array([1, 0, 1, 0]), labels, np.array([True, True, False, False]))  # 1 of 2: at the level
    assert memorised(np.array([0, 0, 1, 0]), labels, np.array([True, True, False, False]))  # 2 of 2
    assert not memorised(np.array([1, 1, 0, 0]), labels, np.array([False, True, True, False]))  # 0 of 2, others fit
    assert not memorised(labels, labels, np.zeros(4, dtype=bool))
    assert memorised(np.array([1, 0, 1, 0]), labels, np.array([True, True, False, False]), level=0.4)


def test_the_split_findings_survive_the_state(tmp_path):
    findings, _ = split_findings(tmp_path)
    restored = Findings(data(), str(tmp_path), "g4")
    restored.load(findings.state())
    assert restored.split.keys() == findings.split.keys()
    assert all(np.array_equal(restored.split[k], v) for k, v in findings.split.items())
    assert Findings(data(), str(tmp_path), "g4").state() is None  # before the split: nothing to carry
    # the other ranks of a torchrun run hold no findings in an uninterrupted run (the pass history is rank 0's), so
    # after a resume they hold none either: they neither judge nor write passes/final.npz
    other_rank = Findings(data(), str(tmp_path), "g4", main_process=False)
    other_rank.load(findings.state())
    assert other_rank.split is None


def test_detection_npy_flagged_comes_at_the_end(tmp_path):
    findings = Findings(data(), str(tmp_path), "flagged")
    findings.at_split(np.linspace(0.01, 0.99, N), np.eye(C)[LABELS], np.tile(LABELS, (5, 1)))
    assert not (tmp_path / "detection.npy").exists() and (tmp_path / "detection_scores.npy").exists()
    _, flagged, _, _, _ = findings.final([logits(LABELS), logits(LABELS)], "final")
    assert np.array_equal(np.load(tmp_path / "detection.npy"), flagged)
