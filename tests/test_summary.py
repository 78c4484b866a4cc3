"""Seed summaries (utils/summary.py, summarize.py) on hand-made metrics.json files, against hand-computed numbers."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from utils.recipes import RECIPES
from utils.summary import SummaryError, collect, mean_ci95, write_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_2DF = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (statistical tables)


def write_run(results_dir, dataset, noise_type, seed, acc, detection=None, finished=True, ranking=None, flagged_f1=None,
              recipe=None, teacher_acc=None, wall=None, tipping_rule=None, guard=None):
    """A metrics.json as the training script writes it: detection = (precision, recall, F1) or a whole dict,
    ranking = (AUROC, average precision), left out as in runs of older versions, as is flagged_f1 (the F1 of
    label_issues.csv's flagged column); recipe (with what it evaluates) left out as in runs of versions before
    recipes, whose tipping rule and guard name it; acc the pair's accuracy (a ce run's network's), teacher_acc the
    teacher's alone."""
    d = results_dir / (f"{dataset}_{noise_type}_seed_{seed}" + (f"_{recipe}" if recipe else ""))
    d.mkdir(parents=True)
    args = dict(dataset=dataset, noise_type=noise_type, seed=seed, n_epoch=300)
    args.update({k: v for k, v in dict(tipping_rule=tipping_rule, guard=guard).items() if v is not None})
    metrics = dict(args=args, finished=finished, final_test_accuracy=acc if finished else None,
                   best_val_accuracy=50.0, tipping_epoch=None, detection=None)
    if recipe is not None:
        metrics.update(recipe=recipe, evaluated=RECIPES[recipe].predict, final_test_accuracy_teacher=teacher_acc)
    if wall is not None:
        metrics["wall_time_s"] = wall
    if isinstance(detection, dict):
        metrics.update(tipping_epoch=10, detection=detection)
    elif detection is not None:
        p, r, f1 = detection
        metrics.update(tipping_epoch=10, detection=dict(flagged=100, truly_noisy=90, precision=p, recall=r, f1=f1))
    if ranking is not None:
        metrics["detection"].update(auroc=ranking[0], average_precision=ranking[1], precision_at_k=0.5, k=90)
    if flagged_f1 is not None:
        metrics["flagged"] = dict(flagged=120, truly_noisy=90, precision=0.7, recall=0.9, f1=flagged_f1)
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def results(tmp_path):
    """cifar10 worst, reference recipe: 3 finished seeds (accuracy 80, 82, 84), one without detection, one unfinished
    seed; the same seeds under the ce recipe (one network, no detection); cifar10 aggre: a run of an older version
    (no recipe, no AUROC, no average precision); cifar100 noisy100: one seed without detection; npz given: the user's
    own data under the robust recipe, no test set and no ground truth (only the number flagged); synthetic worst
    under the robust recipe (the teacher alone evaluated), once with --tipping_rule none."""
    write_run(tmp_path, "cifar10", "worst", 0, 80.0, (0.70, 0.50, 0.60), ranking=(0.90, 0.80), flagged_f1=0.8,
              recipe="reference", teacher_acc=99.0, wall=100.0)
    write_run(tmp_path, "cifar10", "worst", 2, 84.0, (0.80, 0.60, 0.70), ranking=(0.94, 0.86), flagged_f1=0.9,
              recipe="reference", teacher_acc=99.0, wall=110.0)
    write_run(tmp_path, "cifar10", "worst", 1, 82.0, recipe="reference", teacher_acc=99.0, wall=120.0)
    write_run(tmp_path, "cifar10", "worst", 3, None, finished=False, recipe="reference")
    for seed, acc in enumerate((85.0, 86.0, 87.0)):
        write_run(tmp_path, "cifar10", "worst", seed, acc, recipe="ce", wall=50.0 + seed)
    write_run(tmp_path, "cifar10", "aggre", 0, 90.0, (0.60, 0.90, 0.72), tipping_rule="reference", guard=True)
    write_run(tmp_path, "cifar100", "noisy100", 0, 60.5, recipe="reference")
    write_run(tmp_path, "npz", "given", 0, None, dict(images=1000, flagged=42), recipe="robust")
    write_run(tmp_path, "synthetic", "worst", 0, 80.0, recipe="robust", teacher_acc=83.0, tipping_rule="plateau",
              guard=True)
    (tmp_path / "synthetic_worst_seed_0_robust").rename(tmp_path / "synthetic_worst_seed_0")
    write_run(tmp_path, "synthetic", "worst", 1, 70.0, recipe="robust", teacher_acc=73.0, tipping_rule="none",
              guard=False)
    return tmp_path


def test_mean_ci95_hand_computed():
    mean, half = mean_ci95([80, 82, 84])
    assert mean == pytest.approx(82.0)
    assert half == pytest.approx(4.9683, abs=1e-4)  # 4.3027 * std 2 / sqrt(3)
    mean, half = mean_ci95([0.7, 0.8])  # std 0.0707, t(0.975, 1) = 12.706: 12.706 * 0.0707 / 1.414 = 0.6353
    assert (mean, half) == (pytest.approx(0.75), pytest.approx(0.6353, abs=1e-4))
    mean, half = mean_ci95([60.5])
    assert mean == 60.5 and math.isnan(half)
    assert all(math.isnan(v) for v in mean_ci95([]))


def test_collect(results):
    notes = []
    rows = collect(str(results), notes)
    assert [(r["dataset"], r["noise_type"], r["recipe"], r["evaluated"]) for r in rows] == [
        ("cifar10", "aggre", "reference", "pair"), ("cifar10", "worst", "ce", "network"),
        ("cifar10", "worst", "reference", "pair"), ("cifar100", "noisy100", "reference", "pair"),
        ("npz", "given", "robust", "teacher"), ("synthetic", "worst", "robust", "teacher"),
        ("synthetic", "worst", "robust, --tipping_rule none", "teacher")]
    aggre, ce, c10, c100, own, robust, no_split = rows
    assert c10["n_seeds"] == 3 and c10["seeds"] == [0, 1, 2]  # the unfinished seed 3 is skipped ...
    assert len(notes) == 1 and "cifar10_worst_seed_3" in notes[0] and "not finished" in notes[0]  # ... with a note
    assert c10["test_accuracy_mean"] == pytest.approx(82.0)  # the reference recipe evaluates the pair
    assert c10["test_accuracy_ci95"] == pytest.approx(T_975_2DF * 2 / math.sqrt(3))
    assert c10["wall_time_s_mean"] == pytest.approx(110.0)
    # the ce row beside it: the one network's accuracy, its time, nothing detected
    assert ce["seeds"] == [0, 1, 2] and ce["test_accuracy_mean"] == pytest.approx(86.0)
    assert ce["test_accuracy_ci95"] == pytest.approx(T_975_2DF * 1 / math.sqrt(3))
    assert ce["wall_time_s_mean"] == pytest.approx(51.0) and ce["n_detection"] == 0 and math.isnan(ce["f1_mean"])
    # the robust recipe evaluates the teacher alone, whatever flag overrode its training
    assert robust["test_accuracy_mean"] == 83.0 and no_split["test_accuracy_mean"] == 73.0
    # Detection over the two runs that have it (seed 1 has none).
    assert c10["n_detection"] == 2
    assert c10["precision_mean"] == pytest.approx(0.75) and c10["recall_mean"] == pytest.approx(0.55)
    assert c10["f1_mean"] == pytest.approx(0.65) and c10["f1_ci95"] == pytest.approx(0.6353, abs=1e-4)
    # t(0.975, 1) = 12.7062 times std / sqrt(2), which is half the difference of two values
    assert c10["auroc_mean"] == pytest.approx(0.92) and c10["auroc_ci95"] == pytest.approx(12.7062 * 0.02, abs=1e-4)
    assert c10["average_precision_mean"] == pytest.approx(0.83)
    assert c10["average_precision_ci95"] == pytest.approx(12.7062 * 0.03, abs=1e-4)
    # An older run: P/R/F1 but no AUROC or average precision; its recipe named by its rule, the pair evaluated.
    assert aggre["n_detection"] == 1 and aggre["f1_mean"] == pytest.approx(0.72) and math.isnan(aggre["auroc_mean"])
    assert aggre["test_accuracy_mean"] == 90.0 and math.isnan(aggre["wall_time_s_mean"])
    # No test set and no ground truth: a detection (it flagged labels) without any score.
    assert own["n_detection"] == 1 and math.isnan(own["test_accuracy_mean"])
    assert all(math.isnan(own[f"{k}_mean"]) for k in ("precision", "recall", "f1", "auroc", "average_precision"))
    assert c100["n_seeds"] == 1 and c100["seeds"] == [0] and c100["test_accuracy_mean"] == 60.5
    assert math.isnan(c100["test_accuracy_ci95"])
    assert c100["n_detection"] == 0 and math.isnan(c100["f1_mean"])


GOOD_ARGS = '"args": {"dataset": "cifar10", "noise_type": "worst", "seed": 0}, "finished": true'


@pytest.mark.parametrize("content, what", [("{not json", "not a readable JSON file"),
                                           ('{"finished": true}', "missing or malformed field"),
                                           ("[1, 2]", "missing or malformed field"),
                                           ('{%s, "detection": {"auroc": "high"}}' % GOOD_ARGS, "malformed"),
                                           ('{%s, "final_test_accuracy": "x"}' % GOOD_ARGS, "malformed")])
def test_collect_bad_file(tmp_path, content, what):
    (tmp_path / "cifar10_worst_seed_0").mkdir()
    bad = tmp_path / "cifar10_worst_seed_0" / "metrics.json"
    bad.write_text(content)
    with pytest.raises(SummaryError) as e:
        collect(str(tmp_path))
    assert isinstance(e.value, ValueError)
    assert str(bad) in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_undefined_numbers_count_as_missing(tmp_path):
    """A label set without a single noisy label has no AUROC or average precision (null in metrics.json)."""
    write_run(tmp_path, "cifar10", "clean", 0, 91.0, dict(flagged=3, truly_noisy=0, precision=0.0, recall=0.0,
                                                          f1=0.0, auroc=None, average_precision=None))
    (row,) = collect(str(tmp_path))
    assert row["n_detection"] == 1 and row["f1_mean"] == 0.0
    assert math.isnan(row["auroc_mean"]) and math.isnan(row["average_precision_mean"])


def test_write_summary(results):
    markdown = write_summary(collect(str(results)), str(results))
    assert (results / "summary.md").read_text() == markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0] == ("| dataset | noise type | recipe | seeds | test accuracy (%) | of | runs with detection "
                        "| precision | recall | F1 | AUROC | average precision | F1 of the flagged column "
                        "| training time (s) |")
    assert table[1] == "|" + " --- |" * 14
    assert table[2] == ("| cifar10 | aggre | reference | 0 | 90.00 | pair | 1 | 0.6000 | 0.9000 | 0.7200 | – | – | – "
                        "| – |")  # an older run
    assert table[3] == "| cifar10 | worst | ce | 0, 1, 2 | 86.00 ± 2.48 | one network | 0 | – | – | – | – | – | – | 51 |"
    assert table[4] == ("| cifar10 | worst | reference | 0, 1, 2 | 82.00 ± 4.97 | pair | 2 | 0.7500 ± 0.6353 "
                        "| 0.5500 ± 0.6353 | 0.6500 ± 0.6353 | 0.9200 ± 0.2541 | 0.8300 ± 0.3812 | 0.8500 ± 0.6353 "
                        "| 110 |")
    # one seed: no ±; no detection: –
    assert table[5] == "| cifar100 | noisy100 | reference | 0 | 60.50 | pair | 0 | – | – | – | – | – | – | – |"
    assert table[6] == "| npz | given | robust | 0 | – | teacher alone | 1 | – | – | – | – | – | – | – |"
    assert table[8].startswith("| synthetic | worst | robust, --tipping_rule none | 1 | 73.00 | teacher alone |")
    with open(results / "summary.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 7
    assert list(lines[0])[:4] == ["dataset", "noise_type", "recipe", "evaluated"]
    assert list(lines[0])[-7:] == ["auroc_mean", "auroc_ci95", "average_precision_mean", "average_precision_ci95",
                                   "flagged_f1_mean", "flagged_f1_ci95", "wall_time_s_mean"]
    worst = lines[2]
    assert worst["recipe"] == "reference" and worst["evaluated"] == "pair"
    assert worst["seeds"] == "0 1 2" and worst["n_seeds"] == "3" and worst["n_detection"] == "2"
    assert worst["test_accuracy_mean"] == "82.0000" and worst["test_accuracy_ci95"] == "4.9683"
    assert worst["precision_mean"] == "0.7500" and worst["f1_ci95"] == "0.6353"
    assert worst["auroc_mean"] == "0.9200" and worst["average_precision_ci95"] == "0.3812"
    assert worst["wall_time_s_mean"] == "110.0000" and lines[1]["wall_time_s_mean"] == "51.0000"
    assert lines[3]["test_accuracy_ci95"] == "" and lines[3]["f1_mean"] == ""  # no value: empty field
    assert lines[0]["auroc_mean"] == "" and lines[4]["test_accuracy_mean"] == ""
    assert not [p for p in os.listdir(results) if p.startswith(".tmp")]  # no temporary file left behind


def summarize(*args):
    return subprocess.run([sys.executable, "summarize.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_cli(results):
    r = summarize("--results_dir", str(results))
    assert r.returncode == 0, r.stderr
    assert "| cifar10 | worst | reference | 0, 1, 2 | 82.00 ± 4.97 |" in r.stdout
    assert "| cifar10 | worst | ce | 0, 1, 2 | 86.00 ± 2.48 |" in r.stdout and "| AUROC | average precision |" in r.stdout
    assert r.stdout == (results / "summary.md").read_text()
    assert (results / "summary.csv").is_file()
    assert "cifar10_worst_seed_3" in r.stderr  # the note on the skipped run


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "bad json"])
def test_cli_errors(tmp_path, case):
    results = tmp_path / "results"
    if case != "missing":
        results.mkdir()
    if case == "bad json":
        (results / "run").mkdir()
        (results / "run" / "metrics.json").write_text("{")
    r = summarize("--results_dir", str(results))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(results) in r.stderr
