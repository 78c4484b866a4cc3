"""End to end: the three scripts run as a user types them (subprocess), their outputs, and bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from models import build_model
from tests.conftest import N_SYNTHETIC, SYNTHETIC_EPOCHS, run, write_pickle
from utils.findings import SPLIT_CUT
from utils.flagging import flag_labels, probabilities
from utils.label_issues import in_dataset_order, read_label_issues
from utils.tipping import PATIENCE, history_slots



def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_training_writes_every_output(synthetic_run):
    d = synthetic_run["dir"]  # detection.json and review.html are written by detection.py
    assert sorted(os.listdir(d)) == ["best_student.pth.tar", "best_teacher.pth.tar", "detection.json",
                                     "detection.npy", "detection_scores.npy", "label_issues.csv", "metrics.json",
                                     "review.html", "student.pth.tar", "teacher.pth.tar"]
    flagged = np.load(d / "detection.npy", allow_pickle=False)
    assert flagged.dtype == np.bool_ and flagged.shape == (N_SYNTHETIC,)
    scores = np.load(d / "detection_scores.npy", allow_pickle=False)
    assert scores.dtype == np.float32 and scores.shape == (N_SYNTHETIC,) and 0 <= scores.min() <= scores.max() <= 1
    m = json.loads((d / "metrics.json").read_text())
    assert m["finished"] and m["args"]["n_epoch"] == SYNTHETIC_EPOCHS
    assert len(m["confidence"]) == SYNTHETIC_EPOCHS
    assert m["tipping_epoch"] is not None and m["tipping_rule"] == "plateau"  # the default
    # the plateau rule looks back at most PATIENCE epochs; the log says on what evidence it split
    assert m["tipping_epoch"] <= m["tipping_found_epoch"] <= min(m["tipping_epoch"] + PATIENCE, SYNTHETIC_EPOCHS - 1)
    assert m["tipping_evidence"].startswith("learning stopped rising") and len(m["train_fit"]) == SYNTHETIC_EPOCHS
    assert f"tipping rule plateau: {m['tipping_evidence']}" in synthetic_run["train"].stdout
    assert not any("premature" in w for w in m["warnings"])
    # which passes label_issues.csv's columns come from: the tipping epoch's, and the last 5 before the split
    newest = m["tipping_found_epoch"] - (m["tipping_epoch"] != m["tipping_found_epoch"])
    assert m["label_issues_passes"] == dict(tipping=m["tipping_epoch"], last=list(range(newest - 4, newest + 1)))
    assert (f"label_issues.csv comes at the end of the run (epoch {SYNTHETIC_EPOCHS - 1}), with the final networks' "
            f"agreement and the final teacher's probability of each label (final_agreement_given, "
            f"final_teacher_given); its agreement_given and group are those of the pass of epoch {m['tipping_epoch']} "
            f"(the tipping epoch, as detection.npy), its ranking and flags the split's (the passes of epochs "
            f"{', '.join(map(str, range(newest - 4, newest + 1)))}, averaged)") in synthetic_run["train"].stdout
    assert m["judged_by"] == "split" and m["judge_reason"] is None  # the default, --judge split
    assert "label_issues.csv: judged by the split (--judge split)\n" in synthetic_run["train"].stdout
    assert set(m["train_split"]) == {"upper_mean", "upper_sigma", "lower_mean", "lower_sigma", "threshold"}
    assert sum(m["group_sizes"].values()) == N_SYNTHETIC * 0.9
    assert m["detection"]["flagged"] == flagged.sum()
    # detection.npy is G4 of the Otsu split of the saved scores
    assert np.array_equal(flagged, scores < m["detection_split"]["lower_mean"])
    assert [e["epoch"] for e in m["val"]] == list(range(0, SYNTHETIC_EPOCHS, 3)) + [SYNTHETIC_EPOCHS - 1]
    assert m["final_test_accuracy"] == m["test"][-1]["accuracy"] and m["wall_time_s"] > 0
    assert m["best_val_accuracy"] == max(e["accuracy"] for e in m["val"])
    # the default precision and why, as the log says it: the reference's fp32 on every device
    assert m["precision"] == "fp32" and m["precision_reason"].startswith("--precision auto: fp32 on every device")
    assert f"precision fp32 ({m['precision_reason']})" in synthetic_run["train"].stdout


def test_training_log_has_the_reference_lines(synthetic_run):
    out = synthetic_run["train"].stdout
    m = json.loads((synthetic_run["dir"] / "metrics.json").read_text())
    assert f"overfitting epoch: {m['tipping_epoch']}" in out
    assert "upper_mean" in out and "lower_sigma" in out and "threshold" in out
    assert "noisy validation accuracy:" in out and "clean test accuracy:" in out
    assert "naive_loss:" in out and "compensation_l2_loss:" in out
    assert "\r" not in out and "it/s" not in out  # progress bars never reach the redirected log


def test_bkd_detects_noisy_labels(synthetic_run):
    m = json.loads((synthetic_run["dir"] / "metrics.json").read_text())
    # flagging every label scores F1 = 2 * 0.402 / 1.402 = 0.57 at this noise rate
    assert m["detection"]["f1"] > 0.65, m["detection"]
    assert m["detection"]["precision"] > 0.6


def test_detection_script_reports_precision_recall_f1(synthetic_run):
    result = synthetic_run["detection"]
    assert result.returncode == 0, result.stderr
    m = json.loads((synthetic_run["dir"] / "metrics.json").read_text())["detection"]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"flagged as noisy: {m['flagged']} of {N_SYNTHETIC}"
    assert lines[1] == f"truly noisy: {m['truly_noisy']}"
    assert lines[2] == f"precision is {m['precision']}" and lines[3] == f"recall is {m['recall']}"
    assert lines[4] == f"The f-score is {m['f1']}"
    assert lines[5] == "(flagging every label would score F1 0.5735)"  # 2 * 0.402 / 1.402
    # then the flagged column of label_issues.csv, side by side with G4's F1 (here G4 is detection.npy)
    flagged = json.loads((synthetic_run["dir"] / "metrics.json").read_text())["flagged"]
    assert lines[6] == (f"flagged in label_issues.csv ({SPLIT_CUT}): {flagged['flagged']}, precision "
                        f"{flagged['precision']:.4f}, recall {flagged['recall']:.4f}, F1 {flagged['f1']:.4f} (G4's F1 "
                        f"{m['f1']:.4f})")
    report = json.loads((synthetic_run["dir"] / "detection.json").read_text())
    assert report["flagged_column"]["f1"] == pytest.approx(flagged["f1"]) and report["f1"] == m["f1"]


def test_the_flagged_column_is_the_flagged_cut_and_detection_npy_stays_g4(synthetic_run):
    """label_issues.csv flags what the split's cut flags (utils.flagging; more of the wrong labels than G4 on these);
    detection.npy stays G4, the reference's detection, so challenge and paper numbers stay comparable."""
    d = synthetic_run["dir"]
    m = json.loads((d / "metrics.json").read_text())
    table = read_label_issues(d / "label_issues.csv", N_SYNTHETIC)
    column = in_dataset_order(table, "flagged")
    g4 = in_dataset_order(table, "group") == "4"
    assert np.array_equal(np.load(d / "detection.npy"), g4) and m["args"]["detection_npy"] == "g4"
    assert column.sum() == m["flagged"]["flagged"] and not np.array_equal(column, g4)
    assert m["flagged"]["f1"] > m["detection"]["f1"], (m["flagged"], m["detection"])


def test_learning_script_reports_which_networks(synthetic_run):
    m = json.loads((synthetic_run["dir"] / "metrics.json").read_text())
    final, best = synthetic_run["learning"], synthetic_run["learning_best"]
    assert final.returncode == 0 and best.returncode == 0, final.stderr + best.stderr
    assert "final networks" in final.stdout and f"teacher epoch {SYNTHETIC_EPOCHS - 1}" in final.stdout
    assert m["recipe"] == "robust" and m["evaluated"] == "teacher"  # the demo's data: the robust recipe
    assert float(final.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(
        m["final_test_accuracy_teacher"], abs=0.01)  # what the training measured at its last epoch
    assert "best-by-validation networks" in best.stdout
    assert f"(teacher epoch {m['best_epoch']}, student epoch {m['best_epoch']})" in best.stdout
    # the best pair's accuracy is what the training measured at that epoch (the teacher alone, as the recipe says)
    at_best = next(t for t in m["test"] if t["epoch"] == m["best_epoch"])
    assert float(best.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(
        at_best["teacher_accuracy"], abs=0.01)
    assert float(final.stdout.split("test accuracy: ")[1].split(" %")[0]) > 50  # 10 classes: chance is 10 %


def test_learning_can_predict_with_the_teacher_alone(synthetic_run):
    """Under the robust recipe (the demo's data) learning.py reports the teacher's own argmax over the clean test
    images, computed here from its checkpoint with no agreement involved; --predict pair reports the agreement of
    the pair, what the training measured; each run says which prediction it reports and why."""
    import learning
    from data.pipeline import DeviceBatches, to_device_images
    from utils.checkpoint import load_network
    from flags import check_args, load_data
    m = json.loads((synthetic_run["dir"] / "metrics.json").read_text())
    alone, pair = synthetic_run["learning"], synthetic_run["learning_pair"]
    assert pair.returncode == 0, pair.stderr
    assert "predicting with the agreement of teacher and student (--predict)" in pair.stdout
    assert "predicting with the teacher alone (the robust recipe's choice; --predict pair for" in alone.stdout
    assert float(pair.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(
        m["final_test_accuracy"], abs=0.01)
    parser = learning.get_parser()
    args = check_args(parser, parser.parse_args([str(f) for f in synthetic_run["flags"]]))
    data = load_data(args)
    teacher = load_network(synthetic_run["dir"] / "teacher.pth.tar", args.arch, data.num_classes)[0].eval()
    batches = DeviceBatches(to_device_images(data.test_images, data.augment[0], torch.device("cpu")),
                            torch.as_tensor(data.test_labels), None, data.mean_std, batch_size=64)
    with torch.no_grad():
        hits = sum((teacher(x).argmax(dim=1) == y).sum().item() for x, y, _ in batches)
    assert float(alone.stdout.split("test accuracy: ")[1].split(" %")[0]) == pytest.approx(
        100 * hits / len(data.test_labels), abs=0.01)


def test_accuracy_of_the_pair_and_of_the_teacher():
    """The agreement's accuracy against the teacher's own: a student with no opinion (constant logits) leaves the
    teacher's prediction; a student sure of one class turns the pair's prediction to it."""
    from data.pipeline import DeviceBatches, to_device_images
    from utils.engine import accuracy
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    batches = DeviceBatches(to_device_images(images, "reflect", torch.device("cpu")), torch.arange(40) % 4, None,
                            ((0.5,) * 3, (0.25,) * 3), 16)
    with torch.no_grad():
        predicted = torch.cat([teacher(x).argmax(dim=1) for x, _, _ in batches])
        labels = torch.cat([y for _, y, _ in batches])
        student[1].weight.zero_()
        student[1].bias.fill_(0.3)
    alone = accuracy(teacher, student, batches, predict="teacher")
    assert alone == pytest.approx(100 * (predicted == labels).float().mean().item())
    assert accuracy(teacher, student, batches) == pytest.approx(alone)
    with torch.no_grad():
        student[1].bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))  # sure of class 2 for every image
    assert accuracy(teacher, student, batches) == pytest.approx(25.0)  # a quarter of the labels are 2
    assert accuracy(teacher, student, batches, predict="teacher") == pytest.approx(alone)
    with pytest.raises(ValueError, match="pair"):
        accuracy(teacher, student, batches, predict="student")


@pytest.fixture
def fake_cifar_run(fake_cifar, tmp_path):
    """The CIFAR-10 code path with the default PreResNet18 on 100 fake images in the real file format."""
    clean = fake_cifar["labels10"]
    noisy = np.where(np.arange(100) % 3 == 0, (clean + 1) % 10, clean)
    labels = tmp_path / "CIFAR-10_human.pt"
    write_pickle(labels, {"clean_label": clean, "worse_label": noisy, "aggre_label": clean})
    flags = ["--dataset", "cifar10", "--data_dir", fake_cifar["dir"], "--noise_path", labels,
             "--results_dir", tmp_path / "results", "--seed", "3"]
    return dict(flags=flags, dir=tmp_path / "results" / "cifar10_worst_seed_3")


def test_cifar_run_checkpoints_load_into_a_fresh_preresnet18(fake_cifar_run):
    train = run("blind_knowledge_dist_training.py", *fake_cifar_run["flags"], "--n_epoch", 1, "--batch_size", 32,
                "--val_ratio", 0.8, "--cuda_graph")  # 20 training images: a PreResNet18 step costs seconds on a CPU
    assert train.returncode == 0, train.stderr[-2000:]
    assert "no tipping epoch found in 1 epochs" in train.stdout
    assert "--cuda_graph is ignored on this device (CUDA only): the step runs eagerly" in train.stdout
    for name in ("teacher", "student", "best_teacher", "best_student"):
        checkpoint = torch.load(fake_cifar_run["dir"] / f"{name}.pth.tar", weights_only=True)
        assert set(checkpoint) >= {"state_dict", "epoch"} and checkpoint["epoch"] == 0
        model = build_model("preresnet18", 10)
        assert list(checkpoint["state_dict"]) == list(model.state_dict())
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    assert not (fake_cifar_run["dir"] / "detection.npy").exists()
    detection = run("detection.py", *fake_cifar_run["flags"])
    assert_clean_error(detection, str(fake_cifar_run["dir"]), "blind_knowledge_dist_training.py")
    learning = run("learning.py", *fake_cifar_run["flags"])
    assert learning.returncode == 0 and "test accuracy:" in learning.stdout, learning.stderr


def test_reference_style_checkpoint_with_module_prefix_loads(fake_cifar_run):
    os.makedirs(fake_cifar_run["dir"])
    for role in ("teacher", "student"):
        state = {f"module.{k}": v for k, v in build_model("preresnet18", 10).state_dict().items()}
        torch.save({"state_dict": state, "epoch": 299}, fake_cifar_run["dir"] / f"{role}.pth.tar")
    learning = run("learning.py", *fake_cifar_run["flags"])
    assert learning.returncode == 0, learning.stderr
    assert "teacher epoch 299" in learning.stdout


def script_parser(script):
    """The parser a script's entry point checks its flags with (the scripts' own bad-input path, end to end, is in
    tests/test_resume.py's table of bad inputs)."""
    import detection
    import learning
    from flags import get_args_parser
    return {"blind_knowledge_dist_training.py": lambda: get_args_parser(""), "learning.py": learning.get_parser,
            "detection.py": detection.get_parser}[script]()


@pytest.mark.parametrize("script", ["blind_knowledge_dist_training.py", "learning.py", "detection.py"])
def test_help_names_every_flag(script):
    """--help formats (a stray % in a help text would make it raise) and says something about every flag."""
    parser = script_parser(script)
    text = parser.format_help()
    for action in parser._actions:
        assert action.help and all(option in text for option in action.option_strings), action.option_strings


@pytest.mark.parametrize("script, args, fragments", [
    ("blind_knowledge_dist_training.py", ["--dataset", "mnist"], ["invalid choice", "'cifar10', 'cifar100', 'synthetic'"]),
    ("blind_knowledge_dist_training.py", ["--arch", "vgg"], ["invalid choice", "preresnet18"]),
    ("blind_knowledge_dist_training.py", ["--noise_type", "worse"], ["invalid choice", "worst"]),
    ("blind_knowledge_dist_training.py", ["--noise_type", "noisy100"], ["--dataset cifar10", "aggre, clean, rand1"]),
    ("learning.py", ["--dataset", "cifar100", "--noise_type", "worst"], ["clean100, noisy100"]),
    ("learning.py", ["--checkpoint", "last"], ["invalid choice", "'final', 'best'"]),
    ("learning.py", ["--predict", "student"], ["invalid choice", "'pair', 'teacher'"]),
    ("detection.py", ["--val_ratio", "1.5"], ["--val_ratio"]),
    ("blind_knowledge_dist_training.py", ["--batch_size", "0"], ["--batch_size"]),
])
def test_bad_flags(script, args, fragments, capsys):
    from flags import check_args
    parser = script_parser(script)
    with pytest.raises(SystemExit) as e:
        check_args(parser, parser.parse_args(args))
    err = capsys.readouterr().err
    assert e.value.code == 2 and len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert all(fragment in err for fragment in fragments), err


@pytest.mark.slow
def test_missing_checkpoints_and_detection(tmp_path):
    flags = ["--dataset", "synthetic", "--results_dir", tmp_path]
    missing = str(tmp_path / "synthetic_worst_seed_0")
    assert_clean_error(run("learning.py", *flags), f"{missing}/teacher.pth.tar", "blind_knowledge_dist_training.py")
    assert_clean_error(run("detection.py", *flags), f"{missing}/detection.npy", "blind_knowledge_dist_training.py")


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["reference", "plateau"])
def test_full_set_pass_runs_only_until_the_tipping_epoch_is_found(fake_cifar, tmp_path, monkeypatch, rule):
    """One full-set pass per epoch before the tipping epoch is found, none after; in the epoch that finds it, one only
    when that epoch is the tipping epoch itself (the reference's is always two epochs older: it never passes there, so
    its runs draw the same random numbers as before)."""
    import blind_knowledge_dist_training as training
    from flags import check_args, get_args_parser
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 3 // 2) % 10})
    parser = get_args_parser("")
    args = check_args(parser, parser.parse_args(list(map(str, [
        "--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
        tmp_path / "labels.pt", "--n_epoch", 40, "--batch_size", 16, "--print_freq", 1000, "--device", "cpu",
        "--results_dir", tmp_path / "results", "--tipping_rule", rule]))))
    full_passes, real_pass = [], training.agreement_pass

    def counted_pass(teacher, student, batches, precision, **kwargs):
        full_passes.append(len(batches.indices))
        return real_pass(teacher, student, batches, precision, **kwargs)
    monkeypatch.setattr(training, "agreement_pass", counted_pass)
    monkeypatch.setattr(training.signal, "signal", lambda *args: None)  # keep pytest's own Ctrl-C handler
    training.main(args)
    m = json.loads((tmp_path / "results" / "cifar10_worst_seed_0" / "metrics.json").read_text())
    assert m["tipping_found_epoch"] is not None, "the run must find its tipping epoch for this test to mean anything"
    found = m["tipping_found_epoch"]
    passes_at_found = int(m["tipping_epoch"] == found)
    assert rule == "plateau" or m["tipping_epoch"] == found - 2
    # epochs 0 .. found - 1 (or found), the whole set each; then the two passes of the final networks
    assert full_passes == [100] * (found + passes_at_found) + [100, 100]


@pytest.mark.parametrize("extra", [["--val_ratio", "0", "--judge", "final"], ["--judge", "split"]])
def test_detection_npy_flagged_holds_the_flagged_column(fake_run, extra):
    """--detection_npy flagged writes the flagged column of label_issues.csv into detection.npy, and says so; here it
    is the split's, utils.flagging.flag_labels of the last full-set passes before the split (recomputed from the
    passes --record_passes saved): with --judge split, and with --judge final because this run's final teacher puts
    every image in one class (recomputed from the final passes saved), so it does not judge (the final teacher's own
    flags: tests/test_watch.py). Without a validation split (the challenge setting) the best networks are chosen on
    the augmented training split."""
    result = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", fake_run["tmp"] / "r",
                 "--detection_npy", "flagged", "--record_passes", *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    d = fake_run["tmp"] / "r" / "cifar10_worst_seed_0"
    table = read_label_issues(d / "label_issues.csv", 100)
    assert np.array_equal(np.load(d / "detection.npy"), in_dataset_order(table, "flagged"))
    m = json.loads((d / "metrics.json").read_text())
    assert m["detection"]["flagged"] == m["flagged"]["flagged"] and "detection.npy (flagged) flags" in result.stdout
    why = m["judge_reason"] or "--judge split"
    assert m["judged_by"] == "split" and f"label_issues.csv: judged by the split ({why})" in result.stdout
    labels = in_dataset_order(table, "given_label")
    if "final" in extra:
        with np.load(d / "passes" / "final.npz") as z:
            teacher = np.mean([torch.softmax(torch.as_tensor(z[f"{k}_teacher"]).double(), 1).numpy()
                               for k in ("plain", "aug")], axis=0)
        top = np.bincount(teacher.argmax(axis=1)).max() / 100
        assert top == 1.0 and f"puts {top:.0%} of the images in one class" in m["judge_reason"]
        assert m["val_every_epoch"] == [] and all("premature" in w for w in m["warnings"])  # nothing watched
        # the challenge setting: all 100 images train, the best networks chosen on the augmented training split
        assert "100 training, 0 validation" in result.stdout and m["best_epoch"] is not None
        assert (d / "best_teacher.pth.tar").is_file()
    else:
        assert m["judge_reason"] is None
    found, slots = m["tipping_found_epoch"], history_slots("reference")
    assert m["tipping_epoch"] < found  # so the found epoch's own pass is not among the last passes
    passes = [tuple(np.load(d / "passes" / f"epoch_{e:04d}.npz")[k] for k in ("teacher_logits", "student_logits"))
              for e in range(found - slots, found)]
    recent = np.mean([probabilities(t, s)[0] for t, s in passes], axis=0)
    teacher = np.stack([t.argmax(axis=1) for t, _ in passes])
    assert np.array_equal(in_dataset_order(table, "flagged"), flag_labels(recent, labels, teacher))
    assert np.array_equal(in_dataset_order(table, "suggested_label"), recent.argmax(axis=1))


def test_a_run_that_learns_nothing_warns_that_its_split_is_premature(fake_run):
    """A learning rate far too small: the curves stay flat at chance, the default rule takes them for a plateau and
    splits within a few epochs, and the log warns at the split and again at the end, as metrics.json keeps it (the
    synthetic run, which learns, splits without it: test_training_writes_every_output)."""
    results = fake_run["tmp"] / "tiny_lr"
    out = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--tipping_rule", "plateau", "--lr", 1e-7,
              "--n_epoch", 12, "--results_dir", results)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    m = json.loads((results / "cifar10_worst_seed_0" / "metrics.json").read_text())
    assert m["tipping_epoch"] is not None, "the run must split for this test to mean anything"
    premature = [w for w in m["warnings"] if "looks premature" in w]
    assert len(premature) == 1 and "nothing was learnt yet" in premature[0], m["warnings"]
    assert out.stdout.count(f"WARNING: {premature[0]}") == 2  # at the split and in the final summary


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile on the CPU needs a C++ compiler (apt-get install g++)")
def test_a_compiled_run_on_the_cpu_trains_what_the_eager_run_trains(fake_run):
    """--compile on the CPU (inductor's C++ code): the run finishes, its checkpoints carry no _orig_mod. prefix and
    load strictly into a plain network, their weights are those of the same run without --compile (to rounding:
    compiled kernels fuse operations, and 14 steps carry their rounding on: within 5 % per tensor and 1 % over the
    network, where another seed differs by about 100 %), and learning.py evaluates them. Two epochs: compiling
    dominates its time."""
    flags = [*fake_run["flags"], "--n_epoch", 2, "--noisy_val_freq", 100, "--clean_test_freq", 100]
    for name, extra in (("compiled", ["--compile"]), ("eager", [])):
        result = run("blind_knowledge_dist_training.py", *flags, *extra, "--results_dir", fake_run["tmp"] / name)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    compiled, eager = (fake_run["tmp"] / name / "cifar10_worst_seed_0" for name in ("compiled", "eager"))
    assert json.loads((compiled / "metrics.json").read_text())["args"]["compile"] is True
    for role in ("teacher", "student"):
        a, b = (torch.load(d / f"{role}.pth.tar", weights_only=True)["state_dict"] for d in (compiled, eager))
        assert a.keys() == b.keys() and not any(k.startswith("_orig_mod.") for k in a)
        build_model("small_cnn", 10).load_state_dict(a, strict=True)
        keys = [k for k in a if a[k].is_floating_point()]
        for k in keys:
            assert (a[k] - b[k]).norm() <= 0.05 * b[k].norm() + 1e-6, (role, k)
        flat_a, flat_b = (torch.cat([t[k].flatten() for k in keys]) for t in (a, b))
        assert (flat_a - flat_b).norm() <= 0.01 * flat_b.norm(), role
    learning = run("learning.py", *flags, "--results_dir", fake_run["tmp"] / "compiled")
    assert learning.returncode == 0 and "test accuracy:" in learning.stdout, learning.stderr
