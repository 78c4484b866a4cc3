"""Seed summaries (utils/summary.py, summarize.py) on hand-made metrics.json files, against hand-computed numbers."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from utils.summary import SummaryError, collect, mean_ci95, write_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_2DF = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (statistical tables)


def write_run(results_dir, dataset, noise_type, seed, acc, detection=None, finished=True):
    d = results_dir / f"{dataset}_{noise_type}_seed_{seed}"
    d.mkdir(parents=True)
    metrics = dict(args=dict(dataset=dataset, noise_type=noise_type, seed=seed, n_epoch=300), finished=finished,
                   final_test_accuracy=acc if finished else None, best_val_accuracy=50.0, tipping_epoch=None,
                   detection=None)
    if detection is not None:
        p, r, f1 = detection
        metrics.update(tipping_epoch=10, detection=dict(flagged=100, truly_noisy=90, precision=p, recall=r, f1=f1))
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def results(tmp_path):
    """cifar10 worst: 3 finished seeds (accuracy 80, 82, 84), one without detection, one unfinished seed;
    cifar100 noisy100: one seed without detection."""
    write_run(tmp_path, "cifar10", "worst", 0, 80.0, (0.70, 0.50, 0.60))
    write_run(tmp_path, "cifar10", "worst", 2, 84.0, (0.80, 0.60, 0.70))
    write_run(tmp_path, "cifar10", "worst", 1, 82.0)
    write_run(tmp_path, "cifar10", "worst", 3, None, finished=False)
    write_run(tmp_path, "cifar100", "noisy100", 0, 60.5)
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
    assert [(r["dataset"], r["noise_type"]) for r in rows] == [("cifar10", "worst"), ("cifar100", "noisy100")]
    c10, c100 = rows
    assert c10["n_seeds"] == 3 and c10["seeds"] == [0, 1, 2]  # the unfinished seed 3 is skipped ...
    assert len(notes) == 1 and "cifar10_worst_seed_3" in notes[0] and "not finished" in notes[0]  # ... with a note
    assert c10["test_accuracy_mean"] == pytest.approx(82.0)
    assert c10["test_accuracy_ci95"] == pytest.approx(T_975_2DF * 2 / math.sqrt(3))
    # Detection over the two runs that have it (seed 1 has none).
    assert c10["n_detection"] == 2
    assert c10["precision_mean"] == pytest.approx(0.75) and c10["recall_mean"] == pytest.approx(0.55)
    assert c10["f1_mean"] == pytest.approx(0.65) and c10["f1_ci95"] == pytest.approx(0.6353, abs=1e-4)
    assert c100["n_seeds"] == 1 and c100["seeds"] == [0] and c100["test_accuracy_mean"] == 60.5
    assert math.isnan(c100["test_accuracy_ci95"])
    assert c100["n_detection"] == 0 and math.isnan(c100["f1_mean"])


@pytest.mark.parametrize("content, what", [("{not json", "not a readable JSON file"),
                                           ('{"finished": true}', "missing or malformed field"),
                                           ("[1, 2]", "missing or malformed field")])
def test_collect_bad_file(tmp_path, content, what):
    (tmp_path / "cifar10_worst_seed_0").mkdir()
    bad = tmp_path / "cifar10_worst_seed_0" / "metrics.json"
    bad.write_text(content)
    with pytest.raises(SummaryError) as e:
        collect(str(tmp_path))
    assert isinstance(e.value, ValueError)
    assert str(bad) in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_write_summary(results):
    markdown = write_summary(collect(str(results)), str(results))
    assert (results / "summary.md").read_text() == markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[2] == "| cifar10 | worst | 0, 1, 2 | 82.00 ± 4.97 | 2 | 0.7500 ± 0.6353 | 0.5500 ± 0.6353 | 0.6500 ± 0.6353 |"
    assert table[3] == "| cifar100 | noisy100 | 0 | 60.50 | 0 | – | – | – |"  # one seed: no ±; no detection: –
    with open(results / "summary.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2
    assert lines[0]["seeds"] == "0 1 2" and lines[0]["n_seeds"] == "3" and lines[0]["n_detection"] == "2"
    assert lines[0]["test_accuracy_mean"] == "82.0000" and lines[0]["test_accuracy_ci95"] == "4.9683"
    assert lines[0]["precision_mean"] == "0.7500" and lines[0]["f1_ci95"] == "0.6353"
    assert lines[1]["test_accuracy_ci95"] == "" and lines[1]["f1_mean"] == ""  # no value: empty field
    assert not [p for p in os.listdir(results) if p.startswith(".tmp")]  # no temporary file left behind


def summarize(*args):
    return subprocess.run([sys.executable, "summarize.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli(results):
    r = summarize("--results_dir", str(results))
    assert r.returncode == 0, r.stderr
    assert "| cifar10 | worst | 0, 1, 2 | 82.00 ± 4.97 |" in r.stdout
    assert r.stdout == (results / "summary.md").read_text()
    assert (results / "summary.csv").is_file()
    assert "cifar10_worst_seed_3" in r.stderr  # the note on the skipped run


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
