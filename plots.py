"""Draw the pictures of a BKD run into its run directory: the student confidence per epoch, the detection scores
and their split, the precision-recall curve of the scores (when the ground truth is known) and the most suspicious
training images. Needs matplotlib (pip install matplotlib); takes the flags of the other scripts."""
import json
import os

import numpy as np

from flags import check_args, get_args_parser, load_data, run_dir
from utils import InputError
from utils.cli import run_main
from utils.label_issues import in_dataset_order, load_detection, load_scores, ranking_column, read_label_issues
from utils.plots import (confidence_figure, precision_recall_figure, pyplot, save_figure, scores_figure,
                         suspicious_figure)


def load_metrics(out_dir):
    """metrics.json of the run; one clear InputError when it is missing or unreadable."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        raise InputError(f"no {path}: train first with blind_knowledge_dist_training.py and the same --dataset, "
                         f"--noise_type, --seed and --results_dir")
    try:
        with open(path) as f:
            metrics = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("confidence"), list):
        raise InputError(f"{path}: not a BKD metrics.json (no per-epoch student confidence)")
    tipping = metrics.get("tipping_epoch")
    if tipping is not None and not (isinstance(tipping, int) and 0 <= tipping < len(metrics["confidence"])):
        raise InputError(f"{path}: tipping_epoch {tipping!r} is not one of its {len(metrics['confidence'])} epochs")
    return metrics


def main(args):
    out_dir = run_dir(args)
    if args.recipe == "ce":
        print(f"nothing to draw: a --recipe ce run (plain cross-entropy, one network) has no split and flags no "
              f"labels; its curves are in {out_dir}/metrics.json")
        return
    plt = pyplot()  # without matplotlib, one line and nothing written
    metrics = load_metrics(out_dir)
    data = load_data(args)
    n = len(data.noisy_labels)
    flagged = load_detection(os.path.join(out_dir, "detection.npy"), n)
    scores = load_scores(os.path.join(out_dir, "detection_scores.npy"), n)
    table = read_label_issues(os.path.join(out_dir, "label_issues.csv"), n)
    if not np.array_equal(in_dataset_order(table, "given_label"), data.noisy_labels):
        raise InputError(f"{out_dir}/label_issues.csv: its given labels are not this run's labels")
    truly_noisy = data.noise_or_not
    tipping, found = metrics.get("tipping_epoch"), metrics.get("tipping_found_epoch")
    if found is None and tipping is not None:  # runs of older versions: the search finds it 2 epochs later
        found = tipping + 2

    kept = data.kept  # a run trained with --label_fixes: the images it dropped are in no picture but the table's
    truly_kept = None if truly_noisy is None else truly_noisy[kept]
    figures = {"confidence.png": confidence_figure(plt, metrics["confidence"], tipping, found, metrics.get("test")),
               "scores_histogram.png": scores_figure(plt, scores[kept], metrics.get("detection_split"), flagged[kept],
                                                     truly_kept)}
    if truly_noisy is not None:
        figures["precision_recall.png"] = precision_recall_figure(plt, scores[kept], flagged[kept], truly_kept,
                                                                  in_dataset_order(table, "flagged")[kept])
    column = ranking_column(metrics)  # the table's order
    figures["suspicious_images.png"] = suspicious_figure(plt, data.train_images, table, truly_noisy, score_column=column)
    for name, fig in figures.items():
        path = os.path.join(out_dir, name)
        save_figure(plt, fig, path)
        print(f"written: {path}")
    if truly_noisy is None:
        print("no precision_recall.png: the ground truth of these labels is unknown")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]), check_args)
