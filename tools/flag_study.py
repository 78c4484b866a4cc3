"""Which labels to flag: cuts of BKD's own outputs against confident learning on K-fold out-of-fold probabilities.

    pip install -r requirements-study.txt        # cleanlab, scikit-learn: this study's only, never the scripts'
    python tools/make_digits_npz.py --out ~/data/digits
    python tools/flag_study.py                    # the recording runs, the K-fold peer's trainings, then the table

Per label set and seed: the pass of the tipping epoch that --tipping_rule finds (replayed on the recording run of
tools/tipping_study.py: up to the split, a run of any rule is that run) gives BKD's per-class agreement, student and
teacher probabilities, and the teacher's predictions of the last passes. Each cut of them (utils.flagging.CUTS: the
reference's G4, G3 + G4, suggested label != given, confident learning on the agreement, ...; the teacher's refusals
of the label; the shipped utils.flagging.flag_labels) flags a set of labels, scored against the ground truth (which
scores and never decides). The peer: the same network trained K times with cross-entropy on the other folds (K-fold
cross-validation, as cleanlab's documentation recommends), its out-of-fold probabilities given to cleanlab's
find_label_issues (its defaults), and, for a like-for-like reading, cleanlab on BKD's probabilities too.
The recording runs of the noisy label sets (tools/tipping_study.py record, which also records clean labels) are
trained first where missing. Trainings are reused when finished. The table goes to --results_dir/study.md.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tipping_study  # noqa: E402
from study import ROOT, Run, device_line, markdown_table, mean_ci, paired, pm, run_all, signed, stop_if_failed  # noqa: E402

sys.path.insert(0, ROOT)
from utils.flagging import CUTS, FLAGGED_CUT, TEACHER_SPARES, flag_labels, probabilities  # noqa: E402
from utils.metrics import auroc, average_precision  # noqa: E402
from utils.bkd import precision_recall_f1  # noqa: E402
from utils.tipping import DEFAULT_RULE, TIPPING_RULES, find_tipping, history_slots  # noqa: E402

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
    fold (the same schedule, augmentation and optimizer), then its softmax on this fold's images (no augmentation).
    Writes probs.npy and metrics.json (finished) into --out."""
    import torch
    from data.pipeline import DeviceBatches, to_device_images
    from models import build_model
    from utils.engine import seed_everything
    source, noise, seed, k, fold = args.source, args.noise, args.seed, args.folds, args.fold
    data = tipping_study.run_data(source, noise, args)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seed_everything(seed * 100 + fold)
    n = len(data.noisy_labels)
    folds = fold_of(n, k, seed)
    device = torch.device("cpu")
    pad_mode, flip_first = data.augment
    images = to_device_images(data.train_images, pad_mode, device)
    labels = torch.as_tensor(data.noisy_labels)
    generator = torch.Generator().manual_seed(seed * 100 + fold)
    common = dict(mean_std=data.mean_std, flip_first=flip_first, generator=generator, channels_last=True)
    train = DeviceBatches(images, labels, np.flatnonzero(folds != fold), batch_size=128, augment=True, shuffle=True,
                          **common)
    held_out = DeviceBatches(images, labels, np.flatnonzero(folds == fold), batch_size=256, **common)
    arch = "small_cnn"
    net = build_model(arch, data.num_classes).to(memory_format=torch.channels_last)
    n_epoch, lr, decay = (float(v) for v in (args.n_epoch, args.lr, args.lr_decay_every))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(decay), gamma=0.1)
    t0 = time.time()
    for _ in range(int(n_epoch)):
        net.train()
        for x, y, _ in train:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    net.eval()
    probs = np.zeros((len(held_out.indices), data.num_classes), dtype=np.float32)
    with torch.inference_mode():
        for x, _, pos in held_out:
            probs[pos.numpy()] = torch.softmax(net(x), dim=1).numpy()
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "probs.npy"), probs)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(dict(finished=True, seconds=time.time() - t0, image_epochs=int(n_epoch) * len(train.indices)), f)


def peer_runs(args, cells, schedule):
    """{(source, noise, seed, fold): Run} of the peer's trainings."""
    runs = {}
    epochs, lr, decay = (schedule[schedule.index(flag) + 1] for flag in ("--n_epoch", "--lr", "--lr_decay_every"))
    for source, noise, seed in cells:
        for fold in range(args.folds):
            out = os.path.join(args.results_dir, "kfold", f"{source}_{noise}_seed_{seed}", f"fold_{fold}")
            flags = ["fold", "--source", source, "--noise", noise, "--seed", seed, "--folds", args.folds, "--fold", fold,
                     "--digits_dir", args.digits_dir, "--out", out, "--n_epoch", epochs, "--lr", lr,
                     "--lr_decay_every", decay]
            runs[source, noise, seed, fold] = Run(THIS, flags, out)
    return runs


def out_of_fold(args, runs, source, noise, seed, n, num_classes):
    """The peer's out-of-fold probabilities of every sample, and the image-epochs its K trainings took."""
    folds = fold_of(n, args.folds, seed)
    probs, cost = np.zeros((n, num_classes)), 0
    for fold in range(args.folds):
        run = runs[source, noise, seed, fold]
        probs[folds == fold] = np.load(os.path.join(run.run_dir, "probs.npy"))
        cost += run.metrics()["image_epochs"]
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
    for flag in ("source", "noise", "out", "n_epoch", "lr", "lr_decay_every"):
        fold.add_argument(f"--{flag}", required=True)
    for flag in ("seed", "folds", "fold"):
        fold.add_argument(f"--{flag}", type=int, required=True)
    fold.add_argument("--digits_dir", required=True)
    fold.add_argument("--resume", action="store_true", help="(ignored: a fold is retrained unless finished)")
    p.add_argument("--sources", nargs="+", default=list(NOISY), choices=list(NOISY), help="image sources")
    p.add_argument("--schedule", default="demo", choices=list(tipping_study.SCHEDULES), help="the recording runs' schedule")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    p.add_argument("--tipping_rule", default=DEFAULT_RULE, choices=sorted(set(TIPPING_RULES) - {"none"}),
                   help="the rule whose tipping epoch's pass is cut")
    p.add_argument("--folds", type=int, default=5, help="K of the peer's K-fold cross-validation")
    p.add_argument("--digits_dir", default=os.path.expanduser("~/data/digits"),
                   help="where tools/make_digits_npz.py wrote digits_<percent>.npz")
    p.add_argument("--recordings", default="results/tipping_study", help="tools/tipping_study.py's --results_dir")
    p.add_argument("--jobs", type=int, default=2, help="trainings at the same time (they share the CPU cores)")
    p.add_argument("--results_dir", default="results/flag_study", help="where the peer's trainings and study.md go")
    args = p.parse_args()
    if args.command == "fold":
        return train_fold(args)
    from cleanlab.filter import find_label_issues

    cells = [(s, n, seed) for s in args.sources for n in NOISY[s] for seed in args.seeds]
    schedule = tipping_study.SCHEDULES[args.schedule]
    recordings = tipping_study.recording_runs(argparse.Namespace(
        sources=args.sources, schedules=[args.schedule], seeds=[str(seed) for seed in args.seeds],
        digits_dir=args.digits_dir, results_dir=args.recordings))
    # the recording runs of the noisy label sets (tools/tipping_study.py record trains the clean ones too)
    stop_if_failed(run_all([recordings[s, n, args.schedule, str(seed)] for s, n, seed in cells], args.jobs,
                           label="recording runs"))
    peers = peer_runs(args, cells, schedule)
    stop_if_failed(run_all(list(peers.values()), args.jobs, label="K-fold peer trainings"))
    results = {}  # (source, noise, method) -> [score dict per seed]
    for source, noise, seed in cells:
        run = recordings[source, noise, args.schedule, str(seed)]
        data = tipping_study.run_data(source, noise, args)
        labels, wrong = data.noisy_labels, data.noise_or_not
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
        agree, student_probs, _, n_train = pass_probabilities(run, tipping.epoch)
        # the passes a run holds when it splits (utils.tipping.history_slots of them, the newest last): the found
        # epoch's own pass only where it is the tipping epoch
        slots = history_slots(args.tipping_rule)
        newest = found if tipping.epoch == found else found - 1
        last = [pass_probabilities(run, e) for e in range(newest - slots + 1, newest + 1)]
        recent, teacher_predicted = np.mean([p[0] for p in last], axis=0), np.stack([p[2] for p in last])
        bkd_cost = (found + 1) * n_train  # one run (two networks) trained until the split finds its tipping epoch
        suspicion = -agree[np.arange(len(labels)), labels]  # the ranking: the same for every cut of BKD
        for name, cut in CUTS.items():
            results.setdefault((source, noise, f"BKD, tipping pass: {name}"), []).append(
                dict(score(cut(agree, labels), suspicion, wrong), cost=bkd_cost))
        for name in ("g4", "confident learning, pruned by noise rate", "suggested != given"):
            results.setdefault((source, noise, f"BKD, last {slots} passes: {name}"), []).append(
                dict(score(CUTS[name](recent, labels), suspicion, wrong), cost=bkd_cost))
        refusals = np.sum(teacher_predicted != labels, axis=0)
        for spares in (2, 1, 0):  # the teacher's refusals alone, and the shipped cut's neighbours
            name = f"teacher refuses the label in {slots - spares}+ of the last {slots} passes"
            results.setdefault((source, noise, f"BKD, {name}"), []).append(
                dict(score(refusals >= slots - spares, suspicion, wrong), cost=bkd_cost))
            if spares != TEACHER_SPARES:
                results.setdefault((source, noise, f"BKD, last {slots} passes: suggested != given and {name}"),
                                   []).append(dict(score(flag_labels(recent, labels, teacher_predicted, spares),
                                                         suspicion, wrong), cost=bkd_cost))
        results.setdefault((source, noise, f"BKD, last {slots} passes: {FLAGGED_CUT} (shipped)"), []).append(
            dict(score(flag_labels(recent, labels, teacher_predicted), suspicion, wrong), cost=bkd_cost))
        results.setdefault((source, noise, "BKD, tipping pass: agreement + cleanlab"), []).append(
            dict(score(find_label_issues(labels, agree), suspicion, wrong), cost=bkd_cost))
        results.setdefault((source, noise, "BKD, tipping pass: student + cleanlab"), []).append(
            dict(score(find_label_issues(labels, student_probs), -student_probs[np.arange(len(labels)), labels], wrong),
                 cost=bkd_cost))
        oof, peer_cost = out_of_fold(args, peers, source, noise, seed, len(labels), data.num_classes)
        results.setdefault((source, noise, f"{args.folds}-fold CE + cleanlab (peer)"), []).append(
            dict(score(find_label_issues(labels, oof), -oof[np.arange(len(labels)), labels], wrong), cost=peer_cost))
    write_table(args, results)


def write_table(args, results):
    header = ["source", "label set", "method", "F1", "precision", "recall", "flagged", "AUROC", "average precision",
              "F1 - peer's", "p", "training (image-epochs)"]
    rows = []
    for (source, noise, method), scores in results.items():
        peer = results[source, noise, f"{args.folds}-fold CE + cleanlab (peer)"]
        f1 = [s["f1"] for s in scores]
        diff, half, p = paired([s["f1"] for s in peer], f1)
        rows.append([source, noise, method, pm(*mean_ci(f1), 3), pm(*mean_ci([s["precision"] for s in scores]), 3),
                     pm(*mean_ci([s["recall"] for s in scores]), 3), f"{np.mean([s['flagged'] for s in scores]):.0f}",
                     pm(*mean_ci([s["auroc"] for s in scores]), 3), pm(*mean_ci([s["ap"] for s in scores]), 3),
                     signed(diff, half, 3), "–" if np.isnan(p) else f"{p:.2f}",
                     f"{np.mean([s['cost'] for s in scores]):,.0f}"])
    # the same F1s as one matrix, a method a row and a label set a column (mean over seeds; * = at or above the peer)
    label_sets = list(dict.fromkeys((source, noise) for source, noise, _ in results))
    methods = list(dict.fromkeys(method for _, _, method in results))
    peer_name = f"{args.folds}-fold CE + cleanlab (peer)"

    def cell(source, noise, method):
        f1 = np.mean([s["f1"] for s in results[source, noise, method]])
        peer = np.mean([s["f1"] for s in results[source, noise, peer_name]])
        return f"{f1:.3f}" + ("*" if f1 >= peer and method != peer_name else "")
    matrix = markdown_table(["method"] + [f"{s} {n}" + (" % wrong" if s == "digits" else "") for s, n in label_sets],
                            [[m] + [cell(s, n, m) for s, n in label_sets] for m in methods])
    text = (f"Recording runs of schedule {args.schedule}, tipping rule {args.tipping_rule}, seeds "
            f"{', '.join(map(str, args.seeds))}; {device_line()}. Mean ± 95 % interval over seeds; the difference to the "
            f"peer is paired by seed (p: paired t-test).\n\n" + markdown_table(header, rows) + "\nDetection F1, mean over the seeds (* = at "
            f"or above the peer's):\n\n" + matrix)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "study.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
