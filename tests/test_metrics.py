"""Threshold-free detection numbers (utils/metrics.py) against values computed by hand, ties included; detection.py
printing them for a real run, an older run, a broken one and data without ground truth."""
import itertools
import json
import math
import shutil

import numpy as np
import pytest

from data import load_dataset
from tests.conftest import N_SYNTHETIC, run
from utils.bkd import precision_recall_f1
from utils.findings import SPLIT_CUT
from utils.label_issues import in_dataset_order, read_label_issues, write_label_issues
from utils.metrics import auroc, average_precision, detection_report, precision_at_k, precision_recall_curve

# Five samples, most suspicious first; the two at 0.8 are tied, one of them mislabelled.
SUSPICION = [0.9, 0.8, 0.8, 0.5, 0.3]
POSITIVE = [True, False, True, False, True]


def test_auroc_counts_a_tied_pair_as_one_half():
    # pairs (positive, negative): 0.9>0.8, 0.9>0.5, 0.8=0.8 (1/2), 0.8>0.5, 0.3<0.8, 0.3<0.5: 3.5 of 6
    assert auroc(SUSPICION, POSITIVE) == pytest.approx(3.5 / 6)
    assert auroc([1, 1, 1], [True, False, False]) == pytest.approx(0.5)  # everything tied: chance
    assert auroc([3, 2, 1], [True, False, False]) == 1.0 and auroc([1, 2, 3], [True, False, False]) == 0.0


def test_auroc_equals_counting_every_pair():
    """On random data with many ties, the midrank formula equals the definition, pair by pair."""
    rng = np.random.default_rng(0)
    suspicion, positive = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.3
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0
             for p, n in itertools.product(suspicion[positive], suspicion[~positive])]
    assert auroc(suspicion, positive) == pytest.approx(np.mean(pairs))


def test_precision_recall_curve_takes_tied_samples_together():
    precision, recall, threshold = precision_recall_curve(SUSPICION, POSITIVE)
    # thresholds 0.9 (1 flagged, 1 hit), 0.8 (3, 2), 0.5 (4, 2), 0.3 (5, 3); no point between the two tied samples
    assert threshold.tolist() == [0.9, 0.8, 0.5, 0.3]
    assert precision == pytest.approx([1, 2 / 3, 2 / 4, 3 / 5]) and recall == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1])


def test_average_precision_by_hand():
    # recall gained x precision at each distinct threshold: 1/3 * 1 + 1/3 * 2/3 + 0 * 1/2 + 1/3 * 3/5
    assert average_precision(SUSPICION, POSITIVE) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    # Order inside a tie does not matter: the same samples listed the other way round.
    assert average_precision(SUSPICION[::-1], POSITIVE[::-1]) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    # All four tied: one threshold, precision 2/4 at recall 1.
    assert average_precision([1, 1, 1, 1], [True, False, True, False]) == pytest.approx(0.5)
    assert average_precision([4, 3, 2, 1], [True, True, False, False]) == 1.0


def test_precision_at_k_fills_a_tie_at_the_boundary_with_its_positive_share():
    assert precision_at_k(SUSPICION, POSITIVE, 1) == 1.0
    assert precision_at_k(SUSPICION, POSITIVE, 2) == pytest.approx((1 + 0.5) / 2)  # one of the tied two, half positive
    assert precision_at_k(SUSPICION, POSITIVE, 3) == pytest.approx(2 / 3)  # both tied samples fit
    assert precision_at_k(SUSPICION, POSITIVE, 5) == pytest.approx(3 / 5)
    assert precision_at_k(SUSPICION, POSITIVE, 9) == pytest.approx(3 / 5)  # k beyond N: all samples


def test_edge_cases_are_nan_not_errors():
    none, everything = [False] * 5, [True] * 5
    assert math.isnan(auroc(SUSPICION, none)) and math.isnan(auroc(SUSPICION, everything))
    assert math.isnan(average_precision(SUSPICION, none)) and average_precision(SUSPICION, everything) == 1.0
    assert math.isnan(precision_at_k(SUSPICION, none, 0)) and precision_at_k(SUSPICION, everything, 5) == 1.0
    assert all(math.isnan(f([], [])) for f in (auroc, average_precision))
    assert math.isnan(precision_at_k([], [], 3))


def test_detection_report():
    scores = 1 - np.array(SUSPICION)  # agreement on the given label: low is suspicious
    flagged = np.array([True, True, True, False, False])
    clean = np.array([1, 0, 2, 0, 3])
    suggested = np.array([1, 4, 0, 0, 0])  # right for image 0, wrong for image 2 (both flagged and mislabelled)
    report = detection_report(flagged, scores, np.array(POSITIVE), suggested, clean)
    p, r, f1 = precision_recall_f1(flagged, POSITIVE)
    assert report == dict(images=5, flagged=3, truly_noisy=3, precision=p, recall=r, f1=f1,
                          auroc=pytest.approx(3.5 / 6), average_precision=pytest.approx(1 / 3 + 2 / 9 + 1 / 5),
                          precision_at_k=pytest.approx(2 / 3), k=3, suggestion_accuracy=0.5, suggestion_correct=1,
                          flagged_truly_noisy=2)
    assert all(type(v) in (int, float) for v in report.values())  # plain Python numbers, JSON-ready
    json.dumps(report, allow_nan=False)


def test_detection_report_without_ground_truth_or_noise():
    flagged = np.array([True, False, False])
    assert detection_report(flagged, np.array([0.1, 0.5, 0.9]), None) == dict(images=3, flagged=1)
    # No mislabelled image: the ranking numbers are undefined (None, valid JSON), nothing crashes.
    report = detection_report(flagged, np.array([0.1, 0.5, 0.9]), np.zeros(3, bool), np.zeros(3), np.zeros(3))
    assert report["auroc"] is None and report["average_precision"] is None and report["precision_at_k"] is None
    assert report["suggestion_accuracy"] is None and report["flagged_truly_noisy"] == 0
    json.dumps(report, allow_nan=False)
    # An older run without scores: only the counts and precision, recall, F1.
    assert set(detection_report(flagged, None, np.array([True, False, False]))) == {
        "images", "flagged", "truly_noisy", "precision", "recall", "f1"}


# ---------------------------------------------------------------------------- detection.py on a real run
def test_detection_script_reports_the_ranking(synthetic_run):
    result, d = synthetic_run["detection"], synthetic_run["dir"]
    assert result.returncode == 0, result.stderr
    metrics = json.loads((d / "metrics.json").read_text())
    m, column = metrics["detection"], metrics["flagged"]
    lines = result.stdout.strip().splitlines()
    table = read_label_issues(d / "label_issues.csv", N_SYNTHETIC)
    cards = sum(g in ("3", "4") or f for g, f in zip(table["group"], table["flagged"]))
    size = (d / "review.html").stat().st_size
    assert not (d / "label_fixes_suggested.csv").exists()  # no fixes without a review (docs/review.md)
    assert lines[2] == f"precision is {m['precision']}"  # the reference's lines stay first (tests/test_scripts.py)
    # the flagged column beside the reference's G4, both scored as the training script scored them
    assert metrics["judged_by"] == "split"  # the default --judge split: the flags and the order are the split's
    assert lines[6] == (f"flagged in label_issues.csv ({SPLIT_CUT}): "
                        f"{column['flagged']}, precision {column['precision']:.4f}, recall {column['recall']:.4f}, "
                        f"F1 {column['f1']:.4f} (G4's F1 {m['f1']:.4f})")
    written = json.loads((d / "detection.json").read_text())
    final, teacher = written["final_ranking"], written["final_teacher_ranking"]
    assert lines[7:] == [
        "ranking by detection_scores.npy (low agreement on the given label = suspicious):",
        f"AUROC is {m['auroc']:.4f}",
        f"average precision is {m['average_precision']:.4f}",
        f"precision at k = {m['truly_noisy']} (the number truly noisy) is {m['precision_at_k']:.4f}",
        f"ranking by final_teacher_given (the final teacher's probability of the label; label_issues.csv is ordered "
        f"by it where the final teacher judged): AUROC {teacher['auroc']:.4f}, average precision "
        f"{teacher['average_precision']:.4f}, precision at k = {teacher['k']} {teacher['precision_at_k']:.4f}",
        f"ranking by final_agreement_given (the final networks' agreement): AUROC {final['auroc']:.4f}, average "
        f"precision {final['average_precision']:.4f}, precision at k = {final['k']} {final['precision_at_k']:.4f}",
        f"suggested label = true label for {m['suggestion_correct']} of the {m['flagged_truly_noisy']} flagged "
        f"images that are truly mislabelled ({m['suggestion_accuracy']:.4f})",
        f"written: {d / 'detection.json'}",
        "no label fixes without a review: every policy that acts on the findings alone cost accuracy on some label set "
        "(docs/review.md); review review.html and train with the fixes it downloads",
        f"written: {d / 'review.html'} ({cards} images to review, {size / 2 ** 20:.1f} MB; open it in a browser)"]
    # detection.json: the numbers the training script stored, recomputed from the files of the run directory
    truly_noisy = load_dataset("synthetic", "worst", None).noise_or_not
    for key, name in (("final_ranking", "final_agreement_given"), ("final_teacher_ranking", "final_teacher_given")):
        final = written.pop(key)  # the final networks' rankings, from the table's columns
        by_hand = detection_report(np.zeros(N_SYNTHETIC, bool), in_dataset_order(table, name), truly_noisy)
        assert final == {k: by_hand[k] for k in final}
    assert written.pop("flagged_column") == dict(column, ranking="agreement_given") and written == m
    assert m["auroc"] > 0.85 and m["average_precision"] > 0.8  # BKD ranks the mislabelled images first
    assert m["suggestion_accuracy"] > 0.5  # far above chance (1 / 9 among the other classes)


def run_dir_with(synthetic_run, tmp_path, names):
    """A run directory under tmp_path holding copies of the named files of the session's run, and its flags."""
    d = tmp_path / "synthetic_worst_seed_0"
    d.mkdir()
    for name in names:
        shutil.copy(synthetic_run["dir"] / name, d / name)
    return d, ["--dataset", "synthetic", "--noise_type", "worst", "--seed", "0", "--results_dir", tmp_path]


def test_detection_script_on_a_run_of_an_older_version(synthetic_run, tmp_path):
    d, flags = run_dir_with(synthetic_run, tmp_path, ["detection.npy"])
    result = run("detection.py", *flags)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[:6] == synthetic_run["detection"].stdout.strip().splitlines()[:6]
    assert lines[6:] == [f"{d} has no detection_scores.npy and no label_issues.csv (the run predates them): no AUROC, "
                         f"average precision or precision at k and no suggestion accuracy; train it again to get them",
                         f"written: {d / 'detection.json'}",
                         "no review.html: it needs label_issues.csv; train the run again"]
    assert set(json.loads((d / "detection.json").read_text())) == {"images", "flagged", "truly_noisy", "precision",
                                                                   "recall", "f1"}


def test_detection_script_refuses_scores_of_the_wrong_length(synthetic_run, tmp_path):
    d, flags = run_dir_with(synthetic_run, tmp_path, ["detection.npy", "label_issues.csv"])
    np.save(d / "detection_scores.npy", np.full(N_SYNTHETIC - 1, 0.5, dtype=np.float32))
    result = run("detection.py", *flags)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"shape ({N_SYNTHETIC},)" in result.stderr
    assert not (d / "detection.json").exists()


def test_detection_script_without_ground_truth(tmp_path, monkeypatch, capsys):
    """The user's own data (--dataset npz without clean labels): the count only, and exit 0."""
    import detection
    from data import Dataset
    from flags import check_args
    given = np.array([0, 1, 1, 0, 2, 2])
    data = Dataset("npz", 3, np.zeros((6, 8, 8, 3), np.uint8), given, None, None, None)
    monkeypatch.setattr(detection, "load_data", lambda args: data)
    parser = detection.get_parser()
    args = check_args(parser, parser.parse_args(["--dataset", "npz", "--data_dir", str(tmp_path / "my.npz"),
                                                 "--results_dir", str(tmp_path)]))
    d = tmp_path / "npz_given_seed_0"
    d.mkdir()
    scores, flagged = np.array([0.1, 0.9, 0.8, 0.05, 0.7, 0.6]), np.array([True, False, False, True, False, False])
    np.save(d / "detection.npy", flagged)
    np.save(d / "detection_scores.npy", scores.astype(np.float32))
    write_label_issues(d / "label_issues.csv", given, given, scores, scores, None, flagged)
    detection.main(args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "flagged as noisy: 2 of 6",
        "no ground truth for the given labels of npz (the clean labels are unknown): nothing to score the detection "
        "against",
        f"written: {d / 'detection.json'}"]
    assert lines[3].startswith("no label fixes without a review: ")
    assert lines[4].startswith(f"written: {d / 'review.html'} (2 images to review")  # the flagged column's
    assert json.loads((d / "detection.json").read_text()) == dict(images=6, flagged=2)
