"""Summarise the seeds of BKD runs: per dataset and noise type, mean and 95 % confidence interval of clean test
accuracy and of detection precision, recall, F1, AUROC and average precision, from results/*/metrics.json. Prints a
markdown table and writes summary.csv and summary.md into the results directory."""
import argparse
import os
import sys

from utils import RunError
from utils.summary import SummaryError, collect, write_summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results_dir", default="results",
                   help="root of the run directories <dataset>_<noise_type>_seed_<seed>/; summary.csv and "
                        "summary.md are written here")
    args = p.parse_args(argv)
    # Bad input is one line on stderr and exit code 2, as in the other scripts; no traceback.
    if not os.path.isdir(args.results_dir):
        print(f"summarize.py: no results directory {args.results_dir}; train first (run.sh)", file=sys.stderr)
        return 2
    notes = []
    try:
        rows = collect(args.results_dir, notes)
    except SummaryError as e:
        print(f"summarize.py: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"summarize.py: {note}", file=sys.stderr)
    if not rows:
        print(f"summarize.py: no finished runs (*/metrics.json) in {args.results_dir}", file=sys.stderr)
        return 2
    try:
        print(write_summary(rows, args.results_dir), end="")
    except RunError as e:
        print(f"summarize.py: {e}", file=sys.stderr)
        return 1
    # On stderr, so that `python summarize.py > table.md` gets the table alone.
    print(f"written: {os.path.join(args.results_dir, 'summary.csv')}, {os.path.join(args.results_dir, 'summary.md')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
