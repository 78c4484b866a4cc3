"""The candidate fix policies of tools/fix_policy_study.py on hand-made detections and passes, and the two studies
(tools/fix_policy_study.py, tools/precision_study.py) end to end on 100 fake CIFAR images: their tables, their reuse
of finished runs, and the bf16 variants of tools/precision_variant.py."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from data import Dataset
import detection
from data.fixes import apply_label_fixes, write_label_fixes
from tests.conftest import ROOT, run, write_pickle
from utils.label_issues import write_label_issues

sys.path.insert(0, os.path.join(ROOT, "tools"))
import fix_policy_study  # noqa: E402
import precision_variant  # noqa: E402
from study import mean_ci, paired  # noqa: E402


def six_images():
    """Six images, labels 0..5 of 6 classes; the evidence of a run on them (as fix_policy_study.evidence gives it)."""
    labels = np.arange(6)
    data = Dataset("test", 6, np.zeros((6, 8, 8, 3), np.uint8), labels.copy(), None, None, None,
                   mean_std=((0, 0, 0), (1, 1, 1)))
    evidence = dict(flagged=np.array([True, True, True, False, False, False]),
                    suggested=np.array([1, 2, 0, 0, 4, 5]),
                    sure=np.array([True, False, True, True, False, False]),
                    stable=np.array([False, True, True, False, False, False]))
    return data, evidence


@pytest.mark.parametrize("policy, expected", [
    ("relabel_sure", [(0, "", 0, "relabel", 1), (1, "", 1, "drop", ""), (2, "", 2, "relabel", 0)]),
    ("drop", [(0, "", 0, "drop", ""), (1, "", 1, "drop", ""), (2, "", 2, "drop", "")]),
    ("relabel_stable", [(1, "", 1, "relabel", 2), (2, "", 2, "relabel", 0)]),
    ("drop_stable", [(1, "", 1, "drop", ""), (2, "", 2, "drop", "")]),
])
def test_each_candidate_policy_by_hand(policy, expected):
    """Only flagged images are touched; "sure" and "stable" choose among them (image 3 is sure but not flagged)."""
    data, evidence = six_images()
    assert fix_policy_study.CANDIDATES[policy][1](data, evidence) == expected


def test_candidates_apply_on_top_of_a_run_trained_with_fixes(tmp_path):
    """On a run trained with fixes, the candidate's rows map the labels on disk, and the run's other rows stay."""
    data, evidence = six_images()
    write_label_fixes(tmp_path / "first.csv", [(4, "", 4, "relabel", 3), (0, "", 0, "drop", "")])
    fixed = apply_label_fixes(data, str(tmp_path / "first.csv"))
    rows = fix_policy_study.CANDIDATES["relabel_sure"][1](fixed, evidence)
    assert rows == [(0, "", 0, "relabel", 1), (1, "", 1, "drop", ""), (2, "", 2, "relabel", 0), (4, "", 4, "relabel", 3)]


def test_the_evidence_of_a_run_by_hand(tmp_path):
    """fix_policy_study.evidence reads label_issues.csv and the last passes a run recorded: `sure` compares the
    averaged agreement on the suggestion with the tipping pass's upper mean (as the page did), `stable` asks every
    last pass's agreement and teacher to predict the suggestion and its averaged agreement to reach the upper mean of
    the same passes' split."""
    run_dir = tmp_path / "run"
    (run_dir / "passes").mkdir(parents=True)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # agreement = softmax(teacher + student): logits of 10 on one class make it ~1 there. Images 0-2 and 4-6 agree
    # with their labels in every pass; image 3 (label 0) is 1 in every pass; image 7 (label 1) is 0 in the first
    # pass only, its teacher flipping too
    for epoch in range(5):
        predicted = labels.copy()
        predicted[3] = 1
        if epoch == 0:
            predicted[7] = 0
        logits = np.eye(2)[predicted] * 10
        np.savez(run_dir / "passes" / f"epoch_{epoch:04d}.npz", teacher_logits=logits, student_logits=logits,
                 train_agreement=np.zeros(8), train_idx=np.arange(8))
    agreement = np.full(8, 0.99)
    agreement[[3, 7]] = 0.01
    write_label_issues(run_dir / "label_issues.csv", labels, np.array([0, 0, 0, 1, 1, 1, 1, 1]), agreement,
                       np.ones(8), np.where(agreement > 0.5, 1, 4), np.arange(8) == 3)
    data = Dataset("test", 2, np.zeros((8, 8, 8, 3), np.uint8), labels, None, None, None,
                   mean_std=((0, 0, 0), (1, 1, 1)))
    metrics = dict(tipping_epoch=2, tipping_found_epoch=5, tipping_rule="plateau")  # passes 0-4 are the last five
    e = fix_policy_study.evidence(str(run_dir), metrics, data)
    assert e["flagged"].tolist() == [False, False, False, True, False, False, False, False]
    assert e["suggested"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert e["sure"].all()  # 1 reaches the upper mean 0.99 of the tipping pass
    assert e["stable"].tolist() == [True, True, True, True, True, True, True, False]  # image 7 moved in one pass


def test_detection_suggests_no_fixes_and_removes_an_old_file(tmp_path):
    """No policy without a reviewer held on every label set of the study: detection.py writes no fixes of its own,
    and removes an earlier version's label_fixes_suggested.csv so that nobody trains on it."""
    path = tmp_path / "label_fixes_suggested.csv"
    path.write_text("index,file,given_label,action,new_label\n")
    assert detection.no_suggested_fixes_line(str(path)) == (
        f"no label fixes without a review ({path} of an earlier version removed): every policy that acts on the "
        f"findings alone cost accuracy on some label set (docs/review.md); review review.html and train with the "
        f"fixes it downloads")
    assert not path.exists()
    assert detection.no_suggested_fixes_line(str(path)).startswith("no label fixes without a review: every policy")


def test_study_statistics_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.3027
    diff, half, p = paired([1.0, 2.0, 3.0], [1.5, 2.0, 4.0])
    # differences 0.5, 0, 1: t = 0.5 / (0.5 / sqrt(3)) = sqrt(3); with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2)
    assert diff == pytest.approx(0.5) and p == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), abs=1e-9)
    assert math.isnan(paired([1.0, 2.0], [2.0, 3.0])[2])  # every difference equal: nothing to test against


@pytest.mark.parametrize("variant", ["fp32_head", "fp32_batchnorm"])
def test_precision_variants_keep_their_part_in_fp32(variant, monkeypatch):
    monkeypatch.setattr(precision_variant.training, "build_model", precision_variant.training.build_model)
    precision_variant.patch(variant)
    net = precision_variant.training.build_model("small_cnn", 10)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        logits, first_block = net(torch.randn(2, 3, 16, 16)), net.features[:2](torch.randn(2, 3, 16, 16))
    assert logits.dtype == (torch.float32 if variant == "fp32_head" else torch.bfloat16)
    assert first_block.dtype == (torch.float32 if variant == "fp32_batchnorm" else torch.bfloat16)


@pytest.fixture
def study_data(fake_cifar, tmp_path):
    """Flags of the studies for 100 fake CIFAR-10 images with a third of their labels wrong."""
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": np.where(np.arange(100) % 3 == 0,
                                                                                         (clean + 1) % 10, clean)})
    return ["--dataset", "cifar10", "--data_dir", fake_cifar["dir"], "--noise_path", tmp_path / "labels.pt",
            "--noise_types", "worst", "--jobs", "2"]


def test_fix_policy_study_end_to_end_and_again(study_data, tmp_path):
    flags = [*study_data, "--seeds", "0", "--policies", "drop", "reviewer", "--results_dir", tmp_path / "study",
             # the reference's tipping rule: random images never plateau in 10 epochs (see fake_run_flags)
             "--train_flags", "--arch small_cnn --n_epoch 10 --batch_size 16 --print_freq 1000 --tipping_rule reference"]
    first = run("tools/fix_policy_study.py", *flags)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "as is: 0 of 1 finished already, 1 to train" in first.stdout
    assert "retrained with fixes: 0 of 2 finished already, 2 to train" in first.stdout
    table = (tmp_path / "study" / "study.md").read_text()
    assert table in first.stdout
    rows = [line for line in table.splitlines() if line.startswith("| worst |")]
    assert [r.split(" | ")[1] for r in rows] == ["as is", "drop", "reviewer"]
    run_dir = tmp_path / "study" / "cifar10" / "cifar10_worst_seed_0"
    assert len(list((run_dir / "passes").glob("epoch_*.npz"))) >= 4  # the as-is run recorded its last passes
    fixed = json.loads(next((tmp_path / "study" / "cifar10").glob("cifar10_worst_seed_0_fixes_*/metrics.json")).read_text())
    assert fixed["label_fixes"]["wrong_before"] == pytest.approx(34 / 100)
    assert not fixed["args"]["record_passes"]  # the retrains record nothing
    assert "- given, reviewer: " in table and "(the ceiling: it reads the ground truth)" in table
    # one part (one data set, no confirmation): a qualifying policy would ship on it alone
    assert table.splitlines()[-2].startswith("chosen (given): ")
    assert table.splitlines()[-1].startswith("ships: ")
    again = run("tools/fix_policy_study.py", *flags)  # everything finished: nothing is trained again
    assert again.returncode == 0 and "1 of 1 finished already, 0 to train" in again.stdout
    assert "2 of 2 finished already, 0 to train" in again.stdout
    assert (tmp_path / "study" / "study.md").read_text() == table


def test_study_label_sets_name_their_files_and_part(tmp_path):
    """The label sets of the studies: synthetic by noise type, the others a file of tools/make_study_npz.py; their
    part by their source (Fashion- and Animal-MNIST confirm), and a missing file says how to make it."""
    from study import CONFIRMED_ON, LabelSet
    synthetic, pair = LabelSet("synthetic worst", str(tmp_path)), LabelSet("fashion pair 25", str(tmp_path))
    assert synthetic.flags == ["--dataset", "synthetic", "--noise_type", "worst"] and synthetic.part == "chosen on"
    assert pair.flags == ["--dataset", "npz", "--data_dir", str(tmp_path / "fashion_pair_25.npz"), "--arch", "small_cnn"]
    assert pair.part == "confirmed on" and pair.folder == "fashion_pair_25" and pair.run_name == "npz_given"
    assert "python tools/make_study_npz.py --out" in pair.missing_file() and synthetic.missing_file() is None
    assert all(LabelSet(name).part == "confirmed on" for name in CONFIRMED_ON)
    assert LabelSet("digits pair 25").part == "chosen on"
    with pytest.raises(ValueError, match="unknown label set"):
        LabelSet("fashion")


def test_precision_study_end_to_end(study_data, tmp_path):
    """The variant on a seed of its own: fp32 is trained on that seed too and compared with it."""
    result = run("tools/precision_study.py", *study_data, "--seeds", "1", "--variants", "fp32_eval",
                 "--variant_seeds", "2", "--results_dir", tmp_path / "study",
                 "--train_flags", "--arch small_cnn --n_epoch 3 --batch_size 32")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 of 4 finished already, 4 to train" in result.stdout
    assert sorted(p.name for p in (tmp_path / "study" / "cpu" / "fp32").iterdir()) == [
        "cifar10_worst_seed_1", "cifar10_worst_seed_2"]
    table = (tmp_path / "study" / "cpu" / "study.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| worst |")]
    assert [r[1:3] for r in rows] == [["bf16", "1"], ["bf16, fp32_eval", "2"]]
    assert "p >= 0.05 over at least 10 seeds)" in table  # one seed: parity cannot be claimed
    assert all(r[-1] == "0 of 1 |" for r in rows)  # 3 epochs: no tipping epoch in either precision
    metrics = json.loads((tmp_path / "study" / "cpu" / "fp32_eval" / "cifar10_worst_seed_2" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["args"]["variant"] == "fp32_eval"
    assert "worst, bf16: accuracy" in table and "worst, fp32_eval: accuracy" in table


def test_study_noise_models_flip_exactly_their_share(tmp_path):
    """tools/make_study_npz.py's noise models on hand-made out-of-fold probabilities: each makes exactly
    round(rate * N) labels wrong; pair flips send the same share of every class to its one look-alike class; the same
    seed gives the same labels."""
    import make_study_npz
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(4), 25)
    look_alike = np.array([1, 0, 3, 2])  # the class each class is confused with most
    probs = np.full((100, 4), 0.05)
    probs[np.arange(100), labels] = 0.6
    probs[np.arange(100), look_alike[labels]] = 0.3 + rng.uniform(0, 0.05, 100)
    some = np.arange(0, 100, 5)
    probs[some, look_alike[labels[some]]] = 0.7  # a fifth predicted as their look-alike: the classifier's confusion
    assert make_study_npz.look_alike_classes(probs, labels).tolist() == [1, 0, 3, 2]
    for model in make_study_npz.NOISE_MODELS:
        noisy = make_study_npz.noisy_labels(model, 0.25, labels, probs, seed=0)
        wrong = noisy != labels
        assert wrong.sum() == 25 and np.array_equal(noisy, make_study_npz.noisy_labels(model, 0.25, labels, probs, 0))
        if model == "pair":
            assert sorted(np.bincount(labels[wrong], minlength=4).tolist()) == [6, 6, 6, 7]  # 6.25 each, rounded
            assert np.array_equal(noisy[wrong], look_alike[labels[wrong]])
        if model == "lookalike":  # each image to its own most likely other class: here always the look-alike
            assert np.array_equal(noisy[wrong], look_alike[labels[wrong]])
        if model == "uniform":
            assert len(set(noisy[wrong] - labels[wrong])) > 1


def test_study_sources_read_their_files_and_nothing_else(tmp_path):
    """Fashion-MNIST's IDX files and Animal-MNIST's pickled arrays, written here in their formats: read as arrays;
    a pickle that would call a function is refused."""
    import gzip
    import pickle
    import make_study_npz
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 3], ">u4").tobytes()
    with gzip.open(tmp_path / "images.gz", "wb") as f:
        f.write(header + images.tobytes())
    assert np.array_equal(make_study_npz.read_idx(tmp_path / "images.gz"), images)
    with gzip.open(tmp_path / "arrays.gz", "wb") as f:
        pickle.dump(images.reshape(2, 9), f)
    assert np.array_equal(make_study_npz.read_pickled_array(tmp_path / "arrays.gz"), images.reshape(2, 9))

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))
    with gzip.open(tmp_path / "evil.gz", "wb") as f:
        pickle.dump(RunsCode(), f)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        make_study_npz.read_pickled_array(tmp_path / "evil.gz")
