"""The watch after the split (utils/watch.py): how far the noisy-validation accuracy fell, in units of its own noise;
the warning and the guard on hand-made curves; going back puts the split's networks and momentum into the tensors a
captured step updates; a collapse onto one class, measured from the validation pass's predictions."""
import math

import numpy as np
import pytest
import torch

from utils.engine import accuracy, prediction_reading
from utils.watch import (BASELINE, COLLAPSE_EPOCHS, COLLAPSED, GUARD_EPOCHS, GUARD_Z, NOISE_FLOOR, WARN_Z, Watch,
                         collapse, collapse_level, collapsed_onto_one_class, fall, largest_share)

RNG = np.random.default_rng(0)
RISE = list(np.linspace(30, 60, 10))  # learning, then the plateau the split is made on
PLATEAU = list(60 + RNG.normal(0, 1.0, 6))


def metrics_of(val, split):
    return dict(val_every_epoch=list(val), tipping_found_epoch=split, warnings=[], watch=None)


def test_fall_by_hand():
    """Worked out by hand. Up to the split (epoch 7): 50 52 54 55 55 56 55 56; its second differences 0 -1 -1 1 -2 2,
    median -0.5, absolute deviations from it 0.5 0.5 0.5 1.5 1.5 2.5, median 1.0, so the noise is
    1.4826 * 1.0 / sqrt(6) = 0.60527 points (above the floor). Before: the mean of the last 5, 55.4; after: 49.5 over
    2 epochs; z = (49.5 - 55.4) / (0.60527 * sqrt(1/5 + 1/2)) = -11.6508."""
    val = [50, 52, 54, 55, 55, 56, 55, 56, 50, 49]
    z, after, before, noise = fall(val, 7)
    assert after == 49.5 and before == pytest.approx(55.4)
    assert noise == pytest.approx(0.605269, abs=1e-6) and z == pytest.approx(-11.6508, abs=1e-4)
    assert fall(val, 9) is None  # no epoch after the split yet


def test_a_flat_curve_uses_the_noise_floor():
    """A plateau that repeats one value has no noise of its own: a fall is measured against NOISE_FLOOR."""
    z, _, _, noise = fall([40, 50, 55, 55, 55, 55, 55, 55, 54], 7)
    assert noise == NOISE_FLOOR and z == pytest.approx(-1 / (NOISE_FLOOR * math.sqrt(1 / BASELINE + 1)))


@pytest.mark.parametrize("drop, warns", [(0.0, False), (-8.0, True)])
def test_the_warning_comes_once_when_the_accuracy_falls_clearly(drop, warns):
    split = len(RISE + PLATEAU) - 1
    curve = RISE + PLATEAU + list(PLATEAU[-1] + drop + RNG.normal(0, 0.3, 4))
    watch, m = Watch(guard=False), metrics_of([], split)
    said = []
    for epoch in range(split + 1, len(curve)):
        m["val_every_epoch"] = curve[:epoch + 1]
        warning, back = watch.check(m, epoch)
        assert not back  # no guard: the reference's rule, or no snapshot
        if warning:
            said.append(warning)
            m["warnings"].append(warning)
    assert len(said) == int(warns)
    if warns:
        assert "fell after the split" in said[0] and "learning.py --checkpoint best" in said[0]
        assert m["watch"]["z"] < -WARN_Z


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def step(teacher, student, optimizer):
    x = torch.randn(8, 3)
    loss = teacher(x).square().mean() + student(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_the_guard_goes_back_to_the_split_in_the_same_tensors():
    teacher, student = net(), net()
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=0.1, momentum=0.9)
    step(teacher, student, optimizer)  # momentum buffers exist
    watch = Watch(guard=True)
    watch.keep(teacher, student, optimizer)
    kept = {k: v.clone() for k, v in teacher.state_dict().items()}
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in teacher.parameters()]
    tensors = [t.data_ptr() for t in teacher.state_dict().values()] + [
        optimizer.state[p]["momentum_buffer"].data_ptr() for p in teacher.parameters()]
    for _ in range(3):
        step(teacher, student, optimizer)
    split = len(RISE + PLATEAU) - 1
    m = metrics_of(RISE + PLATEAU + [PLATEAU[-1] - 10], split)
    warning, back = watch.check(m, split + 1)
    assert back and m["watch"]["z"] < -GUARD_Z
    watch.go_back(teacher, student, optimizer)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in kept.items())
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], b) for p, b in zip(teacher.parameters(), momentum))
    assert tensors == [t.data_ptr() for t in teacher.state_dict().values()] + [
        optimizer.state[p]["momentum_buffer"].data_ptr() for p in teacher.parameters()]  # copied, not replaced
    assert watch.state() is None  # nothing more to keep


def test_the_guard_decides_within_its_epochs():
    """A fall that comes later than GUARD_EPOCHS after the split warns (it is clear) but does not go back: the
    snapshot of the split is dropped once the guard has decided."""
    teacher, student = net(), net()
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=0.1, momentum=0.9)
    watch = Watch(guard=True)
    watch.keep(teacher, student, optimizer)
    split = len(RISE + PLATEAU) - 1
    curve = RISE + PLATEAU + [PLATEAU[-1]] * GUARD_EPOCHS + [PLATEAU[-1] - 20] * 3
    m = metrics_of([], split)
    backs, kept = [], []
    for epoch in range(split + 1, len(curve)):
        m["val_every_epoch"] = curve[:epoch + 1]
        warning, back = watch.check(m, epoch)
        backs.append(back)
        kept.append(watch.state() is not None)
        if warning:
            m["warnings"].append(warning)
    assert not any(backs) and any("fell after the split" in w for w in m["warnings"])
    # the snapshot goes (and the saved state shrinks) at the last epoch the guard decides in, not later
    assert kept == [True] * (GUARD_EPOCHS - 1) + [False] * (len(curve) - split - GUARD_EPOCHS)


def test_going_back_without_momentum_buffers():
    """With --momentum 0 SGD keeps no momentum buffers: going back restores the networks and has none to copy."""
    teacher, student = net(), net()
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=0.1, momentum=0.0)
    step(teacher, student, optimizer)
    watch = Watch(guard=True)
    watch.keep(teacher, student, optimizer)
    kept = {k: v.clone() for k, v in student.state_dict().items()}
    step(teacher, student, optimizer)
    watch.go_back(teacher, student, optimizer)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in kept.items())


def test_the_collapse_measure_by_hand():
    """The largest class share of 0 0 1 2 is 1/2; predictions collapse above halfway from the labels' largest share to
    all of them: with 2 balanced classes above 3/4, and 3 of 4 in one class is not above it."""
    assert largest_share(np.array([0, 0, 1, 2])) == 0.5 and largest_share(torch.tensor([3, 3, 3])) == 1.0
    labels = np.array([0, 1, 0, 1])
    assert not collapsed_onto_one_class(np.array([1, 1, 1, 0]), labels)  # 0.75: at the level, not above it
    assert collapsed_onto_one_class(np.array([1, 1, 1, 1]), labels)
    assert not collapsed_onto_one_class(np.array([0, 1, 2, 3]), np.array([0, 0, 0, 1]))  # labels 3/4: level 7/8


def test_the_guard_can_go_back_at_its_last_epoch():
    """A fall that first crosses the guard's level at the last epoch it decides in goes back, to the networks of
    the split (the snapshot must still be there then: a long run of the study crashed on it)."""
    teacher, student = net(), net()
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=0.1, momentum=0.9)
    watch = Watch(guard=True)
    watch.keep(teacher, student, optimizer)
    kept = [p.detach().clone() for p in teacher.parameters()]
    split = len(RISE + PLATEAU) - 1
    # level for GUARD_EPOCHS - 1 epochs, then a fall deep enough to pull the mean of all GUARD_EPOCHS below the level
    curve = RISE + PLATEAU + [PLATEAU[-1]] * (GUARD_EPOCHS - 1) + [PLATEAU[-1] - 40]
    m = metrics_of([], split)
    for epoch in range(split + 1, len(curve)):
        m["val_every_epoch"] = curve[:epoch + 1]
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(1.0)  # the soft targets move the networks
        warning, back = watch.check(m, epoch)
        assert back == (epoch == split + GUARD_EPOCHS), (epoch, m["watch"])
    watch.go_back(teacher, student, optimizer)
    assert all(torch.equal(p, k) for p, k in zip(teacher.parameters(), kept)) and watch.state() is None


# ---------------------------------------------------------------------------- a collapse onto one class
def test_collapse_level_is_halfway_from_the_largest_label_share_to_all():
    assert collapse_level(0.1) == pytest.approx(0.55) and collapse_level(1 / 9) == pytest.approx(5 / 9)
    assert collapse_level(0.6) == pytest.approx(0.8)  # a majority class of the labels raises the level


def test_collapse_by_hand():
    """COLLAPSE_EPOCHS epochs in a row above the level, all after the split: the sentence names the share, the labels'
    largest share and what to do; one epoch at or below the level, or too few epochs after the split: nothing."""
    level = collapse_level(0.15)
    split = 3
    shares = [0.9, 0.95, 0.3, 0.2, 0.99, 1.0]  # collapsed early in training too: only the epochs after the split count
    said = collapse(shares, 0.15, split, 5)
    assert said.startswith(COLLAPSED) and "100% of the validation images" in said and "15%" in said
    assert "learning.py --checkpoint best" in said and "--tipping_rule none" in said
    assert collapse(shares[:5], 0.15, split, 4) is None  # one epoch after the split only
    assert collapse([0.3, 0.2, 0.3, 0.9, 0.95], 0.15, split, 4) is None  # high since the split's epoch: one after it
    assert collapse(shares[:4] + [level, 1.0], 0.15, split, 5) is None  # at the level is not above it
    assert collapse(shares[:4] + [1.0, level - 0.01], 0.15, split, 5) is None  # the newest epoch recovered
    assert COLLAPSE_EPOCHS == 2


def test_the_collapse_warning_comes_once_and_only_with_validation_labels():
    labels = np.arange(50) % 10
    watch, unwatched = Watch(guard=False, val_labels=labels), Watch(guard=False)
    assert watch.label_share == pytest.approx(0.1) and unwatched.label_share is None
    split = 4
    m = dict(metrics_of([], split), warnings=[])
    said = []
    for epoch, (acc, share) in enumerate([(20, 0.5), (30, 0.3), (40, 0.2), (45, 0.2), (45, 0.2), (10, 1.0),
                                          (10, 1.0), (10, 1.0), (12, 0.98)]):
        Watch.record(m, acc, share)
        if epoch > split:
            assert unwatched.collapsed(m, epoch) is None
            warning = watch.collapsed(m, epoch)
            if warning:
                said.append(epoch)
                m["warnings"].append(warning)
    assert said == [split + 2] and m["val_every_epoch"][-1] == 12 and m["val_top_class_share"][-1] == 0.98


def test_record_keeps_a_state_saved_before_the_collapse_was_watched():
    m = dict(val_every_epoch=[10.0, 20.0])  # a run resumed from a state without val_top_class_share
    Watch.record(m, 30.0, 0.4)
    assert m == dict(val_every_epoch=[10.0, 20.0, 30.0], val_top_class_share=[0.4])


def test_prediction_reading_is_the_accuracy_and_the_largest_predicted_share():
    """One pass gives the accuracy accuracy() gives and the share of the images in the class predicted most."""
    from data.pipeline import DeviceBatches, to_device_images
    from utils.engine import agreement_pass
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    images = to_device_images(RNG.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8), "reflect", torch.device("cpu"))
    labels = torch.arange(37) % 4
    batches = DeviceBatches(images, labels, None, ((0.5,) * 3, (0.25,) * 3), 10)
    predicted = agreement_pass(teacher, student, batches)[1]
    acc, top = prediction_reading(teacher, student, batches)
    assert acc == accuracy(teacher, student, batches)
    assert top == pytest.approx(torch.bincount(predicted).max().item() / 37)
    with torch.no_grad():  # a network that predicts one class for every image
        for net_ in (teacher, student):
            net_[1].weight.zero_()
            net_[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    assert prediction_reading(teacher, student, batches) == (pytest.approx(100 * 9 / 37), 1.0)


# ---------------------------------------------------------------------------- a run whose accuracy falls
def collapse_after_the_split(monkeypatch):
    """Every validation pass after the split reads as if the pair put all the images in one class."""
    real_record = Watch.record

    def collapsing(metrics, accuracy, top_share):
        real_record(metrics, accuracy, 1.0 if metrics["tipping_found_epoch"] is not None else top_share)
    monkeypatch.setattr(Watch, "record", staticmethod(collapsing))


def record_states(monkeypatch):
    """{epoch: the networks' tensors, the momentum buffers and the groups}, copied from every state the training
    script saves at the end of an epoch (in-process runs)."""
    import copy

    import blind_knowledge_dist_training as script
    states, save = {}, script.save_state

    def recording(path, state):
        if state.get("epoch_in_progress") is None:
            momentum = {i: s["momentum_buffer"] for i, s in state["optimizer"]["state"].items()}
            states[state["epoch"]] = copy.deepcopy(dict(teacher=state["teacher"], student=state["student"],
                                                        momentum=momentum, groups=state["groups"]))
        save(path, state)
    monkeypatch.setattr(script, "save_state", recording)
    return states


def train_fake_run(fake_cifar, tmp_path, capsys, *extra, recipe="robust"):
    """The fake CIFAR-10 run that splits (tests/test_resume.py's), in-process, under the recipe (the robust one: the
    plateau rule and the guard), judged by the final teacher where it did not memorise or collapse (--judge final);
    (its log, its folder, its metrics)."""
    import json
    import signal

    import blind_knowledge_dist_training as script
    from tests.conftest import write_pickle
    from flags import check_args, get_args_parser
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 3 // 2) % 10})
    flags = ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
             tmp_path / "labels.pt", "--n_epoch", 30, "--lr", 0.1, "--lr_decay_every", 5, "--batch_size", 16,
             "--print_freq", 1000, "--noisy_val_freq", 3, "--clean_test_freq", 5, "--results_dir", tmp_path / "r",
             "--judge", "final", "--recipe", recipe, *extra]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    parser = get_args_parser("test")
    try:
        script.main(check_args(parser, parser.parse_args([str(f) for f in flags])))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    d = tmp_path / "r" / ("cifar10_worst_seed_0" + ("" if recipe == "reference" else f"_{recipe}"))
    return capsys.readouterr().out, d, json.loads((d / "metrics.json").read_text())


@pytest.mark.slow
def test_a_run_whose_accuracy_falls_after_the_split_warns_and_goes_back(fake_cifar, tmp_path, monkeypatch, capsys):
    """The default rule on the fake CIFAR-10 run that splits (tests/test_resume.py's), its noisy-validation accuracy
    made to fall by 30 points in every epoch after the split, and its validation predictions to fall onto one class:
    the log warns of both at the epoch and again in the final summary, metrics.json keeps them, the run goes back to
    the networks of the split and the given labels, and label_issues.csv is the final teacher's judgement (it went
    back but did not memorise the labels the split flagged): ranked by its probability of the given label, flagged
    where its prediction (two passes averaged) is another class. Before the split the shares are the validation
    pass's own."""
    from utils.label_issues import in_dataset_order, read_label_issues
    real_check = Watch.check

    def falling(self, metrics, epoch):
        metrics["val_every_epoch"][-1] -= 30
        return real_check(self, metrics, epoch)
    monkeypatch.setattr(Watch, "check", falling)
    collapse_after_the_split(monkeypatch)
    states = record_states(monkeypatch)
    out, d, m = train_fake_run(fake_cifar, tmp_path, capsys, "--record_passes")
    found = m["tipping_found_epoch"]
    assert m["tipping_rule"] == "plateau" and found is not None and found < 26
    assert m["went_back"] is not None and m["went_back"]["z"] < -GUARD_Z
    # what the run did, read off the states it saved: at the end of the epoch after the split, the networks and the
    # momentum are those saved at the split, and every sample is back on its given label (group 0, one-hot); the
    # epoch after that trains on from there
    split, back = states[found], states[found + 1]
    assert (split["groups"] > 0).any() and not back["groups"].any()
    for key in ("teacher", "student", "momentum"):
        assert split[key].keys() == back[key].keys()
        assert all(torch.equal(split[key][k], back[key][k]) for k in split[key]), key
    assert not all(torch.equal(back["teacher"][k], states[found + 2]["teacher"][k]) for k in back["teacher"])
    went_back = [w for w in m["warnings"] if w.startswith("the soft targets made the networks worse")]
    fell = [w for w in m["warnings"] if "fell after the split" in w]
    assert len(went_back) == 1 and f"at epoch {found + 1} the run went back" in went_back[0]
    assert len(fell) == 1 and "learning.py --checkpoint best" in fell[0]
    collapsed = [w for w in m["warnings"] if w.startswith(COLLAPSED)]
    assert len(collapsed) == 1 and f"at epoch {found + COLLAPSE_EPOCHS} they put 100% of the" in collapsed[0]
    shares = m["val_top_class_share"]
    assert len(shares) == len(m["val_every_epoch"]) == 30 and all(0 < v <= 1 for v in shares[:found + 1])
    for warning in went_back + fell + collapsed:  # at the epoch and in the final summary
        assert out.count(f"WARNING: {warning}") == 2
    # going back says the soft targets hurt, not that the final networks judge badly: the final teacher, which
    # trained on the labels after going back and did not memorise those the split flagged, judges
    assert m["judged_by"] == "final_teacher" and "did not memorise them" in m["judge_reason"]
    assert f"label_issues.csv: judged by the final teacher ({m['judge_reason']})" in out
    table = read_label_issues(d / "label_issues.csv", 100)
    with np.load(d / "passes" / "final.npz") as z:  # the final teacher's softmax, its two passes averaged
        teacher = np.mean([torch.softmax(torch.as_tensor(z[f"{k}_teacher"]).double(), 1).numpy()
                           for k in ("plain", "aug")], axis=0)
    labels = in_dataset_order(table, "given_label")
    assert np.array_equal(in_dataset_order(table, "flagged"), teacher.argmax(axis=1) != labels)
    assert np.array_equal(in_dataset_order(table, "suggested_label"), teacher.argmax(axis=1))
    assert np.allclose(in_dataset_order(table, "final_teacher_given"), teacher[np.arange(100), labels], rtol=1e-5)
    assert np.array_equal(table["index"], np.argsort(in_dataset_order(table, "final_teacher_given"), kind="stable"))
    assert in_dataset_order(table, "flagged").sum() == m["flagged"]["flagged"] > 0


@pytest.mark.slow
def test_where_no_training_split_was_possible_nothing_is_watched(fake_cifar, tmp_path, monkeypatch, capsys):
    """A run whose tipping epoch was found but whose training split had no threshold (the groups stay one-hot, the
    soft targets never used): however its noisy-validation accuracy falls afterwards, the guard keeps nothing and
    never goes back, and no warning blames soft targets it did not use."""
    import blind_knowledge_dist_training as script
    from utils.bkd import DegenerateSplit
    real_check = Watch.check

    def falling(self, metrics, epoch):
        metrics["val_every_epoch"][-1] -= 30
        return real_check(self, metrics, epoch)
    monkeypatch.setattr(Watch, "check", falling)

    def no_threshold(values):
        raise DegenerateSplit("every value in one bin")
    monkeypatch.setattr(script, "otsu_split", no_threshold)  # the training split's; the detection has its own
    out, d, m = train_fake_run(fake_cifar, tmp_path, capsys)
    assert m["tipping_epoch"] is not None and m["train_split"] is None and m["detection_split"] is not None
    assert m["went_back"] is None and m["watch"] is None
    assert [w.split(":")[0] for w in m["warnings"]] == ["train split impossible, plain one-hot training continues"]
    assert "soft targets" not in out and "fell after the split" not in out


@pytest.mark.slow
def test_under_the_reference_recipe_a_fall_warns_where_the_guard_would_have_gone_back(fake_cifar, tmp_path,
                                                                                      monkeypatch, capsys):
    """The reference recipe (the paper's procedure, CIFAR's default) keeps the soft targets whatever happens, but where
    the robust recipe's guard would have gone back, a warning says so at that epoch and in the final summary, naming
    --recipe robust; the run itself goes on (nothing went back)."""
    from utils.watch import GUARD_OFF
    real_check = Watch.check

    def falling(self, metrics, epoch):
        metrics["val_every_epoch"][-1] -= 30
        return real_check(self, metrics, epoch)
    monkeypatch.setattr(Watch, "check", falling)
    out, d, m = train_fake_run(fake_cifar, tmp_path, capsys, recipe="reference")
    found = m["tipping_found_epoch"]
    assert m["recipe"] == "reference" and m["tipping_rule"] == "reference" and found is not None
    assert m["went_back"] is None and not m["args"]["guard"]
    notes = [w for w in m["warnings"] if w.startswith(GUARD_OFF)]
    assert len(notes) == 1 and f"at epoch {found + 1}:" in notes[0] and "--recipe robust" in notes[0]
    assert out.count(f"WARNING: {notes[0]}") == 2
    assert any("fell after the split" in w for w in m["warnings"])


@pytest.mark.slow
def test_a_collapsing_run_warns_and_a_collapsed_or_memorised_final_teacher_does_not_judge(fake_cifar, tmp_path,
                                                                                         monkeypatch, capsys):
    """Without the guard (nothing goes back), a run whose validation predictions fall onto one class after the split
    warns once, at the epoch and in the summary. Who judges its labels is read off the final teacher's own passes: the
    validation's collapse alone leaves the final teacher judging; a final teacher that puts every image in one class,
    or one that gives every label its given class (it memorised them), leaves the split judging, saying why."""
    import blind_knowledge_dist_training as script
    from utils.label_issues import in_dataset_order, read_label_issues
    from utils.watch import has_collapsed
    collapse_after_the_split(monkeypatch)
    out, d, m = train_fake_run(fake_cifar, tmp_path, capsys, "--no-guard")
    found = m["tipping_found_epoch"]
    assert found is not None and m["went_back"] is None and has_collapsed(m)
    collapsed = [w for w in m["warnings"] if w.startswith(COLLAPSED)]
    assert len(collapsed) == 1 and f"at epoch {found + COLLAPSE_EPOCHS} they put 100% of the" in collapsed[0]
    assert out.count(f"WARNING: {collapsed[0]}") == 2
    assert m["judged_by"] == "final_teacher" and "did not collapse" in m["judge_reason"]
    real_passes = script.final_passes

    def collapsed_teacher(*args):  # the teacher's logits of both passes: class 3 for every image
        return [(torch.nn.functional.one_hot(torch.full((len(t),), 3), t.shape[1]).to(t.dtype) * 10, s)
                for t, s in real_passes(*args)]
    monkeypatch.setattr(script, "final_passes", collapsed_teacher)
    (tmp_path / "collapsed").mkdir()
    out, d, m = train_fake_run(fake_cifar, tmp_path / "collapsed", capsys, "--no-guard")
    assert m["judged_by"] == "split" and "puts 100% of the images in one class" in m["judge_reason"]
    assert f"label_issues.csv: judged by the split ({m['judge_reason']})" in out
    table = read_label_issues(d / "label_issues.csv", 100)
    assert np.array_equal(table["index"], np.argsort(np.load(d / "detection_scores.npy"), kind="stable"))
    assert in_dataset_order(table, "flagged").sum() == m["split_flagged"]["flagged"] == m["flagged"]["flagged"]
    given = (fake_cifar["labels10"] + np.arange(100) % 3 // 2) % 10  # train_fake_run's labels, as the full set has them

    def memorised_teacher(*args):  # the teacher's logits of both passes: the given label of every image
        return [(torch.nn.functional.one_hot(torch.as_tensor(given), t.shape[1]).to(t.dtype) * 10, s)
                for t, s in real_passes(*args)]
    monkeypatch.setattr(script, "final_passes", memorised_teacher)
    (tmp_path / "memorised").mkdir()
    out, d, m = train_fake_run(fake_cifar, tmp_path / "memorised", capsys, "--no-guard")
    flagged = m["split_flagged"]["flagged"]
    assert m["judged_by"] == "split" and f"gives 100% of the {flagged} labels" in m["judge_reason"]
    assert "memorised them" in m["judge_reason"] and m["flagged"]["flagged"] == m["split_flagged"]["flagged"]
