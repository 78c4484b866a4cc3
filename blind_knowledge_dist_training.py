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

from data import split_indices
from data.pipeline import DeviceBatches, to_device_images
from models import build_model
from utils import InputError, RunError, atomic_write
from utils.bkd import DegenerateSplit, assign_groups, otsu_split
from utils.checkpoint import (STATE_FILE, prepare_run_dir, restore_rng_states, rng_states, save_checkpoint,
                              save_json, save_npz, save_state, saved_metrics)
from utils.cli import get_args_parser, load_data, run_dir, run_main
from utils.dist import all_reduce, init_distributed, same_on_all_ranks, sync_buffers
from utils import recipes
from utils.engine import (accuracies, agreement_pass, get_device, make_optimizer, prediction_reading, resolve_precision,
                          seed_everything, synchronize)
from utils.findings import FINAL_CUT, FINAL_SEED, SPLIT_CUT, SPLIT_NAMES, Findings, record_final
from utils.history import PassHistory
from utils.metrics import detection_report
from utils.step import TrainStep, graph_capturable
from utils.tipping import find_tipping, history_slots, premature_split
from utils.watch import Watch, distrust

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
    for line in recipes.describe(args):  # which recipe, why, how to switch, and the flags that override it
        log(line)
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

    # --recipe ce: the teacher is the one network, trained on the labels with plain cross-entropy; no student
    teacher, student = build_networks(args, data.num_classes, device, with_student=args.recipe != "ce")
    optimizer = make_optimizer((teacher, student), args, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_decay_every, gamma=0.1)
    eval_teacher, eval_student = each(torch.compile, teacher, student) if args.compile else (teacher, student)
    run_teacher, run_student = eval_teacher, eval_student
    if world > 1:  # gradients averaged over ranks; each rank's loss is the mean over its share of the global batch
        ids = [device.index] if device.type == "cuda" else None
        run_teacher, run_student = each(lambda m: DistributedDataParallel(m, device_ids=ids), eval_teacher, eval_student)
    # One training step: on a single CUDA device captured once as a CUDA graph and replayed (after any --resume
    # restore, since it captures during the first steps of the loop), unless --no-cuda_graph; eager on CPU and DDP.
    use_graph = args.cuda_graph is not False and graph_capturable(device, world)  # None: on where it can be
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
    # training in the last few epochs (as many as the tipping rule can look back, at least 4). The full-set passes of
    # those epochs wait for the split in host memory (utils/history.py), in the process that writes the outputs, and
    # only where a rule will split.
    n_train, n_full, n_slots = len(train_idx), len(data.noisy_labels), history_slots(args.tipping_rule)
    train_agree = torch.zeros(n_slots, n_train, device=device)
    history = PassHistory(n_slots, n_full, data.num_classes) if args.tipping_rule != "none" and MAIN_PROCESS else None
    if history is not None:
        log(history.describe())
    groups = torch.zeros(n_train, dtype=torch.long, device=device)  # 0 = before the split: one-hot targets
    alpha_of_group = torch.tensor([0.0, args.alpha1, args.alpha2, args.alpha3, args.alpha4], device=device)
    findings = Findings(data, out_dir, args.detection_npy, MAIN_PROCESS)  # detection at the split, judgement at the end
    watching = len(val_idx) > 0 and args.tipping_rule != "none"  # the noisy validation accuracy of every epoch
    watch = Watch(guard=watching and args.guard, val_labels=labels[val_idx], guard_hint=guard_hint(args))

    metrics = dict(args=vars(args), recipe=args.recipe, evaluated=recipes.RECIPES[args.recipe].predict,
                   device=str(device), precision=precision, precision_reason=precision_reason, cuda_graph=use_graph,
                   label_fixes=fixes, confidence=[], train_fit=[],
                   tipping_rule=args.tipping_rule, tipping_epoch=None, tipping_found_epoch=None, tipping_evidence=None,
                   train_split=None, detection_split=None, group_sizes=None, label_issues_passes=None, detection=None,
                   split_flagged=None, flagged=None, judged_by=None, val=[], val_every_epoch=[], watch=None,
                   went_back=None, test=[], best_val_accuracy=None, best_epoch=None, final_test_accuracy=None,
                   warnings=[], finished=False)
    start_epoch, resume_epoch = 0, None
    if state is not None:
        teacher.load_state_dict(state["teacher"])
        if student is not None:
            student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        train_agree.copy_(state["train_agree"])
        if history is not None and state["pass_history"] is None:  # the run has split
            history = None
        elif history is not None:
            history.load(state["pass_history"])
        groups.copy_(state["groups"])
        findings.load(state["findings"])
        watch.load(state["watch"])
        restore_rng_states(state["rng"], generator)
        metrics = state["metrics"]
        metrics.update(args=vars(args), recipe=args.recipe, evaluated=recipes.RECIPES[args.recipe].predict,
                       device=str(device), precision=precision, precision_reason=precision_reason, cuda_graph=use_graph,
                       label_fixes=fixes)
        if previous_metrics.get("capture_failure"):  # written after the saved state: keep the record of it
            metrics["capture_failure"] = previous_metrics["capture_failure"]
        start_epoch = state["epoch"] + 1
        resume_epoch = state.get("epoch_in_progress")  # set when stopped by a signal in the middle of an epoch
        log(f"resuming from {out_dir}/{STATE_FILE}: epoch {start_epoch}"
            + (f", iteration {resume_epoch['next_iter']}" if resume_epoch else ""))
    best_val = metrics["best_val_accuracy"] if metrics["best_val_accuracy"] is not None else -1.0
    wall_before = metrics.get("wall_time_s") or 0.0  # the parts of a resumed run before this one

    def training_state(epoch_done, epoch_in_progress=None):
        return dict(epoch=epoch_done, epoch_in_progress=epoch_in_progress, teacher=teacher.state_dict(),
                    student=None if student is None else student.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), train_agree=train_agree,
                    pass_history=None if history is None else history.state(), groups=groups,
                    findings=findings.state(), watch=watch.state(), rng=rng_states(generator), metrics=metrics)

    stop_signal = []  # SIGINT / SIGTERM: finish the current iteration, save, exit
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    # ------------------------------------------------------------------ training
    n_iter = len(train_batches)
    for epoch in range(start_epoch, args.n_epoch):
        t_epoch = time.time()
        for network in (run_teacher, run_student):
            if network is not None:
                network.train()
        slot = epoch % n_slots
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
        metrics["train_fit"].append(train_agree[slot].mean().item())  # how well the epoch's steps fit the labels
        train_seconds = time.time() - t_epoch

        # ------------------------------------------------------------ tipping point, split, detection
        sync_buffers(teacher, student)  # every rank evaluates rank 0's networks
        searching = metrics["tipping_epoch"] is None
        tipping = find_tipping(args.tipping_rule, metrics["confidence"], metrics["train_fit"]) if searching else None
        if searching and (tipping is None or tipping.epoch == epoch) and (args.tipping_rule != "none"
                                                                           or args.record_passes):
            # this epoch's pass may be (or is) the tipping one; every rank takes its share of it
            on_label, _, _, probs, teacher_predicted, *logits = agreement_pass(
                eval_teacher, eval_student, full_batches, precision, keep_probs=True, keep_teacher=True,
                keep_logits=args.record_passes)
            if history is not None:
                history.add(slot, epoch, on_label, probs, teacher_predicted)
            if args.record_passes and MAIN_PROCESS:  # for tools/tipping_study.py: every pass, replayable offline
                save_npz(f"{out_dir}/passes/epoch_{epoch:04d}.npz", teacher_logits=logits[0].cpu().numpy(),
                         student_logits=logits[1].cpu().numpy(), train_agreement=train_agree[slot].cpu().numpy(),
                         train_idx=train_idx)
            del probs, logits  # N x C on the device: not kept until the next pass
            synchronize(device)  # for the epoch's timing only
        whose = "student" if student is not None else "network"  # a ce run's one network
        log(f"epoch {epoch}: {whose} confidence {confidence:.4f}, {time.time() - t_epoch:.1f} s "
            f"(training {train_seconds:.1f} s)")
        if tipping is not None:
            tipping, evidence = tipping
            metrics.update(tipping_epoch=tipping, tipping_found_epoch=epoch, tipping_evidence=evidence)
            log(f"overfitting epoch: {tipping}")
            log(f"tipping rule {args.tipping_rule}: {evidence}")
            premature = premature_split(metrics["confidence"], metrics["train_fit"], data.num_classes)
            if premature is not None:  # kept with the warnings, so the final summary repeats it
                metrics["warnings"].append(f"the split at epoch {epoch} (tipping epoch {tipping}) looks premature: "
                                           f"{premature}; accuracy and detection may suffer")
                log(f"WARNING: {metrics['warnings'][-1]}")
            # the groups of the training split, from the agreements recorded during the tipping epoch
            groups = training_groups(train_agree[tipping % n_slots], tipping, metrics, world, groups)
            if history is not None:  # rank 0: the detection (utils.findings)
                metrics.update(detect(findings, history, tipping, data, args, metrics))
            history = None  # freed: the state shrinks
            if metrics["train_split"] is not None:  # soft targets from now on: what the guard would go back to
                watch.keep(teacher, student, optimizer)

        # ------------------------------------------------------------ evaluation, and the watch after the split
        last = epoch == args.n_epoch - 1
        due = epoch % args.noisy_val_freq == 0 or last
        val_acc, val_top = (prediction_reading(eval_teacher, eval_student, val_batches, precision) if due or watching
                            else (None, None))
        if watching:
            watch.record(metrics, val_acc, val_top)
        if due:
            metrics["val"].append(dict(epoch=epoch, accuracy=val_acc))
            log(f"noisy validation accuracy: {val_acc:.2f} % (epoch {epoch})")
            if val_acc > best_val:
                best_val = val_acc
                metrics["best_val_accuracy"], metrics["best_epoch"] = val_acc, epoch
                if MAIN_PROCESS:
                    save_networks(out_dir, "best_", teacher, student, epoch, args.arch)
                log(f"saved best networks (epoch {epoch})")
        if test_batches is not None and (epoch % args.clean_test_freq == 0 or last):
            record_test(metrics, epoch, accuracies(eval_teacher, eval_student, test_batches, precision))
        if watching and watch_after_split(watch, metrics, epoch, teacher, student, optimizer):
            groups.zero_()  # back on the given labels, one-hot, for the rest of the schedule
        metrics["wall_time_s"] = wall_before + time.time() - t0  # kept in the state: a resumed run adds its part
        if MAIN_PROCESS:
            save_state(f"{out_dir}/{STATE_FILE}", training_state(epoch))  # a crash from here on loses nothing
            save_json(f"{out_dir}/metrics.json", metrics)
        if all_reduce(torch.tensor(float(bool(stop_signal)), device=device), "max").item() and not last:
            raise RunError(f"interrupted after epoch {epoch}; the state is saved in {out_dir}: continue with the "
                           f"same command and --resume", exit_code=128 + (stop_signal or [signal.SIGTERM])[0])

    # ------------------------------------------------------------------ the final networks judge, report
    metrics.update(judge(findings, eval_teacher, eval_student, full_batches, generator, precision, data, args, metrics))
    last_test = metrics["test"][-1] if metrics["test"] else {}  # none: no test set
    metrics["final_test_accuracy"], metrics["final_test_accuracy_teacher"] = (last_test.get("accuracy"),
                                                                              last_test.get("teacher_accuracy"))
    metrics["wall_time_s"] = wall_before + time.time() - t0  # summed over the parts of a resumed run
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
            f"table ({'the final networks' if metrics['judged_by'] == 'final' else 'the split'} judged) is "
            f"{out_dir}/label_issues.csv")
    for warning in metrics["warnings"]:
        log(f"WARNING: {warning}")
    log(f"done in {time.time() - t0:.0f} s; outputs in {out_dir}")


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
    epoch), checked to be the same on every rank; `groups` as they were (one-hot) where no split is possible."""
    agreements = agreements.cpu().numpy()
    split = otsu_or_warn(agreements, "train_split", "plain one-hot training continues", metrics)
    if split is None:
        return groups
    groups = torch.as_tensor(assign_groups(agreements, split), device=groups.device)
    metrics["group_sizes"] = {g: int((groups == g).sum()) for g in range(1, 5)}
    log("group sizes: " + ", ".join(f"G{g} {n}" for g, n in metrics["group_sizes"].items()))
    if not same_on_all_ranks(torch.cat([groups, torch.tensor([tipping], device=groups.device)])):
        raise RunError("ranks disagree on the tipping epoch or the groups; please report this")
    if world > 1:
        log(f"all {world} ranks agree on the tipping epoch and the groups")
    return groups


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
        f"(final_agreement_given); its agreement_given and group are those of the pass of epoch {tipping} (the tipping "
        f"epoch, as detection.npy), its ranking and flags " + (f"the split's ({held})" if args.judge == "split" else
                                                               f"the final networks', where they can be trusted, "
                                                               f"else the split's ({held})"))
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
    then, in rank 0, the table ranked and flagged by the split (--judge split), or by the final networks (--judge
    final) unless the run went back to the labels, its noisy-validation accuracy fell clearly after the split or its
    networks collapsed onto one class (utils.watch.distrust); returns its metrics ({} where there is nothing to
    judge)."""
    if metrics["tipping_epoch"] is None:
        return {}
    passes = final_passes(teacher, student, full_batches, generator, precision, args)
    if findings.split is None:  # the other ranks (the pass history lives in rank 0), or no split was possible
        return {}
    untrusted = distrust(metrics)  # why the final networks cannot judge, or None
    ranking, flagged, judged, suggested = findings.final(passes, args.judge == "final" and untrusted is None)
    if args.record_passes:
        record_final(findings.out_dir, passes)
    what = FINAL_CUT if judged == "final" else SPLIT_CUT
    log(f"label_issues.csv: judged by the {'final networks' if judged == 'final' else 'split'}" +
        ("" if untrusted is None or args.judge == "split" else f" ({untrusted})"))
    # detection.npy's numbers again, with label_issues.csv's suggestions (how often they are right), as detection.py
    # recomputes them from the run's files
    g4 = findings.split["g4"] if args.detection_npy == "g4" else flagged
    return dict(judged_by=judged, flagged=report(flagged, ranking, None, data, f"label_issues.csv flags ({what})"),
                detection=numbers(g4, findings.split["scores"], suggested, data))


def check_finite(first_bad, epoch, out_dir):
    """Stop on a non-finite loss (one host sync, done only where the loop syncs anyway)."""
    bad = int(all_reduce(first_bad, "max"))
    if bad >= 0:
        raise RunError(f"non-finite loss at epoch {epoch}, iteration {bad + 1}; the state saved after the previous "
                       f"epoch in {out_dir} is intact (lower --lr, or try --precision fp32, then --resume)")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]))
