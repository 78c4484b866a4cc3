"""Recipes (utils/recipes.py, --recipe): the paper's procedure by default on CIFAR-N, ours on own data and the demo,
plain cross-entropy in the same pipeline; explicit flags win and the run says so; the reference recipe trains as the
reference's rule always did; a ce run trains, resumes, evaluates and summarises end to end."""
import json
import os
import pickle
import signal

import numpy as np
import pytest
import torch

from flags import check_args, get_args_parser, run_dir
from tests.conftest import fake_run_flags, outputs, run, train
from utils.recipes import DEFAULT_RECIPE, describe, label, overrides, recipe_of
from utils.watch import GUARD_EPOCHS, GUARD_OFF, GUARD_Z, Watch, fall


def parsed(*flags):
    parser = get_args_parser("test")
    return check_args(parser, parser.parse_args([str(f) for f in flags]))


@pytest.mark.parametrize("dataset, extra, recipe, rule, guard", [
    ("cifar10", (), "reference", "reference", False),  # the seed's commands: the paper's procedure
    ("cifar100", (), "reference", "reference", False),
    ("synthetic", (), "robust", "plateau", True),  # the demo and own data: ours
    ("npz", ("--data_dir", "x.npz"), "robust", "plateau", True),
    ("folder", ("--data_dir", "d"), "robust", "plateau", True),
    ("cifar10", ("--recipe", "robust"), "robust", "plateau", True),
    ("synthetic", ("--recipe", "reference"), "reference", "reference", False),
    ("cifar10", ("--recipe", "ce"), "ce", "none", False),
    # a flag given explicitly wins; the guard follows the rule where not given
    ("cifar10", ("--tipping_rule", "plateau"), "reference", "plateau", False),
    ("cifar10", ("--tipping_rule", "plateau", "--guard"), "reference", "plateau", True),
    ("synthetic", ("--tipping_rule", "reference"), "robust", "reference", False),
    ("synthetic", ("--no-guard",), "robust", "plateau", False),
    ("synthetic", ("--tipping_rule", "none"), "robust", "none", False),
])
def test_each_dataset_runs_its_recipe_unless_told(dataset, extra, recipe, rule, guard):
    args = parsed("--dataset", dataset, *extra)
    assert (args.recipe, args.tipping_rule, args.guard) == (recipe, rule, guard)
    assert DEFAULT_RECIPE[dataset] == ("reference" if dataset.startswith("cifar") else "robust")


def test_the_log_opens_with_the_recipe_why_and_how_to_switch():
    (line,) = describe(parsed("--dataset", "cifar10"))
    assert line.startswith("recipe reference, the paper's procedure exactly: the reference's tipping rule")
    assert "(the default for --dataset cifar10: the paper measured its procedure on CIFAR-10N and CIFAR-100N)" in line
    assert "--recipe robust: ours (the plateau rule and the guard); --recipe ce: plain cross-entropy" in line
    (line,) = describe(parsed("--dataset", "synthetic"))
    assert line.startswith("recipe robust,") and "the default for --dataset synthetic: our studies" in line
    first, *rest = describe(parsed("--dataset", "synthetic", "--recipe", "ce"))
    assert "(asked for; the default for --dataset synthetic is robust)" in first and rest == []
    lines = describe(parsed("--dataset", "cifar10", "--tipping_rule", "plateau", "--guard"))
    assert lines[1:] == ["--tipping_rule plateau given explicitly: it wins over the reference recipe's choice",
                         "--guard given explicitly: it wins over the reference recipe's choice"]
    # a flag that repeats the recipe's choice overrides nothing
    assert overrides(parsed("--dataset", "cifar10", "--tipping_rule", "reference", "--no-guard")) == []


@pytest.mark.parametrize("flags, message", [
    (("--recipe", "ce", "--tipping_rule", "plateau"), "--tipping_rule plateau: the ce recipe trains one network"),
    (("--recipe", "ce", "--no-guard"), "--no-guard: the ce recipe trains one network"),
    (("--recipe", "ce", "--record_passes"), "a --recipe ce run makes none"),
    (("--guard",), "--guard acts only under the plateau tipping rule, not --tipping_rule reference"),
    (("--recipe", "robust", "--tipping_rule", "reference", "--guard"), "acts only under the plateau tipping rule"),
    (("--recipe", "fast"), "invalid choice: 'fast'"),
])
def test_flags_that_contradict_the_recipe_stop_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        parsed("--dataset", "cifar10", *flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_a_recipe_other_than_the_default_has_its_own_run_directory():
    assert run_dir(parsed("--dataset", "cifar10")).endswith(os.sep + "cifar10_worst_seed_0")
    assert run_dir(parsed("--dataset", "cifar10", "--recipe", "reference")).endswith("cifar10_worst_seed_0")
    assert run_dir(parsed("--dataset", "cifar10", "--recipe", "ce")).endswith("cifar10_worst_seed_0_ce")
    assert run_dir(parsed("--dataset", "cifar10", "--recipe", "robust")).endswith("cifar10_worst_seed_0_robust")
    assert run_dir(parsed("--dataset", "synthetic", "--recipe", "robust")).endswith("synthetic_worst_seed_0")
    assert run_dir(parsed("--dataset", "synthetic", "--recipe", "reference")).endswith("synthetic_worst_seed_0_reference")
    # an override stays in its recipe's directory: resuming without it is refused (tipping_rule must match)
    assert run_dir(parsed("--dataset", "cifar10", "--tipping_rule", "plateau")).endswith("cifar10_worst_seed_0")


def test_runs_of_versions_before_recipes_are_named_by_their_rule():
    assert recipe_of(dict(args=dict(tipping_rule="reference", guard=True))) == "reference"
    assert recipe_of(dict(args=dict(tipping_rule="plateau"))) == "robust"
    assert recipe_of(dict(recipe="ce", args=dict(tipping_rule="none"))) == "ce"
    assert label(dict(args=dict(tipping_rule="reference", guard=True))) == "reference"  # the guard never acted there
    assert label(dict(args=dict(tipping_rule="none", guard=True))) == "robust, --tipping_rule none"
    assert label(dict(recipe="robust", args=dict(tipping_rule="plateau", guard=False))) == "robust, --no-guard"
    assert label(dict(recipe="ce", args=dict(tipping_rule="none", guard=False))) == "ce"


def test_where_the_guard_is_off_the_watch_says_where_it_would_have_gone_back():
    """The guard's own condition (below -GUARD_Z within GUARD_EPOCHS epochs of the split), read off a watch without
    it: one warning, at the first epoch it holds, naming what would have turned the guard on; nothing where the guard
    is on (it acts instead) or where nobody asked for a note."""
    split = 10
    curve = [30.0, 33.0, 36.0, 39.0, 42.0] + [45.0] * 6 + [44.7, 44.1, 43.0, 42.0]  # z -1.1, -2.9, -5.8, ...
    expected = next(e for e in range(split + 1, len(curve)) if fall(curve[:e + 1], split)[0] < -GUARD_Z)
    assert expected == split + 2 and fall(curve[:expected + 1], split)[0] > -3  # the guard's level, not a warning's
    hint = "the reference recipe keeps the soft targets"
    watch, m = Watch(guard=False, guard_hint=hint), dict(tipping_found_epoch=split, warnings=[], watch=None)
    notes = []
    for epoch in range(split + 1, len(curve)):
        m["val_every_epoch"] = curve[:epoch + 1]
        watch.check(m, epoch)
        note = watch.unguarded(m, epoch)
        if note:
            notes.append(epoch)
            m["warnings"].append(note)
    assert notes == [expected]
    assert m["warnings"][0].startswith(f"{GUARD_OFF} and to the given labels at epoch {expected}: ")
    assert m["warnings"][0].endswith(hint)
    late = curve[:split + 1] + [45.0] * GUARD_EPOCHS + [40.0]  # a fall after the guard has decided: no note
    m = dict(tipping_found_epoch=split, warnings=[], watch=None)
    for epoch in range(split + 1, len(late)):
        m["val_every_epoch"] = late[:epoch + 1]
        watch.check(m, epoch)
        assert watch.unguarded(m, epoch) is None
    edge = curve[:split + 1] + [45.0] * (GUARD_EPOCHS - 1) + [40.0]  # the fall comes at the guard's last epoch
    assert fall(edge, split)[0] < -GUARD_Z and all(fall(edge[:e + 1], split)[0] > -GUARD_Z
                                                    for e in range(split + 1, split + GUARD_EPOCHS))
    m = dict(tipping_found_epoch=split, warnings=[], watch=None)
    notes = []
    for epoch in range(split + 1, len(edge)):
        m["val_every_epoch"] = edge[:epoch + 1]
        watch.check(m, epoch)
        notes.append(watch.unguarded(m, epoch))
    assert [epoch for epoch, note in zip(range(split + 1, len(edge)), notes) if note] == [split + GUARD_EPOCHS]
    for other in (Watch(guard=True, guard_hint=hint), Watch(guard=False)):
        m = dict(tipping_found_epoch=split, warnings=[], watch=None, val_every_epoch=curve[:expected + 1])
        other.check(m, expected)
        assert other.unguarded(m, expected) is None


def test_a_ce_step_is_plain_cross_entropy_on_one_network():
    """utils.engine.train_step without a student: the loss is torch's cross-entropy of the network on the labels
    (no compensation loss), its gradient the only one, and the statistics the network's own softmax."""
    from utils.engine import train_step
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    copy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    copy.load_state_dict(net.state_dict())
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(copy(x), y)
    expected.backward()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    loss, loss_ce, loss_c, agree, confidence = train_step(net, None, optimizer, x, y, torch.zeros(5), "fp32")
    assert loss == loss_ce == pytest.approx(expected.item()) and loss_c == 0
    p = torch.softmax(copy(x), dim=1)
    assert torch.allclose(agree, p[torch.arange(5), y]) and confidence == pytest.approx(p.amax(1).sum().item())
    with torch.no_grad():
        assert torch.allclose(net[1].weight, copy[1].weight - 0.5 * copy[1].weight.grad)


# ---------------------------------------------------------------------------- end to end, on fake CIFAR
def flags_without_rule(fake_cifar, tmp_path, n_epoch=10):
    """The fake CIFAR-10 run's flags as the seed's command lines give them: no --tipping_rule."""
    flags = [str(f) for f in fake_run_flags(fake_cifar, tmp_path, n_epoch)]
    i = flags.index("--tipping_rule")
    return flags[:i] + flags[i + 2:]


@pytest.mark.slow
def test_the_seed_command_runs_the_reference_rule_byte_for_byte(fake_cifar, tmp_path):
    """On CIFAR the command without flags is the reference recipe, whose training is the reference's tipping rule
    with nothing of ours: the networks, detection.npy, detection_scores.npy and label_issues.csv are byte for byte
    those of the robust recipe with its choices overridden to the reference's rule and no guard (what
    --tipping_rule reference trained before recipes existed); the log and metrics.json say which recipe ran and why."""
    flags = flags_without_rule(fake_cifar, tmp_path)
    default = train(flags, tmp_path / "a")
    explicit = train([*flags, "--recipe", "robust", "--tipping_rule", "reference", "--no-guard"], tmp_path / "b")
    a, b = tmp_path / "a" / "cifar10_worst_seed_0", tmp_path / "b" / "cifar10_worst_seed_0_robust"
    assert outputs(a) == outputs(b)
    m = json.loads((a / "metrics.json").read_text())
    assert m["recipe"] == "reference" and m["evaluated"] == "pair" and m["tipping_rule"] == "reference"
    assert m["tipping_epoch"] is not None and m["went_back"] is None
    first = default.stdout.splitlines()[0]
    assert first.startswith("recipe reference, the paper's procedure exactly") and "--recipe robust" in first
    assert "--tipping_rule reference given explicitly" in explicit.stdout
    assert json.loads((b / "metrics.json").read_text())["recipe"] == "robust"
    learning = run("learning.py", *flags, "--results_dir", tmp_path / "a")
    assert learning.returncode == 0, learning.stderr
    assert "predicting with the agreement of teacher and student (the reference recipe's choice" in learning.stdout
    assert float(learning.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(
        m["final_test_accuracy"], abs=0.01)


@pytest.mark.slow
def test_a_ce_run_end_to_end(fake_cifar, tmp_path):
    """--recipe ce: one network with plain cross-entropy in the same pipeline, in its own run directory beside the
    BKD run; killed and resumed it ends byte for byte as the uninterrupted run; learning.py evaluates its network
    (recomputed here by hand from the checkpoint), detection.py and plots.py say there is nothing to score or draw,
    and the seed summary puts its row beside BKD's."""
    from tests.test_resume import kill_and_resume
    from models import build_model
    flags = [*flags_without_rule(fake_cifar, tmp_path, n_epoch=12), "--recipe", "ce"]
    results = tmp_path / "reference"
    trained = train(flags, results)
    d = results / "cifar10_worst_seed_0_ce"
    assert sorted(os.listdir(results)) == ["cifar10_worst_seed_0_ce"]
    assert sorted(f for f in os.listdir(d) if not f.endswith(".log")) == [
        "best_network.pth.tar", "metrics.json", "network.pth.tar"]
    m = json.loads((d / "metrics.json").read_text())
    assert m["recipe"] == "ce" and m["evaluated"] == "network" and m["tipping_epoch"] is None
    assert m["detection"] is None and m["flagged"] is None and len(m["confidence"]) == 12 and m["finished"]
    assert "network confidence" in trained.stdout and "nothing was flagged" in trained.stdout
    assert "compensation_l2_loss: 0.0000" in trained.stdout
    # the network learnt the labels it was given (100 random images, 10 classes: far above chance by the end)
    assert m["train_fit"][-1] > m["train_fit"][0]
    # killed at random moments and resumed: the same checkpoints
    names = ("network.pth.tar", "best_network.pth.tar")
    (tmp_path / "k").mkdir()
    kill_and_resume(flags, tmp_path / "k", kills=2, reference=dict(outputs=outputs(d, names)), run_name=d.name,
                    names=names)
    # learning.py: the final network's argmax on the 20 clean test images, by hand
    learning = run("learning.py", *flags, "--results_dir", results)
    assert learning.returncode == 0, learning.stderr
    assert f"evaluated the final network of {d} (epoch 11)" in learning.stdout
    assert "predicting with the one network (plain cross-entropy) (the ce recipe)" in learning.stdout
    with open(os.path.join(fake_cifar["dir"], "cifar-10-batches-py", "test_batch"), "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = torch.tensor(batch[b"data"]).view(-1, 3, 32, 32).float() / 255
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2023, 0.1994, 0.2010)).view(1, 3, 1, 1)
    net = build_model("small_cnn", 10)
    net.load_state_dict(torch.load(d / "network.pth.tar", weights_only=True)["state_dict"])
    with torch.no_grad():
        by_hand = (net.eval()((images - mean) / std).argmax(1).numpy() == np.array(batch[b"labels"])).mean() * 100
    assert float(learning.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(by_hand, abs=0.01)
    assert by_hand == pytest.approx(m["final_test_accuracy"], abs=0.01)
    refused = run("learning.py", *flags, "--results_dir", results, "--predict", "teacher")
    assert refused.returncode == 2 and "a --recipe ce run has one network" in refused.stderr
    for script, said in (("detection.py", "nothing to score: a --recipe ce run (plain cross-entropy, one network)"),
                         ("plots.py", "nothing to draw: a --recipe ce run")):
        r = run(script, *flags, "--results_dir", results)
        assert r.returncode == 0 and said in r.stdout and r.stderr == "", r.stderr
    # beside a BKD run of the same label set and seed, the summary has both rows
    train(flags_without_rule(fake_cifar, tmp_path), results)
    summary = run("summarize.py", "--results_dir", results)
    assert summary.returncode == 0, summary.stderr
    rows = [line for line in summary.stdout.splitlines() if line.startswith("| cifar10 | worst |")]
    assert [r.split("|")[3].strip() for r in rows] == ["ce", "reference"]
    assert f"| {m['final_test_accuracy']:.2f} | one network |" in rows[0]


@pytest.mark.slow
def test_resuming_with_another_recipe_is_refused(fake_cifar, tmp_path):
    """A saved state of one recipe resumed under another (a run directory moved, or a run started before recipes
    existed, when the plateau rule was the default everywhere) stops in one line naming both recipes."""
    from tests.test_resume import start, wait_for
    flags = [*flags_without_rule(fake_cifar, tmp_path, n_epoch=30), "--recipe", "robust"]
    process = start(flags, tmp_path / "r")
    wait_for(tmp_path / "r" / "cifar10_worst_seed_0_robust" / "state.pth.tar", process)
    process.send_signal(signal.SIGINT)
    process.communicate()
    assert process.returncode == 128 + signal.SIGINT
    (tmp_path / "r" / "cifar10_worst_seed_0_robust").rename(tmp_path / "r" / "cifar10_worst_seed_0")
    refused = run("blind_knowledge_dist_training.py", *flags_without_rule(fake_cifar, tmp_path, n_epoch=30),
                  "--results_dir", tmp_path / "r", "--resume")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith(
        f"--resume: the saved run in {tmp_path / 'r' / 'cifar10_worst_seed_0'} was trained with the robust recipe, "
        f"not reference; finish it with the version and flags that started it, or start over with --overwrite")
    # a state saved before recipes: no recipe recorded, the plateau rule and the guard (then on by default)
    path = tmp_path / "r" / "cifar10_worst_seed_0" / "state.pth.tar"
    state = torch.load(path, weights_only=True)
    del state["metrics"]["recipe"], state["metrics"]["args"]["recipe"]
    torch.save(state, path)
    again = run("blind_knowledge_dist_training.py", *flags_without_rule(fake_cifar, tmp_path, n_epoch=30),
                "--results_dir", tmp_path / "r", "--resume")
    assert again.returncode == 2 and "was trained with the robust recipe, not reference" in again.stderr
