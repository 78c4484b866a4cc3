"""Score a BKD run's detection (detection.npy, detection_scores.npy, label_issues.csv) against the ground truth, and
write what a user needs to act on it.

Precision, recall and F1 of detection.npy (the reference's G4 unless trained with --detection_npy flagged), as the
reference prints them; then the same for the flagged column of label_issues.csv (the better cut, what the page
shows), side by side with G4's; then the ranking by the detection scores without a threshold (AUROC, average
precision, precision at k) and how often the suggested label is the true one. The same numbers go to detection.json
in the run directory. It also writes review.html, a page to review the flagged and uncertain images and download
the label fixes to train with (--label_fixes). It suggests no fixes without a review: every policy that acts on the
findings alone cost accuracy on some label set of studies/fix_policy_study.py (studies/fix_policy_study.md), so an earlier version's
label_fixes_suggested.csv is removed."""
import os

import numpy as np

from flags import check_args, get_args_parser, load_data, run_dir
from data.fixes import as_row, file_sha256
from utils import InputError
from utils.bkd import precision_recall_f1
from utils.checkpoint import save_json, saved_metrics
from utils.findings import EARLIER_FINAL_CUT, FINAL_CUT, SPLIT_CUT
from utils.cli import run_main
from utils.label_issues import (in_dataset_order, load_detection, load_scores, ranking_column, read_label_issues,
                                require_detection)
from utils.metrics import detection_report
from utils.review import write_review_page


def load_optional(out_dir, n, noisy_labels):
    """(scores, the label_issues table, names of the files an older run lacks): None for what is missing."""
    scores = table = None
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
    else:
        missing.append("label_issues.csv")
    return scores, table, missing


def main(args):
    if args.review_max_images < 0:
        raise InputError(f"--review_max_images {args.review_max_images}: must be 0 or more")
    out_dir = run_dir(args)
    if args.recipe == "ce":
        print(f"nothing to score: a --recipe ce run (plain cross-entropy, one network) flags no labels ({out_dir}); "
              f"BKD's recipes, reference and robust, write detection.npy")
        return
    require_detection(out_dir)  # before the data, which may be a download: without a run there is nothing to score
    data = load_data(args)
    n = len(data.noisy_labels)
    flagged = load_detection(os.path.join(out_dir, "detection.npy"), n)
    scores, table, missing = load_optional(out_dir, n, data.noisy_labels)  # every file checked before printing
    suggested = None if table is None else in_dataset_order(table, "suggested_label")
    kept = data.kept  # a run trained with --label_fixes is scored on the images it kept
    fixes = None if data.label_fixes is None else data.label_fixes.info

    def counted(a):
        return None if a is None else np.asarray(a)[kept]
    truly_noisy = data.noise_or_not
    report = detection_report(flagged[kept], counted(scores), counted(truly_noisy), counted(suggested),
                              counted(data.clean_labels))
    if fixes is not None:
        print(f"trained with the label fixes {fixes['path']}: {fixes['relabelled']} images relabelled, "
              f"{fixes['dropped']} dropped; every number below counts the {kept.sum()} images kept, with their "
              f"labels after the fixes")
    print(f"flagged as noisy: {int(flagged.sum())} of {kept.sum()}" + ("" if fixes is None else " images kept"))
    if truly_noisy is None:
        print(f"no ground truth for the {args.noise_type} labels of {args.dataset} (the clean labels are unknown): "
              f"nothing to score the detection against")
    else:
        # These six lines are the reference's output (plus the baseline); users diff them, keep them as they are.
        print(f"truly noisy: {report['truly_noisy']}")
        print(f"precision is {report['precision']}")
        print(f"recall is {report['recall']}")
        print(f"The f-score is {report['f1']}")
        baseline = precision_recall_f1(np.ones(kept.sum(), dtype=bool), truly_noisy[kept])[2]
        print(f"(flagging every label would score F1 {baseline:.4f})")
        if table is not None:
            column_name = ranking_column(saved_metrics(out_dir))
            report["flagged_column"] = column = detection_report(
                in_dataset_order(table, "flagged")[kept], in_dataset_order(table, column_name)[kept], truly_noisy[kept])
            report["flagged_column"]["ranking"] = column_name
            print(f"flagged in label_issues.csv ({flagged_cut(out_dir)}): {column['flagged']}, precision "
                  f"{column['precision']:.4f}, recall {column['recall']:.4f}, F1 {column['f1']:.4f} (G4's F1 "
                  f"{g4_f1(table, kept, truly_noisy):.4f})")
            for key, column_name in FINAL_RANKINGS.items():
                final = in_dataset_order(table, column_name)[kept]
                if not np.isnan(final).any():  # a table of an earlier version lacks the final columns
                    ranked = detection_report(np.zeros(len(final), dtype=bool), final, truly_noisy[kept])
                    report[key] = {k: ranked[k] for k in ("auroc", "average_precision", "k", "precision_at_k")}
        for line in ranking_lines(report):
            print(line)
    if missing and truly_noisy is not None:
        lost = (["AUROC, average precision or precision at k"] if scores is None else []) + (
            ["suggestion accuracy"] if table is None else [])
        print(f"{out_dir} has no {' and no '.join(missing)} (the run predates {'them' if len(missing) > 1 else 'it'}): "
              f"no {' and no '.join(lost)}; train it again to get them")
    path = os.path.join(out_dir, "detection.json")
    save_json(path, report)
    print(f"written: {path}")
    if table is None:
        print("no review.html: it needs label_issues.csv; train the run again")
        return
    print(no_suggested_fixes_line(os.path.join(out_dir, "label_fixes_suggested.csv")))
    path = os.path.join(out_dir, "review.html")
    cards = review_cards(table, data, args.review_max_images, ranking_column(saved_metrics(out_dir)))
    size = write_review_page(path, run=review_header(args, out_dir, data, table, report, len(cards)),
                             cards=cards, images=data.train_images[[c["index"] for c in cards]],
                             class_names=class_names(data), storage_key=storage_key(out_dir),
                             base_fixes=[] if fixes is None else [as_row(fix) for fix in data.label_fixes.rows])
    print(f"written: {path} ({len(cards)} images to review, {size / 2 ** 20:.1f} MB; open it in a browser)")


FINAL_RANKINGS = {"final_ranking": "final_agreement_given", "final_teacher_ranking": "final_teacher_given"}


def flagged_cut(out_dir):
    """What label_issues.csv's flagged column flags, in words."""
    judged_by = saved_metrics(out_dir).get("judged_by")
    return {"final_teacher": FINAL_CUT, "final": EARLIER_FINAL_CUT}.get(judged_by, SPLIT_CUT)


def g4_f1(table, kept, truly_noisy):
    """F1 of the lowest Otsu group (the reference's detection) from the table's group column."""
    return precision_recall_f1((in_dataset_order(table, "group") == "4")[kept], truly_noisy[kept])[2]


def no_suggested_fixes_line(path):
    """The line saying that no fixes are suggested without a review; an earlier version's file of suggested fixes at
    `path` is removed first (its policies cost accuracy, so nobody should train on it)."""
    stale = os.path.isfile(path)
    if stale:
        os.remove(path)
    return (f"no label fixes without a review{f' ({path} of an earlier version removed)' if stale else ''}: every "
            f"policy that acts on the findings alone cost accuracy on some label set (docs/review.md); review "
            f"review.html and train with the fixes it downloads")


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
    for key, what in (("final_teacher_ranking", "final_teacher_given (the final teacher's probability of the label; "
                                                "label_issues.csv is ordered by it where the final teacher judged)"),
                      ("final_ranking", "final_agreement_given (the final networks' agreement)")):
        final = report.get(key)
        if final is not None:
            lines.append(f"ranking by {what}: AUROC {_number(final['auroc'])}, average precision "
                         f"{_number(final['average_precision'])}, precision at k = {final['k']} "
                         f"{_number(final['precision_at_k'])}")
    if "suggestion_accuracy" in report:
        lines.append(f"suggested label = true label for {report['suggestion_correct']} of the "
                     f"{report['flagged_truly_noisy']} flagged images that are truly mislabelled "
                     f"({_number(report['suggestion_accuracy'])})")
    return lines


# ---------------------------------------------------------------------------- the review page
def uncertain_rows(table):
    """Rows of the table BKD is unsure of: in the lower two Otsu groups (3 and 4), yet not flagged."""
    return np.isin(np.asarray(table["group"]), ("3", "4")) & ~np.asarray(table["flagged"])


def review_cards(table, data, cap, score_column="agreement_given"):
    """The images to review, in the table's order (from the most suspicious down): the flagged ones (the flagged
    column, card group 4), then the uncertain ones (uncertain_rows, card group 3), at most `cap` in all; each card's
    score is the table's ranking column."""
    cards = []
    for group, rows in ((4, np.asarray(table["flagged"])), (3, uncertain_rows(table))):
        for row in np.flatnonzero(rows)[:cap - len(cards)]:
            i = int(table["index"][row])
            cards.append(dict(index=i, file=table["file"][row], given=int(table["given_label"][row]),
                              original=int(data.labels_on_disk[i]), suggested=int(table["suggested_label"][row]),
                              score=float(table[score_column][row]),
                              suggested_score=float(table["agreement_suggested"][row]), group=int(group),
                              truth=None if data.clean_labels is None else int(data.clean_labels[i])))
    return cards


def review_header(args, out_dir, data, table, report, shown):
    """The facts the page's header shows."""
    tipping_epoch = saved_metrics(out_dir).get("tipping_epoch")  # None without metrics.json: the page says "unknown"
    # the page shows the flagged column in the table's order: its precision, recall and F1, and that order's AUROC
    # and AP (the final networks' ranking where they judged, else the tipping pass's, detection_scores.npy)
    column = report.get("flagged_column", {})
    scores = {k: column.get(k, report.get(k)) for k in ("precision", "recall", "f1", "auroc", "average_precision")}
    return dict(dataset=args.dataset, noise_type=args.noise_type, seed=args.seed, tipping_epoch=tipping_epoch,
                images=len(data.noisy_labels), flagged=int(np.sum(table["flagged"])),
                uncertain=int(uncertain_rows(table).sum()), shown=shown, cap=args.review_max_images,
                detection=scores if "f1" in report else None,
                label_fixes=None if data.label_fixes is None else data.label_fixes.info, dropped=int(np.sum(~data.kept)))


def class_names(data):
    return list(data.class_names) if data.class_names is not None else [str(c) for c in range(data.num_classes)]


def storage_key(out_dir):
    """The run directory and its table's checksum: a run trained again starts its review afresh."""
    return f"{os.path.basename(os.path.normpath(out_dir))}:{file_sha256(os.path.join(out_dir, 'label_issues.csv'))[:16]}"


def get_parser():
    parser = get_args_parser(__doc__.splitlines()[0])
    parser.add_argument("--review_max_images", type=int, default=5000,
                        help="most images review.html holds (the flagged ones first, then the uncertain ones, the "
                             "most suspicious first); each adds about 4 KB at 32x32")
    return parser


if __name__ == "__main__":
    run_main(main, get_parser(), check_args)
