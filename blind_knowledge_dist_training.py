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

from data import load_dataset, split_indices
from data.pipeline import DeviceBatches, to_device_images
from models import build_model
from utils import InputError, RunError
from utils.bkd import DegenerateSplit, agreement, assign_groups, find_tipping_epoch, otsu_split, precision_recall_f1
from utils.checkpoint import (STATE_FILE, prepare_run_dir, restore_rng_states, rng_states, save_checkpoint,
                              save_json, save_npy, save_state)
from utils.cli import get_args_parser, run_dir, run_main
from utils.dist import all_reduce, destroy, init_distributed, same_on_all_ranks, sync_buffers
from utils.engine import accuracy, agreement_pass, make_optimizer, resolve_precision, seed_everything, train_step

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
    rank, world, device = init_distributed(args.device)
    MAIN_PROCESS = rank == 0
    if args.sync_bn and (world == 1 or device.type != "cuda"):
        raise InputError("--sync_bn needs torchrun with more than one process on CUDA devices")
    precision = resolve_precision(args.precision, device)
    seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic  # autotuned kernels may differ between runs
        torch.backends.cudnn.deterministic = args.deterministic
        torch.set_float32_matmul_precision("high")  # TF32 in fp32 mode
    out_dir = run_dir(args)
    state, finished = prepare_run_dir(out_dir, args)  # refuses to overwrite a run unless asked
    if finished:  # --resume of a finished run (killed after it finished, a requeued job): nothing to do
        if MAIN_PROCESS and os.path.exists(f"{out_dir}/{STATE_FILE}"):
            os.remove(f"{out_dir}/{STATE_FILE}")
        log(f"{out_dir} holds a finished run: nothing to resume")
        destroy()
        return
    log("arguments: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))
    log(f"device {device}" + (f" x {world} processes" if world > 1 else "") + f", precision {precision}, "
        f"results in {out_dir}")

    data = load_dataset(args.dataset, args.noise_type, args.data_dir, args.noise_path)
    try:  # fail now, not after hours of training, when the results cannot be written
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise RunError(f"cannot write into {out_dir}: {e.strerror or e}") from None
    train_idx, val_idx = split_indices(len(data.noisy_labels), args.val_ratio, args.seed)
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
    test_batches = DeviceBatches(to_device_images(data.test_images, pad_mode, device),
                                 torch.as_tensor(data.test_labels, device=device), None,
                                 batch_size=args.eval_batch_size, **common)
    log(f"{args.dataset} {args.noise_type}: {len(train_idx)} training, {len(val_idx)} validation, "
        f"{len(data.test_labels)} test images; noise rate {data.noise_or_not.mean() * 100:.2f} %")

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

    # Per-sample statistics, flat device tensors indexed by position: the agreement on the label recorded during
    # the last 4 epochs (the tipping epoch is at most 3 epochs old when found) and the matching full-set passes.
    n_train, n_full = len(train_idx), len(data.noisy_labels)
    train_agree = torch.zeros(4, n_train, device=device)
    full_agree = torch.zeros(4, n_full, device=device)
    groups = torch.zeros(n_train, dtype=torch.long, device=device)  # 0 = before the split: one-hot targets
    alpha_of_group = torch.tensor([0.0, args.alpha1, args.alpha2, args.alpha3, args.alpha4], device=device)

    metrics = dict(args=vars(args), device=str(device), precision=precision, confidence=[], tipping_epoch=None,
                   train_split=None, detection_split=None, group_sizes=None, detection=None, val=[], test=[],
                   best_val_accuracy=None, best_epoch=None, final_test_accuracy=None, warnings=[], finished=False)
    start_epoch, resume_epoch = 0, None
    if state is not None:
        teacher.load_state_dict(state["teacher"])
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        train_agree.copy_(state["train_agree"])
        full_agree.copy_(state["full_agree"])
        groups.copy_(state["groups"])
        restore_rng_states(state["rng"], generator)
        metrics = state["metrics"]
        metrics["args"] = vars(args)
        start_epoch = state["epoch"] + 1
        resume_epoch = state.get("epoch_in_progress")  # set when stopped by a signal in the middle of an epoch
        log(f"resuming from {out_dir}/{STATE_FILE}: epoch {start_epoch}"
            + (f", iteration {resume_epoch['next_iter']}" if resume_epoch else ""))
    best_val = metrics["best_val_accuracy"] if metrics["best_val_accuracy"] is not None else -1.0

    def training_state(epoch_done, epoch_in_progress=None):
        return dict(epoch=epoch_done, epoch_in_progress=epoch_in_progress, teacher=teacher.state_dict(),
                    student=student.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    train_agree=train_agree, full_agree=full_agree, groups=groups, rng=rng_states(generator),
                    metrics=metrics)

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
            loss, loss_ce, loss_c, t, s = train_step(run_teacher, run_student, optimizer, x, y,
                                                     alpha_of_group[groups[pos]], precision)
            train_agree[slot, pos] = agreement(t, s).gather(1, y[:, None]).squeeze(1)
            confidence_sum += torch.softmax(s, dim=1).max(dim=1).values.sum()
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
        scheduler.step()
        all_reduce(train_agree[slot])
        confidence = all_reduce(confidence_sum).item() / n_train
        metrics["confidence"].append(confidence)
        log(f"epoch {epoch}: student confidence {confidence:.4f}, {time.time() - t_epoch:.1f} s")

        # ------------------------------------------------------------ tipping point, split, detection
        sync_buffers(teacher, student)  # every rank evaluates rank 0's networks
        if metrics["tipping_epoch"] is None:
            full_agree[slot] = agreement_pass(eval_teacher, eval_student, full_batches, precision)[0]
            tipping = find_tipping_epoch(metrics["confidence"])
            if tipping is not None:
                metrics["tipping_epoch"] = tipping
                log(f"overfitting epoch: {tipping}")
                agreements = train_agree[tipping % 4].cpu().numpy()  # recorded during the tipping epoch
                try:
                    split = otsu_split(agreements)
                    log_split("training split", split)
                    groups = torch.as_tensor(assign_groups(agreements, split), device=device)
                    metrics["train_split"] = dict(zip(SPLIT_NAMES, split))
                    metrics["group_sizes"] = {g: int((groups == g).sum()) for g in range(1, 5)}
                    log("group sizes: " + ", ".join(f"G{g} {n}" for g, n in metrics["group_sizes"].items()))
                    if not same_on_all_ranks(torch.cat([groups, torch.tensor([tipping], device=device)])):
                        raise RunError("ranks disagree on the tipping epoch or the groups; please report this")
                    if world > 1:
                        log(f"all {world} ranks agree on the tipping epoch and the groups")
                except DegenerateSplit as e:
                    metrics["warnings"].append(f"training split impossible, plain one-hot training continues: {e}")
                    log(f"WARNING: {metrics['warnings'][-1]}")
                scores = full_agree[tipping % 4].cpu().numpy()
                try:
                    split = otsu_split(scores)
                    log_split("detection split", split)
                    metrics["detection_split"] = dict(zip(SPLIT_NAMES, split))
                    flagged = assign_groups(scores, split) == 4
                except DegenerateSplit as e:
                    metrics["warnings"].append(f"detection split impossible, nothing flagged: {e}")
                    log(f"WARNING: {metrics['warnings'][-1]}")
                    flagged = np.zeros(n_full, dtype=bool)
                if MAIN_PROCESS:
                    save_npy(f"{out_dir}/detection.npy", flagged)
                    save_npy(f"{out_dir}/detection_scores.npy", scores.astype(np.float32))
                p, r, f1 = precision_recall_f1(flagged, data.noise_or_not)
                metrics["detection"] = dict(flagged=int(flagged.sum()), truly_noisy=int(data.noise_or_not.sum()),
                                            precision=p, recall=r, f1=f1)
                log(f"flagged {flagged.sum()} of {n_full} labels as noisy (precision {p:.4f}, recall {r:.4f}, "
                    f"F1 {f1:.4f} against the ground truth, for reporting only)")

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
        if epoch % args.clean_test_freq == 0 or last:
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
    metrics["final_test_accuracy"] = metrics["test"][-1]["accuracy"]
    metrics["wall_time_s"] = metrics.get("wall_time_s", 0.0) + time.time() - t0  # summed over resumed parts
    metrics["finished"] = True
    if MAIN_PROCESS:
        save_checkpoint(f"{out_dir}/teacher.pth.tar", teacher, args.n_epoch - 1, args.arch)
        save_checkpoint(f"{out_dir}/student.pth.tar", student, args.n_epoch - 1, args.arch)
        save_json(f"{out_dir}/metrics.json", metrics)
        os.remove(f"{out_dir}/{STATE_FILE}")  # the finished run needs no state; metrics.json says it is finished
    log(f"final clean test accuracy: {metrics['final_test_accuracy']:.2f} % (epoch {args.n_epoch - 1}); "
        f"best noisy validation accuracy {metrics['best_val_accuracy']:.2f} % at epoch {metrics['best_epoch']}")
    if metrics["tipping_epoch"] is None:
        log(f"WARNING: no tipping epoch found in {args.n_epoch} epochs: training stayed one-hot and detection.npy "
            f"was not written; train for more epochs (the reference uses 300)")
    else:
        d = metrics["detection"]
        log(f"tipping epoch {metrics['tipping_epoch']}; flagged {d['flagged']} labels: precision {d['precision']:.4f}, "
            f"recall {d['recall']:.4f}, F1 {d['f1']:.4f}")
    for warning in metrics["warnings"]:
        log(f"WARNING: {warning}")
    log(f"done in {time.time() - t0:.0f} s; outputs in {out_dir}")
    destroy()


def check_finite(first_bad, epoch, out_dir):
    """Stop on a non-finite loss (one host sync, done only where the loop syncs anyway)."""
    bad = int(all_reduce(first_bad, "max"))
    if bad >= 0:
        raise RunError(f"non-finite loss at epoch {epoch}, iteration {bad + 1}; the state saved after the previous "
                       f"epoch in {out_dir} is intact (lower --lr, or try --precision fp32, then --resume)")


if __name__ == "__main__":
    run_main(main, get_args_parser(__doc__.splitlines()[0]))
