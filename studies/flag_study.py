"""Which labels to flag: cuts of BKD's own outputs against confident learning on K-fold out-of-fold probabilities.

    pip install -r studies/requirements.txt        # cleanlab, scikit-learn: this study's only, never the scripts'
    python studies/make_study_npz.py --out ~/data/study
    python studies/flag_study.py                    # chosen on: the recording runs, the K-fold peer, then study.md
    python studies/flag_study.py --confirm          # confirmed on: real runs on sources round one had not seen

Per label set and seed: the pass of the tipping epoch gives BKD's per-class agreement, student and teacher
probabilities, and the teacher's predictions of the last passes. Each cut of them (studies/flag_cuts.py CUTS: the
reference's G4, G3 + G4, suggested label != given, confident learning on the agreement, ...; the teacher's refusals
of the label; the shipped utils.flagging.flag_labels) flags a set of labels, scored against the ground truth (which
scores and never decides). The peer: the same network trained K times with cross-entropy on the other folds (K-fold
cross-validation, as cleanlab's documentation recommends), its out-of-fold probabilities given to cleanlab's
find_label_issues (its defaults), and, for a like-for-like reading, cleanlab on BKD's probabilities too.
Chosen on: the recording runs of studies/tipping_study.py (synthetic, digits with look-alike flips; trained first where
missing), --tipping_rule replayed on each. Confirmed on (--confirm): the real runs of the default rule that
studies/tipping_study.py confirm trains on --label_sets (Fashion-MNIST and Animal-MNIST, uniform and pair flips; trained
here where missing), cut at the split they made. Trainings are reused when finished. The table goes to
--results_dir/study.md (confirm.md with --confirm).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tipping_study  # noqa: E402
from study import (CONFIRMED_ON, ROOT, STUDY_DATA, LabelSet, Run, device_line, markdown_table, mean_ci, paired,  # noqa: E402
                   pm, run_all, signed, stop_if_failed, train_one_network)

sys.path.insert(0, ROOT)
from flag_cuts import CUTS  # noqa: E402
from utils.flagging import FLAGGED_CUT, TEACHER_SPARES, flag_labels, probabilities  # noqa: E402
from utils.metrics import auroc, average_precision  # noqa: E402
from utils.bkd import precision_recall_f1  # noqa: E402
from utils.tipping import DEFAULT_RULE, TIPPING_RULES, find_tipping, held_passes  # noqa: E402

THIS = os.path.abspath(__file__)
NOISY = {"synthetic": ["aggre", "worst", "rand1"], "digits": ["5", "25"]}


# ---------------------------------------------------------------------------- the K-fold peer
def fold_of(n, k, seed):
    """Fold number of each of n samples: a seeded permutation cut into k near-equal parts."""
    folds = np.empty(n, dtype=np.int64)
    folds[np.random.RandomState(seed).permutation(n)] = np.arange(n) % k
    return folds


def train_fold(args):
    """One fold of the peer: the recording run's network trained with cross-entropy on the labels of every other
    fold (the same schedule, augmentation and optimizer: study.train_one_network), then its softmax on this fold's
    images (no augmentation). Writes probs.npy and metrics.json (finished) into --out."""
    seed, k, fold = args.seed, args.folds, args.fold
    data = (LabelSet(args.label_set, args.study_data).data() if args.label_set
            else tipping_study.run_data(args.source, args.noise, args))
    folds = fold_of(len(data.noisy_labels), k, seed)
    t0 = time.time()
    schedule = ["--n_epoch", args.n_epoch, "--lr", args.lr, "--lr_decay_every", args.lr_decay_every, "--arch", args.arch]
    predict, image_epochs = train_one_network(data, np.flatnonzero(folds != fold), seed * 100 + fold, schedule)
    probs = predict(data.train_images[folds == fold])
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "probs.npy"), probs)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(dict(finished=True, seconds=time.time() - t0, image_epochs=image_epochs), f)


def peer_runs(args, cells, schedule):
    """{cell: Run} of the peer's trainings, a cell being (source, noise, seed, fold) of the recording runs or
    (label set, seed, fold) of the confirmation runs."""
    runs = {}
    epochs, lr, decay = (schedule[schedule.index(flag) + 1] for flag in ("--n_epoch", "--lr", "--lr_decay_every"))
    arch = schedule[schedule.index("--arch") + 1] if "--arch" in schedule else "small_cnn"  # the runs' network
    for cell in cells:
        *data, seed = cell
        for fold in range(args.folds):
            if len(data) == 2:
                name, data_flags = f"{data[0]}_{data[1]}", ["--source", data[0], "--noise", data[1]]
            else:
                name, data_flags = LabelSet(data[0]).folder, ["--label_set", data[0]]
            out = os.path.join(args.results_dir, "kfold", f"{name}_seed_{seed}", f"fold_{fold}")
            flags = ["fold", *data_flags, "--seed", seed, "--folds", args.folds, "--fold", fold,
                     "--study_data", args.study_data, "--out", out, "--n_epoch", epochs, "--lr", lr,
                     "--lr_decay_every", decay] + (["--arch", arch] if arch != "small_cnn" else [])
            runs[(*cell, fold)] = Run(THIS, flags, out)
    return runs


def out_of_fold(args, runs, cell, n, num_classes):
    """The peer's out-of-fold probabilities of every sample of a cell, and what they cost: (network image-epochs of
    training, network image-forwards of evaluation): K trainings of one network, and one forward pass of each image."""
    folds = fold_of(n, args.folds, cell[-1])
    probs, cost = np.zeros((n, num_classes)), (0, n)
    for fold in range(args.folds):
        run = runs[(*cell, fold)]
        probs[folds == fold] = np.load(os.path.join(run.run_dir, "probs.npy"))
        cost = (cost[0] + run.metrics()["image_epochs"], cost[1])
    return probs, cost


# ---------------------------------------------------------------------------- scoring
def pass_probabilities(run, epoch):
    """(agreement probabilities, student probabilities, the teacher's predicted classes, training images) of a
    recording run's pass of `epoch`."""
    with np.load(os.path.join(run.run_dir, "passes", f"epoch_{epoch:04d}.npz")) as z:
        return (*probabilities(z["teacher_logits"], z["student_logits"]), z["teacher_logits"].argmax(axis=1),
                len(z["train_idx"]))


def score(flagged, suspicion, wrong):
    p, r, f1 = precision_recall_f1(flagged, wrong)
    return dict(f1=f1, precision=p, recall=r, flagged=int(np.sum(flagged)), auroc=auroc(suspicion, wrong),
                ap=average_precision(suspicion, wrong))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    sub = p.add_subparsers(dest="command")
    fold = sub.add_parser("fold", help="(internal) train one fold of the K-fold peer")
    for flag in ("out", "n_epoch", "lr", "lr_decay_every"):
        fold.add_argument(f"--{flag}", required=True)
    for flag in ("source", "noise", "label_set"):  # source and noise of a recording run, or a label set
        fold.add_argument(f"--{flag}", default=None)
    for flag in ("seed", "folds", "fold"):
        fold.add_argument(f"--{flag}", type=int, required=True)
    fold.add_argument("--study_data", required=True)
    fold.add_argument("--arch", default="small_cnn", help="the network (the runs')")
    fold.add_argument("--resume", action="store_true", help="(ignored: a fold is retrained unless finished)")
    p.add_argument("--sources", nargs="+", default=list(NOISY), choices=list(NOISY), help="image sources")
    p.add_argument("--schedule", default="demo", choices=list(tipping_study.SCHEDULES), help="the recording runs' schedule")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    p.add_argument("--tipping_rule", default=DEFAULT_RULE, choices=sorted(set(TIPPING_RULES) - {"none"}),
                   help="the rule whose tipping epoch's pass is cut")
    p.add_argument("--folds", type=int, default=5, help="K of the peer's K-fold cross-validation")
    p.add_argument("--confirm", action="store_true",
                   help="cut the real runs of studies/tipping_study.py confirm on --label_sets (sources the cut was not "
                        "chosen on) instead of the recording runs")
    p.add_argument("--label_sets", nargs="+", default=list(CONFIRMED_ON),
                   help="with --confirm: label sets of studies/study.py (default: the confirmed-on ones)")
    p.add_argument("--study_data", default=STUDY_DATA, help="where studies/make_study_npz.py wrote its files")
    p.add_argument("--recordings", default="results/tipping_study", help="studies/tipping_study.py's --results_dir")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/flag_study", help="where the peer's trainings and study.md go")
    args = p.parse_args()
    if args.command == "fold":
        return train_fold(args)
    results = confirm(args) if args.confirm else chosen(args)
    write_table(args, results)


def chosen(args):
    """{(label set, method): [score per seed]} on the recording runs of the sources the cut was chosen on, the rule
    replayed on each."""
    cells = [(s, n, seed) for s in args.sources for n in NOISY[s] for seed in args.seeds]
    schedule = tipping_study.SCHEDULES[args.schedule]
    recordings = tipping_study.recording_runs(argparse.Namespace(
        sources=args.sources, schedules=[args.schedule], seeds=[str(seed) for seed in args.seeds],
        study_data=args.study_data, results_dir=args.recordings))
    # the recording runs of the noisy label sets (studies/tipping_study.py record trains the clean ones too)
    stop_if_failed(run_all([recordings[s, n, args.schedule, str(seed)] for s, n, seed in cells], args.jobs,
                           label="recording runs"))
    peers = peer_runs(args, cells, schedule)
    stop_if_failed(run_all(list(peers.values()), args.jobs, label="K-fold peer trainings"))
    results = {}
    for source, noise, seed in cells:
        run = recordings[source, noise, args.schedule, str(seed)]
        data = tipping_study.run_data(source, noise, args)
        curves = tipping_study.epoch_table(run, data)
        confidence, fit = list(curves["confidence"]), list(curves["train_fit"])
        tipping = None
        for found in range(len(confidence)):  # replayed epoch by epoch, as a run of the rule finds it
            tipping = find_tipping(args.tipping_rule, confidence[:found + 1], fit[:found + 1])
            if tipping is not None:
                break
        if tipping is None:
            print(f"{run.run_dir}: the {args.tipping_rule} rule finds no tipping epoch; left out")
            continue
        name = f"{source} {noise}" + (" % wrong" if source == "digits" else "")
        score_cuts(results, name, run, tipping.epoch, found, args.tipping_rule, data,
                   out_of_fold(args, peers, (source, noise, seed), len(data.noisy_labels), data.num_classes), args)
    return results


def confirm(args):
    """{(label set, method): [score per seed]} on real runs of the default rule on sources round one had not seen: the
    runs of studies/tipping_study.py confirm (trained here where missing), cut at the split they made."""
    runs = tipping_study.confirmation_runs(argparse.Namespace(
        label_sets=args.label_sets, seeds=[str(seed) for seed in args.seeds], study_data=args.study_data,
        results_dir=args.recordings, confirm_schedule=args.schedule))
    cells = [(name, seed) for name in args.label_sets for seed in args.seeds]
    stop_if_failed(run_all([runs[DEFAULT_RULE, name, str(seed)] for name, seed in cells], args.jobs,
                           label=f"confirmation runs ({DEFAULT_RULE} rule)"))
    peers = peer_runs(args, cells, tipping_study.SCHEDULES[args.schedule])
    stop_if_failed(run_all(list(peers.values()), args.jobs, label="K-fold peer trainings"))
    results = {}
    for name, seed in cells:
        run = runs[DEFAULT_RULE, name, str(seed)]
        metrics, data = run.metrics(), LabelSet(name, args.study_data).data()
        if metrics["tipping_epoch"] is None:
            print(f"{run.run_dir}: no tipping epoch; left out")
            continue
        score_cuts(results, name, run, metrics["tipping_epoch"], metrics["tipping_found_epoch"], DEFAULT_RULE, data,
                   out_of_fold(args, peers, (name, seed), len(data.noisy_labels), data.num_classes), args)
    return results


def score_cuts(results, name, run, tipping, found, rule, data, peer, args):
    """Score every cut of one run's split (its tipping epoch's pass, and the passes it held when it split at epoch
    `found`) and the peer's (its out-of-fold probabilities and their cost) into results[label set name, method]."""
    from cleanlab.filter import find_label_issues
    labels, wrong = data.noisy_labels, data.noise_or_not
    agree, student_probs, _, n_train = pass_probabilities(run, tipping)
    # the passes a run holds when it splits: as a real run's metrics.json names them, or as a replay would hold them
    metrics = run.metrics() or {}
    held = (metrics.get("label_issues_passes") or {}).get("last") or held_passes(rule, tipping, found)
    slots = len(held)
    last = [pass_probabilities(run, e) for e in held]
    recent, teacher_predicted = np.mean([p[0] for p in last], axis=0), np.stack([p[2] for p in last])
    # one run until its split: two networks trained on n_train images an epoch, and a full-set pass of both after each
    # epoch up to the one that finds the tipping epoch (that one only where it is the tipping epoch)
    passes = found + (tipping == found)
    bkd_cost = (2 * (found + 1) * n_train, 2 * passes * len(labels))
    suspicion = -agree[np.arange(len(labels)), labels]  # the ranking: the same for every cut of BKD

    def add(method, flagged, ranking=suspicion, cost=bkd_cost):
        results.setdefault((name, method), []).append(dict(score(flagged, ranking, wrong), cost=cost))
    for cut_name, cut in CUTS.items():
        add(f"BKD, tipping pass: {cut_name}", cut(agree, labels))
    for cut_name in ("g4", "confident learning, pruned by noise rate", "suggested != given"):
        add(f"BKD, last {slots} passes: {cut_name}", CUTS[cut_name](recent, labels))
    refusals = np.sum(teacher_predicted != labels, axis=0)
    for spares in (2, 1, 0):  # the teacher's refusals alone, and the shipped cut's neighbours
        refuses = f"teacher refuses the label in {slots - spares}+ of the last {slots} passes"
        add(f"BKD, {refuses}", refusals >= slots - spares)
        if spares != TEACHER_SPARES:
            add(f"BKD, last {slots} passes: suggested != given and {refuses}",
                flag_labels(recent, labels, teacher_predicted, spares))
    add(f"BKD, last {slots} passes: {FLAGGED_CUT} (shipped)", flag_labels(recent, labels, teacher_predicted))
    add("BKD, tipping pass: agreement + cleanlab", find_label_issues(labels, agree))
    add("BKD, tipping pass: student + cleanlab", find_label_issues(labels, student_probs),
        -student_probs[np.arange(len(labels)), labels])
    oof, peer_cost = peer
    add(f"{args.folds}-fold CE + cleanlab (peer)", find_label_issues(labels, oof), -oof[np.arange(len(labels)), labels],
        peer_cost)


def write_table(args, results):
    header = ["label set", "method", "F1", "precision", "recall", "flagged", "AUROC", "average precision",
              "F1 - peer's", "p", "training (network image-epochs)", "forward passes (network images)"]
    peer_name = f"{args.folds}-fold CE + cleanlab (peer)"
    rows = []
    for (name, method), scores in results.items():
        peer = results[name, peer_name]
        f1 = [s["f1"] for s in scores]
        diff, half, p = paired([s["f1"] for s in peer], f1)
        rows.append([name, method, pm(*mean_ci(f1), 3), pm(*mean_ci([s["precision"] for s in scores]), 3),
                     pm(*mean_ci([s["recall"] for s in scores]), 3), f"{np.mean([s['flagged'] for s in scores]):.0f}",
                     pm(*mean_ci([s["auroc"] for s in scores]), 3), pm(*mean_ci([s["ap"] for s in scores]), 3),
                     signed(diff, half, 3), "–" if np.isnan(p) else f"{p:.2f}",
                     f"{np.mean([s['cost'][0] for s in scores]):,.0f}", f"{np.mean([s['cost'][1] for s in scores]):,.0f}"])
    # the same F1s as one matrix, a method a row and a label set a column (mean over seeds; * = at or above the peer)
    label_sets = list(dict.fromkeys(name for name, _ in results))
    methods = list(dict.fromkeys(method for _, method in results))

    def cell(name, method):
        f1 = np.mean([s["f1"] for s in results[name, method]])
        peer = np.mean([s["f1"] for s in results[name, peer_name]])
        return f"{f1:.3f}" + ("*" if f1 >= peer and method != peer_name else "")
    matrix = markdown_table(["method"] + label_sets, [[m] + [cell(n, m) for n in label_sets] for m in methods])
    runs = (f"real runs of the {DEFAULT_RULE} rule (studies/tipping_study.py confirm), cut at their split" if args.confirm
            else f"recording runs, tipping rule {args.tipping_rule} replayed")
    text = (f"Schedule {args.schedule}, {runs}, seeds {', '.join(map(str, args.seeds))}; {device_line()}. Mean ± 95 % "
            f"interval over seeds; the difference to the peer is paired by seed (p: paired t-test).\n\n"
            + markdown_table(header, rows) + "\nDetection F1, mean over the seeds (* = at or above the peer's):\n\n"
            + matrix)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "confirm.md" if args.confirm else "study.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
