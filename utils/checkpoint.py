"""Saving and loading: one dict per network, written atomically, read without arbitrary unpickling."""
import contextlib
import glob
import json
import os
import shutil

import numpy as np
import torch

from models import build_model
from utils import InputError, atomic_write
from utils.recipes import recipe_of

PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


def save_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_npz(path, **arrays):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def clean_state_dict(state_dict):
    """The state dict with DDP / torch.compile prefixes removed, so keys match a plain network."""
    out = {}
    for key, value in state_dict.items():
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def save_checkpoint(path, model, epoch, arch):
    state = {"state_dict": clean_state_dict(model.state_dict()), "epoch": epoch, "arch": arch}
    atomic_write(path, lambda f: torch.save(state, f))


def require_checkpoint(path):
    """One clear InputError when there is no checkpoint at path (before anything slow, such as a download)."""
    if not os.path.isfile(path):
        raise InputError(f"no checkpoint at {path}; train first: python blind_knowledge_dist_training.py "
                         f"with the same --dataset, --noise_type, --seed and --recipe")


def load_network(path, arch, num_classes):
    """(network, checkpoint dict) from a checkpoint of this project or of the reference (strict key match).
    The checkpoint's own arch wins over `arch`. One clear InputError on any problem."""
    require_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled code
        if not isinstance(checkpoint, dict):
            raise ValueError(f"expected a dict, got {type(checkpoint).__name__}")
        state_dict = checkpoint.get("state_dict", checkpoint)
        model = build_model(checkpoint.get("arch", arch), num_classes)
        model.load_state_dict(clean_state_dict(state_dict), strict=True)
    except Exception as e:  # unreadable, tampered, or another architecture / class count
        lines = str(e).strip().splitlines()
        raise InputError(f"cannot load {path}: {lines[0] if lines else type(e).__name__}") from None
    return model, checkpoint


# ---------------------------------------------------------------------------- training state (--resume)
STATE_FILE = "state.pth.tar"
OUTPUT_FILES = ("teacher.pth.tar", "student.pth.tar", "best_teacher.pth.tar", "best_student.pth.tar",
                "network.pth.tar", "best_network.pth.tar",  # the one network of a --recipe ce run
                "detection.npy", "detection_scores.npy", "label_issues.csv", "metrics.json", "label_fixes.csv",
                STATE_FILE,
                # written by detection.py and plots.py from the files above: stale once the run is trained again
                "detection.json", "review.html", "confidence.png",
                "scores_histogram.png", "precision_recall.png", "suspicious_images.png",
                "label_fixes_suggested.csv",  # an earlier version's detection.py wrote it
                "epochs.json")  # studies/tipping_study.py's summary of passes/
# folders of a run: the passes --record_passes saved, the fixes studies/fix_policy_study.py made of the run's detection
OUTPUT_FOLDERS = ("passes", "policy_fixes")
STATE_KEYS = ("epoch", "teacher", "student", "optimizer", "scheduler", "train_agree", "pass_history", "groups",
              "findings", "watch", "rng", "metrics")
# flags a resumed run must share with the run it continues (the others only change logging or speed)
RESUME_MUST_MATCH = ("recipe", "dataset", "noise_type", "seed", "arch", "val_ratio", "batch_size", "lr", "lr_decay_every",
                     "momentum", "weight_decay", "alpha1", "alpha2", "alpha3", "alpha4", "noisy_val_freq",
                     "clean_test_freq", "precision", "deterministic", "tipping_rule", "record_passes", "detection_npy",
                     "guard")


def rng_states(generator):
    """Every random generator the training uses, as plain lists and tensors (loadable with weights_only)."""
    import random
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(), "pipeline": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states, generator):
    import random
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    generator.set_state(states["pipeline"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


class Resumable:
    """What the state file holds and --resume restores: the networks, the optimizer and its schedule, the per-sample
    statistics (train_agree, groups: changed in place), the findings, the watch and every random generator; the pass
    history and the metrics, which the run replaces as it goes, are passed in."""

    def __init__(self, teacher, student, optimizer, scheduler, train_agree, groups, findings, watch, generator):
        self.teacher, self.student, self.optimizer, self.scheduler = teacher, student, optimizer, scheduler
        self.train_agree, self.groups, self.findings, self.watch = train_agree, groups, findings, watch
        self.generator = generator

    def state(self, epoch_done, history, metrics, epoch_in_progress=None):
        """The state after epoch `epoch_done` (and, stopped in the middle of the next, where it stopped)."""
        return dict(epoch=epoch_done, epoch_in_progress=epoch_in_progress, teacher=self.teacher.state_dict(),
                    student=None if self.student is None else self.student.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    train_agree=self.train_agree, pass_history=None if history is None else history.state(),
                    groups=self.groups, findings=self.findings.state(), watch=self.watch.state(),
                    rng=rng_states(self.generator), metrics=metrics)

    def load(self, state, history):
        """Everything as saved; returns the pass history as it was (None once the run had split)."""
        self.teacher.load_state_dict(state["teacher"])
        if self.student is not None:
            self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_agree.copy_(state["train_agree"])
        if history is not None and state["pass_history"] is None:  # the run has split
            history = None
        elif history is not None:
            history.load(state["pass_history"])
        self.groups.copy_(state["groups"])
        self.findings.load(state["findings"])
        self.watch.load(state["watch"])
        restore_rng_states(state["rng"], self.generator)
        return history


def load_state(path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [key for key in STATE_KEYS if key not in state]
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise InputError(f"cannot resume from {path}: {lines[0] if lines else type(e).__name__}; "
                         f"start over with --overwrite") from None
    if missing:
        raise InputError(f"cannot resume from {path}: saved by another version of this code (no "
                         f"{', '.join(missing)}); finish it with that version, or start over with --overwrite")
    return state


def saved_metrics(out_dir):
    """The metrics.json in the run directory as a dict; {} when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(out_dir, "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def prepare_run_dir(out_dir, args):
    """Check the run directory against --resume / --overwrite: the state to resume from, or None to start from
    scratch. Deletes outputs only for --overwrite. (The caller has dealt with --resume of a finished run.)"""
    state_path = os.path.join(out_dir, STATE_FILE)
    for name in OUTPUT_FILES:  # temporary files of a write that a SIGKILL cut short (the real files are intact)
        for stale in glob.glob(os.path.join(glob.escape(out_dir), f".{name}.*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
    finished = bool(saved_metrics(out_dir).get("finished"))
    if args.overwrite:
        for name in OUTPUT_FILES:
            with contextlib.suppress(FileNotFoundError):  # under torchrun every rank gets here
                os.remove(os.path.join(out_dir, name))
        for name in OUTPUT_FOLDERS:  # stale once the run is trained again, and a study would read them as its own
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        return None
    if args.resume and not finished:
        if not os.path.isfile(state_path):
            return None  # killed before its first epoch ended (or never started): start from scratch
        state = load_state(state_path)
        saved = dict(state["metrics"]["args"])
        if "recipe" not in saved:  # a state saved before recipes: the guard acted only under the plateau rule then
            saved.update(recipe=recipe_of(state["metrics"]), guard=bool(saved.get("guard"))
                         and saved.get("tipping_rule") == "plateau")
        if saved["recipe"] != args.recipe:
            raise InputError(f"--resume: the saved run in {out_dir} was trained with the {saved['recipe']} recipe, not "
                             f"{args.recipe}; finish it with the version and flags that started it, or start over "
                             f"with --overwrite")
        changed = [f"--{k} {saved.get(k)} -> {getattr(args, k)}" for k in RESUME_MUST_MATCH
                   if saved.get(k) != getattr(args, k)]
        if changed:
            raise InputError(f"--resume with other settings than the saved run ({'; '.join(changed)}); "
                             f"use the same flags, or --overwrite to start over")
        if args.n_epoch <= state["epoch"]:
            raise InputError(f"--n_epoch {args.n_epoch}: the saved run has already done {state['epoch'] + 1} epochs")
        return state
    if finished:
        raise InputError(f"{out_dir} already holds a finished run; pass --resume to keep it (nothing to do), "
                         f"--overwrite to train it again, or choose another --seed or --results_dir")
    if os.path.isfile(state_path):
        raise InputError(f"{out_dir} holds an unfinished run; pass --resume to continue it, or --overwrite to start over")
    return None
