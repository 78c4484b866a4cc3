"""Blind Knowledge Distillation (arXiv:2211.11355): train a teacher and a student together on noisy labels.

The student learns the teacher's logits with the label's own class masked out, so it cannot memorise the
given label. When the student's confidence peaks (the tipping point between generalising and memorising),
the teacher-student agreement on each label is split with a modified Otsu threshold: the training samples
get per-group soft targets from then on, and the lowest group of the whole training set is written to
detection.npy as the labels believed wrong. See README.md.
"""
import os
import signal
import sys
import tempfile
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from flags import check_args, get_args_parser, load_data, run_dir
from data import split_indices
from data.pipeline import RunBatches
from models import build_model
from utils import InputError, RunError, atomic_write
from utils.bkd import DegenerateSplit, assign_groups, otsu_split
from utils.checkpoint import (STATE_FILE, Resumable, prepare_run_dir, save_checkpoint, save_json, save_npz, save_state,
                              saved_metrics)
from utils.cli import run_main
from utils import recipes
from utils.dist import all_reduce, init_distributed, same_on_all_ranks, sync_buffers
from utils.engine import (accuracies, agreement_pass, get_device, make_optimizer, prediction_reading, resolve_precision,
                          seed_everything, synchronize)
from utils.findings import FINAL_CUT, FINAL_SEED, SPLIT_CUT, SPLIT_NAMES, Findings, record_final
from utils.history import PassHistory
from utils.metrics import detection_report
from utils.step import CaptureFailed, TrainStep, graph_capturable
from utils.tipping import find_tipping, history_slots, premature_split
from utils.watch import Watch

MAIN_PROCESS = True  # under torchrun only rank 0 logs and writes files


def log(*args):
    if MAIN_PROCESS:
        print(*args, flush=True)


def log_split(name, split):
    log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in zip(SPLIT_NAMES, split)))


def main(args):
    # ------------------------------------------------------------------ setup
    t0 = time.time()
    rank, world, device, precision, precision_reason = setup(args)
    out_dir = run_dir(args)
    previous_metrics = saved_metrics(out_dir)
    if args.resume and previous_metrics.get("finished"):  # a requeued job, killed after it finished: nothing to do
        if MAIN_PROCESS and os.path.exists(f"{out_dir}/{STATE_FILE}"):
            os.remove(f"{out_dir}/{STATE_FILE}")
        log(f"{out_dir} holds a finished run: nothing to resume")
        return
    data = load_data(args)  # before the run directory is touched: bad data or fixes leave it as it is
    train_idx, val_idx = training_and_validation(data, args)
    state = open_run_dir(out_dir, args, device, world, precision, precision_reason)
    batches = RunBatches(data, train_idx, val_idx, args.batch_size, args.eval_batch_size, args.seed, device, rank,
                         world)  # the images on the device once; training, validation, full-set and test batches
    fixes = describe_data(data, args, train_idx, val_idx, out_dir)

    # --recipe ce: the teacher is the one network, trained on the labels with plain cross-entropy; no student
    teacher, student = build_networks(args, data.num_classes, device, with_student=args.recipe != "ce")
    optimizer = make_optimizer((teacher, student), args, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_decay_every, gamma=0.1)
    (eval_teacher, eval_student), (run_teacher, run_student) = wrap_networks(teacher, student, args, device, world)
    use_graph = use_cuda_graph(args, device, world)
    step = TrainStep(run_teacher, run_student, optimizer, precision, args.batch_size, cuda_graph=use_graph)

    # Per-sample statistics, flat device tensors indexed by position: the agreement on the label recorded during
    # training in the last few epochs (as many as the tipping rule can look back, at least 4). The full-set passes of
    # those epochs wait for the split in host memory (utils/history.py), in the process that writes the outputs, and
    # only where a rule will split.
    n_train, n_slots = len(train_idx), history_slots(args.tipping_rule)
    train_agree = torch.zeros(n_slots, n_train, device=device)
    history = (PassHistory(n_slots, len(data.noisy_labels), data.num_classes)
               if args.tipping_rule != "none" and MAIN_PROCESS else None)
    if history is not None:
        log(history.describe())
    groups = torch.zeros(n_train, dtype=torch.long, device=device)  # 0 = before the split: one-hot targets
    alpha_of_group = torch.tensor([0.0, args.alpha1, args.alpha2, args.alpha3, args.alpha4], device=device)
    findings = Findings(data, out_dir, args.detection_npy, MAIN_PROCESS)  # detection at the split, judgement at the end
    watching = len(val_idx) > 0 and args.tipping_rule != "none"  # the noisy validation accuracy of every epoch
    watch = Watch(guard=watching and args.guard, val_labels=batches.labels[val_idx], guard_hint=guard_hint(args))
    resumable = Resumable(teacher, student, optimizer, scheduler, train_agree, groups, findings, watch,
                          batches.generator)
    this_run = dict(args=vars(args), recipe=args.recipe, evaluated=recipes.RECIPES[args.recipe].predict,
                    device=str(device), precision=precision, precision_reason=precision_reason, cuda_graph=use_graph,
                    label_fixes=fixes)
    metrics, start_epoch, resume_epoch = new_metrics(this_run, args), 0, None
    if state is not None:
        history, metrics = resumable.load(state, history), resumed_metrics(state, this_run, previous_metrics)
        start_epoch, resume_epoch = state["epoch"] + 1, state.get("epoch_in_progress")  # set if stopped mid-epoch
        log(f"resuming from {out_dir}/{STATE_FILE}: epoch {start_epoch}"
            + (f", iteration {resume_epoch['next_iter']}" if resume_epoch else ""))
    wall_before = metrics.get("wall_time_s") or 0.0  # the parts of a resumed run before this one

    def save(epoch_done, epoch_in_progress=None):  # the state --resume goes on from
        save_state(f"{out_dir}/{STATE_FILE}", resumable.state(epoch_done, history, metrics, epoch_in_progress))
    stop_signal = catch_stop_signals()  # SIGINT / SIGTERM: finish the current iteration, save, exit

    # ------------------------------------------------------------------ training
    for epoch in range(start_epoch, args.n_epoch):
        t_epoch, slot = time.time(), epoch % n_slots
        # one epoch of both networks: the student learns the teacher's logits with the label's class masked out;
        # each sample's target is its one-hot label before the split, then its group's soft target (alpha)
        confidence = train_epoch(epoch, (run_teacher, run_student), step, batches.train, alpha_of_group[groups],
                                 train_agree[slot], resume_epoch, stop_signal, world, save, metrics, args, out_dir)
        resume_epoch = None
        scheduler.step()
        metrics["confidence"].append(confidence)
        metrics["train_fit"].append(train_agree[slot].mean().item())  # how well the epoch's steps fit the labels
        train_seconds = time.time() - t_epoch

        # ------------------------------------------------------------ tipping point, split, detection
        sync_buffers(teacher, student)  # every rank evaluates rank 0's networks
        searching = metrics["tipping_epoch"] is None
        tipping = find_tipping(args.tipping_rule, metrics["confidence"], metrics["train_fit"]) if searching else None
        if searching and (tipping is None or tipping.epoch == epoch) and (args.tipping_rule != "none"
                                                                           or args.record_passes):
            # this epoch's pass may be (or is) the tipping one: kept until the split
            full_set_pass(eval_teacher, eval_student, batches.full, history, slot, epoch, train_agree[slot], train_idx,
                          precision, args, out_dir)
        whose = "student" if student is not None else "network"  # a ce run's one network
        log(f"epoch {epoch}: {whose} confidence {confidence:.4f}, {time.time() - t_epoch:.1f} s "
            f"(training {train_seconds:.1f} s)")
        if tipping is not None:
            split_at_tipping(tipping, epoch, train_agree[tipping.epoch % n_slots], groups, history, findings, data,
                             world, args, metrics)
            history = None  # freed: the state shrinks
            if metrics["train_split"] is not None:  # soft targets from now on: what the guard would go back to
                watch.keep(teacher, student, optimizer)

        # ------------------------------------------------------------ evaluation, and the watch after the split
        last = epoch == args.n_epoch - 1
        evaluate(eval_teacher, eval_student, batches, watch if watching else None, epoch, last, precision, args,
                 metrics, out_dir, (teacher, student))
        if watching and watch_after_split(watch, metrics, epoch, teacher, student, optimizer):
            groups.zero_()  # back on the given labels, one-hot, for the rest of the schedule
        metrics["wall_time_s"] = wall_before + time.time() - t0  # kept in the state: a resumed run adds its part
        if MAIN_PROCESS:
            save(epoch)  # a crash from here on loses nothing
            save_json(f"{out_dir}/metrics.json", metrics)
        stop_if_signalled(stop_signal, epoch, last, out_dir, device)

    # ------------------------------------------------------------------ the final passes, label_issues.csv, report
    metrics.update(judge(findings, eval_teacher, eval_student, batches.full, batches.generator, precision, data, args,
                         metrics))
    finish(metrics, wall_before + time.time() - t0, teacher, student, args, out_dir)
    log(f"done in {time.time() - t0:.0f} s; outputs in {out_dir}")


def setup(args):
    """Deterministic kernels if asked, the processes under torchrun, the recipe's lines, the precision and the seeds:
    (rank, world size, device, precision, why that precision)."""
    global MAIN_PROCESS
    if args.deterministic:  # before CUDA starts: cuBLAS reads it once
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    rank, world, device = init_distributed(get_device(args.device))
    MAIN_PROCESS = rank == 0
    for line in recipes.describe(args):  # which recipe, why, how to switch, and the flags that override it
        log(line)
    if args.sync_bn and (world == 1 or device.type != "cuda"):
        raise InputError("--sync_bn needs torchrun with more than one process on CUDA devices")
    precision, precision_reason = resolve_precision(args.precision)
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic  # autotuned kernels may differ between runs
        torch.backends.cudnn.deterministic = args.deterministic
    return rank, world, device, precision, precision_reason


def training_and_validation(data, args):
    """The indices of the training and the validation split (--val_ratio, --seed). Images dropped by --label_fixes
    neither train nor validate; every index stays the data set's own."""
    train_idx, val_idx = (idx[data.kept[idx]] for idx in split_indices(len(data.noisy_labels), args.val_ratio, args.seed))
    if not len(train_idx):
        raise InputError(f"--label_fixes {args.label_fixes} drops every image of the training split; nothing to train on")
    return train_idx, val_idx


def open_run_dir(out_dir, args, device, world, precision, precision_reason):
    """The run directory checked against --resume / --overwrite (utils.checkpoint.prepare_run_dir) and for writing,
    the arguments and the device logged: the state to resume from, or None."""
    state = prepare_run_dir(out_dir, args)  # refuses to overwrite a run unless asked
    saved_precision = None if state is None else state["metrics"].get("precision", precision)
    if saved_precision not in (None, precision):  # --precision auto meant bf16 on CUDA before: a run keeps its own
        raise InputError(f"--resume: the saved run trained in {saved_precision}, but {precision_reason}; pass "
                         f"--precision {saved_precision} to finish it as it began")
    log("arguments: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    log(f"device {device}" + (f" x {world} processes" if world > 1 else "") + f", precision {precision} "
        f"({precision_reason}), results in {out_dir}")
    try:  # fail now, not after hours of training, when the results cannot be written
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise RunError(f"cannot write into {out_dir}: {e.strerror or e}") from None
    return state


def describe_data(data, args, train_idx, val_idx, out_dir):
    """The data set's line in the log (the noise rate only where the clean labels are known, for reporting) and the
    label fixes': a copy of the fixes kept in the run directory. Returns what the fixes did (None without)."""
    truly_noisy = data.noise_or_not  # ground truth, for reporting only; None where unknown (users' own data)
    log(f"{args.dataset} {args.noise_type}: {len(train_idx)} training, {len(val_idx)} validation, "
        f"{0 if data.test_images is None else len(data.test_labels)} test images; "
        + ("noise rate unknown (no clean labels)" if truly_noisy is None else
           f"noise rate {truly_noisy[data.kept].mean() * 100:.2f} %"))
    fixes = None if data.label_fixes is None else data.label_fixes.info
    if fixes is not None:
        log(f"label fixes {fixes['path']} (sha256 {fixes['sha256'][:16]}...): {fixes['relabelled']} images relabelled, "
            f"{fixes['dropped']} dropped, {fixes['kept']} kept as they were"
            + ("" if "wrong_after" not in fixes else f"; wrong labels {fixes['wrong_before'] * 100:.2f} % before the "
               f"fixes, {fixes['wrong_after'] * 100:.2f} % after (of the images kept)"))
        if MAIN_PROCESS:  # the run keeps the fixes it was trained with: their content, not their path, names it
            atomic_write(f"{out_dir}/label_fixes.csv", lambda f: f.write(data.label_fixes.content))
    if args.val_ratio > 0 and not len(val_idx):
        log("WARNING: the label fixes dropped every image of the validation split: the training split (augmented) "
            "stands in for it, as with --val_ratio 0")
    return fixes


def wrap_networks(teacher, student, args, device, world):
    """((teacher, student) to evaluate: compiled with --compile), (the same to train: wrapped in DDP under torchrun,
    gradients averaged over ranks, each rank's loss the mean over its share of the global batch)."""
    evaluated = each(torch.compile, teacher, student) if args.compile else (teacher, student)
    if world == 1:
        return evaluated, evaluated
    ids = [device.index] if device.type == "cuda" else None
    return evaluated, each(lambda m: DistributedDataParallel(m, device_ids=ids), *evaluated)


def use_cuda_graph(args, device, world):
    """Whether the training step is captured once as a CUDA graph and replayed (utils.step; after any --resume
    restore, since it captures during the first steps of the loop): on a single CUDA device unless --no-cuda_graph;
    the step stays eager on CPU and under DDP."""
    use_graph = args.cuda_graph is not False and graph_capturable(device, world)  # None: on where it can be
    if args.cuda_graph and not use_graph:
        log("--cuda_graph is ignored " + ("under torchrun: the DDP step stays eager" if world > 1 else
                                          "on this device (CUDA only): the step runs eagerly"))
    return use_graph


def new_metrics(this_run, args):
    """metrics.json of a run that starts: this run's settings, then what training fills in."""
    return dict(**this_run, confidence=[], train_fit=[], tipping_rule=args.tipping_rule, tipping_epoch=None,
                tipping_found_epoch=None, tipping_evidence=None, train_split=None, detection_split=None,
                group_sizes=None, label_issues_passes=None, detection=None, split_flagged=None, flagged=None,
                judged_by=None, judge_reason=None, val=[], val_every_epoch=[], watch=None, went_back=None, test=[],
                best_val_accuracy=None, best_epoch=None, final_test_accuracy=None, warnings=[], finished=False)


def resumed_metrics(state, this_run, previous_metrics):
    """The saved metrics of a resumed run, with this part's settings, and the record of a failed CUDA-graph capture
    (written after the saved state) kept."""
    metrics = state["metrics"]
    metrics.update(this_run)
    if previous_metrics.get("capture_failure"):
        metrics["capture_failure"] = previous_metrics["capture_failure"]
    return metrics


def catch_stop_signals():
    """A list that SIGINT and SIGTERM append to: the loop finishes the current iteration, saves and exits."""
    stop_signal = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
    return stop_signal


def train_epoch(epoch, networks, step, train_batches, alphas, agree_row, resume_epoch, stop_signal, world, save,
                metrics, args, out_dir):
    """One epoch of training steps (utils.step) in a fresh order, or, resumed in the middle, in the saved one from
    where it stopped: the agreement on each sample's label recorded in agree_row (summed over the ranks at the end);
    returns the epoch's mean student confidence (a ce run's one network's). Stops on a non-finite loss; on a signal,
    in one process, saves the state in the middle of the epoch (save) and stops."""
    for network in networks:
        if network is not None:
            network.train()
    device = agree_row.device
    if resume_epoch is not None:
        order, first_iter = resume_epoch["order"].to(device), resume_epoch["next_iter"]
        confidence_sum, first_bad = resume_epoch["confidence_sum"].to(device), torch.tensor(-1, device=device)
    else:
        order, first_iter = train_batches.epoch_order(), 0
        confidence_sum, first_bad = torch.zeros((), device=device), torch.tensor(-1, device=device)
        agree_row.zero_()  # each rank fills its share; the sum over ranks completes the epoch's record
    n_iter = len(train_batches)
    batches = tqdm(train_batches.iterate(order, first_iter), desc=f"epoch {epoch}", total=n_iter, initial=first_iter,
                   file=sys.stderr, disable=None if MAIN_PROCESS else True, leave=False)
    for it, (x, y, pos) in enumerate(batches, start=first_iter):
        try:
            loss, loss_ce, loss_c, agree_on_label, confidence = step(x, y, alphas[pos])
        except CaptureFailed as failure:  # the whole cause to stderr (so to the log) and metrics.json; the state stays
            print(failure.cause, file=sys.stderr, end="", flush=True)
            if MAIN_PROCESS:
                save_json(f"{out_dir}/metrics.json", dict(metrics, capture_failure=dict(
                    epoch=epoch, iteration=it + 1, traceback=failure.cause)))
            raise
        agree_row[pos] = agree_on_label
        confidence_sum += confidence
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), it, first_bad)  # no host sync
        if (it + 1) % args.print_freq == 0 or it + 1 == n_iter:
            check_finite(first_bad, epoch, out_dir)
            log(f"Epoch [{epoch}/{args.n_epoch}] Iter [{it + 1}/{n_iter}] loss: {loss.item():.4f} "
                f"naive_loss: {loss_ce.item():.4f} compensation_l2_loss: {loss_c.item():.4f}")
        if stop_signal and world == 1 and it + 1 < n_iter:  # under torchrun all ranks stop after the epoch
            check_finite(first_bad, epoch, out_dir)
            save(epoch - 1, dict(order=order, next_iter=it + 1, confidence_sum=confidence_sum))
            raise RunError(f"interrupted at epoch {epoch}, iteration {it + 1}; the state is saved in {out_dir}: "
                           f"continue with the same command and --resume", exit_code=128 + stop_signal[0])
    check_finite(first_bad, epoch, out_dir)
    step.check_graph_targets()  # a captured step must still update the networks' own tensors
    all_reduce(agree_row)
    return all_reduce(confidence_sum).item() / len(agree_row)  # .item() waits for the epoch's training steps


def full_set_pass(teacher, student, full_batches, history, slot, epoch, agree_row, train_idx, precision, args,
                  out_dir):
    """Every image through both networks (every rank takes its share), kept in the pass history (rank 0) until the
    split; with --record_passes written to passes/epoch_<epoch>.npz (studies/tipping_study.py replays them)."""
    on_label, _, _, probs, teacher_predicted, *logits = agreement_pass(
        teacher, student, full_batches, precision, keep_probs=True, keep_teacher=True, keep_logits=args.record_passes)
    if history is not None:
        history.add(slot, epoch, on_label, probs, teacher_predicted)
    if args.record_passes and MAIN_PROCESS:
        save_npz(f"{out_dir}/passes/epoch_{epoch:04d}.npz", teacher_logits=logits[0].cpu().numpy(),
                 student_logits=logits[1].cpu().numpy(), train_agreement=agree_row.cpu().numpy(), train_idx=train_idx)
    del probs, logits  # N x C on the device: not kept until the next pass
    synchronize(on_label.device)  # for the epoch's timing only


def split_at_tipping(tipping, epoch, agreements, groups, history, findings, data, world, args, metrics):
    """The split, found at `epoch`: the tipping epoch and its evidence logged and kept (with a warning where the split
    looks premature); the groups 1..4 of the training split written into `groups`; in rank 0, the detection."""
    tipping, evidence = tipping
    metrics.update(tipping_epoch=tipping, tipping_found_epoch=epoch, tipping_evidence=evidence)
    log(f"overfitting epoch: {tipping}")
    log(f"tipping rule {args.tipping_rule}: {evidence}")
    premature = premature_split(metrics["confidence"], metrics["train_fit"], data.num_classes)
    if premature is not None:  # kept with the warnings, so the final summary repeats it
        metrics["warnings"].append(f"the split at epoch {epoch} (tipping epoch {tipping}) looks premature: "
                                   f"{premature}; accuracy and detection may suffer")
        log(f"WARNING: {metrics['warnings'][-1]}")
    training_groups(agreements, tipping, metrics, world, groups)
    if history is not None:  # rank 0: the detection (utils.findings)
        metrics.update(detect(findings, history, tipping, data, args, metrics))


def evaluate(teacher, student, batches, watch, epoch, last, precision, args, metrics, out_dir, networks):
    """The noisy validation accuracy (every --noisy_val_freq epochs and the last; every epoch the watch reads it), the
    best networks saved when it rises, and the clean test accuracy (every --clean_test_freq epochs and the last)."""
    due = epoch % args.noisy_val_freq == 0 or last
    if due or watch is not None:
        val_acc, val_top = prediction_reading(teacher, student, batches.val, precision)
    if watch is not None:
        watch.record(metrics, val_acc, val_top)
    if due:
        metrics["val"].append(dict(epoch=epoch, accuracy=val_acc))
        log(f"noisy validation accuracy: {val_acc:.2f} % (epoch {epoch})")
        if metrics["best_val_accuracy"] is None or val_acc > metrics["best_val_accuracy"]:
            metrics["best_val_accuracy"], metrics["best_epoch"] = val_acc, epoch
            if MAIN_PROCESS:
                save_networks(out_dir, "best_", *networks, epoch, args.arch)
            log(f"saved best networks (epoch {epoch})")
    if batches.test is not None and (epoch % args.clean_test_freq == 0 or last):
        record_test(metrics, epoch, accuracies(teacher, student, batches.test, precision))


def stop_if_signalled(stop_signal, epoch, last, out_dir, device):
    """After an epoch's state is saved: every rank stops when any got SIGINT / SIGTERM (the last epoch finishes)."""
    if all_reduce(torch.tensor(float(bool(stop_signal)), device=device), "max").item() and not last:
        raise RunError(f"interrupted after epoch {epoch}; the state is saved in {out_dir}: continue with the "
                       f"same command and --resume", exit_code=128 + (stop_signal or [signal.SIGTERM])[0])


def finish(metrics, wall_time_s, teacher, student, args, out_dir):
    """The final networks and metrics.json written (the state file goes: the run is finished), and the run's summary:
    its final accuracies, what it flagged, and every warning again."""
    last_test = metrics["test"][-1] if metrics["test"] else {}  # none: no test set
    metrics["final_test_accuracy"], metrics["final_test_accuracy_teacher"] = (last_test.get("accuracy"),
                                                                              last_test.get("teacher_accuracy"))
    metrics["wall_time_s"] = wall_time_s  # summed over the parts of a resumed run
    metrics["finished"] = True
    if MAIN_PROCESS:
        save_networks(out_dir, "", teacher, student, args.n_epoch - 1, args.arch)
        save_json(f"{out_dir}/metrics.json", metrics)
        os.remove(f"{out_dir}/{STATE_FILE}")  # the finished run needs no state; metrics.json says it is finished
    teacher_alone = metrics["final_test_accuracy_teacher"]
    test = ("no test set" if metrics["final_test_accuracy"] is None else
            f"final clean test accuracy: {metrics['final_test_accuracy']:.2f} % (epoch {args.n_epoch - 1}"
            + ("" if teacher_alone is None else f"; the teacher alone {teacher_alone:.2f} %") + ")")
    log(f"{test}; best noisy validation accuracy {metrics['best_val_accuracy']:.2f} % at epoch {metrics['best_epoch']}")
    if not MAIN_PROCESS:  # the other ranks have no detection (the pass history lives in rank 0): nothing to say
        pass
    elif args.recipe == "ce":
        log("--recipe ce: one network trained with plain cross-entropy on the given labels; nothing was flagged "
            "(no detection.npy, no label_issues.csv)")
    elif metrics["tipping_epoch"] is None and args.tipping_rule == "none":
        log("--tipping_rule none: no split, training stayed one-hot and nothing was flagged (detection.npy not written)")
    elif metrics["tipping_epoch"] is None:
        log(f"WARNING: no tipping epoch found in {args.n_epoch} epochs: training stayed one-hot and detection.npy "
            f"was not written; train for more epochs (the reference uses 300)")
    else:
        scored = [f"{what} {d['flagged']} labels" + ("" if "f1" not in d else f" (precision {d['precision']:.4f}, "
                                                       f"recall {d['recall']:.4f}, F1 {d['f1']:.4f})")
                  for what, d in ((f"detection.npy ({args.detection_npy}) flags", metrics["detection"]),
                                  ("label_issues.csv flags", metrics["flagged"]))]
        log(f"tipping epoch {metrics['tipping_epoch']} ({args.tipping_rule} rule); {'; '.join(scored)}; the ranked "
            f"table ({'the final teacher' if metrics['judged_by'] == 'final_teacher' else 'the split'} judged) is "
            f"{out_dir}/label_issues.csv")
    for warning in metrics["warnings"]:
        log(f"WARNING: {warning}")


def each(fn, *models):
    """fn of every network given, None left as None (the ce recipe has no student)."""
    return tuple(None if m is None else fn(m) for m in models)


def build_networks(args, num_classes, device, with_student=True):
    """(teacher, student) of --arch on the device, channels_last (faster for these convolutions on GPUs, tensor
    cores, and on CPUs, oneDNN, alike), SyncBatchNorm with --sync_bn; the student None without one."""
    teacher, student = build_model(args.arch, num_classes), (build_model(args.arch, num_classes) if with_student else None)
    teacher, student = each(lambda m: m.to(device).to(memory_format=torch.channels_last), teacher, student)
    if args.sync_bn:
        teacher, student = each(torch.nn.SyncBatchNorm.convert_sync_batchnorm, teacher, student)
    return teacher, student


def save_networks(out_dir, prefix, teacher, student, epoch, arch):
    """The checkpoints: <prefix>teacher.pth.tar and <prefix>student.pth.tar; a ce run's one network is
    <prefix>network.pth.tar."""
    if student is None:
        save_checkpoint(f"{out_dir}/{prefix}network.pth.tar", teacher, epoch, arch)
        return
    save_checkpoint(f"{out_dir}/{prefix}teacher.pth.tar", teacher, epoch, arch)
    save_checkpoint(f"{out_dir}/{prefix}student.pth.tar", student, epoch, arch)


def record_test(metrics, epoch, accuracy):
    """An epoch's clean test accuracy (utils.engine.accuracies), kept and logged: the pair's, as the reference reports
    it, and the teacher's alone (a ce run's one network: its own)."""
    entry = dict(epoch=epoch, accuracy=accuracy.get("pair", accuracy.get("network")))
    if "teacher" in accuracy:
        entry["teacher_accuracy"] = accuracy["teacher"]
    metrics["test"].append(entry)
    log(f"clean test accuracy: {entry['accuracy']:.2f} % (epoch {epoch}"
        + ("" if "teacher" not in accuracy else f"; the teacher alone {accuracy['teacher']:.2f} %") + ")")


def otsu_or_warn(values, key, consequence, metrics):
    """The modified Otsu split of values, logged and kept as metrics[key]; None, with a warning, when no threshold
    separates the values (the reference crashes there)."""
    try:
        split = otsu_split(values)
    except DegenerateSplit as e:
        metrics["warnings"].append(f"{key.replace('_', ' ')} impossible, {consequence}: {e}")
        log(f"WARNING: {metrics['warnings'][-1]}")
        return None
    log_split(key.replace("train_", "training ").replace("_", " "), split)
    metrics[key] = dict(zip(SPLIT_NAMES, split))
    return split


def training_groups(agreements, tipping, metrics, world, groups):
    """The groups 1..4 of the training split (the modified Otsu split of the agreements recorded during the tipping
    epoch) written into `groups`, checked to be the same on every rank; `groups` left as they were (one-hot) where no
    split is possible."""
    agreements = agreements.cpu().numpy()
    split = otsu_or_warn(agreements, "train_split", "plain one-hot training continues", metrics)
    if split is None:
        return
    groups.copy_(torch.as_tensor(assign_groups(agreements, split), device=groups.device))
    metrics["group_sizes"] = {g: int((groups == g).sum()) for g in range(1, 5)}
    log("group sizes: " + ", ".join(f"G{g} {n}" for g, n in metrics["group_sizes"].items()))
    if not same_on_all_ranks(torch.cat([groups, torch.tensor([tipping], device=groups.device)])):
        raise RunError("ranks disagree on the tipping epoch or the groups; please report this")
    if world > 1:
        log(f"all {world} ranks agree on the tipping epoch and the groups")


def detect(findings, history, tipping, data, args, metrics):
    """Detection at the split (utils.findings): the same split of the tipping epoch's full-set pass of the held
    passes (history), and the flags of their average (images dropped by --label_fixes are outside both, never
    flagged): writes detection.npy (G4) and detection_scores.npy, logs the split and both, and what label_issues.csv
    will be; returns the metrics of G4 and of the split's flags."""
    scores = history.on_label[tipping % len(history.epoch)].numpy()
    metrics["label_issues_passes"] = dict(tipping=tipping, last=history.epochs())
    g4, flagged, split = findings.at_split(scores, *history.recent())
    held = f"the passes of epochs {', '.join(map(str, history.epochs()))}, averaged"
    log(f"label_issues.csv comes at the end of the run (epoch {args.n_epoch - 1}), with the final networks' agreement "
        f"and the final teacher's probability of each label (final_agreement_given, final_teacher_given); its "
        f"agreement_given and group are those of the pass of epoch {tipping} (the tipping epoch, as detection.npy), "
        f"its ranking and flags " + (f"the split's ({held})" if args.judge == "split" else
                                     f"the final teacher's unless it memorised the labels the split flags or "
                                     f"collapsed, else the split's ({held})"))
    if isinstance(split, str):
        metrics["warnings"].append(f"detection split impossible, nothing in G4: {split}")
        log(f"WARNING: {metrics['warnings'][-1]}")
    else:
        log_split("detection split", split)
        metrics["detection_split"] = dict(zip(SPLIT_NAMES, split))
    g4_name = "detection.npy (g4)" if args.detection_npy == "g4" else "G4 (detection.npy holds the flagged labels)"
    return dict(detection=report(g4, scores, None, data, g4_name),
                split_flagged=report(flagged, scores, None, data, f"flagged at the split ({SPLIT_CUT})"))


def numbers(mask, scores, suggested, data):
    """The detection numbers of a set of flagged labels (utils.metrics.detection_report) over the images kept; the
    counts alone where the ground truth is unknown."""
    kept, truly_noisy = data.kept, data.noise_or_not
    if truly_noisy is None:
        return dict(flagged=int(mask.sum()))
    return detection_report(mask[kept], scores[kept], truly_noisy[kept], None if suggested is None else suggested[kept],
                            data.clean_labels[kept])


def report(mask, scores, suggested, data, what):
    """numbers(), logged."""
    kept = data.kept
    counted = f"{kept.sum()} labels" + ("" if kept.all() else " kept by the label fixes")
    d = numbers(mask, scores, suggested, data)
    if data.noise_or_not is None:
        log(f"{what}: {mask.sum()} of {counted} (no clean labels to score them against)")
        return d
    auroc = "undefined" if d["auroc"] is None else f"{d['auroc']:.4f}"  # None: no label is wrong
    log(f"{what}: {mask.sum()} of {counted} (precision {d['precision']:.4f}, recall {d['recall']:.4f}, F1 "
        f"{d['f1']:.4f}, AUROC {auroc} of its ranking against the ground truth, for reporting only)")
    return d


def guard_hint(args):
    """Where the guard is off: why, and what would have turned it on, for the watch's note of where it would have
    gone back (utils.watch); None where it is on."""
    if args.guard:
        return None
    if args.recipe == "reference":
        return ("the reference recipe keeps the soft targets, as the paper does; the robust recipe (--recipe robust) "
                "goes back at such a fall (its plateau rule may split at another epoch)")
    if args.tipping_rule == "plateau":
        return "--no-guard keeps the soft targets (the robust recipe's guard is on by default)"
    return f"the guard acts only under the plateau rule (the robust recipe's), not --tipping_rule {args.tipping_rule}"


def watch_after_split(watch, metrics, epoch, teacher, student, optimizer):
    """The watch after an epoch past the split (utils.watch): until the run goes back to the labels, a warning when
    the noisy-validation accuracy fell clearly, and, with the guard, going back to the networks of the split and the
    given labels when the soft targets make them worse (without it, a warning where it would have); throughout, a
    warning when the networks collapse onto one class. True when it went back."""
    if metrics["train_split"] is None or epoch <= metrics["tipping_found_epoch"]:  # no split, or none possible:
        return False  # training stayed one-hot, nothing to watch
    warning, back = (None, False) if metrics["went_back"] else watch.check(metrics, epoch)
    for warning in (warning, watch.unguarded(metrics, epoch), watch.collapsed(metrics, epoch)):
        if warning is not None:
            metrics["warnings"].append(warning)
            log(f"WARNING: {warning}")
    if back:
        watch.go_back(teacher, student, optimizer)
        metrics["went_back"] = dict(metrics["watch"])
        w = metrics["watch"]
        metrics["warnings"].append(
            f"the soft targets made the networks worse: {w['after']:.2f} % noisy-validation accuracy after the split "
            f"against {w['before']:.2f} % before it ({-w['z']:.1f} times its noise); at epoch {epoch} the run went back "
            f"to the networks of the split and to the given labels (one-hot) for the rest of the schedule; "
            f"detection.npy is the split's, and so are label_issues.csv's ranking and flags")
        log(f"WARNING: {metrics['warnings'][-1]}")
    return back


def final_passes(teacher, student, full_batches, generator, precision, args):
    """The final networks' full-set passes: one without augmentation and one with, its crops and flips drawn afresh
    from the run's seed (whatever the training drew: a resumed run makes the same), [(teacher logits, student
    logits)] each; their time in the log."""
    t0 = time.time()
    plain = agreement_pass(teacher, student, full_batches.plain(), precision, keep_logits=True)[-2:]
    generator.manual_seed(args.seed * FINAL_SEED + args.n_epoch - 1)
    augmented = agreement_pass(teacher, student, full_batches, precision, keep_logits=True)[-2:]
    synchronize(plain[0].device)
    log(f"the final networks' two full-set passes: {time.time() - t0:.1f} s")
    return [plain, augmented]


def judge(findings, teacher, student, full_batches, generator, precision, data, args, metrics):
    """label_issues.csv (utils.findings) in a run that split: the final networks' passes (every rank takes its share),
    then, in rank 0, the table ranked and flagged by the split (--judge split), or by the final teacher (--judge
    final) unless it memorised the labels the split flagged or collapsed onto one class
    (utils.findings.final_teacher_verdict); returns its metrics ({} where there is nothing to judge)."""
    if metrics["tipping_epoch"] is None:
        return {}
    passes = final_passes(teacher, student, full_batches, generator, precision, args)
    if findings.split is None:  # the other ranks (the pass history lives in rank 0), or no split was possible
        return {}
    ranking, flagged, judged, suggested, why = findings.final(passes, args.judge)
    if args.record_passes:
        record_final(findings.out_dir, passes)
    what = FINAL_CUT if judged == "final_teacher" else SPLIT_CUT
    log(f"label_issues.csv: judged by the {'final teacher' if judged == 'final_teacher' else 'split'} (" +
        ("--judge split" if why is None else why) + ")")
    # detection.npy's numbers again, with label_issues.csv's suggestions (how often they are right), as detection.py
    # recomputes them from the run's files
    g4 = findings.split["g4"] if args.detection_npy == "g4" else flagged
    return dict(judged_by=judged, judge_reason=why,
                flagged=report(flagged, ranking, None, data, f"label_issues.csv flags ({what})"),
                detection=numbers(g4, findings.split["scores"], suggested, data))


def check_finite(first_bad, epoch, out_dir):
    """Stop on a non-finite loss (one host sync, done only where the loop syncs anyway)."""
    bad = int(all_reduce(first_bad, "max"))
    if bad >= 0:
        raise RunError(f"non-finite loss at epoch {epoch}, iteration {bad + 1}; the state saved after the previous "
                       f"epoch in {out_dir} is intact (lower --lr, or try --precision fp32, then --resume)")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]), check_args)
