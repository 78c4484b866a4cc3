"""The CUDA tier: the GPU path, checked on a GPU; every test here is skipped without CUDA. On a GPU machine:

    python -m pytest -q tests/test_cuda.py

The captured step equals the eager one (tight in fp32, within bf16 tolerance) and its returned outputs stay as they
were after later replays, a real capture failure keeps its cause, a short real run on CUDA finds its tipping point
and writes every output (and learning.py evaluates it, the pair and the teacher alone), --deterministic runs repeat
byte for byte (and so does a --recipe ce run, captured or not), and a SIGKILL plus --resume with --deterministic
ends identical to the uninterrupted run.
"""
import json
import sys

import numpy as np
import pytest
import torch

from models import build_model
from tests.conftest import N_SYNTHETIC, SYNTHETIC_SCHEDULE, outputs, run, train
from tests.test_resume import kill_and_resume
from utils.engine import make_optimizer
from utils.step import CaptureFailed, TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA tier needs a CUDA device")


def stepped_pair(cuda_graph, precision, batches, lr_change_at):
    """A PreResNet18 pair (seed 0) after one TrainStep per batch, the learning rate x0.1 before step lr_change_at:
    (the step's outputs of every step, kept as returned; the pair; the optimizer; the steps at which it captured;
    replays)."""
    torch.manual_seed(0)
    nets = [build_model("preresnet18", 10).cuda().to(memory_format=torch.channels_last) for _ in range(2)]
    optimizer = make_optimizer(nets, type("A", (), dict(lr=0.02, momentum=0.9, weight_decay=5e-4)),
                               torch.device("cuda"))
    step = TrainStep(*nets, optimizer, precision, batch_size=64, cuda_graph=cuda_graph, warmup=2)
    outs, captured_at, replays = [], [], []
    capture = step.capture

    def counted_capture(*batch):  # record at which steps it captures, and at which the graphs replay
        captured_at.append(len(outs))
        capture(*batch)
        replay = step.graph.replay
        step.graph.replay = lambda: (replays.append(len(outs)), replay())
    step.capture = counted_capture
    for i, (x, y, alphas) in enumerate(batches):
        if i == lr_change_at:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        outs.append(step(x, y, alphas))  # not copied: a later replay must not change what a caller kept
    torch.cuda.synchronize()
    step.check_graph_targets()  # the graph still updates the pair's own tensors
    return outs, nets, optimizer, captured_at, replays


@pytest.mark.parametrize("precision, tolerance", [("fp32", dict(rtol=1e-5, atol=1e-6)),
                                                  ("bf16", dict(rtol=2e-2, atol=2e-3))])
def test_captured_step_equals_eager_step(precision, tolerance, monkeypatch):
    """Warm-up steps, capture, replays, a last partial batch in the middle, and a new capture after the
    learning-rate change: the same losses, statistics, parameters, BatchNorm statistics and momentum buffers."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # the same kernels in both runs
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [64, 64, 64, 64, 40, 64, 64, 64, 64, 64]  # warm-up 2, captured from the 3rd, a partial batch
    batches = [(torch.randn(b, 3, 32, 32, device="cuda", generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (b,), device="cuda", generator=g),
                torch.rand(b, device="cuda", generator=g) * (i > 5))  # alphas: one-hot first, soft targets later
               for i, b in enumerate(sizes)]
    eager_outs, eager_nets, eager_opt, captured_at, _ = stepped_pair(False, precision, batches, lr_change_at=7)
    assert captured_at == []
    graph_outs, graph_nets, graph_opt, captured_at, replays = stepped_pair(True, precision, batches, lr_change_at=7)
    assert captured_at == [2, 7]  # after 2 warm-up steps, and again for the new learning rate
    assert replays == [2, 3, 5, 6, 7, 8, 9]  # every full batch from the capture on; the batch of 40 ran eagerly
    for i, (a, b) in enumerate(zip(eager_outs, graph_outs)):
        for name, u, v in zip(("loss", "naive loss", "compensation loss", "agreement", "confidence"), a, b):
            torch.testing.assert_close(v, u, **tolerance, msg=lambda m: f"step {i}, {name}: {m}")
    for net_a, net_b in zip(eager_nets, graph_nets):
        for (key, u), v in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            torch.testing.assert_close(v.float(), u.float(), **tolerance, msg=lambda m: f"{key}: {m}")
    for p_a, p_b in zip(eager_opt.param_groups[0]["params"], graph_opt.param_groups[0]["params"]):
        torch.testing.assert_close(graph_opt.state[p_b]["momentum_buffer"], eager_opt.state[p_a]["momentum_buffer"],
                                   **tolerance)


# The demo's whole schedule (run.sh: 24 epochs): the CPU suite's 18 epochs end 3 epochs after the CPU runs split, and
# on the first GPU window the captured run had found no tipping epoch by then (other kernels, other curves).
DEMO_SCHEDULE = ["--n_epoch", 24, "--lr", 0.1, "--lr_decay_every", 5]


def test_short_cuda_run_finds_the_tipping_point_and_writes_every_output(tmp_path):
    """The synthetic demo on CUDA with the captured step, next to the eager step: both find their tipping epoch,
    write every output, and detect about equally well."""
    results = {}
    for mode in ("--cuda_graph", "--no-cuda_graph"):
        out = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--results_dir", tmp_path / mode,
                  *DEMO_SCHEDULE, "--print_freq", 1000, mode, cuda=True)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "device cuda" in out.stdout
        d = tmp_path / mode / "synthetic_worst_seed_0"
        m = json.loads((d / "metrics.json").read_text())
        curves = (f"{mode}: confidence {[round(c, 4) for c in m['confidence']]}, training fit "
                  f"{[round(f, 4) for f in m['train_fit']]}\n{out.stdout[-1500:]}")
        assert m["tipping_epoch"] is not None and m["cuda_graph"] == (mode == "--cuda_graph"), curves
        for name in ("teacher.pth.tar", "student.pth.tar", "best_teacher.pth.tar", "best_student.pth.tar",
                     "detection.npy", "detection_scores.npy", "label_issues.csv", "metrics.json"):
            assert (d / name).is_file(), name
        assert np.load(d / "detection.npy").shape == (N_SYNTHETIC,)
        print(curves.splitlines()[0], f"tipping epoch {m['tipping_epoch']} found at {m['tipping_found_epoch']}, "
              f"{m['wall_time_s']:.1f} s")
        results[mode] = m
    for predict in ("pair", "teacher"):  # learning.py on CUDA: the pair reports the training's own final accuracy
        learning = run("learning.py", "--dataset", "synthetic", "--results_dir", tmp_path / "--cuda_graph",
                       "--predict", predict, cuda=True)
        assert learning.returncode == 0 and "predicting with" in learning.stdout, learning.stderr[-2000:]
        acc = float(learning.stdout.split("test accuracy: ")[1].split(" %")[0])
        print(f"learning.py --predict {predict} on CUDA: {acc:.2f} %")
        if predict == "pair":  # autotuned kernels may tip an image or two at the boundary
            assert acc == pytest.approx(results["--cuda_graph"]["final_test_accuracy"], abs=0.3)
        assert acc > 50  # 10 classes: chance is 10 %
    # a smoke test of the method on CUDA (autotuned kernels: the two runs differ in their last bits)
    f1_graph, f1_eager = (results[mode]["detection"]["f1"] for mode in ("--cuda_graph", "--no-cuda_graph"))
    assert f1_graph > 0.6 and abs(f1_graph - f1_eager) < 0.1, (f1_graph, f1_eager)


# The learning rate decays at epoch 20 of these runs, so the captured step is captured a second time.
DETERMINISTIC = ["--deterministic", "--lr_decay_every", 20]


def test_deterministic_cuda_runs_repeat_byte_for_byte_captured_or_not(fake_run):
    """Twice captured, once eager: identical bytes. The last also shows that a replayed step computes bit for bit
    what the eager step does, which --resume relies on (a resumed run warms up eagerly again)."""
    for name, mode in (("a", "--cuda_graph"), ("b", "--cuda_graph"), ("eager", "--no-cuda_graph")):
        train([*fake_run["flags"], "--n_epoch", 40, *DETERMINISTIC, mode], fake_run["tmp"] / name, cuda=True)
    a, b, eager = (fake_run["tmp"] / d / "cifar10_worst_seed_0" for d in ("a", "b", "eager"))
    assert json.loads((a / "metrics.json").read_text())["tipping_epoch"] is not None
    assert outputs(a) == outputs(b)
    assert outputs(a) == outputs(eager)


def test_a_ce_run_on_cuda_is_the_same_captured_or_not(fake_run):
    """--recipe ce on CUDA: one network, its plain cross-entropy step captured as a CUDA graph (without a student
    stream's work) and replayed gives the bytes of the eager step; learning.py evaluates the network."""
    flags = [*fake_run["flags"], "--n_epoch", 30, *DETERMINISTIC, "--recipe", "ce"]
    flags.remove("--tipping_rule")
    flags.remove("reference")
    for name, mode in (("graph", "--cuda_graph"), ("eager", "--no-cuda_graph")):
        train([*flags, mode], fake_run["tmp"] / name, cuda=True)
    graph, eager = (fake_run["tmp"] / d / "cifar10_worst_seed_0_ce" for d in ("graph", "eager"))
    assert json.loads((graph / "metrics.json").read_text())["cuda_graph"] is True
    names = ("network.pth.tar", "best_network.pth.tar")
    assert outputs(graph, names) == outputs(eager, names)
    learning = run("learning.py", *flags, "--results_dir", fake_run["tmp"] / "graph", cuda=True)
    assert learning.returncode == 0 and "the one network" in learning.stdout, learning.stderr[-2000:]


def test_killed_and_resumed_deterministic_cuda_run_ends_identical(fake_run):
    kill_and_resume([*fake_run["flags"], "--n_epoch", 80, *DETERMINISTIC, "--cuda_graph"], fake_run["tmp"],
                    kills=2, cuda=True)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_torchrun_agrees(tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    out = run("blind_knowledge_dist_training.py", "--dataset", "synthetic", "--results_dir", tmp_path,
              *SYNTHETIC_SCHEDULE, "--print_freq", 1000, "--cuda_graph", launcher=launcher, cuda=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "x 2 processes" in out.stdout and "all 2 ranks agree on the tipping epoch and the groups" in out.stdout
    assert "--cuda_graph is ignored under torchrun: the DDP step stays eager" in out.stdout


# Last in this file: a failed capture invalidates the capturing stream; nothing after it in this process uses CUDA.
def test_a_real_capture_failure_keeps_its_cause(monkeypatch):
    """A host synchronisation inside the step cannot be captured: the CaptureFailed names that op (first) and
    torch.cuda.graph's own follow-up error, and says how to continue."""
    import utils.step
    real_step = utils.step.train_step

    def step_that_syncs(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if torch.cuda.is_current_stream_capturing():
            out[0].item()  # waits for the device: not allowed while capturing
        return out
    monkeypatch.setattr(utils.step, "train_step", step_that_syncs)
    torch.manual_seed(0)
    nets = [build_model("small_cnn", 10).cuda().to(memory_format=torch.channels_last) for _ in range(2)]
    optimizer = make_optimizer(nets, type("A", (), dict(lr=0.02, momentum=0.9, weight_decay=5e-4)),
                               torch.device("cuda"))
    reported = []
    step = TrainStep(*nets, optimizer, "bf16", batch_size=8, cuda_graph=True, warmup=1, on_capture_failure=reported.append)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y, alphas = torch.randint(0, 10, (8,), device="cuda"), torch.zeros(8, device="cuda")
    step(x, y, alphas)
    with pytest.raises(CaptureFailed) as e:
        step(x, y, alphas)
    assert reported == [e.value] and "--resume --no-cuda_graph" in str(e.value)
    assert "step_that_syncs" in e.value.cause and "out[0].item()" in e.value.cause  # the op that broke the capture
