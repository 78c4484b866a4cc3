"""Which labels are wrong, judged by the networks at the split or at the end of the run, against confident learning.

    pip install -r studies/requirements.txt && python studies/make_study_npz.py --out ~/data/study   # see its --help
    python studies/ranking_study.py                        # every run it needs (reused when finished), then the tables

Per noisy label set, seed and schedule of the grid (studies/study.py; the runs are studies/learning_study.py's): the
default rule's BKD run, its passes recorded (--record_passes): those before the split and the final networks' (a pass
without augmentation and one with, as label_issues.csv is made). Every candidate ranking and cut of them
(CANDIDATE_RANKINGS, CANDIDATE_CUTS: the split's, the final networks', both) is scored against the ground truth,
which scores and never decides: F1, precision, recall, AUROC, average precision, precision at k (k = the number of
wrong labels, and 100). The peer: the same network trained with cross-entropy on the same schedule, 5-fold, its
out-of-fold probabilities given to cleanlab's find_label_issues (its defaults), ranked by its probability of the
given label. Differences to the peer are paired by seed (p: paired t-test). Cost of each side: network image-epochs
of training and network images of forward passes.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flag_study  # noqa: E402
from flag_cuts import CUTS  # noqa: E402
from study import (CHOSEN_SOURCES, NEW_SOURCES, ROOT, STUDY_DATA, STUDY_SCHEDULES, LabelSet, confirming,  # noqa: E402
                   device_line, guarded_run, label_sets, markdown_table, mean_ci, paired, pm, run_all, signed,
                   stop_if_failed, watch_replay)

sys.path.insert(0, ROOT)
from utils.bkd import DegenerateSplit, assign_groups, otsu_split, precision_recall_f1  # noqa: E402
from utils.flagging import flag_labels, probabilities  # noqa: E402
from utils.metrics import auroc, average_precision, precision_at_k  # noqa: E402
from utils.watch import collapsed_onto_one_class, has_collapsed, has_fallen  # noqa: E402

PEER = "5-fold CE + cleanlab (peer)"


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def final_passes(run_dir, metrics):
    """The final networks' passes of a recorded run: [(teacher logits, student logits)] of the pass without
    augmentation and the one with (passes/final.npz, or the last epoch's passes/after_<epoch>.npz of earlier
    recordings)."""
    path = os.path.join(run_dir, "passes", "final.npz")
    if not os.path.isfile(path):
        path = os.path.join(run_dir, "passes", f"after_{metrics['args']['n_epoch'] - 1:04d}.npz")
    with np.load(path) as z:
        return [(z[f"{kind}_teacher"], z[f"{kind}_student"]) for kind in ("plain", "aug")]


def collapsed_pass(teacher_logits, student_logits, labels):
    """Whether a pass of a pair over the whole set is collapsed onto one class by utils.watch's measure."""
    return collapsed_onto_one_class(probabilities(teacher_logits, student_logits)[0].argmax(axis=1), labels)


def evidence(run, data):
    """What the candidates read of one run (never the ground truth): the tipping pass's agreements; the average and
    the teacher's predictions of the passes held at the split; the final passes' agreement, teacher and student
    probabilities (averaged) and the teacher's predictions."""
    m = run.metrics()
    tipping = m["tipping_epoch"]
    with np.load(os.path.join(run.run_dir, "passes", f"epoch_{tipping:04d}.npz")) as z:
        split_agree = probabilities(z["teacher_logits"], z["student_logits"])[0]
        n_train = len(z["train_idx"])
    held = []
    for epoch in m["label_issues_passes"]["last"]:
        with np.load(os.path.join(run.run_dir, "passes", f"epoch_{epoch:04d}.npz")) as z:
            held.append((probabilities(z["teacher_logits"], z["student_logits"])[0], z["teacher_logits"].argmax(1)))
    final = final_passes(run.run_dir, m)
    # the watch's verdict (distrust); a run of before the watch: replayed (it had no guard); one of
    # before the collapse was watched: its final networks' plain pass tells whether they collapsed
    untrusted = distrust(m) is not None if "went_back" in m else any(watch_replay(m))
    untrusted = untrusted or ("val_top_class_share" not in m and collapsed_pass(*final[0], data.noisy_labels))
    e = dict(trusted=not untrusted, split_agree=split_agree, held_probs=np.mean([h[0] for h in held], axis=0),
             held_teacher=np.stack([h[1] for h in held]),
             final_agree=np.mean([softmax(t + s) for t, s in final], axis=0),
             final_teacher=np.mean([softmax(t) for t, _ in final], axis=0),
             final_student=np.mean([softmax(s) for _, s in final], axis=0),
             final_teacher_predicted=np.stack([t.argmax(1) for t, _ in final]))
    n = len(data.noisy_labels)
    found, passes_before = m["tipping_found_epoch"], m["tipping_found_epoch"] + (tipping == m["tipping_found_epoch"])
    e["cost"] = dict(training=2 * m["args"]["n_epoch"] * n_train, split_passes=2 * passes_before * n,
                     final_passes=2 * len(final) * n, found=found)
    e["metrics"] = m
    return e


def distrust(metrics):
    """Why the final networks of a run that split could not judge its labels under --judge final as this study
    tested it (the split judged instead), or None: the run went back to the labels, its noisy-validation accuracy
    fell after the split, or its networks collapsed onto one class. No ground truth. (studies/judge_study.py replaced
    it: the final teacher now judges unless it memorised or collapsed.)"""
    if metrics["went_back"] is not None:
        return "the run went back to the labels"
    if has_fallen(metrics):
        return "the noisy-validation accuracy fell after the split"
    if has_collapsed(metrics):
        return "the networks collapsed onto one class"
    return None


def on_label(probs, labels):
    return probs[np.arange(len(labels)), labels]


def rank_average(*scores):
    """The mean of the ranks (0 = lowest) of several scores: one ranking of two that are on different scales."""
    return np.mean([np.argsort(np.argsort(s, kind="stable"), kind="stable") for s in scores], axis=0)


# suspicion of each label (high = suspicious), from a run's evidence and its labels
CANDIDATE_RANKINGS = {
    "split: agreement on the label (tipping pass, the reference's)": lambda e, y: -on_label(e["split_agree"], y),
    "final: agreement on the label": lambda e, y: -on_label(e["final_agree"], y),
    "final: teacher's probability of the label": lambda e, y: -on_label(e["final_teacher"], y),
    "final: student's probability of the label": lambda e, y: -on_label(e["final_student"], y),
    "split and final agreement, ranks averaged": lambda e, y: rank_average(-on_label(e["split_agree"], y),
                                                                           -on_label(e["final_agree"], y)),
    "shipped: final agreement where trusted, else the split's":
        lambda e, y: -on_label(e["final_agree"] if e["trusted"] else e["split_agree"], y),
}


def g4(probs, labels):
    values = on_label(probs, labels)
    try:
        return assign_groups(values, otsu_split(values)) == 4
    except DegenerateSplit:
        return np.zeros(len(labels), dtype=bool)


# flagged labels, from a run's evidence and its labels
CANDIDATE_CUTS = {
    "split: G4 (the reference's detection.npy)": lambda e, y: g4(e["split_agree"], y),
    "split: suggested != given, teacher refusing in every held pass (shipped before)":
        lambda e, y: flag_labels(e["held_probs"], y, e["held_teacher"]),
    "final: G4": lambda e, y: g4(e["final_agree"], y),
    "final: suggested != given": lambda e, y: e["final_agree"].argmax(1) != y,
    "final: suggested != given, teacher refusing in both final passes":
        lambda e, y: flag_labels(e["final_agree"], y, e["final_teacher_predicted"]),
    "final: confident learning, pruned by noise rate (agreement)":
        lambda e, y: CUTS["confident learning, pruned by noise rate"](e["final_agree"], y),
    "final: confident learning, pruned by noise rate (teacher)":
        lambda e, y: CUTS["confident learning, pruned by noise rate"](e["final_teacher"], y),
    "shipped: final cut where trusted, else the split's":
        lambda e, y: (flag_labels(e["final_agree"], y, e["final_teacher_predicted"]) if e["trusted"]
                      else flag_labels(e["held_probs"], y, e["held_teacher"])),
    "split or final: both suggest another label, teacher refusing at the end":
        lambda e, y: flag_labels(e["held_probs"], y, e["held_teacher"]) & flag_labels(e["final_agree"], y,
                                                                                    e["final_teacher_predicted"]),
}


def score(flagged, suspicion, wrong):
    p, r, f1 = precision_recall_f1(flagged, wrong)
    k = int(wrong.sum())
    return dict(f1=f1, precision=p, recall=r, flagged=int(np.sum(flagged)), auroc=auroc(suspicion, wrong),
                ap=average_precision(suspicion, wrong), p_at_k=precision_at_k(suspicion, wrong, k),
                p_at_100=precision_at_k(suspicion, wrong, 100))


def peer_args(args, schedule):
    """The namespace flag_study.peer_runs takes: the peer's trainings of one schedule in their own folder."""
    return argparse.Namespace(folds=5, study_data=args.study_data,
                              results_dir=os.path.join(args.results_dir, "peer", schedule))


NOISY = ("uniform 20", "pair 25")  # the label sets with wrong labels to find


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--sources", nargs="+", default=list(CHOSEN_SOURCES + NEW_SOURCES),
                   help="image sources of studies/make_study_npz.py: their noisy label sets (the memorise schedule: their "
                        "small versions)")
    p.add_argument("--schedules", nargs="+", default=list(STUDY_SCHEDULES), choices=list(STUDY_SCHEDULES))
    p.add_argument("--noises", nargs="+", default=list(NOISY), choices=list(NOISY),
                   help="noisy label sets of each source (quoted: 'pair 25')")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3", "4"], help="seeds")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/learning_study",
                   help="studies/learning_study.py's: the runs are shared; the peer's trainings and ranking.md go there")
    p.add_argument("--peer_schedules", nargs="*", default=None, choices=list(STUDY_SCHEDULES),
                   help="the schedules the peer is trained on (default: every one; the tables show '–' for its "
                        "differences elsewhere, and the candidates against the split's all the same)")
    args = p.parse_args()
    if args.peer_schedules is None:
        args.peer_schedules = args.schedules
    args.cells = [(sch, name, seed) for sch in args.schedules
                  for name in label_sets(args.sources, args.noises, sch) for seed in args.seeds]
    runs = {cell: guarded_run(args.results_dir, *cell, args.study_data) for cell in args.cells}
    stop_if_failed(run_all([run for run, train in runs.values() if train], args.jobs, label="BKD runs (default rule)"))
    runs = {cell: run for cell, (run, _) in runs.items()}
    peers = {sch: flag_study.peer_runs(peer_args(args, sch), [(n, int(s)) for c, n, s in args.cells if c == sch],
                                       STUDY_SCHEDULES[sch]) for sch in args.schedules if sch in args.peer_schedules}
    stop_if_failed(run_all([r for sch in peers for r in peers[sch].values()], args.jobs, label="peer trainings"))
    results = {}
    from cleanlab.filter import find_label_issues
    for (sch, name, seed), run in runs.items():
        data = LabelSet(name, args.study_data).data()
        y, wrong = data.noisy_labels, data.noise_or_not
        if run.metrics()["tipping_epoch"] is None:
            print(f"{run.run_dir}: no split; left out")
            continue
        e = evidence(run, data)
        cost = e["cost"]
        bkd_cost = (cost["training"], cost["split_passes"] + cost["final_passes"])
        for r_name, ranking in CANDIDATE_RANKINGS.items():
            for c_name, cut in CANDIDATE_CUTS.items():
                results.setdefault((sch, name, r_name, c_name), []).append(
                    dict(score(cut(e, y), ranking(e, y), wrong), cost=bkd_cost, seed=seed))
        if sch not in peers:
            continue
        oof, peer_cost = flag_study.out_of_fold(peer_args(args, sch), peers[sch], (name, int(seed)), len(y),
                                                data.num_classes)
        results.setdefault((sch, name, PEER, PEER), []).append(
            dict(score(find_label_issues(y, oof), -on_label(oof, y), wrong), cost=peer_cost, seed=seed))
    text = tables(args, results)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "ranking.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.results_dir, "ranking.json"), "w") as f:
        json.dump({" | ".join(k): v for k, v in results.items()}, f)
    print(text)


SPLIT_RANKING, SPLIT_CUT = next(iter(CANDIDATE_RANKINGS)), list(CANDIDATE_CUTS)[1]  # the split's, shipped before


def versus(results, key, got, field):
    """'got - base' of one score, paired by seed, with p; '–' where the base was not run (the peer)."""
    if key not in results:
        return "–"
    d, half, pv = paired([g[field] for g in results[key]], [g[field] for g in got])
    return signed(d, half, 3) + ("" if np.isnan(pv) else f" (p {pv:.2f})")


def tables(args, results):
    """Per schedule and part: the rankings (AUROC, AP, precision at k and at 100, each with its paired difference to
    the peer and to the split's ranking), then the cuts (F1, precision, recall, flagged, the paired F1 difference to
    the peer and to the split's cut, the cost of each side), a row per label set and candidate."""
    text = [f"Seeds {', '.join(args.seeds)}; {device_line()}. Mean ± 95 % interval over seeds; differences paired by "
            f"seed (p: paired t-test); '–' where the peer was not trained (--peer_schedules).\n"]
    for sch, part in ((sch, part) for sch in args.schedules for part in ("chosen on", "confirmed on")):
        names = [name for name in dict.fromkeys(n for c, n, _ in args.cells if c == sch
                                                and confirming(n) == (part != "chosen on"))
                 if (sch, name, SPLIT_RANKING, SPLIT_CUT) in results]
        if not names:
            continue
        rows = []
        for name in names:
            peer = (sch, name, PEER, PEER)
            for r_name in list(CANDIDATE_RANKINGS) + ([PEER] if peer in results else []):
                got = results[sch, name, r_name, SPLIT_CUT if r_name != PEER else PEER]
                row = [name, r_name]
                for key in ("auroc", "ap", "p_at_k", "p_at_100"):
                    row += [pm(*mean_ci([g[key] for g in got]), 3), versus(results, peer, got, key)]
                row += [versus(results, (sch, name, SPLIT_RANKING, SPLIT_CUT), got, key)
                        for key in ("auroc", "ap")]
                rows.append(row)
        text.append(f"\n### Schedule {sch}, {part}: rankings\n\n" + markdown_table(
            ["label set", "ranking", "AUROC", "- peer's", "average precision", "- peer's", "precision at k", "- peer's",
             "precision at 100", "- peer's", "AUROC - split's", "AP - split's"], rows))
        rows = []
        for name in names:
            peer = (sch, name, PEER, PEER)
            for c_name in list(CANDIDATE_CUTS) + ([PEER] if peer in results else []):
                got = results[sch, name, SPLIT_RANKING if c_name != PEER else PEER, c_name]
                f1 = [g["f1"] for g in got]
                rows.append([name, c_name, pm(*mean_ci(f1), 3), pm(*mean_ci([g["precision"] for g in got]), 3),
                             pm(*mean_ci([g["recall"] for g in got]), 3), f"{np.mean([g['flagged'] for g in got]):.0f}",
                             versus(results, peer, got, "f1"),
                             versus(results, (sch, name, SPLIT_RANKING, SPLIT_CUT), got, "f1"),
                             f"{np.mean([g['cost'][0] for g in got]):,.0f}",
                             f"{np.mean([g['cost'][1] for g in got]):,.0f}"])
        text.append(f"\n### Schedule {sch}, {part}: flagged labels\n\n" + markdown_table(
            ["label set", "cut", "F1", "precision", "recall", "flagged", "F1 - peer's", "F1 - split's",
             "training (network image-epochs)", "forward passes (network images)"], rows))
    return "".join(text)


if __name__ == "__main__":
    main()
