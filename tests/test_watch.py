"""The watch after the split (utils/watch.py): how far the noisy-validation accuracy fell, in units of its own noise;
the warning and the guard on hand-made curves; going back puts the split's networks and momentum into the tensors a
captured step updates."""
import math

import numpy as np
import pytest
import torch

from utils.tipping import noise_level
from utils.watch import BASELINE, GUARD_EPOCHS, GUARD_Z, NOISE_FLOOR, WARN_Z, Watch, fall

RNG = np.random.default_rng(0)
RISE = list(np.linspace(30, 60, 10))  # learning, then the plateau the split is made on
PLATEAU = list(60 + RNG.normal(0, 1.0, 6))


def metrics_of(val, split):
    return dict(val_every_epoch=list(val), tipping_found_epoch=split, warnings=[], watch=None)


def test_fall_by_hand():
    val = [50, 52, 54, 55, 55, 56, 55, 56, 50, 49]
    z, after, before, noise = fall(val, 7)
    assert after == 49.5 and before == np.mean(val[3:8])
    assert noise == max(noise_level(val[:8]), NOISE_FLOOR)
    assert z == pytest.approx((after - before) / (noise * math.sqrt(1 / BASELINE + 1 / 2)))
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
    backs = []
    for epoch in range(split + 1, len(curve)):
        m["val_every_epoch"] = curve[:epoch + 1]
        warning, back = watch.check(m, epoch)
        backs.append(back)
        if warning:
            m["warnings"].append(warning)
    assert not any(backs) and watch.state() is None and any("fell after the split" in w for w in m["warnings"])


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


# ---------------------------------------------------------------------------- a run whose accuracy falls
@pytest.mark.slow
def test_a_run_whose_accuracy_falls_after_the_split_warns_and_goes_back(fake_cifar, tmp_path, monkeypatch, capsys):
    """The default rule on the fake CIFAR-10 run that splits (tests/test_resume.py's), its noisy-validation accuracy
    made to fall by 30 points in every epoch after the split: the log warns at the epoch and again in the final
    summary, metrics.json keeps it, the run goes back to the networks of the split and the given labels, and
    label_issues.csv stays the split's judgement (ranked by the tipping pass, the split's flags)."""
    import json
    import signal

    import blind_knowledge_dist_training as script
    from tests.conftest import write_pickle
    from utils.cli import check_args, get_args_parser
    from utils.label_issues import in_dataset_order, read_label_issues
    clean = fake_cifar["labels10"]
    write_pickle(tmp_path / "labels.pt", {"clean_label": clean, "worse_label": (clean + np.arange(100) % 3 // 2) % 10})
    flags = ["--dataset", "cifar10", "--arch", "small_cnn", "--data_dir", fake_cifar["dir"], "--noise_path",
             tmp_path / "labels.pt", "--n_epoch", 30, "--lr", 0.1, "--lr_decay_every", 5, "--batch_size", 16,
             "--print_freq", 1000, "--noisy_val_freq", 3, "--clean_test_freq", 5, "--results_dir", tmp_path / "r",
             "--judge", "final"]  # so that the split judges only because the run went back
    real_check = Watch.check

    def falling(self, metrics, epoch):
        metrics["val_every_epoch"][-1] -= 30
        return real_check(self, metrics, epoch)
    monkeypatch.setattr(Watch, "check", falling)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    parser = get_args_parser("test")
    try:
        script.main(check_args(parser, parser.parse_args([str(f) for f in flags])))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out = capsys.readouterr().out
    d = tmp_path / "r" / "cifar10_worst_seed_0"
    m = json.loads((d / "metrics.json").read_text())
    found = m["tipping_found_epoch"]
    assert m["tipping_rule"] == "plateau" and found is not None and found < 26
    assert m["went_back"] is not None and m["went_back"]["z"] < -GUARD_Z
    went_back = [w for w in m["warnings"] if w.startswith("the soft targets made the networks worse")]
    fell = [w for w in m["warnings"] if "fell after the split" in w]
    assert len(went_back) == 1 and f"at epoch {found + 1} the run went back" in went_back[0]
    assert len(fell) == 1 and "learning.py --checkpoint best" in fell[0]
    for warning in went_back + fell:  # at the epoch and in the final summary
        assert out.count(f"WARNING: {warning}") == 2
    assert m["judged_by"] == "split" and "judged by the split (the run went back to the labels)" in out
    table = read_label_issues(d / "label_issues.csv", 100)
    assert np.array_equal(table["index"], np.argsort(np.load(d / "detection_scores.npy"), kind="stable"))
    assert in_dataset_order(table, "flagged").sum() == m["split_flagged"]["flagged"] == m["flagged"]["flagged"]
