"""The fix policies (data/fixes.py) on hand-made detections, and the two studies (tools/fix_policy_study.py,
tools/precision_study.py) end to end on 100 fake CIFAR images: their tables, their reuse of finished runs, and the
bf16 variants of tools/precision_variant.py."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from data import Dataset
import detection
from data.fixes import (FIX_POLICIES, SUGGESTED_POLICY, apply_label_fixes, file_sha256, policy_fixes, run_policy_fixes,
                        upper_mean, write_label_fixes)
from tests.conftest import ROOT, run, write_pickle

sys.path.insert(0, os.path.join(ROOT, "tools"))
import precision_variant  # noqa: E402
from study import mean_ci, paired  # noqa: E402


def six_images():
    """Six images, labels 0..5 of 6 classes; the detection of a run on them, in dataset order."""
    labels = np.arange(6)
    data = Dataset("test", 6, np.zeros((6, 8, 8, 3), np.uint8), labels.copy(), None, None, None,
                   mean_std=((0, 0, 0), (1, 1, 1)))
    groups = np.array(["4", "4", "4", "3", "2", "1"])
    suggested = np.array([1, 2, 2, 0, 4, 5])  # image 2: the suggestion is its own label
    given = np.array([0.01, 0.02, 0.03, 0.3, 0.8, 1.0])  # upper mean = (0.8 + 1.0) / 2 = 0.9
    sure = np.array([0.95, 0.5, 0.03, 0.92, 0.8, 1.0])
    return data, groups, suggested, given, sure


def test_upper_mean_is_the_mean_agreement_above_the_threshold():
    _, groups, _, given, _ = six_images()
    assert upper_mean(groups, given) == pytest.approx(0.9)
    assert math.isnan(upper_mean(["", ""], [0.1, 0.2]))  # no split, no cut


@pytest.mark.parametrize("policy, expected", [
    ("relabel", [(0, "", 0, "relabel", 1), (1, "", 1, "relabel", 2)]),
    ("drop", [(0, "", 0, "drop", ""), (1, "", 1, "drop", ""), (2, "", 2, "drop", "")]),
    ("relabel_sure", [(0, "", 0, "relabel", 1), (1, "", 1, "drop", ""), (2, "", 2, "drop", "")]),
    ("relabel_sure_keep", [(0, "", 0, "relabel", 1)]),
    ("relabel_sure_keep_uncertain", [(0, "", 0, "relabel", 1), (3, "", 3, "relabel", 0)]),
])
def test_each_policy_by_hand(policy, expected):
    data, groups, suggested, given, sure = six_images()
    assert policy_fixes(data, policy, groups == "4", groups, suggested, given, sure) == expected


def test_policies_follow_the_flagged_column():
    """Flagged is what label_issues.csv flags (here image 4 of group 2, not image 2 of group 4); uncertain is the
    rest of groups 3 and 4."""
    data, groups, suggested, given, sure = six_images()
    flagged = np.array([True, True, False, False, True, False])
    assert policy_fixes(data, "drop", flagged, groups, suggested, given, sure) == [
        (0, "", 0, "drop", ""), (1, "", 1, "drop", ""), (4, "", 4, "drop", "")]
    assert policy_fixes(data, "relabel_sure_keep_uncertain", flagged, groups, suggested, given, sure) == [
        (0, "", 0, "relabel", 1), (3, "", 3, "relabel", 0)]


def test_policies_apply_on_top_of_a_run_trained_with_fixes(tmp_path):
    data, groups, suggested, given, sure = six_images()
    write_label_fixes(tmp_path / "first.csv", [(4, "", 4, "relabel", 3), (0, "", 0, "drop", "")])
    fixed = apply_label_fixes(data, str(tmp_path / "first.csv"))
    groups[0] = "dropped"
    rows = policy_fixes(fixed, "relabel_sure", groups == "4", groups, suggested, given, sure)
    assert rows == [(0, "", 0, "drop", ""), (1, "", 1, "drop", ""), (2, "", 2, "drop", ""), (4, "", 4, "relabel", 3)]
    assert set(FIX_POLICIES) == {"relabel", "drop", "relabel_sure", "relabel_sure_keep", "relabel_sure_keep_uncertain"}
    with pytest.raises(ValueError, match="unknown fix policy"):
        policy_fixes(data, "trust", groups == "4", groups, suggested, given, sure)


def label_issues_table(groups, suggested, given, sure):
    """A label_issues.csv table as read_label_issues returns it, its rows in another order than the data set's."""
    order = np.array([3, 0, 5, 1, 4, 2])
    return {"index": order, "group": [str(g) for g in groups[order]], "suggested_label": suggested[order],
            "agreement_given": given[order], "agreement_suggested": sure[order], "flagged": (groups == "4")[order]}


def test_run_policy_fixes_read_the_table_in_dataset_order():
    data, groups, suggested, given, sure = six_images()
    table = label_issues_table(groups, suggested, given, sure)
    for policy in FIX_POLICIES:
        assert run_policy_fixes(data, policy, table) == policy_fixes(data, policy, groups == "4", groups, suggested,
                                                                     given, sure)


def test_detection_writes_the_suggested_policy_or_removes_an_old_file(tmp_path, monkeypatch):
    """label_fixes_suggested.csv holds SUGGESTED_POLICY's fixes (relabel_sure, the study's finding: docs/review.md);
    with no policy, detection.py writes no fixes and removes an earlier file, so nobody trains on it."""
    data, groups, suggested, given, sure = six_images()
    table, path = label_issues_table(groups, suggested, given, sure), tmp_path / "label_fixes_suggested.csv"
    assert SUGGESTED_POLICY == "relabel_sure" == detection.SUGGESTED_POLICY
    assert detection.suggested_fixes_line(str(path), data, table) == (
        f"written: {path} (3 rows: {FIX_POLICIES['relabel_sure']}; train on it with --label_fixes {path}, or review "
        f"review.html first: a review gains more, docs/review.md)")
    assert apply_label_fixes(data, str(path)).label_fixes.info == dict(
        path=str(path), sha256=file_sha256(path), rows=3, relabelled=1, dropped=2, kept=0)
    monkeypatch.setattr(detection, "SUGGESTED_POLICY", None)
    assert detection.suggested_fixes_line(str(path), data, table) == (
        f"no label fixes without a review ({path} of an earlier version removed): none is known to help "
        f"(docs/review.md); review review.html and train with the fixes it downloads")
    assert not path.exists()
    assert detection.suggested_fixes_line(str(path), data, table).startswith("no label fixes without a review: ")


def test_study_statistics_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.3027
    diff, half, p = paired([1.0, 2.0, 3.0], [1.5, 2.0, 4.0])
    # differences 0.5, 0, 1: t = 0.5 / (0.5 / sqrt(3)) = sqrt(3); with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2)
    assert diff == pytest.approx(0.5) and p == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), abs=1e-9)
    assert math.isnan(paired([1.0, 2.0], [2.0, 3.0])[2])  # every difference equal: nothing to test against


@pytest.mark.parametrize("variant", ["fp32_head", "fp32_batchnorm"])
def test_precision_variants_keep_their_part_in_fp32(variant, monkeypatch):
    monkeypatch.setattr(precision_variant.training, "build_model", precision_variant.training.build_model)
    precision_variant.patch(variant)
    net = precision_variant.training.build_model("small_cnn", 10)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        logits, first_block = net(torch.randn(2, 3, 16, 16)), net.features[:2](torch.randn(2, 3, 16, 16))
    assert logits.dtype == (torch.float32 if variant == "fp32_head" else torch.bfloat16)
    assert first_block.dtype == (torch.float32 if variant == "fp32_batchnorm" else torch.bfloat16)


@pytest.fixture
def study_data(fake_cifar, tmp_path):
    """Flags of the studies for 100 fake CIFAR-10 images with a third of their labels wrong."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": np.where(np.arange(100) % 3 == 0,
                                                                                         (clean + 1) % 10, clean)})
    return ["--dataset", "cifar10", "--data_dir", fake_cifar["dir"], "--noise_path", tmp_path / "labels.pt",
            "--noise_types", "worst", "--jobs", "2"]


def test_fix_policy_study_end_to_end_and_again(study_data, tmp_path):
    flags = [*study_data, "--seeds", "0", "--policies", "drop", "reviewer", "--results_dir", tmp_path / "study",
             # the reference's tipping rule: random images never plateau in 10 epochs (see fake_run_flags)
             "--train_flags", "--arch small_cnn --n_epoch 10 --batch_size 16 --print_freq 1000 --tipping_rule reference"]
    first = run("tools/fix_policy_study.py", *flags)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "as is: 0 of 1 finished already, 1 to train" in first.stdout
    assert "retrained with fixes: 0 of 2 finished already, 2 to train" in first.stdout
    table = (tmp_path / "study" / "study.md").read_text()
    assert table in first.stdout
    rows = [line for line in table.splitlines() if line.startswith("| worst |")]
    assert [r.split(" | ")[1] for r in rows] == ["as is", "drop", "reviewer"]
    fixed = json.loads(next((tmp_path / "study").glob("cifar10_worst_seed_0_fixes_*/metrics.json")).read_text())
    assert fixed["label_fixes"]["wrong_before"] == pytest.approx(34 / 100)
    assert "reviewer: mean difference to as is" in table and "(the ceiling, needs the ground truth)" in table
    assert table.splitlines()[-2].startswith("chosen: ")
    assert table.splitlines()[-1] == "detection.py writes the fixes of: relabel_sure (SUGGESTED_POLICY in data/fixes.py)"
    again = run("tools/fix_policy_study.py", *flags)  # everything finished: nothing is trained again
    assert again.returncode == 0 and "1 of 1 finished already, 0 to train" in again.stdout
    assert "2 of 2 finished already, 0 to train" in again.stdout
    assert (tmp_path / "study" / "study.md").read_text() == table


def test_precision_study_end_to_end(study_data, tmp_path):
    """The variant on a seed of its own: fp32 is trained on that seed too and compared with it."""
    result = run("tools/precision_study.py", *study_data, "--seeds", "1", "--variants", "fp32_eval",
                 "--variant_seeds", "2", "--results_dir", tmp_path / "study",
                 "--train_flags", "--arch small_cnn --n_epoch 3 --batch_size 32")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 of 4 finished already, 4 to train" in result.stdout
    assert sorted(p.name for p in (tmp_path / "study" / "cpu" / "fp32").iterdir()) == [
        "cifar10_worst_seed_1", "cifar10_worst_seed_2"]
    table = (tmp_path / "study" / "cpu" / "study.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| worst |")]
    assert [r[1:3] for r in rows] == [["bf16", "1"], ["bf16, fp32_eval", "2"]]
    assert "p >= 0.05 over at least 10 seeds)" in table  # one seed: parity cannot be claimed
    assert all(r[-1] == "0 of 1 |" for r in rows)  # 3 epochs: no tipping epoch in either precision
    metrics = json.loads((tmp_path / "study" / "cpu" / "fp32_eval" / "cifar10_worst_seed_2" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["args"]["variant"] == "fp32_eval"
    assert "worst, bf16: accuracy" in table and "worst, fp32_eval: accuracy" in table
