"""Score a BKD run's detection (detection.npy, detection_scores.npy, label_issues.csv) against the ground truth.

Precision, recall and F1 of the flagged labels, as the reference prints them; then the ranking by the detection
scores without a threshold (AUROC, average precision, precision at k) and how often the suggested label is the
true one. The same numbers go to detection.json in the run directory."""
import os

import numpy as np

from data import load_dataset
from utils import InputError
from utils.bkd import precision_recall_f1
from utils.checkpoint import save_json
from utils.cli import get_args_parser, run_dir, run_main
from utils.label_issues import in_dataset_order, load_detection, load_scores, read_label_issues
from utils.metrics import detection_report


def load_optional(out_dir, n, noisy_labels):
    """(scores, suggested labels, names of the files an older run lacks): None for what is missing."""
    scores = suggested = None
    missing = []
    path = os.path.join(out_dir, "detection_scores.npy")
    if os.path.isfile(path):
        scores = load_scores(path, n)
    else:
        missing.append("detection_scores.npy")
    path = os.path.join(out_dir, "label_issues.csv")
    if os.path.isfile(path):
        table = read_label_issues(path, n)
        if not np.array_equal(in_dataset_order(table, "given_label"), noisy_labels):
            raise InputError(f"{path}: its given labels are not this run's labels; it belongs to another label set")
        suggested = in_dataset_order(table, "suggested_label")
    else:
        missing.append("label_issues.csv")
    return scores, suggested, missing


def main(args):
    data = load_dataset(args.dataset, args.noise_type, args.data_dir, args.noise_path, image_size=args.image_size)
    out_dir = run_dir(args)
    n = len(data.noisy_labels)
    flagged = load_detection(os.path.join(out_dir, "detection.npy"), n)
    scores, suggested, missing = load_optional(out_dir, n, data.noisy_labels)  # every file checked before printing
    truly_noisy = data.noise_or_not
    report = detection_report(flagged, scores, truly_noisy, suggested, data.clean_labels)
    print(f"flagged as noisy: {int(flagged.sum())} of {len(flagged)}")
    if truly_noisy is None:
        print(f"no ground truth for the {args.noise_type} labels of {args.dataset} (the clean labels are unknown): "
              f"nothing to score the detection against")
    else:
        # These six lines are the reference's output (plus the baseline); users diff them, keep them as they are.
        print(f"truly noisy: {report['truly_noisy']}")
        print(f"precision is {report['precision']}")
        print(f"recall is {report['recall']}")
        print(f"The f-score is {report['f1']}")
        baseline = precision_recall_f1(np.ones_like(truly_noisy), truly_noisy)[2]
        print(f"(flagging every label would score F1 {baseline:.4f})")
        for line in ranking_lines(report):
            print(line)
    if missing and truly_noisy is not None:
        lost = (["AUROC, average precision or precision at k"] if scores is None else []) + (
            ["suggestion accuracy"] if suggested is None else [])
        print(f"{out_dir} has no {' and no '.join(missing)} (the run predates {'them' if len(missing) > 1 else 'it'}): "
              f"no {' and no '.join(lost)}; train it again to get them")
    path = os.path.join(out_dir, "detection.json")
    save_json(path, report)
    print(f"written: {path}")


def _number(x, decimals=4):
    """A number to print; 'undefined' for None (e.g. AUROC when no label is truly wrong)."""
    return "undefined" if x is None else f"{x:.{decimals}f}"


def ranking_lines(report):
    """The threshold-free lines of a detection report (those its keys allow)."""
    lines = []
    if "auroc" in report:
        lines += ["ranking by detection_scores.npy (low agreement on the given label = suspicious):",
                  f"AUROC is {_number(report['auroc'])}",
                  f"average precision is {_number(report['average_precision'])}",
                  f"precision at k = {report['k']} (the number truly noisy) is {_number(report['precision_at_k'])}"]
    if "suggestion_accuracy" in report:
        lines.append(f"suggested label = true label for {report['suggestion_correct']} of the "
                     f"{report['flagged_truly_noisy']} flagged images that are truly mislabelled "
                     f"({_number(report['suggestion_accuracy'])})")
    return lines


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]))
