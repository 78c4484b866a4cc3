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

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import split_indices
from data.pipeline import DeviceBatches, to_device_images
from models import build_model
from utils import InputError, RunError, atomic_write
from utils.bkd import DegenerateSplit, assign_groups, find_tipping_epoch, otsu_split
from utils.checkpoint import (STATE_FILE, prepare_run_dir, restore_rng_states, rng_states, save_checkpoint,
                              save_json, save_npy, save_state, saved_metrics)
from utils.cli import get_args_parser, load_data, run_dir, run_main
from utils.dist import all_reduce, destroy, init_distributed, same_on_all_ranks, sync_buffers
from utils.engine import (accuracy, agreement_pass, get_device, make_optimizer, resolve_precision, seed_everything,
                          synchronize)
from utils.label_issues import write_label_issues
from utils.metrics import detection_report
from utils.step import TrainStep, graph_capturable

SPLIT_NAMES = ("upper_mean", "upper_sigma", "lower_mean", "lower_sigma", "threshold")


MAIN_PROCESS = True  # under torchrun only rank 0 logs and writes files


def log(*args):
    if MAIN_PROCESS:
        print(*args, flush=True)


def log_split(name, split):
    log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in zip(SPLIT_NAMES, split)))


def main(args):
    # ------------------------------------------------------------------ setup
    global MAIN_PROCESS
    t0 = time.time()
    if args.deterministic:  # before CUDA starts: cuBLAS reads it once
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    rank, world, device = init_distributed(get_device(args.device))
    MAIN_PROCESS = rank == 0
    if args.sync_bn and (world == 1 or device.type != "cuda"):
        raise InputError("--sync_bn needs torchrun with more than one process on CUDA devices")
    precision, precision_reason = resolve_precision(args.precision)
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic  # autotuned kernels may differ between runs
        torch.backends.cudnn.deterministic = args.deterministic
    out_dir = run_dir(args)
    previous_metrics = saved_metrics(out_dir)
    if args.resume and previous_metrics.get("finished"):  # a requeued job, killed after it finished: nothing to do
        if MAIN_PROCESS and os.path.exists(f"{out_dir}/{STATE_FILE}"):
            os.remove(f"{out_dir}/{STATE_FILE}")
        log(f"{out_dir} holds a finished run: nothing to resume")
        destroy()
        return
    data = load_data(args)  # before the run directory is touched: bad data or fixes leave it as it is
    # Images dropped by --label_fixes neither train nor validate; every index stays the data set's own.
    train_idx, val_idx = (idx[data.kept[idx]] for idx in split_indices(len(data.noisy_labels), args.val_ratio, args.seed))
    if not len(train_idx):
        raise InputError(f"--label_fixes {args.label_fixes} drops every image of the training split; nothing to train on")
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
    pad_mode, flip_first = data.augment
    images = to_device_images(data.train_images, pad_mode, device)
    labels = torch.as_tensor(data.noisy_labels, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed)
    common = dict(mean_std=data.mean_std, flip_first=flip_first, generator=generator, channels_last=True,
                  rank=rank, world_size=world)
    train_batches = DeviceBatches(images, labels, train_idx, batch_size=args.batch_size, augment=True,
                                  shuffle=True, **common)
    # Validation uses the test transform; with --val_ratio 0 the training split (augmented) stands in, as in the reference.
    val_batches = (DeviceBatches(images, labels, val_idx, batch_size=args.eval_batch_size, **common) if len(val_idx)
                   else DeviceBatches(images, labels, train_idx, batch_size=args.eval_batch_size, augment=True, **common))
    # The full-set pass for detection goes through the training augmentation, as in the reference.
    full_batches = DeviceBatches(images, labels, None, batch_size=args.eval_batch_size, augment=True, **common)
    test_batches = None if data.test_images is None else DeviceBatches(
        to_device_images(data.test_images, pad_mode, device), torch.as_tensor(data.test_labels, device=device), None,
        batch_size=args.eval_batch_size, **common)
    truly_noisy = data.noise_or_not  # ground truth, for reporting only; None where unknown (users' own data)
    log(f"{args.dataset} {args.noise_type}: {len(train_idx)} training, {len(val_idx)} validation, "
        f"{0 if test_batches is None else len(data.test_labels)} test images; "
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

    teacher = build_model(args.arch, data.num_classes).to(device)
    student = build_model(args.arch, data.num_classes).to(device)
    # channels_last is faster for these convolutions on GPUs (tensor cores) and on CPUs (oneDNN) alike
    teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    if args.sync_bn:
        teacher, student = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (teacher, student))
    optimizer = make_optimizer((teacher, student), args, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_decay_every, gamma=0.1)
    eval_teacher, eval_student = (torch.compile(teacher), torch.compile(student)) if args.compile else (teacher, student)
    run_teacher, run_student = eval_teacher, eval_student
    if world > 1:  # gradients averaged over ranks; each rank's loss is the mean over its share of the global batch
        ids = [device.index] if device.type == "cuda" else None
        run_teacher, run_student = (DistributedDataParallel(m, device_ids=ids) for m in (eval_teacher, eval_student))
    # One training step: eager, or on CUDA captured once as a CUDA graph and replayed (after any --resume restore,
    # since it captures during the first steps of the loop). DDP stays eager.
    use_graph = args.cuda_graph and graph_capturable(device, world)
    if args.cuda_graph and not use_graph:
        log("--cuda_graph is ignored " + ("under torchrun: the DDP step stays eager" if world > 1 else
                                          "on this device (CUDA only): the step runs eagerly"))

    def capture_failed(failure):  # the whole cause to stderr (so to the log) and to metrics.json; the state stays
        print(failure.cause, file=sys.stderr, end="", flush=True)
        if MAIN_PROCESS:
            save_json(f"{out_dir}/metrics.json", dict(metrics, capture_failure=dict(
                epoch=epoch, iteration=it + 1, traceback=failure.cause)))
    step = TrainStep(run_teacher, run_student, optimizer, precision, args.batch_size, cuda_graph=use_graph,
                     on_capture_failure=capture_failed)

    # Per-sample statistics, flat device tensors indexed by position: the agreement on the label recorded during
    # the last 4 epochs (the tipping epoch is at most 3 epochs old when found) and the matching full-set passes
    # (agreement on the label, the label the agreement predicts, and the agreement of that prediction).
    n_train, n_full = len(train_idx), len(data.noisy_labels)
    train_agree = torch.zeros(4, n_train, device=device)
    full_agree = torch.zeros(4, n_full, device=device)
    full_pred = torch.zeros(4, n_full, dtype=torch.long, device=device)
    full_pred_agree = torch.zeros(4, n_full, device=device)
    groups = torch.zeros(n_train, dtype=torch.long, device=device)  # 0 = before the split: one-hot targets
    alpha_of_group = torch.tensor([0.0, args.alpha1, args.alpha2, args.alpha3, args.alpha4], device=device)

    metrics = dict(args=vars(args), device=str(device), precision=precision, precision_reason=precision_reason,
                   cuda_graph=use_graph, label_fixes=fixes, confidence=[],
                   tipping_epoch=None, tipping_found_epoch=None, train_split=None, detection_split=None,
                   group_sizes=None, detection=None, val=[], test=[], best_val_accuracy=None, best_epoch=None,
                   final_test_accuracy=None, warnings=[], finished=False)
    start_epoch, resume_epoch = 0, None
    if state is not None:
        teacher.load_state_dict(state["teacher"])
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, tensor in dict(train_agree=train_agree, full_agree=full_agree, full_pred=full_pred,
                                 full_pred_agree=full_pred_agree).items():
            tensor.copy_(state[name])
        groups.copy_(state["groups"])
        restore_rng_states(state["rng"], generator)
        metrics = state["metrics"]
        metrics.update(args=vars(args), device=str(device), precision=precision, precision_reason=precision_reason,
                       cuda_graph=use_graph, label_fixes=fixes)
        if previous_metrics.get("capture_failure"):  # written after the saved state: keep the record of it
            metrics["capture_failure"] = previous_metrics["capture_failure"]
        start_epoch = state["epoch"] + 1
        resume_epoch = state.get("epoch_in_progress")  # set when stopped by a signal in the middle of an epoch
        log(f"resuming from {out_dir}/{STATE_FILE}: epoch {start_epoch}"
            + (f", iteration {resume_epoch['next_iter']}" if resume_epoch else ""))
    best_val = metrics["best_val_accuracy"] if metrics["best_val_accuracy"] is not None else -1.0

    def training_state(epoch_done, epoch_in_progress=None):
        return dict(epoch=epoch_done, epoch_in_progress=epoch_in_progress, teacher=teacher.state_dict(),
                    student=student.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    train_agree=train_agree, full_agree=full_agree, full_pred=full_pred,
                    full_pred_agree=full_pred_agree, groups=groups, rng=rng_states(generator), metrics=metrics)

    stop_signal = []  # SIGINT / SIGTERM: finish the current iteration, save, exit
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    # ------------------------------------------------------------------ training
    n_iter = len(train_batches)
    for epoch in range(start_epoch, args.n_epoch):
        t_epoch = time.time()
        run_teacher.train()
        run_student.train()
        slot = epoch % 4
        if resume_epoch is not None:
            order, first_iter = resume_epoch["order"].to(device), resume_epoch["next_iter"]
            confidence_sum, first_bad = resume_epoch["confidence_sum"].to(device), torch.tensor(-1, device=device)
            resume_epoch = None
        else:
            order, first_iter = train_batches.epoch_order(), 0
            confidence_sum, first_bad = torch.zeros((), device=device), torch.tensor(-1, device=device)
            train_agree[slot] = 0  # each rank fills its share; the sum over ranks completes the epoch's record
        batches = tqdm(train_batches.iterate(order, first_iter), desc=f"epoch {epoch}", total=n_iter,
                       initial=first_iter, file=sys.stderr, disable=None if MAIN_PROCESS else True, leave=False)
        for it, (x, y, pos) in enumerate(batches, start=first_iter):
            # alpha of the sample's group: 0 (one-hot label) before the split, alpha1..alpha4 after it
            loss, loss_ce, loss_c, agree_on_label, confidence = step(x, y, alpha_of_group[groups[pos]])
            train_agree[slot, pos] = agree_on_label
            confidence_sum += confidence
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), it, first_bad)  # no host sync
            if (it + 1) % args.print_freq == 0 or it + 1 == n_iter:
                check_finite(first_bad, epoch, out_dir)
                log(f"Epoch [{epoch}/{args.n_epoch}] Iter [{it + 1}/{n_iter}] loss: {loss.item():.4f} "
                    f"naive_loss: {loss_ce.item():.4f} compensation_l2_loss: {loss_c.item():.4f}")
            if stop_signal and world == 1 and it + 1 < n_iter:  # under torchrun all ranks stop after the epoch
                check_finite(first_bad, epoch, out_dir)
                save_state(f"{out_dir}/{STATE_FILE}", training_state(epoch - 1, dict(
                    order=order, next_iter=it + 1, confidence_sum=confidence_sum)))
                raise RunError(f"interrupted at epoch {epoch}, iteration {it + 1}; the state is saved in {out_dir}: "
                               f"continue with the same command and --resume", exit_code=128 + stop_signal[0])
        check_finite(first_bad, epoch, out_dir)
        step.check_graph_targets()  # a captured step must still update the networks' own tensors
        scheduler.step()
        all_reduce(train_agree[slot])
        confidence = all_reduce(confidence_sum).item() / n_train
        metrics["confidence"].append(confidence)  # .item() above waited for the epoch's training steps
        train_seconds = time.time() - t_epoch

        # ------------------------------------------------------------ tipping point, split, detection
        sync_buffers(teacher, student)  # every rank evaluates rank 0's networks
        tipping = None if metrics["tipping_epoch"] is not None else find_tipping_epoch(metrics["confidence"])
        if metrics["tipping_epoch"] is None and tipping is None:  # the pass of this epoch may become the tipping one
            full_agree[slot], full_pred[slot], full_pred_agree[slot] = agreement_pass(
                eval_teacher, eval_student, full_batches, precision)
            synchronize(device)  # for the epoch's timing only
        log(f"epoch {epoch}: student confidence {confidence:.4f}, {time.time() - t_epoch:.1f} s "
            f"(training {train_seconds:.1f} s)")
        if tipping is not None:  # at least 2 epochs old, so this epoch's full-set pass is never needed
            metrics["tipping_epoch"], metrics["tipping_found_epoch"] = tipping, epoch
            log(f"overfitting epoch: {tipping}")
            agreements = train_agree[tipping % 4].cpu().numpy()  # recorded during the tipping epoch
            split = otsu_or_warn(agreements, "train_split", "plain one-hot training continues", metrics)
            if split is not None:
                groups = torch.as_tensor(assign_groups(agreements, split), device=device)
                metrics["group_sizes"] = {g: int((groups == g).sum()) for g in range(1, 5)}
                log("group sizes: " + ", ".join(f"G{g} {n}" for g, n in metrics["group_sizes"].items()))
                if not same_on_all_ranks(torch.cat([groups, torch.tensor([tipping], device=device)])):
                    raise RunError("ranks disagree on the tipping epoch or the groups; please report this")
                if world > 1:
                    log(f"all {world} ranks agree on the tipping epoch and the groups")
            # Detection: the same split of the full-set pass after the tipping epoch; its lowest group is flagged.
            # Images dropped by --label_fixes are outside the split and never flagged.
            scores, suggested, suggested_agree = (a[tipping % 4].cpu().numpy()
                                                  for a in (full_agree, full_pred, full_pred_agree))
            kept = data.kept
            split = otsu_or_warn(scores[kept], "detection_split", "nothing flagged", metrics)
            full_groups = None if split is None else assign_groups(scores, split)
            flagged = np.zeros(n_full, dtype=bool) if split is None else (full_groups == 4) & kept
            if MAIN_PROCESS:
                save_npy(f"{out_dir}/detection.npy", flagged)
                save_npy(f"{out_dir}/detection_scores.npy", scores.astype(np.float32))
                write_label_issues(f"{out_dir}/label_issues.csv", data.noisy_labels, suggested, scores,
                                   suggested_agree, full_groups, flagged, data.class_names, data.train_files,
                                   data.dropped)
            counted = f"{kept.sum()} labels" + ("" if kept.all() else " kept by the label fixes")
            if truly_noisy is None:
                metrics["detection"] = dict(flagged=int(flagged.sum()))
                log(f"flagged {flagged.sum()} of {counted} as noisy (no clean labels to score them against)")
            else:
                metrics["detection"] = d = detection_report(flagged[kept], scores[kept], truly_noisy[kept],
                                                            suggested[kept], data.clean_labels[kept])
                auroc = "undefined" if d["auroc"] is None else f"{d['auroc']:.4f}"  # None: no label is wrong
                log(f"flagged {flagged.sum()} of {counted} as noisy (precision {d['precision']:.4f}, recall "
                    f"{d['recall']:.4f}, F1 {d['f1']:.4f}, AUROC {auroc} against the ground truth, for reporting only)")

        # ------------------------------------------------------------ evaluation
        last = epoch == args.n_epoch - 1
        if epoch % args.noisy_val_freq == 0 or last:
            val_acc = accuracy(eval_teacher, eval_student, val_batches, precision)
            metrics["val"].append(dict(epoch=epoch, accuracy=val_acc))
            log(f"noisy validation accuracy: {val_acc:.2f} % (epoch {epoch})")
            if val_acc > best_val:
                best_val = val_acc
                metrics["best_val_accuracy"], metrics["best_epoch"] = val_acc, epoch
                if MAIN_PROCESS:
                    save_checkpoint(f"{out_dir}/best_teacher.pth.tar", teacher, epoch, args.arch)
                    save_checkpoint(f"{out_dir}/best_student.pth.tar", student, epoch, args.arch)
                log(f"saved best networks (epoch {epoch})")
        if test_batches is not None and (epoch % args.clean_test_freq == 0 or last):
            test_acc = accuracy(eval_teacher, eval_student, test_batches, precision)
            metrics["test"].append(dict(epoch=epoch, accuracy=test_acc))
            log(f"clean test accuracy: {test_acc:.2f} % (epoch {epoch})")
        if MAIN_PROCESS:
            save_state(f"{out_dir}/{STATE_FILE}", training_state(epoch))  # a crash from here on loses nothing
            save_json(f"{out_dir}/metrics.json", metrics)
        if all_reduce(torch.tensor(float(bool(stop_signal)), device=device), "max").item() and not last:
            raise RunError(f"interrupted after epoch {epoch}; the state is saved in {out_dir}: continue with the "
                           f"same command and --resume", exit_code=128 + (stop_signal or [signal.SIGTERM])[0])

    # ------------------------------------------------------------------ report
    metrics["final_test_accuracy"] = metrics["test"][-1]["accuracy"] if metrics["test"] else None  # None: no test set
    metrics["wall_time_s"] = metrics.get("wall_time_s", 0.0) + time.time() - t0  # summed over resumed parts
    metrics["finished"] = True
    if MAIN_PROCESS:
        save_checkpoint(f"{out_dir}/teacher.pth.tar", teacher, args.n_epoch - 1, args.arch)
        save_checkpoint(f"{out_dir}/student.pth.tar", student, args.n_epoch - 1, args.arch)
        save_json(f"{out_dir}/metrics.json", metrics)
        os.remove(f"{out_dir}/{STATE_FILE}")  # the finished run needs no state; metrics.json says it is finished
    test = ("no test set" if metrics["final_test_accuracy"] is None else
            f"final clean test accuracy: {metrics['final_test_accuracy']:.2f} % (epoch {args.n_epoch - 1})")
    log(f"{test}; best noisy validation accuracy {metrics['best_val_accuracy']:.2f} % at epoch {metrics['best_epoch']}")
    if metrics["tipping_epoch"] is None:
        log(f"WARNING: no tipping epoch found in {args.n_epoch} epochs: training stayed one-hot and detection.npy "
            f"was not written; train for more epochs (the reference uses 300)")
    else:
        d = metrics["detection"]
        log(f"tipping epoch {metrics['tipping_epoch']}; flagged {d['flagged']} labels"
            + ("" if "f1" not in d else f": precision {d['precision']:.4f}, recall {d['recall']:.4f}, F1 {d['f1']:.4f}")
            + f"; the ranked table is {out_dir}/label_issues.csv")
    for warning in metrics["warnings"]:
        log(f"WARNING: {warning}")
    log(f"done in {time.time() - t0:.0f} s; outputs in {out_dir}")
    destroy()


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


def check_finite(first_bad, epoch, out_dir):
    """Stop on a non-finite loss (one host sync, done only where the loop syncs anyway)."""
    bad = int(all_reduce(first_bad, "max"))
    if bad >= 0:
        raise RunError(f"non-finite loss at epoch {epoch}, iteration {bad + 1}; the state saved after the previous "
                       f"epoch in {out_dir} is intact (lower --lr, or try --precision fp32, then --resume)")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]))
