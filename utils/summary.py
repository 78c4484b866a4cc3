"""Seed summaries: mean and 95 % confidence interval of test accuracy and of the detection numbers (precision, recall,
F1, AUROC, average precision of detection.npy, and the F1 of label_issues.csv's flagged column) over the seeds of each
(dataset, noise type, recipe), read from the runs' metrics.json. The test accuracy is that of what the recipe
evaluates (learning.py's default): the pair (reference), the teacher alone (robust), the one network (ce).
No torch here, so summarize.py is instant."""
import csv
import glob
import io
import json
import math
import os

import numpy as np
from scipy import stats

from utils import atomic_write
from utils.recipes import label as recipe_label

DETECTION_KEYS = ("precision", "recall", "f1", "auroc", "average_precision")
DETECTION_HEADERS = ("precision", "recall", "F1", "AUROC", "average precision")
CSV_COLUMNS = (["dataset", "noise_type", "recipe", "evaluated", "n_seeds", "seeds", "test_accuracy_mean",
                "test_accuracy_ci95", "n_detection"] + [f"{k}_{s}" for k in DETECTION_KEYS + ("flagged_f1",)
                                                        for s in ("mean", "ci95")] + ["wall_time_s_mean"])
EVALUATED = {"pair": "pair", "teacher": "teacher alone", "network": "one network"}


class SummaryError(ValueError):
    """A metrics.json that cannot be summarised; the message is one line and names the file."""


def mean_ci95(values):
    """(mean, half-width of the 95 % confidence interval of the mean). With few seeds the normal 1.96 is far too
    narrow, hence Student's t with n - 1 degrees of freedom. One value: no spread to estimate, half-width nan."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def _read_run(path):
    """The fields of one metrics.json the summary needs; anything unexpected is a SummaryError naming the file."""
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SummaryError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    try:
        args, finished = m["args"], bool(m["finished"])
        fixes = m.get("label_fixes")  # runs trained with --label_fixes form their own row
        noise_type = str(args["noise_type"]) + ("" if not fixes else f" + fixes {str(fixes['sha256'])[:8]}")
        # runs of versions before recipes were evaluated as the pair (learning.py's default then)
        evaluated = str(m.get("evaluated") or "pair")
        run = dict(dataset=str(args["dataset"]), noise_type=noise_type, recipe=recipe_label(m), evaluated=evaluated,
                   seed=int(args["seed"]), finished=finished, detection=m.get("detection"),
                   wall_time_s=None if m.get("wall_time_s") is None else float(m["wall_time_s"]))
        # None: an unfinished run, or a data set without a test set (then the key may be missing too)
        accuracy = m.get("final_test_accuracy_teacher" if evaluated == "teacher" else "final_test_accuracy")
        run["test_accuracy"] = None if accuracy is None else float(accuracy)
        if run["detection"] is not None:
            # Only the numbers this run has: none without ground truth, no AUROC / AP from older versions;
            # None where a number is undefined (no truly noisy label).
            run["detection"] = {k: float(v) for k, v in run["detection"].items()
                                if k in DETECTION_KEYS and v is not None}
            flagged = m.get("flagged") or {}  # label_issues.csv's flagged column; runs of older versions lack it
            if flagged.get("f1") is not None:
                run["detection"]["flagged_f1"] = float(flagged["f1"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SummaryError(f"{path}: not a BKD metrics.json (missing or malformed field: "
                           f"{type(e).__name__}: {e})") from None
    return run


def collect(results_dir, notes=None):
    """One row per (dataset, noise type) over the finished runs in results_dir/*/metrics.json, sorted.
    Unfinished runs are skipped; a line saying so is appended to `notes` (a list) when given."""
    groups = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(results_dir), "*", "metrics.json"))):
        run = _read_run(path)
        if not run["finished"]:
            if notes is not None:
                notes.append(f"skipped {os.path.dirname(path)}: the run has not finished")
            continue
        groups.setdefault((run["dataset"], run["noise_type"], run["recipe"], run["evaluated"]), []).append(run)
    rows = []
    for (dataset, noise_type, recipe, evaluated), runs in sorted(groups.items()):
        row = dict(dataset=dataset, noise_type=noise_type, recipe=recipe, evaluated=evaluated, n_seeds=len(runs),
                   seeds=sorted(r["seed"] for r in runs))
        row["test_accuracy_mean"], row["test_accuracy_ci95"] = mean_ci95(
            [r["test_accuracy"] for r in runs if r["test_accuracy"] is not None])
        # Runs without a tipping epoch have no detection; each number is averaged over the runs that have it.
        detected = [r["detection"] for r in runs if r["detection"] is not None]
        row["n_detection"] = len(detected)
        for k in DETECTION_KEYS + ("flagged_f1",):
            row[f"{k}_mean"], row[f"{k}_ci95"] = mean_ci95([d[k] for d in detected if k in d])
        row["wall_time_s_mean"] = mean_ci95([r["wall_time_s"] for r in runs if r["wall_time_s"] is not None])[0]
        rows.append(row)
    return rows


def _csv_value(v):
    if isinstance(v, list):
        return " ".join(map(str, v))  # seeds: spaces, so the field needs no quoting
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"  # empty = no value, what CSV readers take as missing
    return str(v)


def _pm(mean, half, decimals):
    """'mean ± half-width'; the ± part is left out where there is no interval (one seed), '–' where no value."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{decimals}f}" if math.isnan(half) else f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def to_markdown(rows):
    header = ["dataset", "noise type", "recipe", "seeds", "test accuracy (%)", "of", "runs with detection",
              *DETECTION_HEADERS, "F1 of the flagged column", "training time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        cells = [r["dataset"], r["noise_type"], r["recipe"], ", ".join(map(str, r["seeds"])),
                 _pm(r["test_accuracy_mean"], r["test_accuracy_ci95"], 2), EVALUATED.get(r["evaluated"], r["evaluated"]),
                 str(r["n_detection"])]
        cells += [_pm(r[f"{k}_mean"], r[f"{k}_ci95"], 4) for k in DETECTION_KEYS + ("flagged_f1",)]
        cells.append(_pm(r["wall_time_s_mean"], math.nan, 0))
        lines.append("| " + " | ".join(cells) + " |")
    caption = ("Mean ± half-width of the 95 % confidence interval over seeds (Student's t); no ± with one seed. "
               "Test accuracy of what the recipe evaluates (learning.py's default, the column 'of'); precision to F1 "
               "score detection.npy; the F1 of the flagged column label_issues.csv's; a ce run flags nothing. "
               "Training time: the mean wall time of training.")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def write_summary(rows, results_dir):
    """Write results_dir/summary.csv and results_dir/summary.md; return the markdown."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([_csv_value(r[c]) for c in CSV_COLUMNS] for r in rows)
    atomic_write(os.path.join(results_dir, "summary.csv"), lambda f: f.write(buf.getvalue().encode()))
    markdown = to_markdown(rows)
    atomic_write(os.path.join(results_dir, "summary.md"), lambda f: f.write(markdown.encode()))
    return markdown
