"""What a run finds wrong (utils/findings.py), on hand-made passes: at the split the reference's detection files and
the split's flags kept; at the end label_issues.csv from the final networks' passes, or the split's judgement where
they are not trusted; the split's findings survive a kill through the state."""
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


def test_the_final_networks_judge_with_judge_final(tmp_path):
    """--judge final, the final networks trusted: image 7 is now clearly the other class in both passes (the split had spared it), image 2
    only in the augmented one: flagged are 3 and 7, ranked by the final agreement on the given label."""
    findings, scores = split_findings(tmp_path)
    plain = LABELS.copy()
    plain[[3, 7]] = 1 - LABELS[[3, 7]]
    augmented = plain.copy()
    augmented[2] = 1
    passes = [logits(plain), logits(augmented)]
    ranking, flagged, judged, suggested = findings.final(passes, final_judges=True)
    assert judged == "final" and flagged.tolist() == [False, False, False, True, False, False, False, True]
    table = read_label_issues(tmp_path / "label_issues.csv", N)
    agreement = np.mean([probabilities(t.numpy(), s.numpy())[0] for t, s in passes], axis=0)
    final = agreement[np.arange(N), LABELS]
    assert np.allclose(in_dataset_order(table, "final_agreement_given"), final, rtol=1e-5)
    assert table["index"].tolist() == np.argsort(final, kind="stable").tolist()  # the table's order
    assert np.allclose(in_dataset_order(table, "agreement_given"), scores, rtol=1e-5)  # the tipping pass's, kept
    assert in_dataset_order(table, "flagged").tolist() == flagged.tolist()
    assert suggested.tolist() == agreement.argmax(axis=1).tolist()
    assert np.allclose(in_dataset_order(table, "agreement_suggested"), agreement.max(axis=1), rtol=1e-5)
    assert flagged.tolist() == flag_labels(agreement, LABELS, np.stack([plain, augmented])).tolist()


def test_the_split_judges_by_default_and_where_the_final_networks_are_not_trusted(tmp_path):
    """--judge split (the default), or final networks that cannot be trusted: the table is the split's, ranked by the
    tipping pass, with the split's suggestions and flags; the final networks' agreement is still written."""
    findings, scores = split_findings(tmp_path)
    passes = [logits(1 - LABELS), logits(1 - LABELS)]  # final networks that refuse every label
    ranking, flagged, judged, suggested = findings.final(passes, final_judges=False)
    assert judged == "split" and flagged.tolist() == findings.split["flagged"].tolist()
    table = read_label_issues(tmp_path / "label_issues.csv", N)
    assert table["index"].tolist() == np.argsort(scores, kind="stable").tolist()  # by the tipping pass
    assert in_dataset_order(table, "suggested_label").tolist() == findings.split["suggested"].tolist()
    assert np.all(in_dataset_order(table, "final_agreement_given") < 0.01)  # their numbers are still shown


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
    _, flagged, _, _ = findings.final([logits(LABELS), logits(LABELS)], final_judges=True)
    assert np.array_equal(np.load(tmp_path / "detection.npy"), flagged)
