"""Write the label fixes a simulated reviewer of review.html would download, to measure what reviewing gains.

    python tools/reviewer_fixes.py --dataset synthetic --noise_type worst --reviewer truth --groups 4

Takes the flags of the other scripts (they name the run) and reads its label_issues.csv. The reviewed images are
those of --groups (4 = flagged, 3 = uncertain: the page's two sections). --reviewer truth is a careful reviewer
who sets each reviewed image to its true label (it needs the ground truth: CIFAR-N, synthetic, an .npz with
clean_labels); --reviewer suggestion takes BKD's suggestion for each (for group 4 alone that is exactly
label_fixes_suggested.csv). Rows are written only where a label changes. The file goes into the run directory as
label_fixes_<reviewer>_groups_<groups>.csv; its path is printed.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.fixes import fix_row, write_label_fixes  # noqa: E402
from utils import InputError  # noqa: E402
from utils.cli import get_args_parser, load_data, run_dir, run_main  # noqa: E402
from utils.label_issues import in_dataset_order, read_label_issues  # noqa: E402


def main(args):
    if args.label_fixes is not None:
        raise InputError("reviewer_fixes.py simulates the first review of a run: leave out --label_fixes")
    data = load_data(args)
    if args.reviewer == "truth" and data.clean_labels is None:
        raise InputError(f"--reviewer truth needs the true labels, and the {args.noise_type} labels of "
                         f"{args.dataset} have none; use --reviewer suggestion")
    out_dir = run_dir(args)
    table = read_label_issues(os.path.join(out_dir, "label_issues.csv"), len(data.noisy_labels))
    group = np.empty(len(data.noisy_labels), dtype=object)  # group of each image, in dataset order
    group[table["index"]] = table["group"]
    reviewed = np.isin(group, [str(g) for g in args.groups])
    new_labels = data.clean_labels if args.reviewer == "truth" else in_dataset_order(table, "suggested_label")
    changed = np.flatnonzero(reviewed & (new_labels != data.noisy_labels))
    groups = "".join(map(str, sorted(args.groups, reverse=True)))
    path = os.path.join(out_dir, f"label_fixes_{args.reviewer}_groups_{groups}.csv")
    write_label_fixes(path, [fix_row(data, i, new_labels[i]) for i in changed])
    print(f"{path}: {reviewed.sum()} images reviewed (groups {', '.join(map(str, args.groups))}), "
          f"{len(changed)} relabelled")


if __name__ == "__main__":
    parser = get_args_parser(__doc__.splitlines()[0])
    parser.add_argument("--reviewer", choices=("truth", "suggestion"), default="truth",
                        help="truth: each reviewed image gets its true label; suggestion: BKD's suggested label")
    parser.add_argument("--groups", type=int, nargs="+", choices=(3, 4), default=[4],
                        help="the groups of label_issues.csv the reviewer looks at: 4 = flagged, 3 = uncertain")
    run_main(main, parser)
